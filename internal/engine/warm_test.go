package engine

import (
	"reflect"
	"strings"
	"testing"
	"weak"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// growWAT grows its memory by 4 pages in canister_init and stores what
// memory.grow returned at byte 16.
const growWAT = `(module
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 7))
  (func (export "canister_init")
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    (i32.store (i32.const 16) (memory.grow (i32.const 4)))))`

// warmAndCold returns an engine that has warmed its module and one that
// has not, each with its own compilation of src.
func warmAndCold(t *testing.T, src string) (warm *Engine, wm *Module, cold *Engine, cm *Module) {
	t.Helper()
	var err error
	if warm, err = New(DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if cold, err = New(DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	wm, cm = compileWAT(t, warm, src), compileWAT(t, cold, src)
	if err := warm.Warm(wm); err != nil {
		t.Fatal(err)
	}
	if !warm.Fresh() {
		t.Fatal("Warm kept no instance for the first execution")
	}
	return warm, wm, cold, cm
}

// The first execution after Warm starts from the instance Warm made, and
// gives exactly what a fresh instantiation gives: the heap delta (pages
// wasmtime mapped from its image included), globals, instructions.
func TestWarmInstanceServesFirstExecution(t *testing.T) {
	needScan(t)
	for _, src := range []string{freshWAT(false), growWAT} {
		warm, wm, cold, cm := warmAndCold(t, src)
		run := func(e *Engine, m *Module) *sysapi.Output {
			t.Helper()
			out, err := e.Run(&Request{Module: m, RunStart: true, Input: testInput(sysapi.CtxInit, "canister_init", nil, m)})
			if err != nil {
				t.Fatal(err)
			}
			if out.Trapped {
				t.Fatal(out.TrapMessage)
			}
			return out
		}
		got, want := run(warm, wm), run(cold, cm)
		if warm.Fresh() {
			t.Fatal("the first execution after Warm instantiated the module again")
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("first execution after Warm:\n%+v\nwithout Warm:\n%+v", got, want)
		}
		// The next one instantiates as before.
		if again := run(warm, wm); !reflect.DeepEqual(again, want) {
			t.Fatalf("second execution after Warm:\n%+v\nwant:\n%+v", again, want)
		}
	}
}

// Warm instantiates under a limit of its own; the execution that takes its
// instance has the request's heap limit, as if it had instantiated the
// module itself: a memory whose minimum is above the limit traps at
// instantiation, and the memory cannot grow past it.
func TestWarmInstanceKeepsHeapLimit(t *testing.T) {
	needScan(t)
	cases := []struct {
		src       string
		heapBytes uint64
	}{
		{freshWAT(false), 512 << 20}, // declares 1 GiB
		{growWAT, 2 << 16},           // grows from 1 page to 5
	}
	for _, c := range cases {
		warm, wm, cold, cm := warmAndCold(t, c.src)
		run := func(e *Engine, m *Module) *sysapi.Output {
			t.Helper()
			in := testInput(sysapi.CtxInit, "canister_init", nil, m)
			in.Limits.HeapBytes = c.heapBytes
			out, err := e.Run(&Request{Module: m, RunStart: true, Input: in})
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		got, want := run(warm, wm), run(cold, cm)
		if warm.Fresh() {
			t.Fatal("Warm's instance is still kept after an execution of its module")
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("heap limit %d after Warm:\n%+v\nwithout Warm:\n%+v", c.heapBytes, got, want)
		}
		if c.src != growWAT && (!got.Trapped || !strings.Contains(got.TrapMessage, "instantiation")) {
			t.Fatalf("a 1 GiB memory under a 512 MiB limit: %+v", got)
		}
		if c.src == growWAT && (got.Trapped || len(got.Heap.Pages) == 0 || got.Heap.Size != 1<<16) {
			t.Fatalf("a grow past the limit after Warm: %+v", got)
		}
	}
}

// A module's cleanup closes Warm's instance of it, and DropKept (an idle
// sandbox's trim) leaves it: it holds no canister's pages.
func TestWarmInstanceLifetime(t *testing.T) {
	warm, wm, _, _ := warmAndCold(t, growWAT)
	if warm.DropKept() != 0 || !warm.Fresh() {
		t.Fatal("DropKept closed Warm's instance")
	}
	warm.kept.dropModule(weak.Make(wm))
	if warm.Fresh() {
		t.Fatal("the module's cleanup left Warm's instance")
	}
}
