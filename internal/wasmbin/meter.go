package wasmbin

import "fmt"

// CounterExportName is the export of the instruction counter global that
// InstrumentMetering adds: a mutable i64 holding the instructions the
// execution may still use. The embedder sets it before running code and
// reads it afterwards; a negative value means the limit was exceeded.
const CounterExportName = "__cordon_instructions"

// GrowLimitExportName is the export of the grow limit global that
// InstrumentMetering adds to a module with memory.grow: a mutable i64
// holding the most pages memory 0 may have in this execution, which the
// embedder sets before running code (its initial value, 0, makes every
// failed grow the canister's). A failed memory.grow within it failed for
// the host's reason: the instrumentation then sets it to -1 and traps, so
// a negative value after a trap means the host failed the grow.
const GrowLimitExportName = "__cordon_grow_limit"

// InstrumentMetering rewrites b with DefaultConfig; see
// Config.InstrumentMetering.
func InstrumentMetering(b []byte) ([]byte, Instrumentation, error) {
	return DefaultConfig().InstrumentMetering(b)
}

// InstrumentMetering does what Instrument does and also meters every
// function: it appends a mutable i64 global (exported as
// CounterExportName, not among Instrumentation.Globals) and rewrites every
// function body so that
//   - each straight-line run of instructions subtracts its static cost
//     from the counter when it starts: runs start at function entry and
//     after loop, if, else, end, br, br_if, br_table, return and
//     unreachable (calls do not end a run: the caller's run resumes);
//   - at every loop header, and at the entry of every function that
//     calls a defined function (or calls indirectly), the counter is
//     checked after the subtraction: if it is negative, `unreachable`
//     traps. Every unbounded execution passes a
//     loop header or the entry of a function that calls Wasm (a function
//     without loops or such calls runs a bounded number of instructions;
//     imported functions run no Wasm code), so
//     the overdraft between checks is bounded by the code size, and the
//     embedder checks the sign once more when the execution ends;
//   - memory.copy, memory.fill, memory.init, table.copy, table.init and
//     table.fill first charge their length operand (bytes or elements),
//     and table.grow its delta (the entries it would initialise);
//     if it exceeds the counter the counter is set to -1 and `unreachable`
//     traps before the operation runs;
//   - after every memory.grow that returns -1, the grow is checked
//     against the grow limit global (GrowLimitExportName, added only to a
//     module with memory.grow): if the memory's size plus the delta is
//     within it, the grow failed for a reason of the host's (the kernel
//     refused memory), not a limit of the canister's, so the global is
//     set to -1 and `unreachable` traps instead of letting the canister
//     see a result the IC would not give. A grow that succeeded costs a
//     compare and a branch more.
//
// A trap, or an execution's end, with a negative counter is the
// instruction limit; the embedder tells it from the module's own
// `unreachable` by the counter's sign. Costs follow wasmtime's fuel: 0 for
// nop, drop, block, loop, else, end, return and unreachable, 1 for every
// other instruction. The instrumentation's own instructions cost nothing.
func (c Config) InstrumentMetering(b []byte) ([]byte, Instrumentation, error) {
	return c.instrument(b, true)
}

// metering holds what the metering pass adds to a module.
type metering struct {
	global  []byte // the new global section (whole section)
	code    []byte // the new code section (whole section), nil without one
	counter uint32 // global index of the counter
	// growLimit is the grow limit global's index (counter+1), valid if
	// hasGrow: some body has memory.grow.
	growLimit uint32
	hasGrow   bool
}

func (c Config) meter(b []byte, m *Module) (*metering, error) {
	mt := &metering{counter: m.NumGlobals()}
	mt.growLimit = mt.counter + 1
	if uint64(mt.counter)+1 > uint64(c.MaxGlobals) {
		return nil, &Error{Section: "global", Offset: -1, Err: ErrLimit, Msg: fmt.Sprintf("no room for the instruction counter: %d globals", mt.counter)}
	}
	var entries []byte
	for _, s := range m.Sections {
		if s.ID == SectionGlobal {
			r := &reader{b: b, pos: s.Start, end: s.End, section: "global"}
			if _, err := r.u32("global count"); err != nil {
				return nil, err
			}
			entries = b[r.pos:s.End]
		}
	}
	var bodies []byte
	var runs []uint32
	n := 0
	err := forEachBody(b, m, func(i int, d *bodyDecoder, start, end int) error {
		n++
		params := uint32(d.params) // forEachBody checked the function's type
		var err error
		var body []byte
		var grows bool
		body, runs, grows, err = meterBody(d, i, start, end, params, mt.counter, mt.growLimit, runs[:0])
		if err != nil {
			return err
		}
		mt.hasGrow = mt.hasGrow || grows
		if uint64(len(body)) > MaxFuncBodySize {
			return d.r.fail(start, ErrLimit, "function body %d is %d bytes once metered, limit %d", i, len(body), MaxFuncBodySize)
		}
		bodies = appendU32(bodies, uint32(len(body)))
		bodies = append(bodies, body...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if n > 0 || len(m.Funcs) > 0 {
		content := appendU32(nil, uint32(n))
		content = append(content, bodies...)
		if uint64(len(content)) > 0xffffffff {
			return nil, &Error{Section: "code", Offset: -1, Err: ErrLimit, Msg: "metered code section exceeds 4 GiB"}
		}
		mt.code = appendSection(nil, SectionCode, content)
	}
	// Global section: the original entries verbatim, then the counter
	// (mutable i64, initially 0) and, if a body grows the memory, the grow
	// limit (mutable i64, initially 0: every failed grow the canister's).
	added := uint32(1)
	if mt.hasGrow {
		if uint64(mt.growLimit)+1 > uint64(c.MaxGlobals) {
			return nil, &Error{Section: "global", Offset: -1, Err: ErrLimit, Msg: fmt.Sprintf("no room for the grow limit: %d globals", mt.counter)}
		}
		added++
	}
	content := appendU32(nil, uint32(len(m.Globals))+added)
	content = append(content, entries...)
	for range added {
		content = append(content, byte(I64), 1, opI64Const, 0x00, opEnd)
	}
	mt.global = appendSection(nil, SectionGlobal, content)
	return mt, nil
}

// meterBody decodes one body twice: once to find its runs and their
// costs, once to copy it with the charges (and the checks of memory.grow,
// whose limit is global gl) inserted. grows reports a memory.grow.
func meterBody(d *bodyDecoder, i, start, end int, params, g, gl uint32, runs []uint32) (_ []byte, _ []uint32, grows bool, _ error) {
	b := d.b()
	declared, groups, err := d.localDecls()
	if err != nil {
		return nil, runs, false, err
	}
	codeStart := d.r.pos
	hasBulk, hasCall, hasLoop, hasGrow := false, false, false, false
	var cost int64
	for {
		in, done, err := d.next()
		if err != nil {
			return nil, runs, false, err
		}
		cost += in.kind.cost()
		switch in.kind {
		case kBulk:
			hasBulk = true
		case kCall:
			hasCall = true
		case kLoop:
			hasLoop = true
		case kGrow:
			hasGrow = true
		}
		if done {
			if d.r.pos != end {
				return nil, runs, false, d.r.fail(d.r.pos, ErrMalformed, "function body %d: %d bytes after the final end", i, end-d.r.pos)
			}
			runs = append(runs, uint32(cost))
			break
		}
		if in.kind.endsRun() {
			runs = append(runs, uint32(cost))
			cost = 0
		}
	}

	out := make([]byte, 0, (end-start)*2+16)
	// Two locals: an i64 (the counter's new value at checks, a 64-bit
	// bulk length, a 64-bit grow's result) and an i32 (a 32-bit bulk
	// length, a 32-bit grow's result); with memory.grow a third of the
	// memory's index type (the grow's delta).
	tmp64, tmp32, delta := params+declared, params+declared+1, params+declared+2
	idx := I32
	if d.mem64 {
		idx = I64
	}
	if hasBulk || hasCall || hasLoop || hasGrow {
		n := uint32(2)
		if hasGrow {
			n = 3
		}
		if uint64(params)+uint64(declared)+uint64(n) > MaxFuncLocals {
			return nil, runs, false, d.r.fail(start, ErrLimit, "function body %d: no room for the metering locals", i)
		}
		out = appendU32(out, groups+n)
		out = append(out, b[start+sizeU32Prefix(b, start):codeStart]...)
		out = append(out, 1, byte(I64), 1, byte(I32))
		if hasGrow {
			out = append(out, 1, byte(idx))
		}
	} else {
		out = append(out, b[start:codeStart]...)
	}

	// Second pass over the validated instructions.
	d.r.pos, d.ctl = codeStart, append(d.ctl[:0], 'f')
	run := 0
	out = appendCharge(out, g, runs[run], hasCall, tmp64)
	for {
		in, done, _ := d.next() // cannot fail: decoded above
		if in.kind == kBulk {
			out = appendBulkCharge(out, g, in.lenType, tmp32, tmp64)
		}
		if in.kind == kGrow {
			out = appendU32(append(out, opLocalTee), delta)
		}
		out = append(out, b[in.pos:in.end]...)
		if in.kind == kGrow {
			res := tmp32
			if d.mem64 {
				res = tmp64
			}
			out = appendGrowCheck(out, gl, d.mem64, delta, res)
		}
		if done {
			break
		}
		if in.kind.endsRun() {
			run++
			out = appendCharge(out, g, runs[run], in.kind == kLoop, tmp64)
		}
	}
	return out, runs, hasGrow, nil
}

// b returns the module bytes the decoder reads.
func (d *bodyDecoder) b() []byte { return d.r.b }

// sizeU32Prefix is the length of the LEB128 u32 at b[pos:] (the local group
// count, already decoded).
func sizeU32Prefix(b []byte, pos int) int {
	n := 1
	for b[pos+n-1]&0x80 != 0 {
		n++
	}
	return n
}

// endsRun reports instructions after which a new run starts: a branch
// target (loop body, if/else arm, after end) or code after a transfer.
func (k instrKind) endsRun() bool {
	switch k {
	case kLoop, kIf, kElse, kEnd, kBranch, kReturn, kUnreachable:
		return true
	}
	return false
}

// Opcodes the instrumentation emits.
const (
	opUnreachable = 0x00
	opIf          = 0x04
	opEnd         = 0x0b
	opLocalGet    = 0x20
	opLocalSet    = 0x21
	opLocalTee    = 0x22
	opGlobalGet   = 0x23
	opGlobalSet   = 0x24
	opMemorySize  = 0x3f
	opI32Const    = 0x41
	opI64Const    = 0x42
	opI32Eq       = 0x46
	opI64Eq       = 0x51
	opI64LtS      = 0x53
	opI64LeU      = 0x58
	opI32And      = 0x71
	opI32Or       = 0x72
	opI64Add      = 0x7c
	opI64Sub      = 0x7d
	opI64ExtendU  = 0xad
	blockEmpty    = 0x40
)

// appendCharge subtracts cost from the counter and, if check, traps when
// the counter is then negative (the new value is kept in local tmp, so the
// check does not load the global again).
func appendCharge(out []byte, g uint32, cost uint32, check bool, tmp uint32) []byte {
	out = appendU32(append(out, opGlobalGet), g)
	if cost > 0 {
		out = append(out, opI64Const)
		out = appendS64(out, int64(cost))
		out = append(out, opI64Sub)
		if check {
			out = appendU32(append(out, opLocalTee), tmp)
		}
		out = appendU32(append(out, opGlobalSet), g)
		if check {
			out = appendU32(append(out, opLocalGet), tmp)
		}
	}
	if check {
		out = append(out, opI64Const, 0x00, opI64LtS, opIf, blockEmpty, opUnreachable, opEnd)
	} else if cost == 0 {
		out = out[:len(out)-1-sizeU32(g)] // nothing to do: drop the global.get
	}
	return out
}

// appendGrowCheck follows a memory.grow of memory 0, whose delta the code
// before it kept in local delta, and leaves its result on the stack as it
// was. A result of -1 is the canister's to see only when the memory's size
// plus the delta exceeds the grow limit (global gl: the most pages its
// deterministic limits allow); within it, the host failed the grow, so gl
// is set to -1 and `unreachable` traps (the embedder reads gl). In i64:
// delta <= limit && size+delta <= limit, which cannot overflow once the
// first holds (a limit is at most 2^48 pages). The result goes through
// local res (of the memory's index type).
func appendGrowCheck(out []byte, gl uint32, mem64 bool, delta, res uint32) []byte {
	widen := func(out []byte) []byte { // an index-typed value as an i64
		if mem64 {
			return out
		}
		return append(out, opI64ExtendU)
	}
	out = appendU32(append(out, opLocalTee), res)
	if mem64 {
		out = append(out, opI64Const, 0x7f, opI64Eq)
	} else {
		out = append(out, opI32Const, 0x7f, opI32Eq)
	}
	out = append(out, opIf, blockEmpty)
	out = widen(appendU32(append(out, opLocalGet), delta))
	out = appendU32(append(out, opGlobalGet), gl)
	out = append(out, opI64LeU)
	out = widen(append(out, opMemorySize, 0x00))
	out = widen(appendU32(append(out, opLocalGet), delta))
	out = append(out, opI64Add)
	out = appendU32(append(out, opGlobalGet), gl)
	out = append(out, opI64LeU, opI32And)
	out = append(out, opIf, blockEmpty, opI64Const, 0x7f, opGlobalSet)
	out = appendU32(out, gl)
	out = append(out, opUnreachable, opEnd, opEnd)
	return appendU32(append(out, opLocalGet), res)
}

// appendBulkCharge charges a bulk operation's length operand (on top of
// the stack) before the operation runs, leaving the operand in place.
func appendBulkCharge(out []byte, g uint32, t bulkLen, tmp32, tmp64 uint32) []byte {
	get := func(out []byte) []byte { // the length as an i64
		if t == lenI32 {
			return append(appendU32(append(out, opLocalGet), tmp32), opI64ExtendU)
		}
		return appendU32(append(out, opLocalGet), tmp64)
	}
	tmp := tmp32
	if t == lenI64 {
		tmp = tmp64
	}
	out = appendU32(append(out, opLocalSet), tmp)
	// Trap if counter < length (as i64; an i64 length ≥ 2^63 always).
	out = appendU32(append(out, opGlobalGet), g)
	out = get(out)
	out = append(out, opI64LtS)
	if t == lenI64 {
		out = appendU32(append(out, opLocalGet), tmp64)
		out = append(out, opI64Const, 0x00, opI64LtS, opI32Or)
	}
	out = append(out, opIf, blockEmpty, opI64Const, 0x7f, opGlobalSet) // counter = -1
	out = appendU32(out, g)
	out = append(out, opUnreachable, opEnd)
	// counter -= length
	out = appendU32(append(out, opGlobalGet), g)
	out = get(out)
	out = append(out, opI64Sub, opGlobalSet)
	out = appendU32(out, g)
	return appendU32(append(out, opLocalGet), tmp)
}

// appendS64 appends the minimal signed LEB128 encoding of v.
func appendS64(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// appendSection appends a whole section: id, size, content.
func appendSection(b []byte, id SectionID, content []byte) []byte {
	b = append(b, byte(id))
	b = appendU32(b, uint32(len(content)))
	return append(b, content...)
}
