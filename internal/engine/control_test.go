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
	body := []byte{0} // no locals
	for range reps {
		body = append(body, unit...)
	}
	return paramFuncsModule(funcs, append(body, 0x0b))
}

// paramFuncsModule builds a module of funcs functions (i32) -> (), each
// with body (its local declarations, its code and its end), plus an
// exported update method () -> () whose body is its end alone.
func paramFuncsModule(funcs int, body []byte) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{2, 0x60, 1, 0x7f, 0, 0x60, 0, 0})...)
	fs := appendLEB(nil, uint64(funcs+1))
	for range funcs {
		fs = append(fs, 0)
	}
	m = append(m, section(3, append(fs, 1))...)
	m = append(m, updateExport(uint64(funcs))...)
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
	funcs := lim.MaxControl/(per+1) + 1 // × (per+1), plus the method's 1
	_, _, err = Validate(controlModule(funcs, per, brIfUnit), lim)
	refusedFor(t, "a module beyond the bound", err, "module has")
	if _, _, err := Validate(controlModule(funcs-1, per, brIfUnit), lim); err != nil {
		t.Fatalf("a module within the bound: %v", err)
	}
}

// The default bounds are what keeps a whole module's compile time in
// seconds: it grows about linearly with the module's control instructions
// (some 80 µs of CPU each here), and a module at the former bounds (20,000
// a body, 1 M in all) compiled in 88 s, 250,000 in 16 s; 500,000 is the
// bound now. A module one
// beyond the module's bound, every body within its own, and a body one
// beyond the function's bound are refused before they compile, saying
// which limit; a module exactly at both is valid.
func TestDefaultControlBounds(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	lim := DefaultModuleLimits()
	// controlModule(funcs, reps): funcs × (reps+1) + 1 control instructions.
	refusedBeforeCompile(t, e, controlModule(25, 19_999, brIfUnit), lim,
		"module has 500001 control instructions")
	refusedBeforeCompile(t, e, controlModule(25, 19_999, brIfUnit), lim, "the limit is 500000")
	if _, _, err := Validate(controlModule(31, 16_128, brIfUnit), lim); err != nil {
		t.Fatalf("a module of 500,000 control instructions: %v", err)
	}
	refusedBeforeCompile(t, e, controlModule(1, 20_000, brIfUnit), lim,
		"function 0 has 20001 control instructions")
	refusedBeforeCompile(t, e, controlModule(1, 20_000, brIfUnit), lim, "the limit per function is 20000")
	if _, _, err := Validate(controlModule(1, 19_999, brIfUnit), lim); err != nil {
		t.Fatalf("a body of 20,000 control instructions: %v", err)
	}
}

// corpusModules reads every module of the corpus the tests use: the shared
// canisters, dfx's (decompressed) and the 64-bit examples.
func corpusModules(t *testing.T) map[string][]byte {
	t.Helper()
	var files []string
	for _, g := range []string{
		filepath.Join("..", "..", "..", "shared", "canisters", "*.wasm"),
		filepath.Join("..", "..", "testdata", "dfinity-sdk", "*.wasm*"),
		filepath.Join("..", "..", "examples", "*.wasm"),
	} {
		m, err := filepath.Glob(g)
		if err != nil || len(m) == 0 {
			t.Fatalf("corpus %s: %v (%d modules)", g, err, len(m))
		}
		files = append(files, m...)
	}
	out := make(map[string][]byte, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".gz") {
			zr, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if b, err = io.ReadAll(zr); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		}
		out[filepath.Base(f)] = b
	}
	return out
}

// Every corpus module is valid under the default limits, its largest body
// at most a fifth of the function's bound and its control instructions at
// most 1/3.5 of the module's (RATIONALE: dfx's ui canister has the most in
// a body, 3,171 with its calls; the asset canister in all, 88,025).
func TestControlBoundsCorpusMargin(t *testing.T) {
	lim := DefaultModuleLimits()
	for name, b := range corpusModules(t) {
		if _, _, err := Validate(b, lim); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		m, err := wasmbin.Decode(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		most, at, total, err := wasmbin.ControlInstructions(b, m)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if most*5 > uint64(lim.MaxFuncControl) {
			t.Errorf("%s: function %d has %d control instructions, more than a fifth of the limit %d", name, at, most, lim.MaxFuncControl)
		}
		if total*7 > uint64(lim.MaxControl)*2 {
			t.Errorf("%s: %d control instructions, more than 1/3.5 of the limit %d", name, total, lim.MaxControl)
		}
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

// hostCallsModule is a module of funcs functions (i32) -> () that each
// call ic0.msg_arg_data_size calls times, adding the results up, plus an
// exported update method: calls + 1 control instructions a body (the
// calls and its end), function 0 being the import.
func hostCallsModule(funcs, calls int) []byte {
	body := []byte{0, 0x41, 0} // no locals; i32.const 0
	for range calls {
		body = append(body, 0x10, 0, 0x6a) // call 0; i32.add
	}
	body = append(body, 0x1a, 0x0b)
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{3, 0x60, 0, 1, 0x7f, 0x60, 1, 0x7f, 0, 0x60, 0, 0})...)
	imp := append([]byte{1, 3, 'i', 'c', '0', byte(len("msg_arg_data_size"))}, "msg_arg_data_size"...)
	m = append(m, section(2, append(imp, 0, 0))...)
	fs := appendLEB(nil, uint64(funcs+1))
	for range funcs {
		fs = append(fs, 1)
	}
	m = append(m, section(3, append(fs, 2))...)
	m = append(m, updateExport(uint64(funcs+1))...)
	code := appendLEB(nil, uint64(funcs+1))
	for range funcs {
		code = append(appendLEB(code, uint64(len(body))), body...)
	}
	return append(m, section(10, append(code, 2, 0, 0x0b))...)
}

// Calls had no bound: a call is no block, but Cranelift spends on it about
// what it spends on a branch (62,500 calls of an ic0 function in a body,
// 187 KB, compiled in 7 s; 125,000 in 14 s), so a module of a few MB of
// calls, within every bound, compiled for minutes (past the compiler
// sandbox's 3 minutes; in process, the node's CPU). A call now counts as
// a control instruction: such a body is refused before it compiles, and
// so is a module of bodies each within the function's bound beyond the
// module's; a body at the bound is valid.
func TestControlBoundCountsCalls(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	lim := DefaultModuleLimits()
	refusedBeforeCompile(t, e, hostCallsModule(1, 62_500), lim, "function 1 has 62501 control instructions")
	refusedBeforeCompile(t, e, hostCallsModule(26, 19_999), lim, "module has 520001 control instructions")
	if _, _, err := Validate(hostCallsModule(1, 19_999), lim); err != nil {
		t.Fatalf("a body of 19,999 calls: %v", err)
	}
}
