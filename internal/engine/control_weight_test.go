package engine

import (
	"testing"

	"github.com/cordon-dev/cordon/internal/wasmbin"
)

// tableModule builds a module with a memory (64-bit if memory64), a
// funcref table of one entry and an exported update method whose body is
// unit repeated reps times.
func tableModule(reps int, unit []byte, memory64 bool) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{1, 0x60, 0, 0})...)
	m = append(m, section(3, []byte{1, 0})...)
	m = append(m, section(4, []byte{1, 0x70, 0, 1})...)
	mem := []byte{1, 0, 1}
	if memory64 {
		mem = []byte{1, 0x04, 1}
	}
	m = append(m, section(5, mem)...)
	m = append(m, updateExport(0)...)
	m = append(m, section(9, []byte{1, 0, 0x41, 0, 0x0b, 1, 0})...)
	body := []byte{0}
	for range reps {
		body = append(body, unit...)
	}
	body = append(body, 0x0b)
	code := append(appendLEB(appendLEB(nil, 1), uint64(len(body))), body...)
	return append(m, section(10, code)...)
}

// Compile bombs the bound on control instructions did not see: Cranelift's
// compile time grows with the square of a body's blocks, and call_indirect
// (table bounds, lazy table initialization, signature: a block each),
// table.get and table.set (bounds, lazy initialization) and the bulk memory
// and table operations (metering's check of their length: if … unreachable
// end) make blocks as branches do. One body of 60,000 call_indirect (300
// KB) took 57 s of CPU to compile here, 15,000 of them (75 KB) 6.6 s, and
// 120,000 memory.fill (1 MB) 20 s, when a body of 20,000 branches takes
// 2 s. They count among a body's control instructions,
// call_indirect as 4 and table.get/set as 2, so a body at the bound
// compiles in about the same time whatever it holds; the corpus's bodies
// have at most 50 call_indirect and 11 bulk operations.
func TestControlBoundSeesBlocksOfEveryKind(t *testing.T) {
	lim := DefaultModuleLimits()
	for _, tc := range []struct {
		name string
		unit []byte
		reps int
		m64  bool
	}{
		{"call_indirect", []byte{0x41, 0, 0x11, 0, 0}, 15_000, false},
		{"table.get", []byte{0x41, 0, 0x25, 0, 0x1a}, 30_000, false},
		{"table.set", []byte{0x41, 0, 0xd2, 0, 0x26, 0}, 30_000, false},
		{"memory.fill", []byte{0x41, 0, 0x41, 0, 0x41, 0, 0xfc, 0x0b, 0}, 120_000, false},
		{"memory.copy (64-bit)", []byte{0x42, 0, 0x42, 0, 0x42, 0, 0xfc, 0x0a, 0, 0}, 120_000, true},
	} {
		if _, _, err := Validate(tableModule(tc.reps, tc.unit, tc.m64), lim); err == nil {
			t.Errorf("a body of %d %s was accepted", tc.reps, tc.name)
		} else {
			refusedFor(t, tc.name, err, "limit per function")
		}
	}
	// What real code holds is far within.
	if _, _, err := Validate(tableModule(1000, []byte{0x41, 0, 0x11, 0, 0}, false), lim); err != nil {
		t.Fatalf("a body of 1000 call_indirect: %v", err)
	}
}

// brTableUnit is i32.const 0; br_table with targets targets (and the
// default), each the function's own block.
func brTableUnit(targets int) []byte {
	u := []byte{0x41, 0, 0x0e}
	for v := uint64(targets); ; {
		c := byte(v & 0x7f)
		if v >>= 7; v == 0 {
			u = append(u, c)
			break
		}
		u = append(u, c|0x80)
	}
	for range targets + 1 {
		u = append(u, 0)
	}
	return u
}

// One br_table is one control instruction, but each of its targets is an
// edge Cranelift gives a block of its own: a body of one br_table of
// 1,000,000 targets (1 MB) took 39 s of CPU to compile, of 100,000 targets
// 2 s. A br_table counts 1 and 1 more per BrTableTargetsPerWeight targets,
// so a body at the bound holds some 54,000 of them; the corpus's largest
// body counts 2,662 so (2,592 without its br_tables' targets).
func TestControlBoundSeesBrTableTargets(t *testing.T) {
	lim := DefaultModuleLimits()
	if _, _, err := Validate(tableModule(1, brTableUnit(1_000_000), false), lim); err == nil {
		t.Error("a body of one br_table of 1,000,000 targets was accepted")
	} else {
		refusedFor(t, "br_table", err, "limit per function")
	}
	per := (lim.MaxFuncControl - 2) * wasmbin.BrTableTargetsPerWeight // the body's end and the br_table count 1 each
	if _, _, err := Validate(tableModule(1, brTableUnit(per), false), lim); err != nil {
		t.Fatalf("a br_table of %d targets: %v", per, err)
	}
	_, _, err := Validate(tableModule(1, brTableUnit(per+wasmbin.BrTableTargetsPerWeight), false), lim)
	refusedFor(t, "a br_table one weight beyond the bound", err, "limit per function")
}
