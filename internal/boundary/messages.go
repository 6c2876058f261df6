package boundary

import (
	"math"
	"strings"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
)

// Mode is what a sandbox process does.
type Mode uint8

// Sandbox modes.
const (
	ModeCompile  Mode = 1 // parse, instrument and compile modules
	ModeCanister Mode = 2 // run one canister's executions
)

func (m Mode) String() string {
	switch m {
	case ModeCompile:
		return "compile"
	case ModeCanister:
		return "canister"
	}
	return "unknown"
}

// ParseMode maps the sandbox's first argument to a mode.
func ParseMode(s string) (Mode, bool) {
	switch s {
	case "compile":
		return ModeCompile, true
	case "canister":
		return ModeCanister, true
	}
	return 0, false
}

// QueryThreadsArg prefixes a canister sandbox's third argument (after the
// mode and a label): "query-threads=N", how many queries the host may run
// in it at once (1 to MaxInFlight).
const QueryThreadsArg = "query-threads="

// Memory names one of a canister's memories in a Pages packet.
type Memory uint8

// The memories.
const (
	HeapMemory   Memory = 1
	StableMemory Memory = 2
)

func (m Memory) String() string {
	switch m {
	case HeapMemory:
		return "heap"
	case StableMemory:
		return "stable memory"
	}
	return "unknown memory"
}

// Memory sources of an Execute request.
const (
	// HeapInline: the heap's and stable memory's stored pages travel in
	// Pages packets after the request.
	HeapInline uint8 = 0
	// MemoryMapped: the memories' images travel as read-only descriptors
	// attached to the request (heap if it has one, then stable memory),
	// which the sandbox maps; no pages follow.
	MemoryMapped uint8 = 1
	// MemoryLayered: as MemoryMapped, but each memory is its image's first
	// HeapBase (StableBase) bytes, zeros beyond, with the pages that follow
	// (HeapPages heap pages, then StablePages stable pages) laid over them:
	// a composite query's frame, which shares the committed images and
	// differs from them in the pages it or a commit changed
	// (state.Layers).
	MemoryLayered uint8 = 2
)

// Caps of structural decoding. Semantic limits are tighter and come from
// the request.
const (
	MaxTrapMessage = 64 << 10 // longest trap message accepted
	MaxLogText     = 4 << 10  // longest diagnostic line (Log)
	MaxErrorText   = 4 << 10  // longest error message (Error)
	MaxLogsPerExec = 64       // Log messages a sandbox may send per request
	// MaxRequestBody bounds host requests as the worker decodes them.
	MaxRequestBody = 1 << 30
)

// ---- Ready -----------------------------------------------------------------

// EncodeReady encodes Ready: u32 version, u8 mode.
func EncodeReady(m Mode) []byte {
	w := &writer{}
	w.u32(Version)
	w.u8(uint8(m))
	return w.b
}

// DecodeReady decodes Ready.
func DecodeReady(b []byte) (uint32, Mode, error) {
	r := &reader{b: b}
	v := r.u32("version")
	m := Mode(r.u8("mode"))
	if err := r.done("ready"); err != nil {
		return 0, 0, err
	}
	if m != ModeCompile && m != ModeCanister {
		return 0, 0, violation(VDecode, "ready: unknown mode %d", m)
	}
	return v, m, nil
}

// ---- Compile ---------------------------------------------------------------

// CompileRequest asks a compiler sandbox to compile a module.
type CompileRequest struct {
	Limits engine.ModuleLimits
	Wasm   []byte
}

// EncodeCompile encodes a CompileRequest: u64 max bytes, max methods, max
// globals, max functions, max locals, max control instructions per
// function, max control instructions; bytes wasm.
func EncodeCompile(c *CompileRequest) []byte {
	w := &writer{b: make([]byte, 0, 64+len(c.Wasm))}
	w.count(c.Limits.MaxBytes)
	w.count(c.Limits.MaxMethods)
	w.count(c.Limits.MaxGlobals)
	w.count(c.Limits.MaxFunctions)
	w.count(c.Limits.MaxLocals)
	w.count(c.Limits.MaxFuncControl)
	w.count(c.Limits.MaxControl)
	w.bytes(c.Wasm)
	return w.b
}

// DecodeCompile decodes a CompileRequest.
func DecodeCompile(b []byte) (*CompileRequest, error) {
	r := &reader{b: b}
	lim := func(what string) int {
		v := r.u64(what)
		if v > math.MaxInt32 {
			r.fail("%s: %d", what, v)
		}
		return int(v)
	}
	c := &CompileRequest{}
	c.Limits.MaxBytes = lim("max bytes")
	c.Limits.MaxMethods = lim("max methods")
	c.Limits.MaxGlobals = lim("max globals")
	c.Limits.MaxFunctions = lim("max functions")
	c.Limits.MaxLocals = lim("max locals")
	c.Limits.MaxFuncControl = lim("max control per function")
	c.Limits.MaxControl = lim("max control")
	c.Wasm = r.bytes(math.MaxUint64, "wasm")
	if err := r.done("compile"); err != nil {
		return nil, err
	}
	return c, nil
}

// ---- Compiled --------------------------------------------------------------

// Compiled is a compiler sandbox's answer: what the module exports, the
// types of its globals, and the artifact (engine.Module.Serialize).
type Compiled struct {
	Info        engine.Info // Hash and Size are set by the host, never taken from here
	GlobalTypes []state.GlobalType
	Artifact    []byte
}

// EncodeCompiled encodes Compiled: 11 booleans (memory64, init, pre_upgrade,
// post_upgrade, inspect, heartbeat, global_timer, low_wasm_memory, start,
// enhanced orthogonal persistence, has a memory); str candid service; u64 method count,
// then per method u8 kind, str name (sorted); u64 global count, then u8
// type each; u64 metadata count, then per section bool public, str name,
// bytes data; bytes artifact.
func EncodeCompiled(c *Compiled) []byte {
	w := &writer{b: make([]byte, 0, 1024+len(c.Artifact)+len(c.Info.CandidService))}
	in := &c.Info
	for _, v := range []bool{in.Memory64, in.HasInit, in.HasPreUpgrade, in.HasPostUpgrade, in.HasInspect,
		in.HasHeartbeat, in.HasGlobalTimer, in.HasLowWasmMemory, in.HasStart, in.EnhancedOrthogonalPersistence, in.HasMemory} {
		w.bool(v)
	}
	w.str(in.CandidService)
	var names []string
	for _, k := range []engine.MethodKind{engine.UpdateMethod, engine.QueryMethod, engine.CompositeQueryMethod} {
		names = append(names, in.MethodNames(k)...)
	}
	w.count(len(names))
	for _, n := range names {
		w.u8(uint8(in.Methods[n]))
		w.str(n)
	}
	w.count(len(c.GlobalTypes))
	for _, t := range c.GlobalTypes {
		w.u8(uint8(t))
	}
	w.count(len(in.Metadata))
	for _, m := range in.Metadata {
		w.bool(m.Public)
		w.str(m.Name)
		w.bytes(m.Data)
	}
	w.bytes(c.Artifact)
	return w.b
}

// DecodeCompiled decodes Compiled structurally: method kinds and global
// types from their allowlists, no duplicate method names, at most
// lim.MaxMethods methods and lim.MaxGlobals globals. The rest is checked by
// ValidateCompiled.
func DecodeCompiled(b []byte, lim engine.ModuleLimits) (*Compiled, error) {
	r := &reader{b: b}
	c := &Compiled{}
	in := &c.Info
	for _, p := range []*bool{&in.Memory64, &in.HasInit, &in.HasPreUpgrade, &in.HasPostUpgrade, &in.HasInspect,
		&in.HasHeartbeat, &in.HasGlobalTimer, &in.HasLowWasmMemory, &in.HasStart, &in.EnhancedOrthogonalPersistence, &in.HasMemory} {
		*p = r.bool("info flag")
	}
	// The strings are bounded by what the module can hold while they are
	// read, before they are copied: the body may be as large as the
	// artifact limit (a GiB). The candid service is one of the module's
	// icp: sections, which the engine bounds together by MaxMetadataBytes;
	// method names are export names, together no larger than the module
	// nor than the IC's bound on their sum (MaxMethodNameBytes).
	in.CandidService = r.str(engine.MaxMetadataBytes, "candid service")
	// The count is checked against the limit before any entry is read:
	// a body of the size AwaitCompiled allows (the artifact's, up to a
	// GiB) holds tens of millions of 12-byte entries, and their map costs
	// five times the body.
	n := r.count(nonNeg(lim.MaxMethods), 9, "methods")
	// Sized for what a module usually exports, not for the count, which
	// only the body's length bounds: a lying compiler's claim costs
	// nothing until its entries arrive.
	in.Methods = make(map[string]engine.MethodKind, min(n, 64))
	nameBytes := min(nonNeg(lim.MaxBytes), engine.MaxMethodNameBytes) // what the method names may still take
	for i := 0; i < n && r.err == nil; i++ {
		k := engine.MethodKind(r.u8("method kind"))
		name := r.str(nameBytes, "method name")
		nameBytes -= uint64(len(name))
		if r.err != nil {
			break
		}
		switch k {
		case engine.UpdateMethod, engine.QueryMethod, engine.CompositeQueryMethod:
		default:
			r.fail("method %q: kind %d", truncate(name), k)
		}
		if _, dup := in.Methods[name]; dup {
			r.fail("method %q listed twice", truncate(name))
		}
		in.Methods[name] = k
	}
	g := r.count(nonNeg(lim.MaxGlobals), 1, "globals")
	c.GlobalTypes = make([]state.GlobalType, 0, g)
	for i := 0; i < g && r.err == nil; i++ {
		t := state.GlobalType(r.u8("global type"))
		if t > state.GlobalF64 { // 0 is "not persisted" (immutable, other type)
			r.fail("global %d: type %d", i, t)
		}
		c.GlobalTypes = append(c.GlobalTypes, t)
	}
	in.NumGlobals = len(c.GlobalTypes)
	if m := r.count(engine.MaxMetadataSections, 17, "metadata sections"); m > 0 {
		in.Metadata = make([]engine.Metadata, 0, m)
		mdBytes := uint64(engine.MaxMetadataBytes) // names and contents together
		for i := 0; i < m && r.err == nil; i++ {
			pub := r.bool("metadata visibility")
			name := r.str(mdBytes, "metadata name")
			mdBytes -= uint64(len(name))
			data := r.bytes(mdBytes, "metadata")
			mdBytes -= uint64(len(data))
			in.Metadata = append(in.Metadata, engine.Metadata{Name: name, Public: pub, Data: data})
		}
	}
	c.Artifact = r.bytes(math.MaxUint64, "artifact")
	if err := r.done("compiled"); err != nil {
		return nil, err
	}
	return c, nil
}

// ---- Load / Loaded ---------------------------------------------------------

// EncodeHash encodes Load and Loaded: the 32-byte module hash.
func EncodeHash(h [32]byte) []byte { return append([]byte(nil), h[:]...) }

// DecodeHash decodes Load and Loaded.
func DecodeHash(b []byte) ([32]byte, error) {
	var h [32]byte
	r := &reader{b: b}
	copy(h[:], r.take(32, "module hash"))
	if err := r.done("hash"); err != nil {
		return h, err
	}
	return h, nil
}

// ---- Log / Error -----------------------------------------------------------

// LogLevel is the severity of a sandbox's diagnostic line.
type LogLevel uint8

// Log levels.
const (
	LogDebug LogLevel = 0
	LogInfo  LogLevel = 1
	LogWarn  LogLevel = 2
	LogError LogLevel = 3
)

// LogLine is a sandbox's diagnostic line (not a canister's debug_print,
// which is part of the Output).
type LogLine struct {
	Level LogLevel
	Text  string
}

// EncodeLog encodes Log: u8 level, str text.
func EncodeLog(l LogLine) []byte {
	w := &writer{}
	w.u8(uint8(l.Level))
	w.str(clip(l.Text, MaxLogText))
	return w.b
}

// DecodeLog decodes Log; the text is made printable (valid UTF-8, no
// control characters) because it ends up in the host's logs.
func DecodeLog(b []byte) (LogLine, error) {
	r := &reader{b: b}
	l := LogLine{Level: LogLevel(r.u8("level"))}
	l.Text = r.str(MaxLogText, "text")
	if err := r.done("log"); err != nil {
		return LogLine{}, err
	}
	if l.Level > LogError {
		return LogLine{}, violation(VDecode, "log level %d", l.Level)
	}
	l.Text = Printable(l.Text)
	return l, nil
}

// ErrorCode says why a sandbox could not do what it was asked.
type ErrorCode uint8

// Error codes.
const (
	ErrInternal      ErrorCode = 1 // the sandbox failed (engine error, bug)
	ErrInvalidModule ErrorCode = 2 // the module was refused by validation or compilation
	ErrBadRequest    ErrorCode = 3 // the request could not be decoded or does not fit the state
	ErrArtifact      ErrorCode = 4 // the artifact could not be loaded (stale or damaged)
	// ErrHostMemory: the engine could not grow or map the canister's memory
	// within the canister's limits, at a memory.grow or at instantiation
	// (engine.ErrHostMemory). The host weighs it by
	// the sandbox's cgroup, not by this claim (exec.Sandboxed.fail).
	ErrHostMemory ErrorCode = 5
)

func (c ErrorCode) String() string {
	switch c {
	case ErrInternal:
		return "internal error"
	case ErrInvalidModule:
		return "invalid module"
	case ErrBadRequest:
		return "bad request"
	case ErrArtifact:
		return "artifact"
	case ErrHostMemory:
		return "host memory"
	}
	return "unknown error"
}

// RemoteError is an Error message: the sandbox reports it could not carry
// out the request. Its text is the sandbox's and only informative.
type RemoteError struct {
	Code    ErrorCode
	Message string
}

func (e *RemoteError) Error() string { return "sandbox: " + e.Code.String() + ": " + e.Message }

// ReserveError is an answer whose pages the host would not hold
// (Expect.Reserve refused them): the answer was received in full and
// dropped, so the connection is still usable. Err is the host's reason.
type ReserveError struct {
	Err error
}

func (e *ReserveError) Error() string { return "answer's memory pages refused: " + e.Err.Error() }
func (e *ReserveError) Unwrap() error { return e.Err }

// EncodeError encodes Error: u8 code, str message.
func EncodeError(e *RemoteError) []byte {
	w := &writer{}
	w.u8(uint8(e.Code))
	w.str(clip(e.Message, MaxErrorText))
	return w.b
}

// DecodeError decodes Error.
func DecodeError(b []byte) (*RemoteError, error) {
	r := &reader{b: b}
	e := &RemoteError{Code: ErrorCode(r.u8("code"))}
	e.Message = r.str(MaxErrorText, "message")
	if err := r.done("error"); err != nil {
		return nil, err
	}
	if e.Code < ErrInternal || e.Code > ErrHostMemory {
		return nil, violation(VDecode, "error code %d", e.Code)
	}
	e.Message = Printable(e.Message)
	return e, nil
}

// clip shortens s to at most n bytes, cutting at a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Printable returns s as valid UTF-8 without control characters (newlines
// and tabs become spaces), for logs and error messages.
func Printable(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\t' || r == '\r':
			return ' '
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
			return '\uFFFD'
		}
		return r
	}, s)
}

func truncate(s string) string {
	if len(s) > 64 {
		return Printable(clip(s, 64)) + "…"
	}
	return Printable(s)
}
