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
