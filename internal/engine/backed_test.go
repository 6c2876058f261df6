package engine

import (
	"encoding/binary"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// readWriteWAT writes its argument's first word to the first word of page
// 3 ("write"), or replies with that word ("read").
const readWriteWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "canister_update write")
    (call $arg (i32.const 12288) (i32.const 0) (i32.const 4))
    (call $reply))
  (func (export "canister_query read")
    (call $append (i32.const 12288) (i32.const 4))
    (call $reply)))`

// Committed pages live once, in the image, and page maps share it: while
// an execution on a fork (an upgrade's heap, which owns the image and maps
// it) writes a page and the fork commits it in place, a reader of the old
// memory (a query's clone) and the original keep reading the old bytes,
// through the mapping and in executions; released, the fork hands the
// image back and executions mapping it see the old bytes again.
func TestBackedReaderSeesOldBytesWhileForkCommits(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(readWriteWAT)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	word := func(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
	run := func(heap state.Memory, entry string, ctx sysapi.Context, arg []byte) *sysapi.Output {
		t.Helper()
		out, err := e.Run(&Request{Module: m, Heap: heap, Input: testInput(ctx, entry, arg, m)})
		if err != nil {
			t.Fatal(err)
		}
		if out.Trapped {
			t.Fatal(out.TrapMessage)
		}
		return out
	}
	read := func(what string, heap state.Memory, want uint32) {
		t.Helper()
		if got := run(heap, "canister_query read", sysapi.CtxNonReplicatedQuery, nil).Reply; string(got) != string(word(want)) {
			t.Fatalf("%s: an execution reads %x, want %x", what, got, word(want))
		}
		if p := heap.Page(3); p == nil || binary.LittleEndian.Uint32(p[:]) != want {
			t.Fatalf("%s: the page map does not hold %d", what, want)
		}
	}

	heap := state.NewBackedPageMap(state.WasmPageSize)
	if !heap.Backed() {
		t.Fatal("no backed page map")
	}
	defer heap.Release()
	if err := heap.Apply(run(heap, "canister_update write", sysapi.CtxUpdate, word(1111)).Heap); err != nil {
		t.Fatal(err)
	}
	read("committed", heap, 1111)

	reader := heap.Clone()
	defer reader.Release()
	fork := heap.Fork()
	if fork.File() == nil || heap.File() != nil || reader.File() != nil {
		t.Fatal("the fork does not own the image alone")
	}
	out := run(fork, "canister_update write", sysapi.CtxUpdate, word(2222))
	if len(out.Heap.Pages) != 1 || out.Heap.Pages[0].Index != 3 {
		t.Fatalf("fork's delta %+v", out.Heap.Pages)
	}
	if err := fork.Apply(out.Heap); err != nil {
		t.Fatal(err)
	}
	read("the fork after its commit", fork, 2222)
	read("a reader while the fork commits", reader, 1111)
	read("the original while the fork commits", heap, 1111)

	fork.Release()
	if heap.File() == nil {
		t.Fatal("the original did not get its image back")
	}
	read("the original after the fork was released", heap, 1111)
	read("the reader after the fork was released", reader, 1111)
}

// Emit sees the same output as Run returns without it (its heap pages are
// borrowed from the linear memory during the call), and Run then returns
// the output without them.
func TestEmitBorrowsHeapPages(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(touchWAT)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	heap := state.NewPageMap(4 << 20)
	for _, i := range []uint64{2, 5, 50} {
		if err := heap.SetPage(i, pageOf(byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	defer heap.Release()
	in := func() *sysapi.Input { return testInput(sysapi.CtxUpdate, "canister_update touch", nil, m) }
	want, err := e.Run(&Request{Module: m, Heap: heap, Input: in()})
	if err != nil || want.Trapped || len(want.Heap.Pages) == 0 {
		t.Fatalf("run: %v %+v", err, want)
	}
	var emitted []state.DirtyPage
	calls := 0
	got, err := e.Run(&Request{Module: m, Heap: heap, Input: in(), Emit: func(out *sysapi.Output) error {
		calls++
		for _, p := range out.Heap.Pages {
			c := new(state.Page)
			*c = *p.Data
			emitted = append(emitted, state.DirtyPage{Index: p.Index, Data: c})
		}
		return nil
	}})
	if err != nil || calls != 1 {
		t.Fatalf("run with Emit: %v, %d calls", err, calls)
	}
	if len(got.Heap.Pages) != 0 || got.Heap.Size != want.Heap.Size || got.Instructions != want.Instructions {
		t.Fatalf("Run returned %d pages, size %d (want 0, %d)", len(got.Heap.Pages), got.Heap.Size, want.Heap.Size)
	}
	if len(emitted) != len(want.Heap.Pages) {
		t.Fatalf("emitted %d pages, want %d", len(emitted), len(want.Heap.Pages))
	}
	for k, p := range emitted {
		if p.Index != want.Heap.Pages[k].Index || *p.Data != *want.Heap.Pages[k].Data {
			t.Fatalf("emitted page %d differs", p.Index)
		}
	}
}
