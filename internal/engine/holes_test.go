package engine

import (
	"encoding/binary"
	"os"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// sparseWAT is a hostile canister that reads its whole heap one byte per
// 4 KiB page (at offset 100) and replies with their sum; "scribble" first
// writes 9 there on page 5000, a hole of the committed heap.
const sparseWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory (export "memory") 1)
  (func $sum (local $p i32) (local $s i32)
    (loop $l
      (local.set $s (i32.add (local.get $s) (i32.load8_u offset=100 (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get $p) (i32.mul (memory.size) (i32.const 65536)))))
    (i32.store (i32.const 0) (local.get $s))
    (call $append (i32.const 0) (i32.const 4))
    (call $reply))
  (func (export "canister_query read") (call $sum))
  (func (export "canister_update read_update") (call $sum))
  (func $scribble (i32.store8 (i32.const 20480100) (i32.const 9)) (call $sum))
  (func (export "canister_query scribble") (call $scribble))
  (func (export "canister_update scribble_update") (call $scribble)))`

// allocated returns the bytes f's file system has allocated for it.
func allocated(t *testing.T, f *os.File) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// A query that reads every page of a sparse committed heap leaves its image
// as large as it was: the holes it reads are not filled in the file. It
// reads the right bytes, on a fresh and on a kept instance, also after a
// commit writes into a hole, and an update's writes into a hole are found.
func TestSparseHeapReadsDoNotFillTheImage(t *testing.T) {
	needScan(t)
	cfg := DefaultConfig()
	cfg.KeepInstances = 2
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(sparseWAT)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	heap := state.NewPageMap(64 << 20) // 16,384 pages
	for _, i := range []uint64{0, 1, 2, 8000, 16383} {
		if err := heap.SetPage(i, pageOf(byte(i%7+1))); err != nil {
			t.Fatal(err)
		}
	}
	f := heap.File()
	if f == nil {
		t.Fatal("no image for the heap")
	}
	want := uint32(1 + 2 + 3 + (8000%7 + 1) + (16383%7 + 1))
	before := allocated(t, f)
	run := func(ctx sysapi.Context, entry string, want uint32) *sysapi.Output {
		t.Helper()
		out, err := e.Run(&Request{Module: m, Heap: heap, Input: testInput(ctx, entry, nil, m)})
		if err != nil {
			t.Fatal(err)
		}
		if out.Trapped {
			t.Fatal(out.TrapMessage)
		}
		if got := binary.LittleEndian.Uint32(out.Reply); got != want {
			t.Fatalf("%s: sum %d, want %d", entry, got, want)
		}
		return out
	}
	run(sysapi.CtxNonReplicatedQuery, "canister_query read", want)
	run(sysapi.CtxNonReplicatedQuery, "canister_query scribble", want+9)
	reused := e.Reused()
	run(sysapi.CtxNonReplicatedQuery, "canister_query read", want) // kept: the scribble is gone
	if e.Reused() == reused {
		t.Error("the kept instance was not reused")
	}
	if grew := allocated(t, f) - before; grew > 256<<10 {
		t.Fatalf("the image grew by %d bytes after reading its holes", grew)
	}

	// A commit into a hole: the kept instance shows it (or is not reused).
	if err := heap.Apply(state.Delta{Size: heap.Size(), Pages: []state.DirtyPage{{Index: 12000, Data: pageOf(5)}}}); err != nil {
		t.Fatal(err)
	}
	want += 5
	run(sysapi.CtxNonReplicatedQuery, "canister_query read", want)
	run(sysapi.CtxNonReplicatedQuery, "canister_query read", want)

	// An update writes into a hole: that page, and the one it replies
	// from, are its delta.
	out := run(sysapi.CtxUpdate, "canister_update scribble_update", want+9)
	var idx []uint64
	for _, p := range out.Heap.Pages {
		idx = append(idx, p.Index)
	}
	if len(idx) != 2 || idx[0] != 0 || idx[1] != 5000 {
		t.Fatalf("dirty pages %v, want [0 5000]", idx)
	}
}

// An image written in more runs than maxImageSpans is mapped in at most
// that many spans, which still cover every written page, and a sum over
// the heap is right.
func TestManyExtentsMerged(t *testing.T) {
	heap := state.NewPageMap(16 << 20)
	var written []uint64
	for i := uint64(0); i < 4096; i += 37 + i%5 {
		if err := heap.SetPage(i, pageOf(1)); err != nil {
			t.Fatal(err)
		}
		written = append(written, i)
	}
	f := heap.File()
	if f == nil {
		t.Fatal("no image for the heap")
	}
	spans := dataSpans(f, heap.Size())
	if len(spans) > maxImageSpans || len(written) <= maxImageSpans {
		t.Fatalf("%d runs written, mapped in %d spans", len(written), len(spans))
	}
	for _, i := range written {
		covered := false
		for _, s := range spans {
			covered = covered || (s.off <= i*state.PageSize && (i+1)*state.PageSize <= s.end)
		}
		if !covered {
			t.Fatalf("page %d is not in a span: %v", i, spans)
		}
	}
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(sparseWAT)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.Run(&Request{Module: m, Heap: heap, Input: testInput(sysapi.CtxNonReplicatedQuery, "canister_query read", nil, m)})
	if err != nil || out.Trapped {
		t.Fatalf("read: %v %+v", err, out)
	}
	if got := binary.LittleEndian.Uint32(out.Reply); got != uint32(len(written)) {
		t.Fatalf("sum %d, want %d", got, len(written))
	}
}
