package wasmbin

import "errors"

// LiveLocals weighs what the values of a function's locals cost Cranelift
// across the blocks of its compiled code, beyond what the bytes and the
// control instructions show. Counted from the structure alone, and never
// below what the compiled code holds:
//
//   - Merges: a local written inside a block, if or loop and read after it
//     (for a loop: after its start) before a write every path from the
//     join passes, is a block parameter where the paths join, a value
//     that moves on every edge into it; it weighs the edges (branches to
//     the construct's label, the fallthrough, an if's other arm). A
//     block's join is left out when no branch to it comes before the
//     local's last write in it (every edge then carries the same value).
//     A construct's block type adds its results (a loop, its parameters)
//     on each edge too. Register allocation (regalloc2) grows with the
//     square of this weight in a function, however it is made: 500 locals
//     rewritten in each of 50 ifs (50,000, 167 KB) took 2.1 s of CPU to
//     compile, 80 ifs 7.1 s; one block with 500 br_ifs each after
//     rewriting 100 locals (50,000, 295 KB) 4.0 s, 250 of them 1.2 s.
//   - Spans: a local's value is live over every block boundary between its
//     first access (the function's start if that is a read: the value is
//     the entry's zero) and its last read, the end of the outermost loop
//     around that read included. Cranelift's SSA construction looks a read
//     up through each of them and register allocation carries the value
//     across them: 2,000 locals set, 2,000 blocks, then the locals read
//     (41 KB, 8 M) took 3.1 s; 5,000 of each made 25 M SSA values and
//     Cranelift panicked (its values' indices are 24 bits where packed).
//     The values on the operand stack at each boundary count too (an
//     upper bound of its height: stackEffect), cheaper but carried as
//     well: 20,000 values across 20,000 boundaries (242 KB) took 6.5 s.
//   - Visits: the walk's own work, the (local, construct) pairs a write is
//     noted in and the joins it is checked against. It costs Cranelift
//     nothing; its bound bounds the walk.
//
// A local reused for many short lives counts as live over all of them
// unless a write every path passes ends one, so the weights are above the
// compiled code's, not equal to them.
type LiveLocalsWeight struct {
	Merges, Spans, Visits uint64
}

// LiveLocalsLimits are where LiveLocals may stop counting: a body's
// weights, and over all bodies the sum of the squares of their merges (as
// their compile time grows), of their spans and of their visits.
type LiveLocalsLimits struct {
	Func                                           LiveLocalsWeight
	ModuleMergesSquared, ModuleSpans, ModuleVisits uint64
}

// LiveLocalsResult is what LiveLocals returns: the largest weights of one
// body, each with the index of its function (imports counted, as in
// calls), and the sums over all bodies (of merges: of their squares).
type LiveLocalsResult struct {
	Most                                          LiveLocalsWeight
	MostMergesFunc, MostSpansFunc, MostVisitsFunc uint32
	MergesSquared, Spans, Visits                  uint64
}

// LiveLocals decodes m's function bodies (b is the module m was decoded
// from) and weighs them (LiveLocalsWeight). It stops once a body's weight
// or a sum is above its limit: the weights returned are then above the
// limits, not exact. Each body is decoded twice; the walk's other work is
// its visits.
func LiveLocals(b []byte, m *Module, lim LiveLocalsLimits) (LiveLocalsResult, error) {
	var (
		res LiveLocalsResult
		w   liveLocalsWalk
	)
	err := forEachBody(b, m, func(i int, d *bodyDecoder, start, end int) error {
		fn := m.NumImportedFuncs + uint32(i)
		bw, err := w.body(b, m, d, start, end, i, lim.Func)
		if err != nil {
			return err
		}
		if bw.Merges > res.Most.Merges {
			res.Most.Merges, res.MostMergesFunc = bw.Merges, fn
		}
		if bw.Spans > res.Most.Spans {
			res.Most.Spans, res.MostSpansFunc = bw.Spans, fn
		}
		if bw.Visits > res.Most.Visits {
			res.Most.Visits, res.MostVisitsFunc = bw.Visits, fn
		}
		res.MergesSquared = satAdd(res.MergesSquared, satMul(bw.Merges, bw.Merges))
		res.Spans = satAdd(res.Spans, bw.Spans)
		res.Visits = satAdd(res.Visits, bw.Visits)
		if bw.Merges > lim.Func.Merges || bw.Spans > lim.Func.Spans || bw.Visits > lim.Func.Visits ||
			res.MergesSquared > lim.ModuleMergesSquared || res.Spans > lim.ModuleSpans || res.Visits > lim.ModuleVisits {
			return errStop
		}
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return res, err
}

// liveLocalsWalk holds the per-local and per-construct tables LiveLocals
// reuses from body to body.
type liveLocalsWalk struct {
	// per local
	firstBound []uint32 // boundary count at the first access; 0 if that was a read
	lastBound  []uint32 // boundary count at the last read (0: none)
	readLoop   []uint32 // outermost loop open at the last read (construct number, 0: none)
	readPos    []uint32 // instruction number of the last read (0: none)
	lastWrite  []uint32 // constructs opened before the last write (second pass)
	writePos   []uint32 // instruction number of the last write (second pass)
	// per construct, numbered from 1 in the order they open
	endPos, endBound, startPos []uint32
	loop                       []bool
	heights                    []liveHeight // open constructs (first pass)
	// second pass
	stack       []liveConstruct
	written     []liveWritten
	pending     []livePending
	pendingHead []int32 // per local: its first pending join (-1: none)
	branches    branchTimes
}

// controlBoundary reports whether an instruction starts a new block of
// the compiled code: a loop's header, an if's arms, an else, an end (the
// join), and what follows a br_if (br, br_table, return and unreachable
// are followed by unreachable code, which the translation skips; they are
// counted too, for simplicity: the weights stay above the code's).
func controlBoundary(k instrKind) bool {
	switch k {
	case kLoop, kIf, kElse, kEnd, kBranch, kReturn, kUnreachable:
		return true
	}
	return false
}

func (w *liveLocalsWalk) body(b []byte, m *Module, d *bodyDecoder, start, end, index int, limit LiveLocalsWeight) (LiveLocalsWeight, error) {
	var bw LiveLocalsWeight
	if _, _, err := d.localDecls(); err != nil {
		return bw, err
	}
	n := int(d.locals)
	reset := func(s []uint32) []uint32 {
		s = append(s[:0], make([]uint32, n)...)
		return s
	}
	w.firstBound, w.lastBound, w.readLoop, w.readPos, w.lastWrite = reset(w.firstBound), reset(w.lastBound), reset(w.readLoop), reset(w.readPos), reset(w.lastWrite)
	w.writePos = reset(w.writePos)
	accessed := make([]bool, n) // first pass: touched yet
	w.endPos, w.endBound, w.startPos, w.loop = append(w.endPos[:0], 0), append(w.endBound[:0], 0), append(w.startPos[:0], 0), append(w.loop[:0], false)
	open := []uint32{0}    // the function's own block: construct 0
	outerLoop := uint32(0) // outermost open loop
	var bound, pos uint32
	deepest := 0
	// An upper bound on the operand stack's height, and each open
	// construct's height at its start with its block type's arities.
	var height int64
	heights := append(w.heights[:0], liveHeight{})

	// First pass: constructs' extents, each local's first access and last read.
	for {
		in, done, err := d.next()
		if err != nil {
			return bw, err
		}
		pos++
		op := b[in.pos]
		height += stackEffect(b, m, in)
		switch in.kind {
		case kBlock, kLoop, kIf:
			params, results := blockType(b, m, in)
			heights = append(heights, liveHeight{start: height, params: params, results: results})
			c := uint32(len(w.endPos))
			w.endPos, w.endBound, w.startPos = append(w.endPos, 0), append(w.endBound, 0), append(w.startPos, pos)
			w.loop = append(w.loop, in.kind == kLoop)
			open = append(open, c)
			deepest = max(deepest, len(open)-1)
			if in.kind == kLoop && outerLoop == 0 {
				outerLoop = c
			}
		}
		switch {
		case in.kind == kElse:
			height = heights[len(heights)-1].start
		case in.kind == kEnd && len(heights) > 1:
			h := heights[len(heights)-1]
			heights = heights[:len(heights)-1]
			height = h.start - h.params + h.results
		}
		if controlBoundary(in.kind) {
			bound++
			bw.Spans = satAdd(bw.Spans, uint64(max(height, 0)))
		}
		if in.kind == kEnd && len(open) > 1 {
			c := open[len(open)-1]
			open = open[:len(open)-1]
			w.endPos[c], w.endBound[c] = pos, bound
			if c == outerLoop {
				outerLoop = 0
			}
		}
		if op >= 0x20 && op <= 0x22 {
			x, err := (&reader{b: b, pos: in.pos + 1, end: in.end, section: "code"}).u32("local index")
			if err != nil {
				return bw, err
			}
			if !accessed[x] {
				accessed[x] = true
				if op != 0x20 {
					w.firstBound[x] = bound
				}
			}
			if op == 0x20 {
				w.lastBound[x], w.readLoop[x], w.readPos[x] = bound, outerLoop, pos
			}
		}
		if done {
			if d.r.pos != end {
				return bw, d.r.fail(d.r.pos, ErrMalformed, "function body %d: %d bytes after the final end", index, end-d.r.pos)
			}
			break
		}
	}
	w.heights = heights
	// A read inside a loop is a read at the loop's end too (the back edge).
	for x := range n {
		if l := w.readLoop[x]; l != 0 {
			w.lastBound[x] = max(w.lastBound[x], w.endBound[l])
			w.readPos[x] = max(w.readPos[x], w.endPos[l])
		}
		if w.readPos[x] != 0 && w.lastBound[x] > w.firstBound[x] {
			bw.Spans = satAdd(bw.Spans, uint64(w.lastBound[x]-w.firstBound[x]))
		}
	}
	if bw.Spans > limit.Spans {
		return bw, nil
	}

	// Second pass: merges. A write is noted in each open construct opened
	// since the local's last write (the ones opened before noted it then).
	// At a loop's end the locals written in it merge at its header if they
	// are read after its start. At a block's or if's end they merge at its
	// join if they are read after it before a write that every path from
	// the join passes: one directly in a construct around the join, with no
	// branch since the join out of that construct (then the value the join
	// made is dead); until such a read or write, they are pending.
	d.r.pos = start
	d.ctl = append(d.ctl[:0], 'f')
	if _, _, err := d.localDecls(); err != nil {
		return bw, err
	}
	w.stack = append(w.stack[:0], liveConstruct{})
	w.written = w.written[:0]
	w.pending = w.pending[:0]
	w.pendingHead = append(w.pendingHead[:0], make([]int32, n)...)
	for x := range w.pendingHead {
		w.pendingHead[x] = -1
	}
	w.branches.reset(deepest)
	var opened uint32
	pos = 0
	for bw.Merges <= limit.Merges && bw.Visits <= limit.Visits {
		in, done, err := d.next()
		if err != nil {
			return bw, err
		}
		pos++
		op := b[in.pos]
		switch in.kind {
		case kBlock, kLoop, kIf:
			opened++
			edges := uint64(1)
			if in.kind == kIf {
				edges = 2
			}
			outer := w.stack[len(w.stack)-1].outer
			if outer == 0 && in.kind == kLoop {
				outer = opened
			}
			w.stack = append(w.stack, liveConstruct{c: opened, written: -1, block: in.kind == kBlock, edges: edges,
				arity: uint64(blockArity(b, m, in, in.kind == kLoop)), outer: outer})
		case kEnd:
			if len(w.stack) > 1 {
				w.closeConstruct(&bw, pos)
			}
		case kBranch:
			if t, ok := w.branchTargets(b, in, pos); ok && int(t) < len(w.stack) {
				w.branches.set(len(w.stack)-1-int(t), pos)
			}
		}
		if op >= 0x20 && op <= 0x22 {
			x, err := (&reader{b: b, pos: in.pos + 1, end: in.end, section: "code"}).u32("local index")
			if err != nil {
				return bw, err
			}
			if op == 0x20 {
				w.resolveRead(&bw, x)
			} else { // local.set, local.tee
				w.resolveWrite(&bw, x, pos)
				for k := len(w.stack) - 1; k > 0 && w.stack[k].c > w.lastWrite[x]; k-- {
					bw.Visits++
					w.written = append(w.written, liveWritten{x: x, next: w.stack[k].written})
					w.stack[k].written = int32(len(w.written) - 1)
				}
				w.lastWrite[x] = opened
				w.writePos[x] = pos
			}
		}
		if done {
			break
		}
	}
	return bw, nil
}

// liveConstruct is an open construct of the second pass: its number and
// the locals written in it (a list in liveLocalsWalk.written).
type liveConstruct struct {
	c       uint32
	written int32
	block   bool   // a block (not an if, not a loop)
	firstBr uint32 // the first branch to its label (0: none yet)
	edges   uint64 // the edges into its join: branches to its label, and the fallthrough (an if's skip or else too)
	arity   uint64 // values its block type joins
	outer   uint32 // the outermost loop open around it, or itself (0: none)
}

// liveWritten is a local written in a construct, in a list.
type liveWritten struct {
	x    uint32
	next int32
}

// livePending is a join a local's value was made at, whose use is not
// decided yet: the construct (its number), the depth of the construct
// that held it, when it ended, and the next entry of the local's list.
type livePending struct {
	c      uint32
	parent int
	at     uint32
	edges  uint64
	next   int32
}

// closeConstruct ends the innermost open construct at instruction pos.
func (w *liveLocalsWalk) closeConstruct(bw *LiveLocalsWeight, pos uint32) {
	top := w.stack[len(w.stack)-1]
	w.stack = w.stack[:len(w.stack)-1]
	bw.Merges = satAdd(bw.Merges, satMul(top.arity, top.edges))
	for i := top.written; i >= 0; i = w.written[i].next {
		x := w.written[i].x
		bw.Visits++
		if w.loop[top.c] {
			if w.readPos[x] > w.startPos[top.c] {
				bw.Merges = satAdd(bw.Merges, top.edges)
			}
			continue
		}
		// A block's join takes the fallthrough and its branches: after
		// the local's last write they all carry its value, so only a
		// branch before it makes two.
		if top.block && (top.firstBr == 0 || top.firstBr > w.writePos[x]) {
			continue
		}
		// In a loop, a read anywhere in it may follow the join (the back
		// edge): used.
		if l := top.outer; l != 0 && w.readPos[x] > w.startPos[l] {
			bw.Merges = satAdd(bw.Merges, top.edges)
			continue
		}
		w.pending = append(w.pending, livePending{c: top.c, parent: len(w.stack) - 1, at: pos, edges: top.edges, next: w.pendingHead[x]})
		w.pendingHead[x] = int32(len(w.pending) - 1)
	}
}

// resolveRead: a read of x uses every join x's value was pending at.
func (w *liveLocalsWalk) resolveRead(bw *LiveLocalsWeight, x uint32) {
	for i := w.pendingHead[x]; i >= 0; i = w.pending[i].next {
		bw.Merges = satAdd(bw.Merges, w.pending[i].edges)
	}
	w.pendingHead[x] = -1
}

// resolveWrite: a write of x at pos, directly in the innermost open
// construct, makes the joins whose value it replaces on every path dead.
func (w *liveLocalsWalk) resolveWrite(bw *LiveLocalsWeight, x uint32, pos uint32) {
	depth := len(w.stack) - 1
	prev := &w.pendingHead[x]
	for i := *prev; i >= 0; i = w.pending[i].next {
		bw.Visits++
		p := w.pending[i]
		if depth <= p.parent && w.stack[depth].c < p.c && w.branches.since(depth) <= p.at {
			*prev = p.next // dead
			continue
		}
		prev = &w.pending[i].next
	}
}

// branchTargets notes a br, br_if or br_table at pos in the constructs it
// branches to and returns the outermost label it may take (as a relative
// depth).
func (w *liveLocalsWalk) branchTargets(b []byte, in instr, pos uint32) (uint32, bool) {
	r := &reader{b: b, pos: in.pos + 1, end: in.end, section: "code"}
	n := uint32(0)
	if b[in.pos] == 0x0e {
		var err error
		if n, err = r.u32("br_table count"); err != nil {
			return 0, false
		}
	}
	var most uint32
	for i := uint64(0); i <= uint64(n); i++ {
		l, err := r.u32("label")
		if err != nil {
			return 0, false
		}
		most = max(most, l)
		if k := len(w.stack) - 1 - int(l); k > 0 {
			if w.stack[k].firstBr == 0 {
				w.stack[k].firstBr = pos
			}
			w.stack[k].edges++
		}
	}
	return most, true
}

// branchTimes records, for each depth of the open constructs, the last
// instruction that branched to it, and answers the last one that branched
// to a depth at most d (a prefix maximum, as a Fenwick tree: times only
// grow, and a depth's construct that closed was opened, and ended, before
// any join it could wrongly be asked about).
type branchTimes struct{ t []uint32 }

// reset empties it for depths 0 to deepest.
func (f *branchTimes) reset(deepest int) {
	f.t = append(f.t[:0], make([]uint32, deepest+2)...)
}

func (f *branchTimes) set(depth int, at uint32) {
	for i := depth + 1; i < len(f.t); i += i & -i {
		f.t[i] = max(f.t[i], at)
	}
}

func (f *branchTimes) since(depth int) uint32 {
	var most uint32
	for i := min(depth+1, len(f.t)-1); i > 0; i -= i & -i {
		most = max(most, f.t[i])
	}
	return most
}

// blockType is the number of parameters and results of a block, loop
// or if instruction's block type.
func blockType(b []byte, m *Module, in instr) (params, results int64) {
	r := &reader{b: b, pos: in.pos + 1, end: in.end, section: "code"}
	if r.pos >= r.end {
		return 0, 0
	}
	switch c := b[r.pos]; {
	case c == 0x40:
		return 0, 0
	case c&0x80 == 0 && c >= 0x40: // a value type (negative as s33)
		return 0, 1
	}
	i, err := r.s64("block type")
	if err != nil || i < 0 || i >= int64(len(m.Types)) {
		return 0, 0
	}
	return int64(len(m.Types[i].Params)), int64(len(m.Types[i].Results))
}

// blockArity is how many values a block type joins: a block's or if's
// results, a loop's parameters.
func blockArity(b []byte, m *Module, in instr, loop bool) int {
	params, results := blockType(b, m, in)
	if loop {
		return int(params)
	}
	return int(results)
}

// stackEffect bounds what an instruction adds to the operand stack's
// height: what it pushes less what it pops, exactly for the instructions
// outside the SIMD prefix (blocks and the branches' targets aside: a
// block's results are counted at its end, and what follows a br, return
// or unreachable is counted as if reachable), 1 for v128.const and 0 for
// the other SIMD instructions (each pops at least as many values as it
// pushes). So the sum is never below the height.
func stackEffect(b []byte, m *Module, in instr) int64 {
	r := &reader{b: b, pos: in.pos + 1, end: in.end, section: "code"}
	switch op := b[in.pos]; {
	case op == 0x20, op == 0x23, op >= 0x41 && op <= 0x44, op == 0x3f, op == 0xd0, op == 0xd2:
		// local.get, global.get, the constants, memory.size, ref.null, ref.func
		return 1
	case op == 0x04, op == 0x0d, op == 0x0e, op == 0x1a, op == 0x21, op == 0x24:
		// if, br_if, br_table (their condition or index), drop, local.set, global.set
		return -1
	case op == 0x1b || op == 0x1c, op == 0x26, op >= 0x36 && op <= 0x3e:
		// select, table.set, stores
		return -2
	case op >= 0x46 && op <= 0x4f, op >= 0x51 && op <= 0x66, // comparisons
		op >= 0x6a && op <= 0x78, op >= 0x7c && op <= 0x8a, // integer binary operations
		op >= 0x92 && op <= 0x98, op >= 0xa0 && op <= 0xa6: // float binary operations
		return -1
	case op == 0xfc || op == 0xfd:
		sub, err := r.u32("opcode")
		switch {
		case err != nil:
		case op == 0xfd && sub == 12: // v128.const
			return 1
		case op == 0xfc && sub == 16: // table.size
			return 1
		case op == 0xfc && sub == 15: // table.grow
			return -1
		case op == 0xfc && (sub == 8 || sub == 10 || sub == 11 || sub == 12 || sub == 14 || sub == 17):
			// memory.init, memory.copy, memory.fill, table.init, table.copy, table.fill
			return -3
		}
	case op == 0x10 || op == 0x11:
		x, err := r.u32("index")
		if err != nil {
			return 0
		}
		if op == 0x10 {
			if ft, ok := m.FuncType(x); ok {
				return int64(len(ft.Results)) - int64(len(ft.Params))
			}
		} else if uint64(x) < uint64(len(m.Types)) {
			ft := m.Types[x]
			return int64(len(ft.Results)) - int64(len(ft.Params)) - 1 // and the table index
		}
	}
	return 0
}

// liveHeight is an open construct's operand stack height at its start
// (an upper bound) and its block type's arities.
type liveHeight struct{ start, params, results int64 }
