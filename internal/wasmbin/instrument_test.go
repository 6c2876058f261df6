package wasmbin

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

const startWAT = `(module
  (import "env" "g" (global $ig i32))
  (global $a (mut i32) (i32.const 1))
  (global $b i64 (i64.const 7))
  (global $c (mut f64) (f64.const 1.5))
  (memory 1)
  (func $start
    (global.set $a (i32.add (global.get $ig) (i32.const 41)))
    (global.set $c (f64.const 2.5))
    (i32.store (i32.const 16) (i32.const 99)))
  (start $start)
  (func (export "get") (result i32) (global.get $a))
)`

// TestInstrumentSemantics runs an instrumented module in wasmtime: the start
// function must not run on instantiation, must be callable through its
// export, and the exported globals must be the module's own.
func TestInstrumentSemantics(t *testing.T) {
	b := wat(t, startWAT)
	out, info, err := Instrument(b)
	if err != nil {
		t.Fatal(err)
	}
	checkInstrumented(t, b, out, info.Module, info)
	wantGlobals := []InstrumentedGlobal{
		{1, "__cordon_global_1", GlobalType{I32, true}},
		{2, "__cordon_global_2", GlobalType{I64, false}},
		{3, "__cordon_global_3", GlobalType{F64, true}},
	}
	if fmt.Sprint(info.Globals) != fmt.Sprint(wantGlobals) {
		t.Errorf("globals %+v", info.Globals)
	}
	if info.StartExport != StartExportName || info.StartFunc != 0 || info.MemoryExport != MemoryExportName {
		t.Errorf("info %+v", info)
	}

	engine := newEngine()
	instantiate := func(wasm []byte) (*wasmtime.Store, *wasmtime.Instance) {
		store := wasmtime.NewStore(engine)
		mod, err := wasmtime.NewModule(engine, wasm)
		if err != nil {
			t.Fatal(err)
		}
		g, err := wasmtime.NewGlobal(store, wasmtime.NewGlobalType(wasmtime.NewValType(wasmtime.KindI32), false), wasmtime.ValI32(1))
		if err != nil {
			t.Fatal(err)
		}
		inst, err := wasmtime.NewInstance(store, mod, []wasmtime.AsExtern{g})
		if err != nil {
			t.Fatal(err)
		}
		return store, inst
	}
	get := func(store *wasmtime.Store, inst *wasmtime.Instance) int32 {
		v, err := inst.GetFunc(store, "get").Call(store)
		if err != nil {
			t.Fatal(err)
		}
		return v.(int32)
	}

	// Control: the original runs its start function on instantiation.
	store, inst := instantiate(b)
	if got := get(store, inst); got != 42 {
		t.Fatalf("original: get() = %d, want 42", got)
	}

	store, inst = instantiate(out)
	global := func(name string) wasmtime.Val {
		ext := inst.GetExport(store, name)
		if ext == nil || ext.Global() == nil {
			t.Fatalf("no exported global %s", name)
		}
		return ext.Global().Get(store)
	}
	mem := inst.GetExport(store, MemoryExportName).Memory().UnsafeData(store)
	if got := get(store, inst); got != 1 {
		t.Errorf("instrumented: start ran on instantiation (get() = %d)", got)
	}
	if a, bv, c := global("__cordon_global_1").I32(), global("__cordon_global_2").I64(), global("__cordon_global_3").F64(); a != 1 || bv != 7 || c != 1.5 {
		t.Errorf("initial globals %d %d %v", a, bv, c)
	}
	if mem[16] != 0 {
		t.Errorf("memory written before start")
	}
	if _, err := inst.GetFunc(store, StartExportName).Call(store); err != nil {
		t.Fatal(err)
	}
	if a, c := global("__cordon_global_1").I32(), global("__cordon_global_3").F64(); a != 42 || c != 2.5 || get(store, inst) != 42 {
		t.Errorf("after start: globals %d %v", a, c)
	}
	if mem[16] != 99 {
		t.Errorf("start did not write memory 0 through the export")
	}
	// Mutable globals can be restored from outside (what cordon persists).
	if err := inst.GetExport(store, "__cordon_global_1").Global().Set(store, wasmtime.ValI32(-5)); err != nil {
		t.Fatal(err)
	}
	if got := get(store, inst); got != -5 {
		t.Errorf("after Set: get() = %d", got)
	}
}

// TestInstrumentTableCallable checks what callbacks rely on: a table the
// module does not export (as Rust canisters compile) is reachable through
// TableExportName, holds the element segment's functions, and calling an
// entry runs the module's own function on the module's own memory.
func TestInstrumentTableCallable(t *testing.T) {
	b := wat(t, `(module
  (memory 1)
  (table 4 funcref)
  (func $cb (param i32) (i32.store (i32.const 8) (i32.add (local.get 0) (i32.const 1))))
  (func $other (param i32))
  (elem (i32.const 1) $cb $other)
  (func (export "read") (result i32) (i32.load (i32.const 8))))`)
	out, info, err := Instrument(b)
	if err != nil {
		t.Fatal(err)
	}
	checkInstrumented(t, b, out, info.Module, info)
	if info.TableExport != TableExportName {
		t.Fatalf("TableExport %q", info.TableExport)
	}
	engine := newEngine()
	store := wasmtime.NewStore(engine)
	mod, err := wasmtime.NewModule(engine, out)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := wasmtime.NewInstance(store, mod, nil)
	if err != nil {
		t.Fatal(err)
	}
	tbl := inst.GetExport(store, TableExportName).Table()
	if tbl == nil || tbl.Size(store) != 4 {
		t.Fatalf("table export %v", tbl)
	}
	v, err := tbl.Get(store, 0)
	if err != nil || v.Funcref() != nil {
		t.Fatalf("entry 0 should be null: %v %v", v, err)
	}
	v, err = tbl.Get(store, 1)
	if err != nil || v.Funcref() == nil {
		t.Fatalf("entry 1: %v", err)
	}
	if _, err := v.Funcref().Call(store, int32(41)); err != nil {
		t.Fatal(err)
	}
	got, err := inst.GetFunc(store, "read").Call(store)
	if err != nil || got.(int32) != 42 {
		t.Fatalf("callback through the table wrote %v (%v), want 42", got, err)
	}
}

// TestInstrumentNoExportSection checks that a missing export section is
// inserted in the right place, with custom sections left where they were.
func TestInstrumentNoExportSection(t *testing.T) {
	custom := func(name string) []byte { return sec(SectionCustom, str(name), []byte{1, 2, 3}) }
	b := module(
		custom("a"),
		sec(SectionType, vec(funcTypeVoid)),
		custom("b"),
		sec(SectionFunction, vec(leb(0))),
		sec(SectionMemory, vec([]byte{0, 1})),
		custom("c"),
		sec(SectionGlobal, vec([]byte{0x7f, 1, 0x41, 5, 0x0b})),
		custom("d"),
		sec(SectionStart, leb(0)),
		custom("e"),
		sec(SectionCode, vec(emptyBody)),
		custom("f"),
	)
	out, info, err := Instrument(b)
	if err != nil {
		t.Fatal(err)
	}
	checkInstrumented(t, b, out, info.Module, info)
	m, err := Decode(out)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, s := range m.Sections {
		name := s.ID.String()
		if s.ID == SectionCustom {
			r := &reader{b: out, pos: s.Start, end: s.End}
			n, _ := r.name("", 10)
			name = n
		}
		order = append(order, name)
	}
	want := "a type b function memory c global d e export code f"
	if got := strings.Join(order, " "); got != want {
		t.Errorf("section order %q, want %q", got, want)
	}
	if fmt.Sprint(m.Exports) != "[{__cordon_global_0 global 0} {__cordon_start func 0} {__cordon_memory memory 0}]" {
		t.Errorf("exports %v", m.Exports)
	}
	compile(t, out)

	// Without anything after the export section's slot it goes at the end.
	b = module(sec(SectionGlobal, vec([]byte{0x7f, 1, 0x41, 5, 0x0b})), custom("z"))
	out, _, err = Instrument(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out, b) || !bytes.Equal(out[len(b):], sec(SectionExport, vec(cat(str("__cordon_global_0"), []byte{3, 0})))) {
		t.Errorf("export section not appended: % x", out[len(b):])
	}
	compile(t, out)
}

func compile(t *testing.T, b []byte) *wasmtime.Module {
	t.Helper()
	mod, err := wasmtime.NewModule(newEngine(), b)
	if err != nil {
		t.Fatalf("wasmtime rejects module: %v", err)
	}
	return mod
}

func TestInstrumentVariants(t *testing.T) {
	tests := []struct {
		name     string
		wat      string
		start    bool
		memory   bool
		memory64 bool
		globals  string
	}{
		{"memory64", `(module (memory i64 2 10) (global (mut i64) (i64.const 3)) (func $s) (start $s))`, true, true, true, "[{0 __cordon_global_0 {i64 true}}]"},
		{"imported memory", `(module (import "env" "m" (memory 1)) (global i32 (i32.const 0)))`, false, false, false, "[{0 __cordon_global_0 {i32 false}}]"},
		{"imported globals only", `(module (import "env" "a" (global (mut i32))) (import "env" "b" (global i64)) (memory 1))`, false, true, false, "[]"},
		{"imported start function", `(module (import "env" "f" (func $f)) (func $g) (start $f))`, true, false, false, "[]"},
		{"existing memory export", `(module (memory (export "mem") 1) (global (export "g") (mut i32) (i32.const 0)))`, false, true, false, "[{0 __cordon_global_0 {i32 true}}]"},
		{"start already exported", `(module (func $s (export "init")) (start $s))`, true, false, false, "[]"},
		{"multi-memory", `(module (memory 1) (memory i64 1))`, false, true, false, "[]"},
		{"near-reserved names", `(module (func (export "__cordon") (export "__cordonx") (export "_cordon_start")) (memory 1))`, false, true, false, "[]"},
		{"unexported table (Rust)", `(module (table 3 funcref) (memory 1) (func $a) (elem (i32.const 1) $a))`, false, true, false, "[]"},
		{"exported table", `(module (table (export "table") 2 funcref) (memory 1))`, false, true, false, "[]"},
		{"table64", `(module (table i64 4 funcref) (memory i64 1))`, false, true, true, "[]"},
		{"externref table 0", `(module (table 1 externref) (table 1 funcref))`, false, false, false, "[]"},
		{"imported table", `(module (import "env" "t" (table 1 funcref)) (table 2 funcref))`, false, false, false, "[]"},
		{"v128 and ref globals", `(module (global (mut v128) (v128.const i64x2 1 2)) (global (mut funcref) (ref.null func)) (global externref (ref.null extern)))`, false, false, false,
			"[{0 __cordon_global_0 {v128 true}} {1 __cordon_global_1 {funcref true}} {2 __cordon_global_2 {externref false}}]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := wat(t, tc.wat)
			out, info, err := Instrument(b)
			if err != nil {
				t.Fatal(err)
			}
			checkInstrumented(t, b, out, info.Module, info)
			if (info.StartExport != "") != tc.start || (info.MemoryExport != "") != tc.memory {
				t.Errorf("info %+v", info)
			}
			if got := fmt.Sprint(info.Globals); got != tc.globals {
				t.Errorf("globals %s, want %s", got, tc.globals)
			}
			if info.Module.Memory64() != tc.memory64 {
				t.Errorf("Memory64() = %v", info.Module.Memory64())
			}
			mod := compile(t, out)
			checkWasmtimeExports(t, mod, info.Module, info)
		})
	}
}

func TestInstrumentReserved(t *testing.T) {
	for _, name := range []string{"__cordon_", "__cordon_start", "__cordon_memory", "__cordon_table", "__cordon_global_0", "__cordon_anything"} {
		b := wat(t, fmt.Sprintf(`(module (memory 1) (func (export %q)))`, name))
		_, _, err := Instrument(b)
		if !errors.Is(err, ErrReservedExport) || !strings.Contains(err.Error(), strconv.Quote(name)) {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := Decode(b); err != nil {
			t.Errorf("Decode must still accept %s: %v", name, err)
		}
	}
}

func TestInstrumentNothingToDo(t *testing.T) {
	b := wat(t, `(module (import "env" "m" (memory 1)) (func (export "f")))`)
	out, info, err := Instrument(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, b) {
		t.Errorf("output differs from input")
	}
	if &out[0] == &b[0] {
		t.Errorf("output aliases input")
	}
	if len(info.Globals) != 0 || info.StartExport != "" || info.MemoryExport != "" || info.TableExport != "" {
		t.Errorf("info %+v", info)
	}
}

func TestInstrumentExportLimit(t *testing.T) {
	b := wat(t, `(module (global i32 (i32.const 0)) (global i32 (i32.const 0)) (func (export "f")) (func $s) (start $s))`)
	if _, _, err := (Config{MaxExports: 3}).Instrument(b); !errors.Is(err, ErrLimit) {
		t.Errorf("4 exports with MaxExports 3: %v", err)
	}
	if _, _, err := (Config{MaxExports: 4}).Instrument(b); err != nil {
		t.Errorf("4 exports with MaxExports 4: %v", err)
	}
	// Output may exceed MaxModuleSize (the limit is for untrusted input).
	if _, _, err := (Config{MaxModuleSize: len(b)}).Instrument(b); err != nil {
		t.Errorf("MaxModuleSize = input size: %v", err)
	}
}

// TestInstrumentPaddedLEB keeps non-minimal LEB128 encodings in the original
// export section intact and still gets the count right.
func TestInstrumentPaddedLEB(t *testing.T) {
	padded1 := []byte{0x81, 0x80, 0x80, 0x80, 0x00}
	exp := cat(padded1, str("m"), []byte{2}, []byte{0x80, 0x00})
	b := module(
		sec(SectionMemory, vec([]byte{0, 1})),
		cat([]byte{byte(SectionExport)}, []byte{0x80 | byte(len(exp)), 0x80, 0x00}, exp), // padded size
		sec(SectionGlobal, vec([]byte{0x7f, 1, 0x41, 5, 0x0b}))[:0],                      // (placeholder, unused)
	)
	if _, err := Decode(b); err != nil {
		t.Fatal(err)
	}
	out, info, err := Instrument(b)
	if err != nil {
		t.Fatal(err)
	}
	checkInstrumented(t, b, out, info.Module, info)
	m, _ := Decode(out)
	if fmt.Sprint(m.Exports) != "[{m memory 0} {__cordon_memory memory 0}]" {
		t.Errorf("exports %v", m.Exports)
	}
	if !bytes.Contains(out, cat(str("m"), []byte{2, 0x80, 0x00})) {
		t.Errorf("original export entry not kept verbatim")
	}
	compile(t, out)
}

// TestInstrumentRealModulesRun instantiates instrumented canisters with
// trapping stubs for the ic0 imports, checks that every exported global holds
// the initial value wasm-objdump reports, and runs the start function.
func TestInstrumentRealModulesRun(t *testing.T) {
	engine := newEngine()
	for _, path := range realModules(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			want := runObjdump(t, path)
			out, info, err := Instrument(readFile(t, path))
			if err != nil {
				t.Fatal(err)
			}
			var calls []string
			store, inst := instantiateWithStubs(t, engine, out, &calls)
			if len(want.globalInits) != len(info.Globals) {
				t.Fatalf("objdump shows %d global inits, %d instrumented", len(want.globalInits), len(info.Globals))
			}
			for i, g := range info.Globals {
				v := inst.GetExport(store, g.Export).Global().Get(store)
				var got string
				switch g.Type.Type {
				case I32:
					got = fmt.Sprintf("i32=%d", v.I32())
				case I64:
					got = fmt.Sprintf("i64=%d", v.I64())
				}
				if got != want.globalInits[i] {
					t.Errorf("%s = %s, objdump init %s", g.Export, got, want.globalInits[i])
				}
			}
			runStart(t, store, inst, info)
			if len(calls) != 0 {
				t.Logf("start function called ic0: %v", calls)
			}
		})
	}
}

// instantiateWithStubs instantiates a module whose imports are all functions,
// each defined as a stub returning zeros (ic0.trap and ic0.msg_reply*
// trap, so they are visible). Calls are recorded in *calls.
func instantiateWithStubs(t *testing.T, engine *wasmtime.Engine, wasm []byte, calls *[]string) (*wasmtime.Store, *wasmtime.Instance) {
	t.Helper()
	mod, err := wasmtime.NewModule(engine, wasm)
	if err != nil {
		t.Fatal(err)
	}
	store := wasmtime.NewStore(engine)
	linker := wasmtime.NewLinker(engine)
	for _, imp := range mod.Imports() {
		name := *imp.Name()
		ft := imp.Type().FuncType()
		err := linker.FuncNew(imp.Module(), name, ft, func(*wasmtime.Caller, []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) {
			*calls = append(*calls, name)
			if name == "trap" || strings.HasPrefix(name, "msg_reply") {
				return nil, wasmtime.NewTrap("stub " + name)
			}
			var res []wasmtime.Val
			for _, r := range ft.Results() {
				if r.Kind() == wasmtime.KindI64 {
					res = append(res, wasmtime.ValI64(0))
				} else {
					res = append(res, wasmtime.ValI32(0))
				}
			}
			return res, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	inst, err := linker.Instantiate(store, mod)
	if err != nil {
		t.Fatalf("instantiate: %v", err)
	}
	return store, inst
}

// runStart calls the exported start function and checks memory 0's size.
func runStart(t *testing.T, store *wasmtime.Store, inst *wasmtime.Instance, info Instrumentation) {
	t.Helper()
	if _, err := inst.GetFunc(store, info.StartExport).Call(store); err != nil {
		t.Errorf("start function: %v", err)
	}
	if n := inst.GetExport(store, info.MemoryExport).Memory().Size(store); n < info.Module.Memories[0].Min {
		t.Errorf("memory pages %d, want at least %d", n, info.Module.Memories[0].Min)
	}
}

// TestRealModules64 instruments and runs the 64-bit Motoko examples
// (memory64 and table64; wasm-objdump cannot read them).
func TestRealModules64(t *testing.T) {
	files, _ := filepath.Glob("../../examples/*.wasm")
	if len(files) == 0 {
		t.Skip("no 64-bit examples")
	}
	engine := newEngine()
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			b := readFile(t, path)
			out, info, err := Instrument(b)
			if err != nil {
				t.Fatal(err)
			}
			m := info.Module
			if !m.Memory64() {
				t.Skip("not a 64-bit module")
			}
			checkInstrumented(t, b, out, m, info)
			mod := compile(t, out)
			checkWasmtimeExports(t, mod, m, info)
			var calls []string
			store, inst := instantiateWithStubs(t, engine, out, &calls)
			for _, g := range info.Globals {
				if inst.GetExport(store, g.Export).Global() == nil {
					t.Errorf("%s missing", g.Export)
				}
			}
			runStart(t, store, inst, info)
			t.Logf("start function called ic0: %v; memory now %d pages", calls, inst.GetExport(store, MemoryExportName).Memory().Size(store))
			t.Logf("%d imports, %d funcs, %d globals (%d mutable), %d exports, start=%d, memory=%+v, tables=%+v, customs=%d",
				len(m.Imports), len(m.Funcs), len(m.Globals), countMutable(m.Globals), len(m.Exports), deref(m.Start), m.Memories, m.Tables, len(m.Customs))
		})
	}
}
