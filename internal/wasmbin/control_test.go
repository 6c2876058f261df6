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

// CountBodies counts every instruction of a body, its final end included,
// as the IC counts a function's size, beside what ControlInstructions
// counts.
func TestCountBodiesInstructions(t *testing.T) {
	b := wat(t, `(module
  (import "m" "f" (func))
  (func nop nop)
  (func (param i32) (drop (i32.add (local.get 0) (i32.const 1))) (if (local.get 0) (then nop)))
  (func)
  (memory 1)
  (func (drop (i32.load (i32.const 0)))))`)
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	c, err := CountBodies(b, m)
	if err != nil {
		t.Fatal(err)
	}
	// Function 2: local.get, i32.const, i32.add, drop, local.get, if,
	// nop, end, end. Its control instructions: the if and the two ends.
	// Function 4 is the heaviest: i32.const, i32.load (10), drop, end.
	want := BodyCounts{MostControl: 3, MostControlFunc: 2, Control: 6, MostInstructions: 9, MostInstructionsFunc: 2,
		MostWeight: 13, MostWeightFunc: 4}
	if c != want {
		t.Fatalf("%+v, want %+v", c, want)
	}
}
