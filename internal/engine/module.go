package engine

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/internal/wasmbin"
)

// Limits on modules, checked before compilation (IC defaults).
type ModuleLimits struct {
	MaxBytes     int // module size after decompression
	MaxMethods   int // exported update, query and composite query methods
	MaxGlobals   int
	MaxFunctions int
	// MaxLocals bounds the locals all function bodies declare together
	// (each body also has wasmbin.MaxFuncLocals, wasmparser's and so the
	// IC's bound). A local costs compile time but, declared in a group, no
	// bytes: the per-byte compile fee would not see 2,000 bodies of 49,990
	// locals each in 16 KB.
	MaxLocals int
	// MaxFuncControl bounds the control instructions of one function body
	// and MaxControl those of all bodies together (loop, if, else, end,
	// br, br_if, br_table, return, unreachable, bulk memory and table
	// operations, call; call_indirect counts 4, table.get, table.set and
	// memory.grow 2, a br_table 1 more per 4 targets: wasmbin.ControlInstructions). Each makes blocks in the compiled code
	// (a call costs as much without)
	// (metering updates the counter after the first ones and checks the
	// length of bulk operations), and Cranelift's compile time grows with
	// the square of a body's blocks: one body of 120,000 blocks with a
	// br_if each (840 KB) took 35 s of CPU to compile, 2 s unmetered, and
	// one of 60,000 call_indirect (300 KB) 57 s. The bytes, and so the
	// per-byte compile fee, do not see it.
	MaxFuncControl int
	MaxControl     int
}

// DefaultModuleLimits are the IC's limits, plus MaxLocals: 1 M, some 200
// times what the corpus's largest module declares (5,289) and 20 per
// function at MaxFunctions; its worst layout (20 bodies of 49,990 locals,
// used in a loop) compiles in 0.3–0.6 s here (a loaded 2-core VM). And
// MaxFuncControl and MaxControl, DefaultMaxFuncControl and
// DefaultMaxControl.
func DefaultModuleLimits() ModuleLimits {
	return ModuleLimits{MaxBytes: 100 << 20, MaxMethods: 1000, MaxGlobals: 1000, MaxFunctions: 50000, MaxLocals: 1_000_000,
		MaxFuncControl: DefaultMaxFuncControl, MaxControl: DefaultMaxControl}
}

// The default bounds on control instructions. Compile time grows about
// linearly with a module's control instructions once its bodies are a few
// thousand each (some 80 µs of CPU each here, a loaded 2-core VM: 18
// bodies of 20,000 compiled in 30 s, 20 of 12,500 in 16 s; at the former
// module bound, 1 M, a module compiled in 88 s), so MaxControl is what
// bounds the whole module's compile time. 500,000 (some 40 s at worst)
// is 7 times the corpus's largest module (dfx's ui canister, 70,150, 5.3
// s) and what a code section of the IC's largest size (12 MiB) holds at
// that module's density (40 a KB): a real module the IC accepts is not
// refused for it. MaxFuncControl: 20,000, 7.5 times the corpus's largest
// body (2,662, the ui canister again; the IC itself once allowed 10,000,
// then 15,000, blocks, branches and calls per function); a body at it
// compiles in about 1.5 s, and a lower one saves a module little
// (RATIONALE, "A module's control instructions").
const (
	DefaultMaxFuncControl = 20_000
	DefaultMaxControl     = 500_000
)

// maxFuncInstructions bounds the weight of one function body: its
// instructions, a memory access weighing wasmbin.MemoryAccessWeight
// (wasmbin.FuncInstructions). Cranelift's translation and optimizer make
// several values of each instruction, dozens of a memory access, and
// number a function's values in 24 bits where they pack them: beyond, it
// panics, which aborts the process that compiles (in process, the node).
// Within every other bound, 400,000 values pushed and then added up (2 M
// instructions, 3.6 MB) made it panic with 16.8 M values, and so did
// 333,000 64-bit loads added up (1 M instructions, 4 M weighed); 250,000
// values pushed and added (1.25 M) did not. 500,000 keeps 2.5 times below
// the first and 8 times below the second; it is 3.4 times the corpus's
// heaviest body (146,697, 48,507 instructions: dfx's ui canister). (The
// IC bounds a function's instructions at 1 M, unweighted.)
const maxFuncInstructions = 500_000

// maxFuncLoopLocals and maxLoopLocals bound the weight of a function's
// loops and of all of a module's (wasmbin.LoopLocals: the sum over loops
// of the square of the distinct locals each touches), which Cranelift's
// SSA construction spends time on, about 10 ns a unit here: one body of
// 500 nested loops touching 10,000 locals each (41 KB, far within the
// control-instruction bounds) took 8 minutes of CPU to compile. At the
// bounds a function takes about 0.2 s and a module 2 s more; the corpus's
// heaviest function weighs 25,216 (dfx's wallet) and its heaviest module
// 216,679, some 800 and 900 times below.
const (
	maxFuncLoopLocals = 20_000_000
	maxLoopLocals     = 200_000_000
)

// liveLocalsLimits bound what the values of locals cost Cranelift across
// the blocks of a function (wasmbin.LiveLocals), which neither the bytes
// nor the bounds above see: register allocation grows with the square of a
// function's merges (locals rewritten in a construct and read after it,
// times the edges into its join), SSA construction and liveness with its
// spans (block boundaries a local's value, or a value on the operand
// stack, is live across). One body of 200
// ifs each rewriting 500 locals, read after them (1.3 MB, 400 control
// instructions), took 25 s of CPU to compile, and such bodies keep growing
// up to wasmbin.MaxFuncBodySize. The corpus's heaviest function weighs
// 28,455 merges and 140,912 spans (dfx's wallet), its heaviest module
// 1.11 G merges squared (the wallet) and 937,695 spans (dfx's ui); those
// modules compile in 4 to 6 s here. The spans' bounds are some 10 times
// the corpus's; the merges', whose cost grows with their square, 2.1 (a
// function) and 5.4 (a module's squares) times: a function at the bound
// compiles in 4 to 5.5 s, a module at the bound in some 7 s. Constants, as
// the loops' bounds are.
var liveLocalsLimits = wasmbin.LiveLocalsLimits{
	Func:                wasmbin.LiveLocalsWeight{Merges: 60_000, Spans: 1_500_000, Visits: 5_000_000},
	ModuleMergesSquared: 6_000_000_000, ModuleSpans: 10_000_000, ModuleVisits: 50_000_000,
}

// controlKinds says what a refusal for control instructions counts.
var controlKinds = fmt.Sprintf("loop, if, else, end, br, br_if, br_table, return, unreachable, bulk memory and table operations, call; call_indirect counts %d, table.get and table.set %d, br_table 1 more per %d targets",
	wasmbin.CallIndirectWeight, wasmbin.TableAccessWeight, wasmbin.BrTableTargetsPerWeight)

// ErrInvalidModule wraps every reason a module is refused.
var ErrInvalidModule = errors.New("invalid canister module")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidModule, fmt.Sprintf(format, args...))
}

// MethodKind is how a canister method may be called.
type MethodKind uint8

// Method kinds.
const (
	NoMethod MethodKind = iota
	UpdateMethod
	QueryMethod
	CompositeQueryMethod
)

// String names the kind as the export prefix does.
func (k MethodKind) String() string {
	switch k {
	case UpdateMethod:
		return "update"
	case QueryMethod:
		return "query"
	case CompositeQueryMethod:
		return "composite_query"
	}
	return "none"
}

// Info is what cordon knows about a module after validating it.
type Info struct {
	Hash      [32]byte // SHA-256 of the module as installed
	Size      int
	HasMemory bool // the module declares a memory
	Memory64  bool // ... indexed with i64
	Methods   map[string]MethodKind
	// System entry points the module exports.
	HasInit, HasPreUpgrade, HasPostUpgrade, HasInspect, HasHeartbeat, HasGlobalTimer, HasLowWasmMemory bool
	HasStart                                                                                           bool
	// EnhancedOrthogonalPersistence: Motoko's 64-bit persistence, which keeps
	// the Wasm heap across upgrades.
	EnhancedOrthogonalPersistence bool
	CandidService                 string // the candid:service metadata, if any
	NumGlobals                    int
	// Metadata are the module's icp:public and icp:private custom
	// sections, in module order (read_state canister/<id>/metadata/<name>).
	Metadata []Metadata
}

// Metadata is one "icp:public <name>" or "icp:private <name>" section.
type Metadata struct {
	Name   string
	Public bool
	Data   []byte
}

// The IC's bounds on a module's metadata sections: how many, and their
// total size (names and contents).
const (
	MaxMetadataSections = 16
	MaxMetadataBytes    = 2 << 20
)

// The IC's other bounds on a module that Validate enforces, constants as
// they are in the IC (rs/embedders/src/wasm_utils/validation.rs, and
// rs/config/src/embedders.rs for the names' sum), each checked before
// anything compiles:
//
//   - MaxCodeSectionBytes, the code section's size (its content, the
//     IC's MAX_CODE_SECTION_SIZE_IN_BYTES): compile time follows the
//     code's bytes (2.5 s a MB of straight-line code here), and a larger
//     section was refused only by the compiler sandbox's deadline, after
//     minutes, in sandbox mode (and compiled in-process);
//   - MaxFuncInstructions, one body's instructions, its final end
//     included (the IC's WASM_FUNCTION_SIZE_LIMIT);
//   - MaxMethodNameBytes, the sum of the names of the exported methods,
//     the <name> of canister_update <name>, canister_query <name> and
//     canister_composite_query <name> (the IC's
//     max_sum_exported_function_name_lengths).
const (
	MaxCodeSectionBytes = 12 << 20
	MaxFuncInstructions = 1_000_000
	MaxMethodNameBytes  = 20_000
)

// Lookup returns the metadata section named name.
func (in *Info) Lookup(name string) (Metadata, bool) {
	for _, m := range in.Metadata {
		if m.Name == name {
			return m, true
		}
	}
	return Metadata{}, false
}

// metadataOf collects m's icp: sections with the IC's rules: the
// visibility is "public" or "private", followed by one space and a name;
// a name appears once (in either visibility); at most MaxMetadataSections
// of at most MaxMetadataBytes together.
func metadataOf(m *wasmbin.Module) ([]Metadata, error) {
	var out []Metadata
	total := 0
	for _, c := range m.Customs {
		rest, ok := strings.CutPrefix(c.Name, "icp:")
		if !ok {
			continue
		}
		vis, name, ok := strings.Cut(rest, " ")
		if !ok || (vis != "public" && vis != "private") {
			return nil, fmt.Errorf("custom section %q: an icp: section is named \"icp:public <name>\" or \"icp:private <name>\"", truncateName(c.Name))
		}
		for _, o := range out {
			if o.Name == name {
				return nil, fmt.Errorf("custom section %q: metadata %q is declared twice", truncateName(c.Name), truncateName(name))
			}
		}
		total += len(name) + len(c.Data)
		if len(out) == MaxMetadataSections || total > MaxMetadataBytes {
			return nil, fmt.Errorf("more than %d icp: custom sections or %d bytes of them", MaxMetadataSections, MaxMetadataBytes)
		}
		out = append(out, Metadata{Name: name, Public: vis == "public", Data: c.Data})
	}
	return out, nil
}

func truncateName(s string) string {
	if len(s) > 64 {
		return s[:runeCut(s, 64)] + "..."
	}
	return s
}

// runeCut is n (n < len(s)), or less if s[n] is inside a UTF-8 character:
// the start of that character (a cut through it would put invalid UTF-8 in
// a message). Bytes that are not part of a valid character are cut at n.
func runeCut(s string, n int) int {
	for i := n; i >= 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			if _, size := utf8.DecodeRuneInString(s[i:]); i < n && i+size > n {
				return i
			}
			return n
		}
	}
	return n
}

// MethodNames returns the method names of a kind, sorted.
func (in *Info) MethodNames(kind MethodKind) []string {
	var names []string
	for n, k := range in.Methods {
		if k == kind {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// Module is a validated, instrumented and compiled canister module.
type Module struct {
	Info    Info
	wt      *wasmtime.Module
	globals []wasmbin.InstrumentedGlobal
	start   string
	memory  string
	table   string // table 0's export, for callbacks ("" if the module has no table)
	counter string // the instruction counter's export ("" if compiled unmetered)
	// growLimitExport is the grow limit global's export ("" if the module
	// never grows its memory, or was compiled unmetered), maxPages the
	// most pages its memory may ever have (growfail.go).
	growLimitExport string
	maxPages        uint64
	// reusable: no instruction of the module changes a table or drops a
	// segment (wasmbin.ChangesTablesOrSegments), so a query's instance may
	// be kept and reset (keep.go).
	reusable bool
	// data are the pages of the initial memory its data segments write
	// (dataKnown: all of them are known): the only pages of a fresh
	// instance's memory that can be other than zero, which wasmtime may
	// map from its own image file (copy-on-write) rather than write, so
	// that the kernel does not report them written (run.go).
	data      []wasmbin.PageRange
	dataKnown bool
	// keptOnce registers, the first time an instance of the module is kept,
	// the cleanup that closes its kept instances once the module is
	// unreachable (keep.go): they must not keep its code alive.
	keptOnce sync.Once
}

// CheckHeader refuses bytes that are not a core Wasm module by their
// preamble alone, with the error Validate would give (a few bytes read,
// nothing decoded).
func CheckHeader(wasm []byte) error {
	if err := wasmbin.CheckHeader(wasm); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	return nil
}

// Validate decodes and checks a module without compiling it: only ic0
// imports with the right signatures, reserved export names used correctly,
// sizes within limits.
func Validate(wasm []byte, lim ModuleLimits) (*wasmbin.Module, Info, error) {
	var info Info
	if len(wasm) > lim.MaxBytes {
		return nil, info, invalid("module is %d bytes, the limit is %d", len(wasm), lim.MaxBytes)
	}
	m, err := wasmbin.Decode(wasm)
	if err != nil {
		return nil, info, fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	info = Info{Hash: sha256.Sum256(wasm), Size: len(wasm), Methods: map[string]MethodKind{}, HasStart: m.Start != nil}
	if len(m.Memories) > 1 || (len(m.Memories) == 1 && m.NumImportedMemories > 0) {
		return nil, info, invalid("a canister may declare at most one memory")
	}
	_, info.HasMemory = m.Memory(0)
	info.Memory64 = m.Memory64()
	for _, sec := range m.Sections {
		if sec.ID == wasmbin.SectionCode && sec.End-sec.Start > MaxCodeSectionBytes {
			return nil, info, invalid("code section is %d bytes, the limit is %d (the IC's MAX_CODE_SECTION_SIZE_IN_BYTES)", sec.End-sec.Start, MaxCodeSectionBytes)
		}
	}
	if int(m.NumFuncs()) > lim.MaxFunctions {
		return nil, info, invalid("module has %d functions, the limit is %d", int(m.NumFuncs()), lim.MaxFunctions)
	}
	if len(m.Globals) > lim.MaxGlobals {
		return nil, info, invalid("module has %d globals, the limit is %d", len(m.Globals), lim.MaxGlobals)
	}
	// Before anything compiles: the bodies' local declarations only.
	locals, err := wasmbin.DeclaredLocals(wasm, m)
	if err != nil {
		return nil, info, fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	if locals > uint64(lim.MaxLocals) {
		return nil, info, invalid("module declares %d locals, the limit is %d", locals, lim.MaxLocals)
	}
	// Before anything compiles too: one pass over the bodies, which
	// metering makes twice anyway.
	counts, err := wasmbin.CountBodies(wasm, m)
	if err != nil {
		return nil, info, fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	if counts.MostInstructions > MaxFuncInstructions {
		return nil, info, invalid("function %d has %d instructions, the limit per function is %d (the IC's WASM_FUNCTION_SIZE_LIMIT)", counts.MostInstructionsFunc, counts.MostInstructions, MaxFuncInstructions)
	}
	most, at, control := counts.MostControl, counts.MostControlFunc, counts.Control
	if most > uint64(lim.MaxFuncControl) {
		return nil, info, invalid("function %d has %d control instructions (%s), the limit per function is %d", at, most, controlKinds, lim.MaxFuncControl)
	}
	if control > uint64(lim.MaxControl) {
		return nil, info, invalid("module has %d control instructions (%s), the limit is %d", control, controlKinds, lim.MaxControl)
	}
	// And the weight of one body's instructions, which Cranelift's value
	// numbers must hold (wasmbin.FuncInstructions).
	if counts.MostWeight > maxFuncInstructions {
		return nil, info, invalid("function %d has instructions of weight %d (a load or store weighs %d, others 1), the limit per function is %d", counts.MostWeightFunc, counts.MostWeight, wasmbin.MemoryAccessWeight, maxFuncInstructions)
	}
	// Loops over many locals, bounded before anything compiles as well.
	heaviest, at, loopLocals, err := wasmbin.LoopLocals(wasm, m, maxFuncLoopLocals, maxLoopLocals)
	if err != nil {
		return nil, info, fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	if heaviest > maxFuncLoopLocals {
		return nil, info, invalid("function %d: its loops touch too many locals (weight %d: the sum over its loops of the square of the locals each touches), the limit per function is %d", at, heaviest, maxFuncLoopLocals)
	}
	if loopLocals > maxLoopLocals {
		return nil, info, invalid("module: its loops touch too many locals (weight %d: the sum over its loops of the square of the locals each touches), the limit is %d", loopLocals, maxLoopLocals)
	}
	if err := checkLiveLocals(wasm, m); err != nil {
		return nil, info, err
	}
	for i, g := range m.Globals {
		if g.Mutable && g.Type != wasmbin.I32 && g.Type != wasmbin.I64 && g.Type != wasmbin.F32 && g.Type != wasmbin.F64 {
			return nil, info, invalid("global %d: mutable globals of type %s cannot be persisted", i, g.Type)
		}
	}
	info.NumGlobals = len(m.Globals)
	for _, imp := range m.Imports {
		if imp.Module != "ic0" {
			return nil, info, invalid("import %q from module %q: canisters may import only from \"ic0\"", imp.Name, imp.Module)
		}
		if imp.Kind != wasmbin.ExternFunc {
			return nil, info, invalid("import ic0.%s: only functions may be imported", imp.Name)
		}
		spec, ok := sysapi.Lookup(imp.Name, info.Memory64)
		if !ok {
			return nil, info, invalid("import ic0.%s: no such System API function for a %s canister", imp.Name, width(info.Memory64))
		}
		got, ok := typeAt(m, imp.TypeIndex)
		if !ok {
			return nil, info, invalid("import ic0.%s: type index %d out of range", imp.Name, imp.TypeIndex)
		}
		if want := specSignature(spec, info.Memory64); !got.Equal(want) {
			return nil, info, invalid("import ic0.%s has type %s, the System API defines %s", imp.Name, got, want)
		}
	}
	seen := map[string]bool{}
	for _, ex := range m.Exports {
		if strings.HasPrefix(ex.Name, "__cordon_") {
			return nil, info, invalid("export %q: names starting with __cordon_ are reserved", ex.Name)
		}
		if !strings.HasPrefix(ex.Name, "canister_") {
			continue
		}
		if ex.Kind != wasmbin.ExternFunc {
			return nil, info, invalid("export %q: canister_ exports must be functions", ex.Name)
		}
		ft, ok := m.FuncType(ex.Index)
		if !ok {
			return nil, info, invalid("export %q: function %d out of range", ex.Name, ex.Index)
		}
		if len(ft.Params) != 0 || len(ft.Results) != 0 {
			return nil, info, invalid("export %q has type %s, entry points must be [] -> []", ex.Name, ft)
		}
		if err := classifyExport(&info, ex.Name, seen); err != nil {
			return nil, info, err
		}
	}
	if len(info.Methods) > lim.MaxMethods {
		return nil, info, invalid("module exports %d methods, the limit is %d", len(info.Methods), lim.MaxMethods)
	}
	nameBytes := 0
	for name := range info.Methods {
		nameBytes += len(name)
	}
	if nameBytes > MaxMethodNameBytes {
		return nil, info, invalid("the names of the exported methods (the <name> of canister_update <name>, canister_query <name> and canister_composite_query <name>) total %d bytes, the limit is %d (the IC's max_sum_exported_function_name_lengths)", nameBytes, MaxMethodNameBytes)
	}
	if s, ok := m.CustomSection("icp:public candid:service"); ok {
		info.CandidService = string(s)
	} else if s, ok := m.CustomSection("icp:private candid:service"); ok {
		info.CandidService = string(s)
	}
	if _, ok := m.CustomSection("icp:private enhanced-orthogonal-persistence"); ok {
		info.EnhancedOrthogonalPersistence = true
	}
	md, err := metadataOf(m)
	if err != nil {
		return nil, info, invalid("%v", err)
	}
	info.Metadata = md
	return m, info, nil
}

// checkLiveLocals refuses a module whose locals' values weigh more across
// its functions' blocks than liveLocalsLimits allow.
func checkLiveLocals(wasm []byte, m *wasmbin.Module) error {
	lim := liveLocalsLimits
	w, err := wasmbin.LiveLocals(wasm, m, lim)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	const merges = "locals rewritten in a block, if or loop and read after it, times the edges into its join"
	const spans = "block boundaries each local's value, and each value on the operand stack, is live across"
	switch {
	case w.Most.Merges > lim.Func.Merges:
		return invalid("function %d: too many values merge where its paths join (weight %d or more: %s), the limit per function is %d", w.MostMergesFunc, w.Most.Merges, merges, lim.Func.Merges)
	case w.Most.Spans > lim.Func.Spans:
		return invalid("function %d: its locals live across too many blocks (weight %d or more: %s), the limit per function is %d", w.MostSpansFunc, w.Most.Spans, spans, lim.Func.Spans)
	case w.Most.Visits > lim.Func.Visits:
		return invalid("function %d: its locals are written in too many nested blocks (%d or more local and block pairs), the limit per function is %d", w.MostVisitsFunc, w.Most.Visits, lim.Func.Visits)
	case w.MergesSquared > lim.ModuleMergesSquared:
		return invalid("module: too many values merge where its functions' paths join (weight %d or more: the sum over functions of the square of %s), the limit is %d", w.MergesSquared, merges, lim.ModuleMergesSquared)
	case w.Spans > lim.ModuleSpans:
		return invalid("module: its locals live across too many blocks (weight %d or more: %s, summed over functions), the limit is %d", w.Spans, spans, lim.ModuleSpans)
	case w.Visits > lim.ModuleVisits:
		return invalid("module: its locals are written in too many nested blocks (%d or more local and block pairs), the limit is %d", w.Visits, lim.ModuleVisits)
	}
	return nil
}

func width(memory64 bool) string {
	if memory64 {
		return "64-bit"
	}
	return "32-bit"
}

func classifyExport(info *Info, name string, seen map[string]bool) error {
	flags := map[string]*bool{
		"canister_init":               &info.HasInit,
		"canister_pre_upgrade":        &info.HasPreUpgrade,
		"canister_post_upgrade":       &info.HasPostUpgrade,
		"canister_inspect_message":    &info.HasInspect,
		"canister_heartbeat":          &info.HasHeartbeat,
		"canister_global_timer":       &info.HasGlobalTimer,
		"canister_on_low_wasm_memory": &info.HasLowWasmMemory,
	}
	if f, ok := flags[name]; ok {
		*f = true
		return nil
	}
	for _, pre := range []struct {
		prefix string
		kind   MethodKind
	}{{"canister_update ", UpdateMethod}, {"canister_query ", QueryMethod}, {"canister_composite_query ", CompositeQueryMethod}} {
		if method, ok := strings.CutPrefix(name, pre.prefix); ok {
			if seen[method] {
				return invalid("method %q is exported more than once", method)
			}
			seen[method] = true
			info.Methods[method] = pre.kind
			return nil
		}
	}
	return invalid("export %q: the canister_ prefix is reserved for the IC's entry points", name)
}

func specSignature(s *sysapi.Spec, memory64 bool) wasmbin.FuncType {
	conv := func(ks []sysapi.Kind) []wasmbin.ValType {
		out := make([]wasmbin.ValType, len(ks))
		for i, k := range ks {
			if k == sysapi.I32 || (k == sysapi.Ptr && !memory64) {
				out[i] = wasmbin.I32
			} else {
				out[i] = wasmbin.I64
			}
		}
		return out
	}
	return wasmbin.FuncType{Params: conv(s.Params), Results: conv(s.Results)}
}

// Compile validates, instruments and compiles a module.
func (e *Engine) Compile(wasm []byte, lim ModuleLimits) (*Module, error) {
	wm, info, err := Validate(wasm, lim)
	if err != nil {
		return nil, err
	}
	var initial uint64 // bytes
	var mem memoryLimits
	if l, ok := wm.Memory(0); ok {
		mem = memoryLimits{max: l.Max, hasMax: l.HasMax, is64: l.Is64}
		initial = l.Min << 16
		if l.Min > 1<<47 {
			initial = 1 << 63 // beyond any limit: instantiation fails
		}
	}
	data, dataKnown, err := wasmbin.DataPages(wasm, wm, initial)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	instrument := wasmbin.InstrumentMetering
	if e.noFuel {
		instrument = wasmbin.Instrument
	}
	out, ins, err := instrument(wasm)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	wt, err := wasmtime.NewModule(e.wasmtime(info.Memory64), out)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidModule, err)
	}
	// Decided on the code that runs (instrumented); undecodable: not kept.
	changes, err := wasmbin.DefaultConfig().ChangesTablesOrSegments(out)
	reusable := err == nil && !changes
	return &Module{Info: info, wt: wt, globals: ins.Globals, start: ins.StartExport, memory: ins.MemoryExport, table: ins.TableExport, counter: ins.CounterExport, reusable: reusable,
		data: data, dataKnown: dataKnown, growLimitExport: ins.GrowLimitExport, maxPages: maxMemoryPages(mem)}, nil
}

func typeAt(m *wasmbin.Module, i uint32) (wasmbin.FuncType, bool) {
	if uint64(i) >= uint64(len(m.Types)) {
		return wasmbin.FuncType{}, false
	}
	return m.Types[i], true
}
