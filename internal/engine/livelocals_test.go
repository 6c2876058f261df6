package engine

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/wasmbin"
)

// Hostile bodies for liveLocalsLimits: each is one function (i32) -> ()
// declaring i64 locals 1 to v (0 is the parameter).

func sleb(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// setLocals sets locals 1 to v to distinct values Cranelift cannot fold:
// the parameter plus j.
func setLocals(b []byte, v int) []byte {
	for j := 1; j <= v; j++ {
		b = append(b, 0x20, 0, 0xad, 0x42) // local.get 0; i64.extend_i32_u; i64.const
		b = sleb(b, int64(j))
		b = appendLEB(append(b, 0x7c, 0x21), uint64(j)) // i64.add; local.set j
	}
	return b
}

// sumLocals reads locals 1 to v, adds them up and drops the sum.
func sumLocals(b []byte, v int) []byte {
	b = append(b, 0x20, 1)
	for j := 2; j <= v; j++ {
		b = append(appendLEB(append(b, 0x20), uint64(j)), 0x7c)
	}
	return append(b, 0x1a)
}

// rewriteLocals gives locals 1 to v new constants (from k on).
func rewriteLocals(b []byte, v int, k *int) []byte {
	for j := 1; j <= v; j++ {
		*k++
		b = appendLEB(append(sleb(append(b, 0x42), int64(*k)), 0x21), uint64(j))
	}
	return b
}

// ifsBody is the bomb the bound was made for: r ifs each rewriting locals
// 1 to s, each followed by reading 1 to k. Each if's join merges the s
// locals on two edges.
func ifsBody(r, s, k int) []byte {
	var b []byte
	n := 0
	for range r {
		b = rewriteLocals(append(b, 0x20, 0, 0x04, 0x40), s, &n) // local.get 0; if
		b = sumLocals(append(b, 0x0b), k)
	}
	return b
}

// edgesBody is one block holding e times (rewrite locals 1 to v; br_if
// to the block's end), then locals 1 to v read: v merges on e+1 edges.
func edgesBody(v, e int) []byte {
	b := append(setLocals(nil, v), 0x02, 0x40)
	n := 0
	for range e {
		b = append(rewriteLocals(b, v, &n), 0x20, 0, 0x0d, 0)
	}
	return sumLocals(append(b, 0x0b), v)
}

// spanBody sets locals 1 to v, then holds r blocks with a br_if, then
// reads the locals: each live across the 2r block boundaries.
func spanBody(v, r int) []byte {
	b := setLocals(nil, v)
	for range r {
		b = append(b, blockBrIfUnit...)
	}
	return sumLocals(b, v)
}

// stackSpanBody pushes v values Cranelift cannot fold, then holds r
// blocks with a br_if, then adds the values up: each on the operand stack
// across the 2r block boundaries.
func stackSpanBody(v, r int) []byte {
	var b []byte
	for j := 1; j <= v; j++ {
		b = append(sleb(append(b, 0x20, 0, 0xad, 0x42), int64(j)), 0x7c)
	}
	for range r {
		b = append(b, blockBrIfUnit...)
	}
	for j := 2; j <= v; j++ {
		b = append(b, 0x7c)
	}
	return append(b, 0x1a)
}

// liveLocalsModule is funcs functions (i32) -> () declaring locals i64
// locals, each of the given body, plus an exported update method.
func liveLocalsModule(funcs int, locals uint64, body []byte) []byte {
	fb := append(appendLEB([]byte{1}, locals), 0x7e)
	return paramFuncsModule(funcs, append(append(fb, body...), 0x0b))
}

// Compile bombs the bounds on bytes, control instructions and loops did
// not see: register allocation grows with the square of the values that
// merge where paths join, and SSA construction with the block boundaries
// values are live across. Uncapped, the first took 13 s of CPU to compile
// here (the 200-if version in RATIONALE 25 s), the second 4.5 s, the
// third made Cranelift panic (25 M SSA values) and the fourth took 6.5 s.
// Validation refuses them before anything compiles, naming the limit.
func TestLiveLocalsBounded(t *testing.T) {
	lim := DefaultModuleLimits()
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, reason string
		wasm         []byte
	}{
		// 100 ifs each rewriting 500 locals, 1,000 read after each (717 KB,
		// 200 control instructions): 100,000 merges.
		{"ifs", "too many values merge", liveLocalsModule(1, 1000, ifsBody(100, 500, 1000))},
		// One block, 700 br_ifs each after rewriting 100 locals: 70,100.
		{"edges", "too many values merge", liveLocalsModule(1, 100, edgesBody(100, 700))},
		// 5,000 locals across 10,000 boundaries (105 KB).
		{"spans", "live across too many blocks", liveLocalsModule(1, 5000, spanBody(5000, 5000))},
		// 20,000 values on the operand stack across 12,000 boundaries (210
		// KB, 12,001 control instructions, within their bound).
		{"stack", "live across too many blocks", liveLocalsModule(1, 0, stackSpanBody(20_000, 6_000))},
	} {
		_, _, err := Validate(tc.wasm, lim)
		refusedFor(t, tc.name, err, tc.reason)
		if !strings.Contains(err.Error(), "the limit per function is") {
			t.Errorf("%s: %v, want the limit named", tc.name, err)
		}
		_, err = e.Compile(tc.wasm, lim)
		refusedFor(t, tc.name+" (Compile)", err, tc.reason)
	}

	// Within the per-function bound: 59 ifs of 500 locals (59,000).
	if _, _, err := Validate(liveLocalsModule(1, 500, ifsBody(59, 500, 500)), lim); err != nil {
		t.Fatalf("59 ifs of 500 locals: %v", err)
	}
	// The module's bound on the merges' squares: 3 bodies of 45,000 are
	// beyond it, 2 are not.
	_, _, err = Validate(liveLocalsModule(3, 500, ifsBody(45, 500, 500)), lim)
	refusedFor(t, "3 bodies of 45,000 merges", err, "module: too many values merge")
	if _, _, err := Validate(liveLocalsModule(2, 500, ifsBody(45, 500, 500)), lim); err != nil {
		t.Fatalf("2 bodies of 45,000 merges: %v", err)
	}
	// And on spans: 700 locals across 2,000 boundaries (1.4 M) a body; 8
	// bodies are beyond it, 7 are not.
	_, _, err = Validate(liveLocalsModule(8, 700, spanBody(700, 1000)), lim)
	refusedFor(t, "8 bodies of 1.4 M spans", err, "module: its locals live across too many blocks")
	if _, _, err := Validate(liveLocalsModule(7, 700, spanBody(700, 1000)), lim); err != nil {
		t.Fatalf("7 bodies of 1.4 M spans: %v", err)
	}
}

// Every module of the corpus is within the bounds (the weights themselves
// are in RATIONALE).
func TestLiveLocalsCorpusWithin(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "..", "shared", "canisters", "*.wasm"))
	if err != nil || len(files) == 0 {
		t.Fatalf("corpus: %v (%d modules)", err, len(files))
	}
	sdk, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "dfinity-sdk", "*.wasm*"))
	if len(sdk) == 0 {
		t.Fatal("no dfinity-sdk modules")
	}
	for _, f := range append(files, sdk...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".gz") {
			zr, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if b, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		if _, _, err := Validate(b, DefaultModuleLimits()); err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
		}
	}
}

// memory64LoadsBody is a body of a function (i64) -> () that loads v
// values from memory 0 at the parameter plus offsets and adds them up as
// it goes: 3 instructions a load.
func memory64LoadsBody(v int) []byte {
	b := []byte{0} // no locals
	for j := 1; j <= v; j++ {
		b = appendLEB(append(b, 0x20, 0, 0x29, 0x03), uint64(8*(j%4096))) // local.get 0; i64.load offset
		if j > 1 {
			b = append(b, 0x7c) // i64.add
		}
	}
	return append(b, 0x1a, 0x0b)
}

// memory64Module is a module of one function (i64) -> () of body, a
// 64-bit memory and an exported update method.
func memory64Module(body []byte) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{2, 0x60, 1, 0x7e, 0, 0x60, 0, 0})...)
	m = append(m, section(3, []byte{2, 0, 1})...)
	m = append(m, section(5, []byte{1, 0x04, 1})...)
	m = append(m, updateExport(1)...)
	code := append(appendLEB([]byte{2}, uint64(len(body))), body...)
	return append(m, section(10, append(code, 2, 0, 0x0b))...)
}

// Compile bombs within every other bound: 400,000 values pushed onto the
// operand stack, then added up (2,000,001 instructions, 3.6 MB, no
// control instruction, no local), and 333,000 64-bit loads added up
// (999,001 instructions, 4 M weighed). Cranelift made some 16.8 M values
// of each and panicked (an index out of bounds in its elaboration), which
// aborts the process that compiles: in process, the node. Validation
// refuses them before anything compiles, the first by the IC's bound on a
// body's instructions (1 M), the second, within it, by its weight; a
// body at the bound is valid, one more instruction is not, and the
// corpus's heaviest body is well below.
func TestFuncInstructionsBounded(t *testing.T) {
	lim := DefaultModuleLimits()
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	// stackSpanBody(v, 0) is 5v+1 instructions with the function's end.
	refusedBeforeCompile(t, e, liveLocalsModule(1, 0, stackSpanBody(400_000, 0)), lim,
		"function 0 has 2000001 instructions, the limit per function is 1000000")
	refusedBeforeCompile(t, e, memory64Module(memory64LoadsBody(333_000)), lim,
		"function 0 has instructions of weight 3996001")
	_, _, err = Validate(liveLocalsModule(1, 0, stackSpanBody(100_000, 0)), lim)
	refusedFor(t, "a body of weight 500,001", err, "function 0 has instructions of weight 500001")
	if _, _, err := Validate(liveLocalsModule(1, 0, append(stackSpanBody(99_999, 0), 0x01, 0x01, 0x01, 0x01)), lim); err != nil {
		t.Fatalf("a body of weight 500,000: %v", err)
	}
	for name, b := range corpusModules(t) {
		m, err := wasmbin.Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		most, _, err := wasmbin.FuncInstructions(b, m)
		if err != nil || most > maxFuncInstructions/3 {
			t.Errorf("%s: heaviest body weighs %d (%v), want at most %d", name, most, err, maxFuncInstructions/3)
		}
	}
}
