package engine

import (
	"testing"

	"github.com/cordon-dev/cordon/internal/wasmbin"
)

// loopLocalsModule builds a module of funcs functions () -> (), each
// declaring locals i64 locals and holding depth nested loops whose
// innermost body reads the first touched locals (local.get; drop), plus
// an exported update method so it installs as a canister.
func loopLocalsModule(funcs int, locals uint64, depth, touched int) []byte {
	body := append(appendLEB([]byte{1}, locals), 0x7e)
	for range depth {
		body = append(body, 0x03, 0x40)
	}
	for i := range touched {
		body = append(appendLEB(append(body, 0x20), uint64(i)), 0x1a)
	}
	for range depth {
		body = append(body, 0x0b)
	}
	return voidFuncsModule(funcs, append(body, 0x0b))
}

// A compile bomb the control-instruction bound does not see: 500 nested
// loops whose innermost body reads 10,000 locals (41 KB, 1,000 control
// instructions). Each loop header gets a parameter per local touched
// inside it, and Cranelift removes the trivial ones one at a time,
// shifting the rest: it took 8 minutes of CPU to compile. It is refused
// by validation, before it compiles; a loop at the per-function bound is
// valid, one more local is not; and so for the module's bound.
func TestLoopLocalsBounded(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	lim := DefaultModuleLimits()
	refusedBeforeCompile(t, e, loopLocalsModule(1, 10_000, 500, 10_000), lim, "loops touch too many locals")

	// One loop touching n locals weighs n²: at the bound, and one beyond.
	at := 4472 // 4472² ≤ maxFuncLoopLocals < 4473²
	if _, _, err := Validate(loopLocalsModule(1, 5000, 1, at), lim); err != nil {
		t.Fatalf("a loop touching %d locals: %v", at, err)
	}
	_, _, err = Validate(loopLocalsModule(1, 5000, 1, at+1), lim)
	refusedFor(t, "a loop one local beyond the bound", err, "limit per function")

	// The module's bound: bodies each within theirs, too many together.
	per := uint64(4000 * 4000)
	funcs := int(maxLoopLocals / per) // 12 of them fit
	_, _, err = Validate(loopLocalsModule(funcs+1, 4000, 1, 4000), lim)
	refusedFor(t, "a module beyond the bound", err, "module: its loops")
	if _, _, err := Validate(loopLocalsModule(funcs, 4000, 1, 4000), lim); err != nil {
		t.Fatalf("a module within the bound: %v", err)
	}
}

// The weight counts each loop's distinct locals, in nested and sibling
// loops, whichever instruction touches them.
func TestLoopLocalsWeight(t *testing.T) {
	for _, tc := range []struct {
		name string
		body []byte // after the local declarations, before the final end
		want uint64
	}{
		{"no loop", []byte{0x20, 0, 0x1a, 0x20, 1, 0x1a}, 0},
		{"one loop, a local read twice", []byte{0x03, 0x40, 0x20, 0, 0x1a, 0x20, 0, 0x1a, 0x20, 1, 0x1a, 0x0b}, 4},
		{"set and tee count", []byte{0x03, 0x40, 0x42, 0, 0x21, 0, 0x42, 0, 0x22, 1, 0x1a, 0x0b}, 4},
		// Outer touches 0 and 1, inner 1 and 0: 2² + 2².
		{"nested", []byte{0x03, 0x40, 0x20, 0, 0x1a, 0x03, 0x40, 0x20, 1, 0x1a, 0x20, 0, 0x1a, 0x0b, 0x0b}, 4 + 4},
		// Two siblings each touching 0: 1 + 1; touched before them: still counted in each.
		{"siblings", []byte{0x20, 0, 0x1a, 0x03, 0x40, 0x20, 0, 0x1a, 0x0b, 0x03, 0x40, 0x20, 0, 0x1a, 0x0b}, 2},
		// In a block and an if inside the loop: still the loop's.
		{"blocks inside", []byte{0x03, 0x40, 0x02, 0x40, 0x20, 0, 0x1a, 0x0b, 0x41, 0, 0x04, 0x40, 0x20, 1, 0x1a, 0x0b, 0x0b}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// (func (param i64) (local i64 i64)): locals 0 (the param), 1, 2.
			body := append([]byte{1, 2, 0x7e}, tc.body...)
			body = append(body, 0x0b)
			m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0, 1, 5, 1, 0x60, 1, 0x7e, 0, 3, 2, 1, 0}
			m = append(m, 10, byte(len(body)+2), 1, byte(len(body)))
			m = append(m, body...)
			mod, err := wasmbin.Decode(m)
			if err != nil {
				t.Fatal(err)
			}
			most, _, total, err := wasmbin.LoopLocals(m, mod, 1<<40, 1<<40)
			if err != nil || most != tc.want || total != tc.want {
				t.Fatalf("weight %d (total %d, %v), want %d", most, total, err, tc.want)
			}
		})
	}
}
