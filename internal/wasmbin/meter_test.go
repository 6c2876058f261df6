package wasmbin

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// meterEngine has cordon's feature set (engine.New) without fuel.
func meterEngine() *wasmtime.Engine {
	c := wasmtime.NewConfig()
	c.SetWasmMemory64(true)
	c.SetWasmBulkMemory(true)
	c.SetWasmMultiValue(true)
	c.SetWasmReferenceTypes(true)
	c.SetWasmSIMD(true)
	c.SetWasmRelaxedSIMD(false)
	c.SetWasmThreads(false)
	c.SetWasmMultiMemory(false)
	c.SetWasmGC(false)
	c.SetWasmFunctionReferences(false)
	c.SetWasmTailCall(false)
	return wasmtime.NewEngineWithConfig(c)
}

// meteredCall is what one call of a metered export left behind.
type meteredCall struct {
	res     any
	err     error // the call's trap or error
	counter int64 // the counter afterwards
	store   *wasmtime.Store
	inst    *wasmtime.Instance
}

// meteredRun instantiates a metered module, sets the counter to limit and
// calls export f with args.
func meteredRun(t *testing.T, e *wasmtime.Engine, src []byte, limit int64, f string, args ...any) meteredCall {
	t.Helper()
	out, info, err := InstrumentMetering(src)
	if err != nil {
		t.Fatalf("InstrumentMetering: %v", err)
	}
	if info.CounterExport != CounterExportName {
		t.Fatalf("counter export %q", info.CounterExport)
	}
	if err := DefaultConfig().DecodeBodies(out); err != nil {
		t.Fatalf("metered module does not decode: %v", err)
	}
	mod, err := wasmtime.NewModule(e, out)
	if err != nil {
		t.Fatalf("metered module does not compile: %v", err)
	}
	store := wasmtime.NewStore(e)
	inst, err := wasmtime.NewInstance(store, mod, nil)
	if err != nil {
		t.Fatalf("instantiate: %v", err)
	}
	g := inst.GetExport(store, CounterExportName).Global()
	if err := g.Set(store, wasmtime.ValI64(limit)); err != nil {
		t.Fatal(err)
	}
	res, callErr := inst.GetFunc(store, f).Call(store, args...)
	return meteredCall{res: res, err: callErr, counter: g.Get(store).I64(), store: store, inst: inst}
}

const meterWAT = `(module
  (memory (export "mem") 1)
  (func $fib (export "fib") (param i32) (result i32)
    local.get 0
    i32.const 2
    i32.lt_u
    if (result i32)
      local.get 0
    else
      local.get 0
      i32.const 1
      i32.sub
      call $fib
      local.get 0
      i32.const 2
      i32.sub
      call $fib
      i32.add
    end)
  (func (export "spin") (loop (br 0)))
  (func $deep (export "deep") (param i32) (result i32) (call $deep (local.get 0)))
  (func (export "fill") (param i32)
    i32.const 0 i32.const 7 local.get 0 memory.fill)
  (func (export "copy") (param i32)
    i32.const 100 i32.const 0 local.get 0 memory.copy)
  (func (export "trap") unreachable)
  (func (export "count") (param i32) (result i32) (local i32)
    block
      loop
        local.get 1 local.get 0 i32.ge_u br_if 1
        local.get 1 i32.const 1 i32.add local.set 1
        br 0
      end
    end
    local.get 1))`

func TestMeteringCounts(t *testing.T) {
	e := meterEngine()
	src := wat(t, meterWAT)
	const limit = 1 << 40
	// count(n): entry run: block(0) loop(0) = 0; per iteration: 5 (get get ge br_if) then
	// 5 (get const add set br) = 9...; counted exactly below against itself.
	var used []int64
	for _, n := range []int32{0, 1, 10, 100} {
		r := meteredRun(t, e, src, limit, "count", n)
		res, err, c := r.res, r.err, r.counter
		if err != nil || res.(int32) != n {
			t.Fatalf("count(%d) = %v, %v", n, res, err)
		}
		used = append(used, limit-c)
	}
	// Per iteration: local.get local.get i32.ge_u br_if (4), then
	// local.get i32.const i32.add local.set br (5): 9. The exit: 4, then
	// end end (0) local.get (1) end (0).
	for i, n := range []int64{0, 1, 10, 100} {
		if want := 9*n + 4 + 1; used[i] != want {
			t.Errorf("count(%d) used %d, want %d", n, used[i], want)
		}
	}
	// Deterministic across runs.
	c1 := meteredRun(t, e, src, limit, "fib", int32(15)).counter
	c2 := meteredRun(t, e, src, limit, "fib", int32(15)).counter
	if c1 != c2 || c1 >= limit {
		t.Fatalf("fib(15) counters %d, %d", c1, c2)
	}
	res := meteredRun(t, e, src, limit, "fib", int32(20)).res
	if res.(int32) != 6765 {
		t.Fatalf("fib(20) = %v", res)
	}
}

func TestMeteringLimitTraps(t *testing.T) {
	e := meterEngine()
	src := wat(t, meterWAT)
	for _, tc := range []struct {
		name string
		f    string
		args []any
	}{
		{"tight loop", "spin", nil},
		{"deep recursion", "deep", []any{int32(1)}},
		{"memory.fill of a huge length", "fill", []any{int32(-1)}},
		{"memory.copy of a huge length", "copy", []any{int32(60000)}},
		{"fib", "fib", []any{int32(30)}},
	} {
		r := meteredRun(t, e, src, 10_000, tc.f, tc.args...)
		err, c, store, inst := r.err, r.counter, r.store, r.inst
		if err == nil {
			t.Errorf("%s: no trap", tc.name)
			continue
		}
		var trap *wasmtime.Trap
		if !errors.As(err, &trap) {
			t.Errorf("%s: not a trap: %v", tc.name, err)
			continue
		}
		if c >= 0 {
			t.Errorf("%s: trapped (%v) with counter %d, want negative", tc.name, err, c)
		}
		if tc.f == "fill" || tc.f == "copy" {
			data := inst.GetExport(store, "mem").Memory().UnsafeData(store)
			for i, v := range data {
				if v != 0 {
					t.Fatalf("%s: memory written at %d before the trap", tc.name, i)
				}
			}
		}
	}
	// The module's own unreachable leaves the counter non-negative.
	r := meteredRun(t, e, src, 10_000, "trap")
	err, c := r.err, r.counter
	if err == nil || c < 0 {
		t.Fatalf("unreachable: err %v counter %d", err, c)
	}
	// A bulk operation within the limit runs and is charged its length.
	r = meteredRun(t, e, src, 10_000, "fill", int32(1000))
	err, c, store, inst := r.err, r.counter, r.store, r.inst
	if err != nil || 10_000-c != 1000+4 {
		t.Fatalf("fill(1000): err %v used %d", err, 10_000-c)
	}
	if inst.GetExport(store, "mem").Memory().UnsafeData(store)[999] != 7 {
		t.Fatal("fill did not run")
	}
}

// Hostile bodies fail with a clean *Error.
func TestMeteringHostileBodies(t *testing.T) {
	ty := sec(SectionType, vec(funcTypeVoid))
	fn := sec(SectionFunction, vec(leb(0)))
	body := func(code ...byte) []byte {
		return module(ty, fn, sec(SectionCode, vec(cat(leb(uint64(len(code))), code))))
	}
	for name, b := range map[string][]byte{
		"unknown opcode":   body(0, 0xff, 0x0b),
		"unknown 0xfc":     body(0, 0xfc, 20, 0x0b),
		"unknown 0xfd":     body(0, 0xfd, 154, 1, 0x0b),
		"relaxed simd":     body(0, 0xfd, 0x80, 0x02, 0x0b),
		"threads":          body(0, 0xfe, 0, 0x0b),
		"gc":               body(0, 0xfb, 0, 0x0b),
		"exceptions":       body(0, 0x06, 0x40, 0x0b, 0x0b),
		"tail call":        body(0, 0x12, 0, 0x0b),
		"no end":           body(0, 0x01),
		"unclosed block":   body(0, 0x02, 0x40, 0x0b),
		"else outside if":  body(0, 0x05, 0x0b),
		"after end":        body(0, 0x0b, 0x01),
		"huge local count": body(2, 0xff, 0xff, 0x03, 0x7f, 0xff, 0xff, 0x03, 0x7f, 0x0b),
		"huge group count": body(0xff, 0xff, 0xff, 0xff, 0x0f, 0x0b),
		"huge br_table":    body(0, 0x0e, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0x0b),
		"bad block type":   body(0, 0x02, 0x05, 0x0b, 0x0b),
		"truncated memarg": body(0, 0x28, 0x80),
		"truncated v128":   body(0, 0xfd, 12, 1, 2, 3),
		"bad select":       body(0, 0x1c, 2, 0x7f, 0x7f, 0x0b),
		"bad ref.null":     body(0, 0xd0, 0x40, 0x0b),
		"overlong LEB":     body(0, 0x41, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0x0b),
	} {
		out, _, err := InstrumentMetering(b)
		var e *Error
		if err == nil || out != nil || !errors.As(err, &e) {
			t.Errorf("%s: out %d bytes, err %v", name, len(out), err)
		}
	}
}

// Every corpus canister meters into a module wasmtime accepts.
func TestMeteringCorpus(t *testing.T) {
	files, _ := filepath.Glob("/work/shared/canisters/*.wasm")
	if len(files) == 0 {
		t.Skip("no corpus")
	}
	e := meterEngine()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out, info, err := InstrumentMetering(b)
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
			continue
		}
		if err := DefaultConfig().DecodeBodies(b); err != nil {
			t.Errorf("%s: original: %v", filepath.Base(f), err)
		}
		if err := DefaultConfig().DecodeBodies(out); err != nil {
			t.Errorf("%s: metered: %v", filepath.Base(f), err)
		}
		if err := wasmtime.ModuleValidate(e, out); err != nil {
			t.Errorf("%s: metered module invalid: %v", filepath.Base(f), err)
		}
		if _, ok := info.Module.Export(CounterExportName); ok {
			t.Errorf("%s: input already has the counter", filepath.Base(f))
		}
	}
}

// table.grow is charged its delta before it runs, in 32- and 64-bit
// tables: a hostile canister cannot have the engine initialise millions of
// entries for a handful of instructions.
func TestMeteringTableGrowChargesDelta(t *testing.T) {
	e := meterEngine()
	for _, tc := range []struct{ name, src string }{
		{"table32", `(module (table $t 1 funcref)
  (func (export "grow") (param i32) (result i32) (table.grow $t (ref.null func) (local.get 0))))`},
		{"table64", `(module (table $t i64 1 funcref)
  (func (export "grow") (param i32) (result i32)
    (i32.wrap_i64 (table.grow $t (ref.null func) (i64.extend_i32_u (local.get 0))))))`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := wat(t, tc.src)
			// Within the limit: it grows and is charged its delta.
			r := meteredRun(t, e, src, 100_000, "grow", int32(50_000))
			if r.err != nil || r.res.(int32) != 1 {
				t.Fatalf("grow(50000): %v, %v", r.res, r.err)
			}
			if used := 100_000 - r.counter; used < 50_000 || used > 50_000+10 {
				t.Fatalf("grow(50000) used %d instructions, want its delta", used)
			}
			// Beyond it: the limit's trap, before the table grows.
			r = meteredRun(t, e, src, 100_000, "grow", int32(9_999_999))
			var trap *wasmtime.Trap
			if !errors.As(r.err, &trap) || r.counter >= 0 {
				t.Fatalf("grow(9999999): res %v err %v counter %d, want the limit's trap", r.res, r.err, r.counter)
			}
		})
	}
}
