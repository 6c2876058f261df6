package boundary

import (
	"bytes"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Bounds of the System API that validation relies on (sysapi enforces the
// same in the sandbox; a sandbox that reports more lies).
const (
	MaxPrincipalBytes  = 29
	MaxMethodNameBytes = 20000
	MaxCertifiedData   = 32
	MaxCallTimeout     = 300
)

// Expect is what the host asked for and knows, against which a sandbox's
// output is validated.
type Expect struct {
	ID              uint64
	Context         sysapi.Context
	Memory64        bool
	Limits          sysapi.Limits
	HeapSize        uint64 // size of the heap sent (0 for the module's initial memory)
	StableSize      uint64
	Balance         cycles.Amount
	CyclesAvailable cycles.Amount
	Responded       bool               // the call context was answered already: no answer may come
	GlobalTypes     []state.GlobalType // of the module, from its compilation
	// Reserve, if set, is asked for the bytes of an answer's memory pages
	// (4 KiB each, as its header announces them) once the header is valid
	// and before any page is received, so the host holds no page it has
	// not reserved memory for. An error refuses the pages: they are read
	// and dropped, and the answer fails with a *ReserveError. Host-side
	// only: nothing of it crosses the boundary.
	Reserve func(bytes uint64) error
	// PageWait, if set and armed (by Reserve), bounds the time the host
	// waits for the answer's pages by the time its reader is blocked on
	// an empty socket, not by the clock. Host-side only.
	PageWait *PageWait
}

// ExpectFor builds the expectation of an execution of input in on heap (nil:
// the module's initial memory) and stable memory.
func ExpectFor(id uint64, in *sysapi.Input, heap, stable *state.PageMap, globalTypes []state.GlobalType) *Expect {
	return &Expect{
		ID: id, Context: in.Context, Memory64: in.Memory64, Limits: in.Limits,
		HeapSize: heap.Size(), StableSize: stable.Size(),
		Balance: in.Balance, CyclesAvailable: in.CyclesAvailable,
		Responded:   in.Responded,
		GlobalTypes: globalTypes,
	}
}

// allowed reports whether ic0.<name> may be called in context c: a result
// that only that call can produce is valid only where it is allowed.
func allowed(name string, c sysapi.Context) bool {
	s, ok := sysapi.Lookup(name, false)
	return ok && s.Allowed.Has(c)
}

// ReportsMemory says whether an execution in context c reports memory and
// globals: every context that can commit, and the composite query contexts,
// whose changes the host carries to the same query's later callbacks (and
// then drops). Other queries report none: the host would discard them.
func ReportsMemory(c sysapi.Context) bool {
	switch c {
	case sysapi.CtxCompositeQuery, sysapi.CtxCompositeReply, sysapi.CtxCompositeReject, sysapi.CtxCompositeCleanup:
		return true
	}
	return !c.IsQuery()
}

// Normalize puts an engine output in the one form a sandbox sends, so the
// host's checks can be exact: no reply bytes without a reply, no certified
// data or timer value unless set; for a query (whose state changes the host
// discards) no cycles, certified data or timer changes, and no memory or
// globals unless ReportsMemory. The sandbox calls it before sending; tests
// call it to compare with in-process runs.
func Normalize(ctx sysapi.Context, out *sysapi.Output) {
	if out.Trapped {
		return
	}
	if out.Response != sysapi.Replied {
		out.Reply = nil
	} else if out.Reply == nil {
		out.Reply = []byte{}
	}
	if !out.CertifiedDataSet {
		out.CertifiedData = nil
	}
	if !out.GlobalTimerSet {
		out.GlobalTimer = 0
	}
	if ctx.IsQuery() {
		if !ReportsMemory(ctx) {
			out.Heap, out.Stable, out.Globals = state.Delta{}, state.Delta{}, nil
		}
		out.CyclesAccepted, out.CyclesBurned = cycles.Amount{}, cycles.Amount{}
		out.CertifiedData, out.CertifiedDataSet = nil, false
		out.GlobalTimer, out.GlobalTimerSet = 0, false
	}
}

// ValidateHeader checks an output header against the request. Page
// contents are checked as they arrive (RecvPages) against the sizes
// validated here. The rules:
//
//   - instructions ≤ the limit given;
//   - the trap message (if trapped, else empty) and log lines are valid
//     UTF-8 and bounded; at most MaxLogLines lines of at most
//     3×DebugPrintBytes bytes (invalid bytes become U+FFFD);
//   - a trapped execution reports nothing but instructions, its trap
//     message and its logs;
//   - a query reports no cycles accepted, burned or sent, no certified
//     data or timer, and (except composite query contexts, see
//     ReportsMemory) no memory sizes or pages and no globals;
//   - otherwise: heap and stable sizes are multiples of 64 KiB, at least
//     the size sent and at most the limit; page counts ≤ pages(size) and
//     ≤ the dirty-page limits;
//     globals match the module's count and types;
//   - reply and reject not both; a reply or reject only in contexts that
//     may respond, and never when the input said the call context was
//     answered already (Responded); reply and reject message ≤ the reply
//     limit; reject message UTF-8;
//   - accept_message only in canister_inspect_message;
//   - cycles: accepted ≤ available, and only where msg_cycles_accept is
//     allowed; burned only where cycles_burn128 is; sent = Σ call cycles,
//     only where call_cycles_add128 is; sent + burned ≤ balance + accepted
//     (all in checked 128-bit arithmetic);
//   - calls: at most MaxOutgoing, only in contexts that may call; callee ≤
//     29 bytes, method ≤ 20000 bytes of UTF-8, argument ≤ the call argument
//     limit, timeout ≤ 300 s; callback function and environment fit in 32
//     bits for a 32-bit canister;
//   - certified data ≤ 32 bytes and only where certified_data_set is
//     allowed; the global timer only where global_timer_set is;
//   - instructions ≥ what the output proves an honest execution was
//     charged (sysapi.MinInstructions: its replies, calls, logs, stable
//     writes, dirty pages…), checked last, once the output is known to be well formed.
func ValidateHeader(exp *Expect, h *OutputHeader) error {
	if err := validateHeader(exp, h); err != nil {
		return err
	}
	if least := sysapi.MinInstructions(h.Out, &exp.Limits, exp.StableSize, h.HeapPages, h.StablePages); h.Out.Instructions < least {
		return violation(VInstructions, "%d instructions reported, the output proves at least %d were charged", h.Out.Instructions, least)
	}
	return nil
}

func validateHeader(exp *Expect, h *OutputHeader) error {
	out := h.Out
	if out.Instructions > exp.Limits.Instructions {
		return violation(VInstructions, "%d instructions reported, the limit is %d", out.Instructions, exp.Limits.Instructions)
	}
	if len(out.TrapMessage) > MaxTrapMessage || !utf8.ValidString(out.TrapMessage) {
		return violation(VDecode, "trap message of %d bytes is too long or not UTF-8", len(out.TrapMessage))
	}
	if err := validateLogs(exp, out.Logs); err != nil {
		return err
	}
	if out.Trapped {
		if what := stateChange(out, h, true, true); what != "" {
			return violation(VTrapState, "a trapped execution reports %s", what)
		}
		return nil
	}
	if out.TrapMessage != "" {
		return violation(VDecode, "trap message without a trap")
	}
	if exp.Context.IsQuery() {
		if what := stateChange(out, h, !ReportsMemory(exp.Context), false); what != "" {
			return violation(VQueryState, "a %s reports %s", exp.Context, what)
		}
	}
	if ReportsMemory(exp.Context) {
		if err := validateMemory(HeapMemory, out.Heap.Size, h.HeapPages, exp.HeapSize, exp.Limits.HeapBytes, exp.Limits.HeapDirtyPages); err != nil {
			return err
		}
		if err := validateMemory(StableMemory, out.Stable.Size, h.StablePages, exp.StableSize, exp.Limits.StableBytes, exp.Limits.StableDirtyPages); err != nil {
			return err
		}
		if len(out.Globals) != len(exp.GlobalTypes) {
			return violation(VGlobals, "%d globals reported, the module has %d", len(out.Globals), len(exp.GlobalTypes))
		}
		for i, g := range out.Globals {
			if g.Type != exp.GlobalTypes[i] {
				return violation(VGlobals, "global %d has type %s, the module says %s", i, g.Type, exp.GlobalTypes[i])
			}
		}
	}
	if err := validateResponse(exp, out); err != nil {
		return err
	}
	if err := validateCalls(exp, out); err != nil {
		return err
	}
	if err := validateCycles(exp, out); err != nil {
		return err
	}
	if len(out.CertifiedData) > MaxCertifiedData {
		return violation(VCertifiedData, "%d bytes, at most %d", len(out.CertifiedData), MaxCertifiedData)
	}
	if out.CertifiedDataSet && !allowed("certified_data_set", exp.Context) {
		return violation(VCertifiedData, "set in %s", exp.Context)
	}
	if !out.CertifiedDataSet && len(out.CertifiedData) != 0 {
		return violation(VCertifiedData, "data without the set flag")
	}
	if out.GlobalTimerSet && !allowed("global_timer_set", exp.Context) {
		return violation(VTimer, "set in %s", exp.Context)
	}
	if !out.GlobalTimerSet && out.GlobalTimer != 0 {
		return violation(VTimer, "a value without the set flag")
	}
	return nil
}

// stateChange names the first state change an output reports, or "":
// memory and globals if memory is set, then cycles, certified data and
// timer. Trapped outputs may not even reply or call; queries may
// (composite queries call).
func stateChange(out *sysapi.Output, h *OutputHeader, memory, trapped bool) string {
	switch {
	case memory && (out.Heap.Size != 0 || h.HeapPages != 0 || len(out.Heap.Pages) != 0):
		return "heap changes"
	case memory && (out.Stable.Size != 0 || h.StablePages != 0 || len(out.Stable.Pages) != 0):
		return "stable memory changes"
	case memory && len(out.Globals) != 0:
		return "globals"
	case !out.CyclesAccepted.IsZero() || !out.CyclesBurned.IsZero() || !out.CyclesSent.IsZero():
		return "cycles changes"
	case out.CertifiedDataSet || len(out.CertifiedData) != 0:
		return "certified data"
	case out.GlobalTimerSet || out.GlobalTimer != 0:
		return "a global timer"
	}
	if trapped {
		switch {
		case out.Response != sysapi.NoResponse || len(out.Reply) != 0 || out.RejectMessage != "":
			return "a response"
		case out.Accepted:
			return "an accepted message"
		case len(out.Calls) != 0:
			return "calls"
		}
	}
	return ""
}

// dirtyLimit is the most pages an execution may change (0: no bound): an
// honest one that changed more trapped.
func validateMemory(mem Memory, size, pages, given, limit, dirtyLimit uint64) error {
	switch {
	case size%state.WasmPageSize != 0:
		return violation(VMemory, "%s size %d is not a multiple of 64 KiB", mem, size)
	case size < given:
		return violation(VMemory, "%s shrank from %d to %d bytes", mem, given, size)
	case size > limit:
		return violation(VMemory, "%s size %d exceeds the limit of %d", mem, size, limit)
	case pages > pages4K(size):
		return violation(VMemory, "%d %s pages announced for a memory of %d pages", pages, mem, pages4K(size))
	case dirtyLimit != 0 && pages > dirtyLimit:
		return violation(VMemory, "%d %s pages announced, an execution may change at most %d", pages, mem, dirtyLimit)
	}
	return nil
}

func validateLogs(exp *Expect, logs []sysapi.LogLine) error {
	if uint64(len(logs)) > nonNeg(exp.Limits.MaxLogLines) {
		return violation(VLogs, "%d log lines, at most %d", len(logs), nonNeg(exp.Limits.MaxLogLines))
	}
	max := satMul(nonNeg(exp.Limits.DebugPrintBytes), 3)
	for i, l := range logs {
		if uint64(len(l.Text)) > max {
			return violation(VLogs, "log line %d has %d bytes, at most %d", i, len(l.Text), max)
		}
		if !utf8.ValidString(l.Text) {
			return violation(VLogs, "log line %d is not UTF-8", i)
		}
	}
	return nil
}

func validateResponse(exp *Expect, out *sysapi.Output) error {
	switch out.Response {
	case sysapi.NoResponse:
		if len(out.Reply) != 0 || out.RejectMessage != "" {
			return violation(VResponse, "reply data or reject message without a response")
		}
	case sysapi.Replied:
		if out.RejectMessage != "" {
			return violation(VResponse, "both a reply and a reject")
		}
		if uint64(len(out.Reply)) > exp.Limits.ReplyBytes {
			return violation(VResponse, "reply of %d bytes exceeds the limit of %d", len(out.Reply), exp.Limits.ReplyBytes)
		}
	case sysapi.Rejected:
		if len(out.Reply) != 0 {
			return violation(VResponse, "both a reply and a reject")
		}
		if uint64(len(out.RejectMessage)) > exp.Limits.ReplyBytes || !utf8.ValidString(out.RejectMessage) {
			return violation(VResponse, "reject message of %d bytes is too long or not UTF-8", len(out.RejectMessage))
		}
	default:
		return violation(VResponse, "response kind %d", out.Response)
	}
	if out.Response != sysapi.NoResponse && !allowed("msg_reply", exp.Context) {
		return violation(VResponse, "a response in %s", exp.Context)
	}
	if out.Response != sysapi.NoResponse && exp.Responded {
		// sysapi traps a second answer; only a lying sandbox reports one.
		return violation(VResponse, "a response in a %s of a call context that was answered already", exp.Context)
	}
	if out.Accepted && exp.Context != sysapi.CtxInspect {
		return violation(VResponse, "accept_message in %s", exp.Context)
	}
	return nil
}

func validateCalls(exp *Expect, out *sysapi.Output) error {
	if len(out.Calls) == 0 {
		return nil
	}
	if uint64(len(out.Calls)) > nonNeg(exp.Limits.MaxOutgoing) {
		return violation(VCalls, "%d calls, at most %d", len(out.Calls), nonNeg(exp.Limits.MaxOutgoing))
	}
	if !allowed("call_perform", exp.Context) {
		return violation(VCalls, "calls in %s", exp.Context)
	}
	var tally *sysapi.CallTally
	if exp.Limits.Calls != nil {
		tally = sysapi.NewCallTally(exp.Limits.Calls)
	}
	for i := range out.Calls {
		c := &out.Calls[i]
		// The queues, outstanding calls and message memory the host allowed,
		// replayed as call_perform counts them.
		if tally != nil && !tally.Admit(c) {
			return violation(VCalls, "call %d exceeds the queue, outstanding call or message memory limits", i)
		}
		switch {
		case len(c.Callee) > MaxPrincipalBytes:
			return violation(VCalls, "call %d: callee of %d bytes", i, len(c.Callee))
		case len(c.Method) > MaxMethodNameBytes || !utf8.ValidString(c.Method):
			return violation(VCalls, "call %d: method name of %d bytes is too long or not UTF-8", i, len(c.Method))
		case uint64(len(c.Arg)) > exp.Limits.CallArgBytes:
			return violation(VCalls, "call %d: argument of %d bytes exceeds %d", i, len(c.Arg), exp.Limits.CallArgBytes)
		case c.Timeout > MaxCallTimeout:
			return violation(VCalls, "call %d: timeout %d s", i, c.Timeout)
		}
		if !exp.Memory64 {
			cbs := []sysapi.Callback{c.OnReply, c.OnReject}
			if c.OnCleanup != nil {
				cbs = append(cbs, *c.OnCleanup)
			}
			for _, cb := range cbs {
				if cb.Fun > 0xffffffff || cb.Env > 0xffffffff {
					return violation(VCalls, "call %d: callback (%d, %d) does not fit a 32-bit canister", i, cb.Fun, cb.Env)
				}
			}
		}
	}
	return nil
}

func validateCycles(exp *Expect, out *sysapi.Output) error {
	if out.CyclesAccepted.Cmp(exp.CyclesAvailable) > 0 {
		return violation(VCycles, "accepted %s of %s available", out.CyclesAccepted, exp.CyclesAvailable)
	}
	if !out.CyclesAccepted.IsZero() && !allowed("msg_cycles_accept128", exp.Context) {
		return violation(VCycles, "cycles accepted in %s", exp.Context)
	}
	if !out.CyclesBurned.IsZero() && !allowed("cycles_burn128", exp.Context) {
		return violation(VCycles, "cycles burned in %s", exp.Context)
	}
	var sum cycles.Amount
	for i := range out.Calls {
		var err error
		if sum, err = sum.Add(out.Calls[i].Cycles); err != nil {
			return violation(VCycles, "cycles attached to calls overflow")
		}
	}
	if sum != out.CyclesSent {
		return violation(VCycles, "%s cycles sent, the calls carry %s", out.CyclesSent, sum)
	}
	if !sum.IsZero() && !allowed("call_cycles_add128", exp.Context) {
		return violation(VCycles, "cycles attached to calls in %s", exp.Context)
	}
	have, err := exp.Balance.Add(out.CyclesAccepted)
	if err != nil {
		return violation(VCycles, "balance %s + accepted %s overflows", exp.Balance, out.CyclesAccepted)
	}
	spent, err := out.CyclesSent.Add(out.CyclesBurned)
	if l := exp.Limits.Calls; l != nil && err == nil {
		// Every call paid its fee and reservation out of the balance.
		for i := 0; i < len(out.Calls) && err == nil; i++ {
			spent, err = spent.Add(l.Charge(&out.Calls[i]))
		}
	}
	if err != nil || spent.Cmp(have) > 0 {
		return violation(VCycles, "sent %s + burned %s + call charges exceed balance %s + accepted %s",
			out.CyclesSent, out.CyclesBurned, exp.Balance, out.CyclesAccepted)
	}
	// Calls and burns stop at what the execution must keep (its fee, the
	// freezing limit): an execution that spent anything kept that much.
	if l := exp.Limits.Calls; l != nil && !spent.IsZero() && have.SaturatingSub(spent).Cmp(l.Keep) < 0 {
		return violation(VCycles, "sent %s + burned %s + call charges leave less than the %s the execution must keep",
			out.CyclesSent, out.CyclesBurned, l.Keep)
	}
	return nil
}

// ValidateOutput validates a complete output (header rules plus the page
// lists: indices below pages(size), strictly increasing, no missing data).
// The host validates while receiving; this is the same check on a whole
// Output, for tests and fuzzing.
func ValidateOutput(exp *Expect, out *sysapi.Output) error {
	h := &OutputHeader{Out: out, HeapPages: uint64(len(out.Heap.Pages)), StablePages: uint64(len(out.Stable.Pages))}
	if err := ValidateHeader(exp, h); err != nil {
		return err
	}
	for _, d := range []struct {
		mem Memory
		d   state.Delta
	}{{HeapMemory, out.Heap}, {StableMemory, out.Stable}} {
		n := pages4K(d.d.Size)
		next := uint64(0)
		for _, p := range d.d.Pages {
			switch {
			case p.Data == nil:
				return violation(VMemory, "%s page %d without data", d.mem, p.Index)
			case p.Index >= n:
				return violation(VMemory, "%s page %d outside a memory of %d pages", d.mem, p.Index, n)
			case p.Index < next:
				return violation(VMemory, "%s page %d out of order or duplicated", d.mem, p.Index)
			}
			next = p.Index + 1
		}
	}
	return nil
}

// ValidateCompiled checks a compiler sandbox's answer against the limits
// the module was compiled under and the module itself: at most MaxMethods
// methods whose names are UTF-8 and together no longer than the module (they
// are in it) nor than engine.MaxMethodNameBytes, at most MaxGlobals globals, a candid service no longer than the
// module, metadata sections within the IC's bounds (names UTF-8 and unique,
// together no larger than the module), and an artifact of at most
// maxArtifact bytes.
func ValidateCompiled(lim engine.ModuleLimits, wasmSize int, maxArtifact uint64, c *Compiled) error {
	in := &c.Info
	if in.Memory64 && !in.HasMemory {
		return violation(VInfo, "a 64-bit memory in a module without a memory")
	}
	if len(in.Methods) > lim.MaxMethods {
		return violation(VInfo, "%d methods, at most %d", len(in.Methods), lim.MaxMethods)
	}
	var total uint64
	for name, k := range in.Methods {
		if !utf8.ValidString(name) {
			return violation(VInfo, "method name %q is not UTF-8", truncate(name))
		}
		if k != engine.UpdateMethod && k != engine.QueryMethod && k != engine.CompositeQueryMethod {
			return violation(VInfo, "method %q has kind %d", truncate(name), k)
		}
		total = satAdd(total, uint64(len(name)))
	}
	if total > uint64(wasmSize) || total > engine.MaxMethodNameBytes {
		return violation(VInfo, "method names of %d bytes from a module of %d (at most %d)", total, wasmSize, engine.MaxMethodNameBytes)
	}
	if len(in.CandidService) > wasmSize {
		return violation(VInfo, "candid service of %d bytes from a module of %d", len(in.CandidService), wasmSize)
	}
	if len(in.Metadata) > engine.MaxMetadataSections {
		return violation(VInfo, "%d metadata sections, at most %d", len(in.Metadata), engine.MaxMetadataSections)
	}
	var mdBytes uint64
	seen := make(map[string]bool, len(in.Metadata))
	for _, m := range in.Metadata {
		if !utf8.ValidString(m.Name) || seen[m.Name] {
			return violation(VInfo, "metadata name %q is not UTF-8 or not unique", truncate(m.Name))
		}
		seen[m.Name] = true
		mdBytes = satAdd(mdBytes, satAdd(uint64(len(m.Name)), uint64(len(m.Data))))
	}
	if mdBytes > engine.MaxMetadataBytes || mdBytes > uint64(wasmSize) {
		return violation(VInfo, "metadata of %d bytes from a module of %d", mdBytes, wasmSize)
	}
	if len(c.GlobalTypes) > lim.MaxGlobals || in.NumGlobals != len(c.GlobalTypes) {
		return violation(VInfo, "%d globals, at most %d", len(c.GlobalTypes), lim.MaxGlobals)
	}
	if len(c.Artifact) == 0 || uint64(len(c.Artifact)) > maxArtifact {
		return violation(VInfo, "artifact of %d bytes, at most %d", len(c.Artifact), maxArtifact)
	}
	return nil
}

// Equal reports whether two outputs are the same result (nil and empty
// byte strings are equal). Tests use it to compare executors.
func Equal(a, b *sysapi.Output) bool {
	return bytes.Equal(EncodeOutput(a), EncodeOutput(b)) && deltaEqual(a.Heap, b.Heap) && deltaEqual(a.Stable, b.Stable)
}

func deltaEqual(a, b state.Delta) bool {
	if a.Size != b.Size || len(a.Pages) != len(b.Pages) {
		return false
	}
	for i := range a.Pages {
		if a.Pages[i].Index != b.Pages[i].Index || *a.Pages[i].Data != *b.Pages[i].Data {
			return false
		}
	}
	return true
}
