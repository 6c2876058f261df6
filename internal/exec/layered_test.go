package exec

import (
	"context"
	"encoding/binary"
	"log/slog"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// frameWAT: "touch" writes a word on heap page 10 and stable page 3, and
// answers the sums of the first word of every heap page and of every
// stable page: what it read of both memories, whole.
const frameWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "stable64_size" (func $stable_size (result i64)))
  (import "ic0" "stable64_read" (func $stable_read (param i64 i64 i64)))
  (import "ic0" "stable64_write" (func $stable_write (param i64 i64 i64)))
  (memory 64)
  (func (export "canister_update touch") (local $a i32) (local $h i32) (local $s i64) (local $st i32)
    (i32.store (i32.const 40960) (i32.const 0xabcd))
    (call $stable_write (i64.const 12288) (i64.const 40960) (i64.const 4))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $a) (i32.mul (memory.size) (i32.const 65536))))
      (local.set $h (i32.add (local.get $h) (i32.load (local.get $a))))
      (local.set $a (i32.add (local.get $a) (i32.const 4096)))
      (br $l)))
    (block $done2 (loop $l2
      (br_if $done2 (i64.ge_u (local.get $s) (i64.mul (call $stable_size) (i64.const 65536))))
      (call $stable_read (i64.const 40964) (local.get $s) (i64.const 4))
      (local.set $st (i32.add (local.get $st) (i32.load (i32.const 40964))))
      (local.set $s (i64.add (local.get $s) (i64.const 4096)))
      (br $l2)))
    (i32.store (i32.const 40968) (local.get $h))
    (i32.store (i32.const 40972) (local.get $st))
    (call $append (i32.const 40968) (i32.const 8))
    (call $reply)))`

// A composite query's frame (clones of backed memories, changed by the
// frame and by a commit since) runs in both executors with the same
// result as a copy of it, and a sandbox is sent the images and the pages
// the frame differs in, nothing more (MemoryLayered), and finds the
// written pages without comparing the memory.
func TestFrameRunsLayeredInBothExecutors(t *testing.T) {
	rec := &lineRecorder{}
	sbx, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	defer sbx.Close()
	ip, err := NewInProcess(engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(frameWAT)
	if err != nil {
		t.Fatal(err)
	}
	backed := func(size uint64, from uint64) *state.PageMap {
		m := state.NewBackedPageMap(size)
		if !m.Backed() {
			t.Skip("no backed page maps")
		}
		d := state.Delta{Size: size}
		for i := from; i < size/state.PageSize; i++ {
			p := new(state.Page)
			binary.LittleEndian.PutUint32(p[:], uint32(i)|1)
			d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: p})
		}
		if err := m.Apply(d); err != nil {
			t.Fatal(err)
		}
		return m
	}
	page := func(v uint32) *state.Page {
		p := new(state.Page)
		binary.LittleEndian.PutUint32(p[:], v)
		return p
	}
	heap, stable := backed(64*state.WasmPageSize, 16), backed(16*state.WasmPageSize, 0)
	defer heap.Release()
	defer stable.Release()
	hc, sc := heap.Clone(), stable.Clone()
	defer hc.Release()
	defer sc.Release()
	if err := hc.Apply(state.Delta{Size: 65 * state.WasmPageSize, Pages: []state.DirtyPage{{Index: 20, Data: page(7)}, {Index: 21, Data: new(state.Page)}, {Index: 1030, Data: page(9)}}}); err != nil {
		t.Fatal(err)
	}
	if err := sc.Apply(state.Delta{Size: 16 * state.WasmPageSize, Pages: []state.DirtyPage{{Index: 5, Data: page(11)}}}); err != nil {
		t.Fatal(err)
	}
	// A commit over pages the frame did not write.
	if err := heap.Apply(state.Delta{Size: 64 * state.WasmPageSize, Pages: []state.DirtyPage{{Index: 30, Data: page(99)}}}); err != nil {
		t.Fatal(err)
	}
	if err := stable.Apply(state.Delta{Size: 16 * state.WasmPageSize, Pages: []state.DirtyPage{{Index: 6, Data: page(98)}}}); err != nil {
		t.Fatal(err)
	}
	const laid = 4 + 2 // heap 20, 21, 30, 1030; stable 5, 6
	copyOf := func(m *state.PageMap) *state.PageMap {
		c := state.NewPageMap(m.Size())
		for _, i := range m.StoredPages() {
			p := *m.Page(i)
			if err := c.SetPage(i, &p); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	hcopy, scopy := copyOf(hc), copyOf(sc)
	run := func(x Executor, id string, heap, stable *state.PageMap) *sysapi.Output {
		t.Helper()
		m, err := x.Prepare(context.Background(), wasm)
		if err != nil {
			t.Fatal(err)
		}
		s := &sim{m: m, stable: stable}
		in := s.input(sysapi.CtxUpdate, "canister_update touch", nil)
		out, err := x.Execute(context.Background(), id, &Request{Module: m, Heap: heap, Input: in})
		if err != nil {
			t.Fatal(err)
		}
		if out.Trapped {
			t.Fatal(out.TrapMessage)
		}
		boundary.Normalize(sysapi.CtxUpdate, out)
		return out
	}
	want := run(ip, "frame", hcopy, scopy)
	if len(want.Heap.Pages) != 1 || len(want.Stable.Pages) != 1 {
		t.Fatalf("on a copy: %d heap and %d stable pages written", len(want.Heap.Pages), len(want.Stable.Pages))
	}
	copied := engine.CopiedHeapPages()
	if got := run(ip, "frame", hc, sc); !boundary.Equal(got, want) {
		t.Fatalf("in process: the frame's output differs from a copy's: %x, want %x", got.Reply, want.Reply)
	}
	if n := engine.CopiedHeapPages() - copied; n != 4 {
		t.Fatalf("in process: %d heap pages copied into the instance, want the 4 laid", n)
	}
	sent := boundary.SentMemoryPages()
	if got := run(sbx, "frame", hc, sc); !boundary.Equal(got, want) {
		t.Fatalf("sandboxed: the frame's output differs from a copy's: %x, want %x", got.Reply, want.Reply)
	}
	if n := boundary.SentMemoryPages() - sent; n != laid {
		t.Fatalf("sandboxed: %d pages sent, want the %d laid", n, laid)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, l := range rec.lines {
		if strings.Contains(l, "comparing all") {
			t.Fatalf("the sandbox compared pages: %s", l)
		}
	}
}
