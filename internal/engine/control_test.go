package engine

import (
	"errors"
	"strings"
	"testing"
)

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
	leb := func(b []byte, v uint64) []byte {
		for {
			c := byte(v & 0x7f)
			if v >>= 7; v == 0 {
				return append(b, c)
			}
			b = append(b, c|0x80)
		}
	}
	section := func(id byte, content []byte) []byte {
		return append(leb([]byte{id}, uint64(len(content))), content...)
	}
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{2, 0x60, 1, 0x7f, 0, 0x60, 0, 0})...)
	fs := leb(nil, uint64(funcs+1))
	for range funcs {
		fs = append(fs, 0)
	}
	m = append(m, section(3, append(fs, 1))...)
	name := "canister_update f"
	ex := append(leb(leb(nil, 1), uint64(len(name))), name...)
	m = append(m, section(7, append(leb(ex, 0), leb(nil, uint64(funcs))...))...)
	body := []byte{0} // no locals
	for range reps {
		body = append(body, unit...)
	}
	body = append(body, 0x0b)
	code := leb(nil, uint64(funcs+1))
	for range funcs {
		code = append(leb(code, uint64(len(body))), body...)
	}
	code = append(code, 2, 0, 0x0b)
	return append(m, section(10, code)...)
}

// refusedFor checks err is a refusal of the module that says why.
func refusedFor(t *testing.T, what string, err error, reason string) {
	t.Helper()
	if !errors.Is(err, ErrInvalidModule) || !strings.Contains(err.Error(), reason) {
		t.Fatalf("%s: %v, want a refusal for its %s", what, err, reason)
	}
}

// A compile bomb: one function of 120,000 sibling blocks, each with a
// br_if (840 KB). Metering updates the counter after every br_if and end,
// and Cranelift took 35 s of CPU to compile it (2 s unmetered). It is
// refused by validation, before it compiles; a body at the per-function
// bound is valid, one more control instruction is not; and so for the
// bound on the whole module.
func TestControlInstructionsBounded(t *testing.T) {
	lim := DefaultModuleLimits()
	bomb := controlModule(1, 120_000, blockBrIfUnit)
	if _, _, err := Validate(bomb, lim); err == nil {
		t.Fatal("Validate accepted the compile bomb")
	} else {
		refusedFor(t, "Validate", err, "function 0 has 240001 control instructions")
	}
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Compile(bomb, lim)
	refusedFor(t, "Compile", err, "control instructions")

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
