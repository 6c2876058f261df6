package wasmbin

import "testing"

// ControlInstructions counts, per body, the instructions after which
// metering starts a run, and calls (CallWeight): not block or nop.
func TestControlInstructions(t *testing.T) {
	b := wat(t, `(module
  (import "m" "f" (func $imp))
  (func $a)
  (func $b (param i32)
    (block (br_if 0 (local.get 0)))
    (loop (nop))
    (if (local.get 0) (then (call $imp)) (else (nop)))
    (block (br_table 0 0 (local.get 0)))
    (block (br 0))
    (call $a)
    (if (local.get 0) (then (unreachable)))
    (return)))`)
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	most, at, total, err := ControlInstructions(b, m)
	if err != nil {
		t.Fatal(err)
	}
	// $b: br_if end, loop end, if else end, br_table end, br end,
	// if unreachable end, return end, and its two calls; $a: its end.
	if most != 18 || at != 2 || total != 19 {
		t.Fatalf("most %d (function %d), total %d; want 18 (function 2), 19", most, at, total)
	}
}
