package engine

import (
	"encoding/binary"
	"strings"
	"sync"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// grow64WAT is a hostile 64-bit canister whose heap sits just under 4 GiB
// (wasmtime's default reservation): "grow" grows it by two Wasm pages,
// writes the last byte and replies with memory.grow's result.
const grow64WAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i64 i64)))
  (memory (export "memory") i64 1)
  (func (export "canister_update grow") (local $old i64)
    (local.set $old (memory.grow (i64.const 2)))
    (i32.store8 (i64.sub (i64.mul (memory.size) (i64.const 65536)) (i64.const 1)) (i32.const 7))
    (i64.store (i64.const 0) (local.get $old))
    (call $append (i64.const 0) (i64.const 8))
    (call $reply)))`

// A 64-bit memory restored at 65,535 Wasm pages and grown past 4 GiB by one
// memory.grow stays where it is: nothing copies the heap, and the written
// pages are still found through the kernel, not by comparing all 4 GiB.
func TestMemory64GrowPast4GiBDoesNotMove(t *testing.T) {
	needScan(t)
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(grow64WAT)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	const pages = 65535
	heap := state.NewPageMap(pages * state.WasmPageSize)
	if err := heap.SetPage(1, pageOf(3)); err != nil {
		t.Fatal(err)
	}
	if heap.File() == nil {
		t.Fatal("no image for the heap")
	}
	var mu sync.Mutex
	var warnings []string
	in := testInput(sysapi.CtxUpdate, "canister_update grow", nil, m)
	in.Limits.HeapBytes = MaxHeapBytes
	out, err := e.Run(&Request{Module: m, Heap: heap, Input: in, Warn: func(s string) {
		mu.Lock()
		defer mu.Unlock()
		warnings = append(warnings, s)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if out.Trapped {
		t.Fatal(out.TrapMessage)
	}
	if got := binary.LittleEndian.Uint64(out.Reply); got != pages {
		t.Fatalf("memory.grow returned %d, want %d", int64(got), pages)
	}
	if want := uint64(pages+2) * state.WasmPageSize; out.Heap.Size != want {
		t.Fatalf("heap size %d, want %d", out.Heap.Size, want)
	}
	for _, w := range warnings {
		if strings.Contains(w, "moved") {
			t.Fatalf("the linear memory moved: %s", w)
		}
	}
	if len(warnings) != 0 {
		t.Fatalf("warnings: %q", warnings)
	}
	var idx []uint64
	for _, p := range out.Heap.Pages {
		idx = append(idx, p.Index)
	}
	last := out.Heap.Size/state.PageSize - 1
	if len(idx) != 2 || idx[0] != 0 || idx[1] != last {
		t.Fatalf("dirty pages %v, want [0 %d]", idx, last)
	}
}

// Every memory reserves its whole address space up front: a 64-bit one
// MaxHeapBytes (and never moves), a 32-bit one what its type allows, 4 GiB,
// as with wasmtime's defaults. Measured as the growth of the process's
// virtual size while the instance exists.
func TestMemoryReservations(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		memory64    bool
		wat         string
		least, most uint64
	}{
		{false, `(module (memory 1))`, 4 << 30, 5 << 30},
		{true, `(module (memory i64 1))`, MaxHeapBytes, MaxHeapBytes + 1<<30},
	} {
		wasm, err := wasmtime.Wat2Wasm(tc.wat)
		if err != nil {
			t.Fatal(err)
		}
		mod, err := wasmtime.NewModule(e.wasmtime(tc.memory64), wasm)
		if err != nil {
			t.Fatal(err)
		}
		store := wasmtime.NewStore(e.wasmtime(tc.memory64))
		before, err := vmSize()
		if err != nil {
			t.Skip(err)
		}
		if _, err := wasmtime.NewInstance(store, mod, nil); err != nil {
			t.Fatal(err)
		}
		after, err := vmSize()
		if err != nil {
			t.Fatal(err)
		}
		grew := after - before
		store.Close()
		if grew < tc.least || grew > tc.most {
			t.Errorf("%s: reserved %d bytes, want %d to %d", tc.wat, grew, tc.least, tc.most)
		}
	}
}
