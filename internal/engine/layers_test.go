package engine

import (
	"encoding/binary"
	"os"
	"strconv"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// layersWAT: "touch" writes 1 to the word its argument addresses (page 10
// holds the argument: it must be that page); "sum"
// answers the sum of every page's first word and its page count, reading
// the whole memory.
const layersWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg (param i32 i32 i32)))
  (memory (export "memory") 64)
  (func (export "canister_update touch")
    (call $arg (i32.const 40968) (i32.const 0) (i32.const 4))
    (i32.store (i32.load (i32.const 40968)) (i32.const 1))
    (call $reply))
  (func (export "canister_query sum") (local $a i32) (local $s i32) (local $end i32)
    (local.set $end (i32.mul (memory.size) (i32.const 65536)))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $a) (local.get $end)))
      (local.set $s (i32.add (local.get $s) (i32.load (local.get $a))))
      (local.set $a (i32.add (local.get $a) (i32.const 4096)))
      (br $l)))
    (i32.store (i32.const 0) (local.get $s))
    (i32.store (i32.const 4) (memory.size))
    (call $append (i32.const 0) (i32.const 8))
    (call $reply)))`

// A clone of a backed heap (a composite query's frame) runs as its image
// mapped plus the pages it differs in: its own writes (one zeroed), its
// growth past the image, a page a commit overwrote after it was taken.
// Only those pages are copied into the instance, whatever the heap's size,
// and the execution sees and reports exactly what it does on a copy of the
// same heap: in this process (the clone itself) and as a sandbox receives
// it (state.OpenLayeredMemory over the read-only image).
func TestLayeredHeapCopiesOnlyLaidPages(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(layersWAT)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	const pages = 64 * state.WasmPageSize / state.PageSize
	committed := state.NewBackedPageMap(64 * state.WasmPageSize)
	if !committed.Backed() {
		t.Skip("no backed page maps")
	}
	defer committed.Release()
	d := state.Delta{Size: 64 * state.WasmPageSize}
	for i := uint64(1); i < pages; i++ {
		d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: pageOf(byte(i))})
	}
	if err := committed.Apply(d); err != nil {
		t.Fatal(err)
	}
	frame := committed.Clone()
	defer frame.Release()
	if err := frame.Apply(state.Delta{Size: 128 * state.WasmPageSize, Pages: []state.DirtyPage{
		{Index: 5, Data: pageOf(0xee)}, {Index: 9, Data: new(state.Page)}, {Index: 700, Data: pageOf(0x70)}, {Index: 1500, Data: pageOf(0x15)},
	}}); err != nil {
		t.Fatal(err)
	}
	if err := committed.Apply(state.Delta{Size: 64 * state.WasmPageSize, Pages: []state.DirtyPage{{Index: 6, Data: pageOf(0x66)}}}); err != nil {
		t.Fatal(err)
	}
	const laid = 5 // 5, 6, 9, 700, 1500
	copied := state.NewPageMap(frame.Size())
	for _, i := range frame.StoredPages() {
		p := *frame.Page(i)
		if err := copied.SetPage(i, &p); err != nil {
			t.Fatal(err)
		}
	}
	l, ok := frame.ReadOnlyLayers()
	if !ok || len(l.Pages) != laid {
		t.Fatalf("layers %v, %d pages laid; want %d", ok, len(l.Pages), laid)
	}
	sandboxHeap := func() *state.FileMemory {
		ro, err := os.Open("/proc/self/fd/" + strconv.FormatUint(uint64(l.File.Fd()), 10))
		if err != nil {
			t.Fatal(err)
		}
		fm, err := state.OpenLayeredMemory(ro, l.Base, l.Size)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range l.Pages {
			q := *p.Data
			if err := fm.Lay(state.DirtyPage{Index: p.Index, Data: &q}); err != nil {
				t.Fatal(err)
			}
		}
		return fm
	}
	run := func(heap state.Memory, entry string, ctx sysapi.Context, arg []byte) (*sysapi.Output, uint64) {
		t.Helper()
		before := CopiedHeapPages()
		out, err := e.Run(&Request{Module: m, Heap: heap, Input: testInput(ctx, entry, arg, m)})
		if err != nil {
			t.Fatal(err)
		}
		if out.Trapped {
			t.Fatal(out.TrapMessage)
		}
		return out, CopiedHeapPages() - before
	}
	touch := binary.LittleEndian.AppendUint32(nil, 10*state.PageSize)
	want, _ := run(copied, "canister_update touch", sysapi.CtxUpdate, touch)
	wantSum, _ := run(copied, "canister_query sum", sysapi.CtxNonReplicatedQuery, nil)
	if len(want.Heap.Pages) != 1 || want.Heap.Pages[0].Index != 10 {
		t.Fatalf("on a copy the delta is %d pages", len(want.Heap.Pages))
	}
	for name, heap := range map[string]func() state.Memory{
		"in process":   func() state.Memory { return frame },
		"in a sandbox": func() state.Memory { return sandboxHeap() },
	} {
		h := heap()
		got, n := run(h, "canister_update touch", sysapi.CtxUpdate, touch)
		if n != laid {
			t.Errorf("%s: %d pages copied into the instance, want the %d laid", name, n, laid)
		}
		if got.Heap.Size != want.Heap.Size || len(got.Heap.Pages) != 1 || got.Heap.Pages[0].Index != 10 || *got.Heap.Pages[0].Data != *want.Heap.Pages[0].Data {
			t.Errorf("%s: delta of %d pages, size %d; want page 10 alone, size %d", name, len(got.Heap.Pages), got.Heap.Size, want.Heap.Size)
		}
		sum, _ := run(h, "canister_query sum", sysapi.CtxNonReplicatedQuery, nil)
		if string(sum.Reply) != string(wantSum.Reply) {
			t.Errorf("%s: the execution reads %x, on a copy %x", name, sum.Reply, wantSum.Reply)
		}
		if fm, ok := h.(*state.FileMemory); ok {
			fm.Close()
		}
	}
}
