package wasmbin

// Function-body decoding: every instruction of the feature set cordon's
// engine enables (MVP, sign extension, saturating truncation and bulk
// memory (0xFC), reference types, multi-value, SIMD (0xFD) and memory64
// memory arguments). Instructions of disabled proposals (exceptions, tail
// calls, typed function references, GC, threads, relaxed SIMD) are rejected
// with ErrUnsupported, unassigned opcodes with ErrMalformed. The decoder is
// structural: it checks the immediates' encodings, block nesting (else only
// in if, every block closed, nothing after the function's final end), block
// type indices and local declarations; typing is wasmtime's job.

// MaxFuncBodySize and MaxFuncLocals are wasmparser's (so wasmtime's) limits
// on one function: a body this decoder refuses wasmtime would refuse too.
const (
	MaxFuncBodySize = 7_654_321
	MaxFuncLocals   = 50_000
)

// instrKind classifies an instruction for metering.
type instrKind uint8

const (
	kPlain       instrKind = iota // any other instruction: cost 1
	kFree                         // nop, drop: cost 0 (no code)
	kBlock                        // block: cost 0
	kLoop                         // loop: cost 0, its body starts a checked run
	kIf                           // if: cost 1, starts a run
	kElse                         // else: cost 0, starts a run
	kEnd                          // end: cost 0, starts a run
	kBranch                       // br, br_if, br_table: cost 1, starts a run
	kReturn                       // return: cost 0, starts a run
	kUnreachable                  // unreachable: cost 0, starts a run
	kBulk                         // memory/table bulk op and table.grow: cost 1 + its length operand
	kCall                         // call, call_indirect: cost 1
	kGrow                         // memory.grow: cost 1; the metering pass checks its result (meter.go)
)

// bulkLen is the type of a bulk operation's length operand (the top of the
// stack when it executes).
type bulkLen uint8

const (
	lenI32 bulkLen = iota
	lenI64
)

// instr is one decoded instruction: its bytes are b[pos:end].
type instr struct {
	pos, end int
	kind     instrKind
	lenType  bulkLen // kBulk only
}

// cost is the static instruction count of an instruction: wasmtime's fuel
// cost model (0 for instructions that generate no code or only control
// flow, 1 for everything else), which cordon's limits were set against.
func (k instrKind) cost() int64 {
	switch k {
	case kFree, kBlock, kLoop, kElse, kEnd, kReturn, kUnreachable:
		return 0
	}
	return 1
}

// bodyDecoder reads the instructions of one function body.
type bodyDecoder struct {
	m     *Module
	r     *reader
	ctl   []byte // open blocks: 'b', 'l', 'i' (if), 'e' (if after else), 'f' (function)
	mem64 bool
	// params and locals (params included) of the current function: local
	// and global indices are range-checked here, not left to wasmtime,
	// because the metering pass adds a global and locals that an out-of-
	// range index in the original code would otherwise reach.
	params, locals uint64
}

// invalidSIMD lists the unassigned 0xFD sub-opcodes below 256.
var invalidSIMD = map[uint32]bool{154: true, 162: true, 165: true, 166: true, 175: true, 176: true, 178: true,
	179: true, 180: true, 187: true, 194: true, 197: true, 198: true, 207: true, 208: true, 210: true, 211: true,
	212: true, 226: true, 238: true}

// locals reads a body's local declarations, returning the number of
// declared locals and how many groups declare them.
func (d *bodyDecoder) localDecls() (total uint32, groups uint32, err error) {
	r := d.r
	groups, err = r.u32("local group count")
	if err != nil {
		return 0, 0, err
	}
	if uint64(groups)*2 > uint64(r.remaining()) {
		return 0, 0, r.fail(r.pos, ErrTruncated, "%d local groups cannot fit in the %d remaining bytes", groups, r.remaining())
	}
	var sum uint64
	for i := uint32(0); i < groups; i++ {
		off := r.pos
		n, err := r.u32("local count")
		if err != nil {
			return 0, 0, err
		}
		sum += uint64(n)
		if sum > MaxFuncLocals {
			return 0, 0, r.fail(off, ErrLimit, "more than %d locals", MaxFuncLocals)
		}
		if _, err := valType(r, "local"); err != nil {
			return 0, 0, err
		}
	}
	d.locals = d.params + sum
	return uint32(sum), groups, nil
}

// blockType reads a block type: 0x40 (empty), a value type, or a type
// index as a non-negative s33.
func (d *bodyDecoder) blockType() error {
	r := d.r
	off := r.pos
	if r.pos >= r.end {
		return r.fail(r.pos, ErrTruncated, "reading block type")
	}
	c := r.b[r.pos]
	if c == 0x40 || ValType(c).valid() {
		r.pos++
		return nil
	}
	if isProposalRefType(c) {
		return r.fail(off, ErrUnsupported, "block type: typed/GC reference type 0x%02x", c)
	}
	v, err := r.s64("block type")
	if err != nil {
		return err
	}
	if r.pos-off > 5 || v < 0 {
		return r.fail(off, ErrMalformed, "invalid block type")
	}
	if uint64(v) >= uint64(len(d.m.Types)) {
		return r.fail(off, ErrMalformed, "block type index %d out of range (%d types)", v, len(d.m.Types))
	}
	return nil
}

// memarg reads a memory argument: alignment flags (bit 6: a memory index
// follows, multi-memory encoding), then the offset, a u64 (memory64).
func (d *bodyDecoder) memarg() error {
	r := d.r
	flags, err := r.u32("memarg alignment")
	if err != nil {
		return err
	}
	if flags&0x40 != 0 {
		if _, err := r.u32("memarg memory index"); err != nil {
			return err
		}
	}
	_, err = r.u64("memarg offset")
	return err
}

func (d *bodyDecoder) index(what string) error {
	_, err := d.r.u32(what)
	return err
}

// tableIs64 reports whether table i has a 64-bit index type.
func (d *bodyDecoder) tableIs64(i uint32) bool {
	m := d.m
	if i < m.NumImportedTables {
		if int(i) < len(m.importPos[ExternTable]) {
			if t := m.Imports[m.importPos[ExternTable][i]].Table; t != nil {
				return t.Limits.Is64
			}
		}
		return false
	}
	if j := uint64(i) - uint64(m.NumImportedTables); j < uint64(len(m.Tables)) {
		return m.Tables[j].Limits.Is64
	}
	return false
}

// next decodes one instruction. done reports the function's final end.
func (d *bodyDecoder) next() (in instr, done bool, err error) {
	r := d.r
	in.pos = r.pos
	op, err := r.byte("opcode")
	if err != nil {
		return in, false, err
	}
	in.kind = kPlain
	switch {
	case op == 0x00:
		in.kind = kUnreachable
	case op == 0x01:
		in.kind = kFree
	case op == 0x02 || op == 0x03 || op == 0x04:
		if err = d.blockType(); err != nil {
			return in, false, err
		}
		switch op {
		case 0x02:
			in.kind = kBlock
			d.ctl = append(d.ctl, 'b')
		case 0x03:
			in.kind = kLoop
			d.ctl = append(d.ctl, 'l')
		default:
			in.kind = kIf
			d.ctl = append(d.ctl, 'i')
		}
	case op == 0x05:
		if len(d.ctl) == 0 || d.ctl[len(d.ctl)-1] != 'i' {
			return in, false, r.fail(in.pos, ErrMalformed, "else outside an if")
		}
		d.ctl[len(d.ctl)-1] = 'e'
		in.kind = kElse
	case op == 0x0b:
		if len(d.ctl) == 0 {
			return in, false, r.fail(in.pos, ErrMalformed, "end without an open block")
		}
		d.ctl = d.ctl[:len(d.ctl)-1]
		in.kind = kEnd
		done = len(d.ctl) == 0
	case op == 0x0c || op == 0x0d:
		err = d.index("branch depth")
		in.kind = kBranch
	case op == 0x0e:
		var n uint32
		if n, err = r.u32("br_table count"); err == nil {
			if uint64(n) > uint64(r.remaining()) {
				return in, false, r.fail(in.pos, ErrTruncated, "br_table of %d targets cannot fit in the %d remaining bytes", n, r.remaining())
			}
			for i := uint32(0); i <= n && err == nil; i++ { // n targets and the default
				err = d.index("br_table target")
			}
		}
		in.kind = kBranch
	case op == 0x0f:
		in.kind = kReturn
	case op == 0x10:
		var f uint32
		// A call of an import (the host's ic0 functions) runs no Wasm
		// code, so it cannot recurse: only calls of defined functions
		// need the caller to check at entry.
		if f, err = r.u32("call function index"); err == nil && f >= d.m.NumImportedFuncs {
			in.kind = kCall
		}
	case op == 0x11:
		in.kind = kCall
		if err = d.index("call_indirect type index"); err == nil {
			err = d.index("call_indirect table index")
		}
	case op == 0x1a:
		in.kind = kFree
	case op == 0x1b:
	case op == 0x1c:
		var n uint32
		if n, err = r.u32("select type count"); err == nil {
			if n != 1 {
				return in, false, r.fail(in.pos, ErrMalformed, "typed select with %d types, want 1", n)
			}
			_, err = valType(r, "select")
		}
	case op >= 0x20 && op <= 0x22: // local.get/set/tee
		var x uint32
		if x, err = r.u32("local index"); err == nil && uint64(x) >= d.locals {
			return in, false, r.fail(in.pos, ErrMalformed, "local index %d out of range (%d locals)", x, d.locals)
		}
	case op == 0x23 || op == 0x24: // global.get/set
		var x uint32
		if x, err = r.u32("global index"); err == nil && x >= d.m.NumGlobals() {
			return in, false, r.fail(in.pos, ErrMalformed, "global index %d out of range (%d globals)", x, d.m.NumGlobals())
		}
	case op == 0x25 || op == 0x26: // table.get/set
		err = d.index("table index")
	case op >= 0x28 && op <= 0x3e: // loads and stores
		err = d.memarg()
	case op == 0x3f: // memory.size
		err = d.index("memory index")
	case op == 0x40: // memory.grow
		in.kind = kGrow
		err = d.index("memory index")
	case op == 0x41:
		_, err = r.s32("i32.const")
	case op == 0x42:
		_, err = r.s64("i64.const")
	case op == 0x43:
		_, err = r.bytes(4, "f32.const")
	case op == 0x44:
		_, err = r.bytes(8, "f64.const")
	case op >= 0x45 && op <= 0xc4: // numeric, sign extension
	case op == 0xd0:
		off := r.pos
		var ht byte
		if ht, err = r.byte("ref.null heap type"); err == nil && ht != 0x70 && ht != 0x6f {
			if isProposalRefType(ht) || ht == 0x6e || ht == 0x6d || ht == 0x6b || ht == 0x6a || ht == 0x6c || ht == 0x71 || ht == 0x72 || ht == 0x73 || ht == 0x74 {
				return in, false, r.fail(off, ErrUnsupported, "ref.null heap type 0x%02x", ht)
			}
			return in, false, r.fail(off, ErrMalformed, "ref.null: invalid heap type 0x%02x", ht)
		}
	case op == 0xd1:
	case op == 0xd2:
		err = d.index("ref.func function index")
	case op == 0xfc:
		err = d.prefixFC(&in)
	case op == 0xfd:
		err = d.prefixFD(in.pos)
	case op >= 0x06 && op <= 0x0a, op == 0x18, op == 0x19, op == 0x1f:
		return in, false, r.fail(in.pos, ErrUnsupported, "opcode 0x%02x: exception handling is not enabled", op)
	case op == 0x12 || op == 0x13:
		return in, false, r.fail(in.pos, ErrUnsupported, "opcode 0x%02x: tail calls are not enabled", op)
	case op == 0x14 || op == 0x15 || (op >= 0xd3 && op <= 0xd6):
		return in, false, r.fail(in.pos, ErrUnsupported, "opcode 0x%02x: typed function references are not enabled", op)
	case op == 0xfb:
		return in, false, r.fail(in.pos, ErrUnsupported, "opcode 0xfb: GC is not enabled")
	case op == 0xfe:
		return in, false, r.fail(in.pos, ErrUnsupported, "opcode 0xfe: threads are not enabled")
	default:
		return in, false, r.fail(in.pos, ErrMalformed, "unknown opcode 0x%02x", op)
	}
	in.end = r.pos
	return in, done, err
}

func (d *bodyDecoder) prefixFC(in *instr) error {
	r := d.r
	sub, err := r.u32("0xfc sub-opcode")
	if err != nil {
		return err
	}
	memLen := lenI32
	if d.mem64 {
		memLen = lenI64
	}
	switch {
	case sub <= 7: // saturating truncation
	case sub == 8: // memory.init data memory
		if err = d.index("data index"); err == nil {
			err = d.index("memory index")
		}
		in.kind, in.lenType = kBulk, lenI32
	case sub == 9 || sub == 13: // data.drop, elem.drop
		err = d.index("segment index")
	case sub == 10: // memory.copy dst src
		if err = d.index("memory index"); err == nil {
			err = d.index("memory index")
		}
		in.kind, in.lenType = kBulk, memLen
	case sub == 11: // memory.fill
		err = d.index("memory index")
		in.kind, in.lenType = kBulk, memLen
	case sub == 12: // table.init elem table
		if err = d.index("element index"); err == nil {
			err = d.index("table index")
		}
		in.kind, in.lenType = kBulk, lenI32
	case sub == 14: // table.copy dst src
		var dst, src uint32
		if dst, err = r.u32("table index"); err == nil {
			src, err = r.u32("table index")
		}
		in.kind, in.lenType = kBulk, lenI32
		if d.tableIs64(dst) && d.tableIs64(src) {
			in.lenType = lenI64
		}
	case sub == 15: // table.grow: charged its delta, like a fill of that many entries
		var t uint32
		t, err = r.u32("table index")
		in.kind, in.lenType = kBulk, lenI32
		if d.tableIs64(t) {
			in.lenType = lenI64
		}
	case sub == 16: // table.size
		err = d.index("table index")
	case sub == 17: // table.fill
		var t uint32
		t, err = r.u32("table index")
		in.kind, in.lenType = kBulk, lenI32
		if d.tableIs64(t) {
			in.lenType = lenI64
		}
	case sub == 18 || sub == 19:
		return r.fail(in.pos, ErrUnsupported, "opcode 0xfc %d is not enabled", sub)
	default:
		return r.fail(in.pos, ErrMalformed, "unknown opcode 0xfc %d", sub)
	}
	return err
}

func (d *bodyDecoder) prefixFD(pos int) error {
	r := d.r
	sub, err := r.u32("0xfd sub-opcode")
	if err != nil {
		return err
	}
	switch {
	case sub <= 11 || sub == 92 || sub == 93: // loads, stores, load_zero
		return d.memarg()
	case sub == 12 || sub == 13: // v128.const, i8x16.shuffle
		_, err = r.bytes(16, "v128 immediate")
		return err
	case sub >= 21 && sub <= 34: // extract/replace lane
		_, err = r.byte("lane index")
		return err
	case sub >= 84 && sub <= 91: // load/store lane
		if err = d.memarg(); err == nil {
			_, err = r.byte("lane index")
		}
		return err
	case sub < 256 && !invalidSIMD[sub]:
		return nil
	case sub >= 256 && sub <= 0x113:
		return r.fail(pos, ErrUnsupported, "opcode 0xfd %d: relaxed SIMD is not enabled", sub)
	}
	return r.fail(pos, ErrMalformed, "unknown opcode 0xfd %d", sub)
}

// DecodeBodies decodes every function body of m's code section (b is the
// module m was decoded from), checking each instruction; see body.go's
// package comment for what is checked.
func (c Config) DecodeBodies(b []byte) error {
	c = c.normalized()
	m, err := c.Decode(b)
	if err != nil {
		return err
	}
	return forEachBody(b, m, func(i int, d *bodyDecoder, bodyStart, bodyEnd int) error {
		if _, _, err := d.localDecls(); err != nil {
			return err
		}
		for {
			_, done, err := d.next()
			if err != nil {
				return err
			}
			if done {
				if d.r.pos != bodyEnd {
					return d.r.fail(d.r.pos, ErrMalformed, "function body %d: %d bytes after the final end", i, bodyEnd-d.r.pos)
				}
				return nil
			}
		}
	})
}

// DeclaredLocals reads only the local declarations of m's function bodies
// (b is the module m was decoded from) and returns the number of locals
// they declare in all, parameters not included. A body declaring more than
// MaxFuncLocals is an error. Compilers spend time on every declared local
// whatever the bytes that declare it, so callers bound the total.
func DeclaredLocals(b []byte, m *Module) (uint64, error) {
	var total uint64
	err := forEachBody(b, m, func(_ int, d *bodyDecoder, _, _ int) error {
		n, _, err := d.localDecls()
		total += uint64(n)
		return err
	})
	return total, err
}

// ControlInstructions decodes m's function bodies (b is the module m was
// decoded from) and counts their control instructions: loop, if, else,
// end, br, br_if, br_table, return and unreachable, the instructions after
// which metering starts a new run, so updates the counter again
// (InstrumentMetering), and the others that make blocks in the compiled
// code: each bulk memory or table operation (metering checks its length:
// if … unreachable end), table.get and table.set (bounds, lazy table
// initialization: weight TableAccessWeight), call_indirect (those and
// the signature check: weight CallIndirectWeight), memory.grow (metering
// checks a failed grow's cause: two ifs, weight 2) and br_table's targets
// (an edge, so a block, each: 1 more per BrTableTargetsPerWeight). And
// call (weight CallWeight): no block, but it costs Cranelift as much as a
// branch does. It returns the count of
// the body with the most, the index of that function (imports counted, as
// in calls), and the sum over all bodies. Cranelift's compile time grows
// with the square of a body's blocks, whatever its bytes, so callers bound
// both. CountBodies counts the same and more in the same pass.
func ControlInstructions(b []byte, m *Module) (most uint64, mostFunc uint32, total uint64, err error) {
	c, err := CountBodies(b, m)
	return c.MostControl, c.MostControlFunc, c.Control, err
}

// BodyCounts is what CountBodies counts in a module's function bodies.
// Function indices count imports, as calls do.
type BodyCounts struct {
	// MostControl is the most control instructions of one body (as
	// ControlInstructions counts them), in function MostControlFunc;
	// Control their sum over all bodies.
	MostControl     uint64
	MostControlFunc uint32
	Control         uint64
	// MostInstructions is the most instructions of one body, its final
	// end included (what the IC calls a function's size), in function
	// MostInstructionsFunc.
	MostInstructions     uint64
	MostInstructionsFunc uint32
	// MostWeight is the heaviest body's weight (FuncInstructions), in
	// function MostWeightFunc.
	MostWeight     uint64
	MostWeightFunc uint32
}

// CountBodies decodes m's function bodies (b is the module m was decoded
// from), in one pass, counting their control instructions as
// ControlInstructions does, all their instructions, and their weight as
// FuncInstructions does.
func CountBodies(b []byte, m *Module) (BodyCounts, error) {
	var c BodyCounts
	err := forEachBody(b, m, func(i int, d *bodyDecoder, _, end int) error {
		if _, _, err := d.localDecls(); err != nil {
			return err
		}
		var n, all, weight uint64
		for {
			in, done, err := d.next()
			if err != nil {
				return err
			}
			n += controlWeight(b, in)
			all++
			weight += instructionWeight(b, in)
			if done {
				if d.r.pos != end {
					return d.r.fail(d.r.pos, ErrMalformed, "function body %d: %d bytes after the final end", i, end-d.r.pos)
				}
				break
			}
		}
		if n > c.MostControl {
			c.MostControl, c.MostControlFunc = n, m.NumImportedFuncs+uint32(i)
		}
		if all > c.MostInstructions {
			c.MostInstructions, c.MostInstructionsFunc = all, m.NumImportedFuncs+uint32(i)
		}
		if weight > c.MostWeight {
			c.MostWeight, c.MostWeightFunc = weight, m.NumImportedFuncs+uint32(i)
		}
		c.Control += n
		return nil
	})
	return c, err
}

// FuncInstructions decodes m's function bodies (b is the module m was
// decoded from) and returns the weight of the heaviest (InstructionWeight
// summed over its instructions, its final end counted) and the index of
// that function (imports counted, as in calls). Cranelift numbers a
// function's values in 24 bits where it packs them, and its translation
// and optimizer make several values of each instruction, dozens of a
// memory access (its address, bounds check and the optimizer's rewrites
// of them): a body of some 2 M instructions (400,000 values pushed, then
// added up: 3.6 MB, no control instruction, no local) or of 333,000 64-bit
// memory loads added up (1 M instructions) made it exceed that and panic,
// which aborts the process that compiles it. Callers bound it.
func FuncInstructions(b []byte, m *Module) (most uint64, mostFunc uint32, err error) {
	c, err := CountBodies(b, m)
	return c.MostWeight, c.MostWeightFunc, err
}

// MemoryAccessWeight is what a load or store (SIMD's too) weighs in
// FuncInstructions, every other instruction 1: 333,000 64-bit loads each
// added to a sum made Cranelift 16.8 M values, some 50 a load, where
// 400,000 values pushed and added up (5 instructions each) made as many.
const MemoryAccessWeight = 10

// instructionWeight is what in weighs in FuncInstructions (b: the module).
func instructionWeight(b []byte, in instr) uint64 {
	op := b[in.pos]
	switch {
	case op >= 0x28 && op <= 0x3e: // loads and stores
		return MemoryAccessWeight
	case op == 0xfd:
		sub, err := (&reader{b: b, pos: in.pos + 1, end: in.end, section: "code"}).u32("0xfd sub-opcode")
		if err == nil && (sub <= 11 || (sub >= 84 && sub <= 93)) { // v128 loads and stores, lanes, load_zero
			return MemoryAccessWeight
		}
	}
	return 1
}

// The weights of instructions in ControlInstructions beside the control
// instructions' 1, measured as compile time against a body of branches:
// 5,000 call_indirect compiled in 1.5 s and 5,000 table.get in 0.7 s where
// 20,000 br_if took 2 to 3 s (their times grow with the square too).
const (
	CallIndirectWeight = 4
	TableAccessWeight  = 2
	// BrTableTargetsPerWeight: a br_table counts 1 and 1 more for each
	// this many targets. Each target is an edge Cranelift gives a block
	// of its own: one br_table of 1,000,000 targets (1 MB) compiled in
	// 39 s, of 100,000 in 2 s, as long as 20,000 br_if take.
	BrTableTargetsPerWeight = 4
	// CallWeight: a call (of an import or a defined function) is no
	// block, but its arguments' and results' moves and the registers it
	// clobbers cost Cranelift about what a branch costs, and calls have
	// no bound of their own: 62,500 calls of an ic0 function in a body
	// (187 KB) compiled in 7 s, 125,000 in 14 s, so 1.5 MB of them would
	// take a minute, 6 MB more than the compiler sandbox's 3 minutes.
	CallWeight = 1
)

// controlWeight is what in counts in ControlInstructions (b: the module).
func controlWeight(b []byte, in instr) uint64 {
	switch {
	case b[in.pos] == 0x0e: // br_table: a block (an edge) per target
		n, _ := (&reader{b: b, pos: in.pos + 1, end: in.end, section: "code"}).u32("br_table count")
		return 1 + uint64(n)/BrTableTargetsPerWeight
	case in.kind.endsRun(), in.kind == kBulk:
		return 1
	case in.kind == kGrow: // the metering pass adds two ifs after it
		return 2
	case b[in.pos] == 0x10: // call
		return CallWeight
	case b[in.pos] == 0x11: // call_indirect
		return CallIndirectWeight
	case b[in.pos] == 0x25 || b[in.pos] == 0x26: // table.get, table.set
		return TableAccessWeight
	}
	return 0
}

// forEachBody calls f for every function body with a decoder positioned at
// the body's local declarations.
func forEachBody(b []byte, m *Module, f func(i int, d *bodyDecoder, start, end int) error) error {
	for _, s := range m.Sections {
		if s.ID != SectionCode {
			continue
		}
		r := &reader{b: b, pos: s.Start, end: s.End, section: "code"}
		n, err := r.u32("function body count")
		if err != nil {
			return err
		}
		d := &bodyDecoder{m: m, mem64: m.Memory64()}
		for i := 0; i < int(n); i++ {
			off := r.pos
			size, err := r.u32("function body size")
			if err != nil {
				return err
			}
			if size > MaxFuncBodySize {
				return r.fail(off, ErrLimit, "function body %d is %d bytes, limit %d", i, size, MaxFuncBodySize)
			}
			if int(size) > r.remaining() {
				return r.fail(off, ErrTruncated, "function body %d: %d bytes, %d remain", i, size, r.remaining())
			}
			d.r = &reader{b: b, pos: r.pos, end: r.pos + int(size), section: "code"}
			if i >= len(m.Funcs) || uint64(m.Funcs[i]) >= uint64(len(m.Types)) {
				return r.fail(off, ErrMalformed, "function body %d has no declared type", i)
			}
			d.params = uint64(len(m.Types[m.Funcs[i]].Params))
			d.ctl = append(d.ctl[:0], 'f')
			if err := f(i, d, r.pos, r.pos+int(size)); err != nil {
				return err
			}
			r.pos += int(size)
		}
	}
	return nil
}
