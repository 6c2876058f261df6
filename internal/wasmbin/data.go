package wasmbin

import (
	"math/bits"
	"slices"
)

// DataPageSize is the page size DataPages counts in: the host's 4 KiB
// pages, in which the engine finds what an execution changed.
const DataPageSize = 4096

// PageRange is the run of DataPageSize pages [First, End).
type PageRange struct{ First, End uint64 }

// DataPages returns the pages of memory 0 that the active data segments of
// b (decoded as m) write when the module is instantiated: sorted, merged
// runs, clipped to the first limit bytes (the memory's initial size: a
// segment beyond it fails instantiation). Everywhere else a fresh instance's
// memory is zero.
//
// known is false when a segment's offset is not something this evaluates
// (i32.const or i64.const combined by add, sub and mul: every offset
// wasmtime accepts for a canister, which can import no global): the
// segments could then write anywhere, and pages holds only the others.
//
// The work and the result are bounded by the data section's size: each
// segment takes at least two bytes and adds at most one run before merging.
func DataPages(b []byte, m *Module, limit uint64) (pages []PageRange, known bool, err error) {
	known = true
	endPage := limit / DataPageSize
	if limit%DataPageSize != 0 {
		endPage++
	}
	merged := 0 // pages[:merged] is sorted and merged
	for _, s := range m.Sections {
		if s.ID != SectionData {
			continue
		}
		r := &reader{b: b, pos: s.Start, end: s.End, section: "data"}
		n, err := r.count("data segment", int(^uint32(0)), 2) // flags and length at least (passive)
		if err != nil {
			return nil, false, err
		}
		for i := 0; i < n; i++ {
			off := r.pos
			flags, err := r.u32("data segment flags")
			if err != nil {
				return nil, false, err
			}
			memory := uint32(0)
			switch flags {
			case 0:
			case 1: // passive: written only by memory.init, which counts as a write
			case 2:
				if memory, err = r.u32("data segment memory"); err != nil {
					return nil, false, err
				}
			default:
				return nil, false, r.fail(off, ErrMalformed, "data segment %d: flags %d", i, flags)
			}
			var at uint64
			ok := false
			if flags != 1 {
				if at, ok, err = offsetExpr(r); err != nil {
					return nil, false, err
				}
			}
			size, err := r.u32("data segment size")
			if err != nil {
				return nil, false, err
			}
			if _, err := r.bytes(int(size), "data segment"); err != nil {
				return nil, false, err
			}
			switch {
			case flags == 1 || memory != 0 || size == 0:
				continue
			case !ok:
				known = false
				continue
			}
			end, carry := bits.Add64(at, uint64(size), 0)
			first, last := at/DataPageSize, end/DataPageSize
			if end%DataPageSize != 0 {
				last++
			}
			if carry != 0 || last > endPage {
				last = endPage
			}
			if first >= last {
				continue
			}
			if k := len(pages); k > 0 && pages[k-1].First <= first && first <= pages[k-1].End {
				pages[k-1].End = max(pages[k-1].End, last) // in order: the usual case
				continue
			}
			pages = append(pages, PageRange{first, last})
			if len(pages) >= 2*merged+1024 { // bounded by the distinct runs, whatever the order
				pages = mergeRanges(pages)
				merged = len(pages)
			}
		}
		if r.pos != r.end {
			return nil, false, r.fail(r.pos, ErrMalformed, "data section: %d bytes after the last segment", r.end-r.pos)
		}
	}
	return mergeRanges(pages), known, nil
}

// mergeRanges sorts runs of pages and merges those that overlap or touch.
func mergeRanges(rs []PageRange) []PageRange {
	slices.SortFunc(rs, func(a, b PageRange) int {
		switch {
		case a.First < b.First:
			return -1
		case a.First > b.First:
			return 1
		}
		return 0
	})
	out := rs[:0]
	for _, r := range rs {
		if k := len(out); k > 0 && r.First <= out[k-1].End {
			out[k-1].End = max(out[k-1].End, r.End)
			continue
		}
		out = append(out, r)
	}
	return out
}

// offsetExpr evaluates a data segment's offset expression up to and
// including its `end`. ok is false for an expression it does not evaluate
// (global.get, a type mismatch, anything not an integer constant); the
// expression is consumed all the same.
func offsetExpr(r *reader) (at uint64, ok bool, err error) {
	const what = "data segment offset"
	type value struct {
		v     uint64
		is64  bool
		known bool
	}
	var stack []value
	ok = true
	for {
		off := r.pos
		op, err := r.byte(what)
		if err != nil {
			return 0, false, err
		}
		switch op {
		case 0x0b: // end
			if len(stack) != 1 || !stack[0].known || !ok {
				return 0, false, nil
			}
			return stack[0].v, true, nil
		case 0x41: // i32.const
			v, err := r.s32(what + ": i32.const")
			if err != nil {
				return 0, false, err
			}
			stack = append(stack, value{v: uint64(uint32(v)), known: true})
		case 0x42: // i64.const
			v, err := r.s64(what + ": i64.const")
			if err != nil {
				return 0, false, err
			}
			stack = append(stack, value{v: uint64(v), is64: true, known: true})
		case 0x23: // global.get: an imported global's value, not known here
			if _, err := r.u32(what + ": global.get"); err != nil {
				return 0, false, err
			}
			stack = append(stack, value{})
			ok = false
		case 0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e: // i32/i64 add, sub, mul (extended-const)
			k := len(stack)
			if k < 2 {
				ok = false
				stack = append(stack[:0], value{})
				continue
			}
			a, b := stack[k-2], stack[k-1]
			is64 := op >= 0x7c
			res := value{is64: is64, known: a.known && b.known && a.is64 == is64 && b.is64 == is64}
			switch op {
			case 0x6a, 0x7c:
				res.v = a.v + b.v
			case 0x6b, 0x7d:
				res.v = a.v - b.v
			default:
				res.v = a.v * b.v
			}
			if !is64 {
				res.v = uint64(uint32(res.v))
			}
			stack = append(stack[:k-2], res)
		default:
			// Not an integer offset (wasmtime refuses the module), but
			// consumed by the rules every constant expression follows.
			r.pos = off
			if err := constExpr(r, what); err != nil {
				return 0, false, err
			}
			return 0, false, nil
		}
	}
}
