package wasmbin

import (
	"errors"
	"math/bits"
)

// LoopLocals decodes m's function bodies (b is the module m was decoded
// from) and weighs what their loops cost Cranelift's SSA construction. A
// loop's header stays open (unsealed) until the loop's end, so every local
// read or written inside the loop becomes a parameter of its header, and
// of every enclosing loop's; as the loop ends, the parameters found
// trivial are removed one at a time, each removal shifting the rest. So a
// loop costs the square of the distinct locals (parameters included) its
// body touches: one body of 500 nested loops each touching 10,000 locals
// (41 KB, 1,000 control instructions) took 8 minutes of CPU to compile. A
// body's weight is the sum of its loops' squares.
//
// LoopLocals returns the largest weight of a body, the index of its
// function (imports counted, as in calls), and the sum over all bodies.
// It stops at the first body heavier than funcLimit, or once the sum
// passes moduleLimit: the weights returned are then above those limits,
// not exact. Counting costs at most the weights counted, so bounding them
// bounds the count's own work.
func LoopLocals(b []byte, m *Module, funcLimit, moduleLimit uint64) (most uint64, mostFunc uint32, total uint64, err error) {
	type open struct {
		seq      uint64 // the loop's start: loops started in the body so far
		distinct uint64 // locals touched in it so far
	}
	var (
		loops []open
		last  []uint64 // per local: seq when last touched (0: not yet)
	)
	err = forEachBody(b, m, func(i int, d *bodyDecoder, _, end int) error {
		if _, _, err := d.localDecls(); err != nil {
			return err
		}
		last = append(last[:0], make([]uint64, d.locals)...)
		loops = loops[:0]
		var seq, w, work uint64
		for w <= funcLimit && work <= funcLimit {
			top := d.ctl[len(d.ctl)-1]
			in, done, err := d.next()
			if err != nil {
				return err
			}
			switch op := b[in.pos]; {
			case in.kind == kLoop:
				seq++
				loops = append(loops, open{seq: seq})
			case in.kind == kEnd && top == 'l':
				n := loops[len(loops)-1].distinct
				loops = loops[:len(loops)-1]
				w = satAdd(w, satMul(n, n))
			case op >= 0x20 && op <= 0x22: // local.get, local.set, local.tee
				x, err := (&reader{b: b, pos: in.pos + 1, end: in.end, section: "code"}).u32("local index")
				if err != nil {
					return err
				}
				// Touched after a loop started, a local was counted in
				// it and in the loops around it (they nest): only the
				// innermost loops started since count it now.
				for k := len(loops) - 1; k >= 0 && loops[k].seq > last[x]; k-- {
					loops[k].distinct++
					work++
				}
				last[x] = seq
			}
			if done {
				if d.r.pos != end {
					return d.r.fail(d.r.pos, ErrMalformed, "function body %d: %d bytes after the final end", i, end-d.r.pos)
				}
				break
			}
		}
		w = max(w, work) // stopped early: above funcLimit
		if w > most {
			most, mostFunc = w, m.NumImportedFuncs+uint32(i)
		}
		total = satAdd(total, w)
		if w > funcLimit || total > moduleLimit {
			return errStop
		}
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return most, mostFunc, total, err
}

// errStop ends a walk over the bodies early.
var errStop = errors.New("stop")

func satAdd(a, b uint64) uint64 {
	s, c := bits.Add64(a, b, 0)
	if c != 0 {
		return ^uint64(0)
	}
	return s
}

func satMul(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi != 0 {
		return ^uint64(0)
	}
	return lo
}
