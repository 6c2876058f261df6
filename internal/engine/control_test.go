package engine

import "testing"

// Bodies of controlModule: each unit repeated in one function (i32) -> ().
var (
	// block; local.get 0; br_if 0; end: two control instructions (br_if,
	// end), one counter update, in 7 bytes.
	blockBrIfUnit = []byte{0x02, 0x40, 0x20, 0, 0x0d, 0, 0x0b}
	// local.get 0; br_if 0: one control instruction, one counter update, in
	// 4 bytes (the densest).
	brIfUnit = []byte{0x20, 0, 0x0d, 0}
)

// controlModule builds a module of funcs functions (i32) -> () whose body
// is unit repeated reps times, plus an exported update method (one more
// body, one control instruction: its end), so it installs as a canister.
// Each body has reps × (unit's control instructions) + 1 (its end).
func controlModule(funcs, reps int, unit []byte) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{2, 0x60, 1, 0x7f, 0, 0x60, 0, 0})...)
	fs := appendLEB(nil, uint64(funcs+1))
	for range funcs {
		fs = append(fs, 0)
	}
	m = append(m, section(3, append(fs, 1))...)
	m = append(m, updateExport(uint64(funcs))...)
	body := []byte{0} // no locals
	for range reps {
		body = append(body, unit...)
	}
	body = append(body, 0x0b)
	code := appendLEB(nil, uint64(funcs+1))
	for range funcs {
		code = append(appendLEB(code, uint64(len(body))), body...)
	}
	code = append(code, 2, 0, 0x0b)
	return append(m, section(10, code)...)
}

// A compile bomb: one function of 120,000 sibling blocks, each with a
// br_if (840 KB). Metering updates the counter after every br_if and end,
// and Cranelift took 35 s of CPU to compile it (2 s unmetered). It is
// refused by validation, before it compiles; a body at the per-function
// bound is valid, one more control instruction is not; and so for the
// bound on the whole module.
func TestControlInstructionsBounded(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	lim := DefaultModuleLimits()
	refusedBeforeCompile(t, e, controlModule(1, 120_000, blockBrIfUnit), lim, "function 0 has 240001 control instructions")

	// The per-function bound, exactly and one beyond.
	if _, _, err := Validate(controlModule(1, lim.MaxFuncControl-1, brIfUnit), lim); err != nil {
		t.Fatalf("a body of %d control instructions: %v", lim.MaxFuncControl, err)
	}
	_, _, err = Validate(controlModule(1, lim.MaxFuncControl, brIfUnit), lim)
	refusedFor(t, "a body one beyond the bound", err, "limit per function")

	// The module's bound: bodies each within theirs, too many together.
	per := lim.MaxFuncControl / 2
	funcs := lim.MaxControl / per // × (per+1), plus the method's 1
	_, _, err = Validate(controlModule(funcs, per, brIfUnit), lim)
	refusedFor(t, "a module beyond the bound", err, "module has")
	if _, _, err := Validate(controlModule(funcs-1, per, brIfUnit), lim); err != nil {
		t.Fatalf("a module within the bound: %v", err)
	}
}

// BenchmarkCompileControl compiles (metered, as the host does) the largest
// body the bounds allow in the densest layout, and a module of many small
// such bodies: what the bounds leave of the bomb.
func BenchmarkCompileControl(b *testing.B) {
	e, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	lim := DefaultModuleLimits()
	for _, bm := range []struct {
		name string
		wasm []byte
	}{
		{"body at the bound", controlModule(1, lim.MaxFuncControl-1, brIfUnit)},
		{"20 bodies of 10000", controlModule(20, 10_000-1, brIfUnit)},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.SetBytes(int64(len(bm.wasm)))
			for b.Loop() {
				if _, err := e.Compile(bm.wasm, lim); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
