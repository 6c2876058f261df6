package engine

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// touchWAT writes page 3, rewrites page 5 with the byte it already holds,
// reads page 50, grows the memory by one Wasm page and writes into it, and
// writes page 2 and then restores its old contents.
const touchWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (func (export "canister_update touch") (local $old i32)
    (i32.store (i32.const 12288) (i32.const 7))
    (i32.store8 (i32.const 20480) (i32.load8_u (i32.const 20480)))
    (drop (i32.load (i32.const 204800)))
    (drop (memory.grow (i32.const 1)))
    (i32.store (i32.mul (i32.const 65536) (i32.sub (memory.size) (i32.const 1))) (i32.const 9))
    (local.set $old (i32.load (i32.const 8192)))
    (i32.store (i32.const 8192) (i32.const 12345))
    (i32.store (i32.const 8192) (local.get $old))
    (call $reply)))`

func pageOf(b byte) *state.Page {
	p := new(state.Page)
	for i := range p {
		p[i] = b
	}
	return p
}

// TestDirtyPagesMapped runs the same message on a committed heap mapped from
// its image (pages found through the kernel) and on a copy of it (every
// page compared): the deltas must be identical and exactly the pages that
// changed, on small and large heaps.
func TestDirtyPagesMapped(t *testing.T) {
	needScan(t)
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
	for _, size := range []uint64{4 << 20, 64 << 20} {
		t.Run(fmt.Sprint(size>>20, "MiB"), func(t *testing.T) {
			heap := state.NewPageMap(size)
			for _, i := range []uint64{2, 5, 50, size/state.PageSize - 1} {
				if err := heap.SetPage(i, pageOf(byte(i))); err != nil {
					t.Fatal(err)
				}
			}
			if heap.File() == nil {
				t.Fatal("no image for the heap")
			}
			run := func(h state.Memory) *sysapi.Output {
				in := testInput(sysapi.CtxUpdate, "canister_update touch", nil, m)
				out, err := e.Run(&Request{Module: m, Heap: h, Input: in})
				if err != nil {
					t.Fatal(err)
				}
				if out.Trapped {
					t.Fatal(out.TrapMessage)
				}
				return out
			}
			before := scans.Load()
			mapped := run(heap)
			if scans.Load() == before {
				t.Fatal("the mapped run did not ask the kernel for written pages")
			}
			copied := run(heap.Clone())
			idx := func(d state.Delta) []uint64 {
				var out []uint64
				for _, p := range d.Pages {
					out = append(out, p.Index)
				}
				return out
			}
			want := []uint64{3, size / state.PageSize}
			if got := idx(mapped.Heap); !reflect.DeepEqual(got, want) {
				t.Fatalf("mapped delta pages %v, want %v", got, want)
			}
			if !reflect.DeepEqual(mapped.Heap, copied.Heap) {
				t.Fatalf("mapped and copied deltas differ: %v vs %v", idx(mapped.Heap), idx(copied.Heap))
			}
			if mapped.Heap.Size != size+state.WasmPageSize || mapped.Instructions != copied.Instructions {
				t.Fatalf("size %d, instructions %d vs %d", mapped.Heap.Size, mapped.Instructions, copied.Instructions)
			}
			// The image follows Apply; writing 7 to page 3 again changes
			// nothing, so only the newly grown page is dirty.
			if err := heap.Apply(mapped.Heap); err != nil {
				t.Fatal(err)
			}
			again := run(heap)
			if got := idx(again.Heap); !reflect.DeepEqual(got, []uint64{size/state.PageSize + state.WasmPageSize/state.PageSize}) {
				t.Fatalf("second run delta pages %v", got)
			}
		})
	}
}

// BenchmarkDirtyPage runs a one-page update on committed heaps of growing
// size, every page of which holds data: with the heap mapped from its image
// the time must not grow with the heap (compare the sub-benchmarks).
//
//	go test -run '^$' -bench DirtyPage ./internal/engine
func BenchmarkDirtyPage(b *testing.B) {
	e, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(`(module
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (func (export "canister_update touch")
    (i32.store (i32.const 12288) (i32.add (i32.load (i32.const 12288)) (i32.const 1)))
    (call $reply)))`)
	if err != nil {
		b.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []uint64{4 << 20, 64 << 20, 1 << 30} {
		// Built once, outside b.Run (which calls its function more than
		// once): freeing and refilling a 1 GiB image between calls keeps
		// the kernel busy reclaiming and would be measured.
		heap := state.NewPageMap(size)
		full := pageOf(1)
		for i := uint64(0); i < size/state.PageSize; i++ {
			if err := heap.SetPage(i, full); err != nil {
				b.Fatal(err)
			}
		}
		if heap.File() == nil {
			b.Fatal("no image")
		}
		b.Run(fmt.Sprint(size>>20, "MiB"), func(b *testing.B) {
			for range b.N {
				in := testInput(sysapi.CtxUpdate, "canister_update touch", nil, m)
				out, err := e.Run(&Request{Module: m, Heap: heap, Input: in})
				if err != nil || out.Trapped || len(out.Heap.Pages) != 1 {
					b.Fatalf("%v %+v", err, out)
				}
			}
		})
		heap.Release()
	}
}

// needScan skips on kernels older than 6.7, which have no PAGEMAP_SCAN
// (the engine then compares pages, which other tests cover).
func needScan(t testing.TB) {
	if SelfPagemap() == nil {
		t.Skip("no /proc/self/pagemap")
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Skip(err)
	}
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	if major < 6 || (major == 6 && minor < 7) {
		t.Skipf("kernel %d.%d has no PAGEMAP_SCAN", major, minor)
	}
}

func TestProbeWrittenPages(t *testing.T) {
	needScan(t)
	if err := ProbeWrittenPages(); err != nil {
		t.Fatal(err)
	}
}

// A 64-bit memory that grows during the message stays where it was mapped
// (wasmtime reserves address space for it), so its written pages still
// come from the kernel; the engine would warn if it had to compare.
func TestDirtyPagesMemory64Grows(t *testing.T) {
	needScan(t)
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(`(module
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") i64 1)
  (func (export "canister_update grow")
    (drop (memory.grow (i64.const 256)))
    (i64.store (i64.sub (i64.mul (memory.size) (i64.const 65536)) (i64.const 8)) (i64.const 9))
    (i64.store (i64.const 4096) (i64.const 7))
    (call $reply)))`)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	heap := state.NewPageMap(64 << 20)
	if err := heap.SetPage(100, pageOf(3)); err != nil {
		t.Fatal(err)
	}
	var warned string
	before := scans.Load()
	in := testInput(sysapi.CtxUpdate, "canister_update grow", nil, m)
	out, err := e.Run(&Request{Module: m, Heap: heap, Input: in, Warn: func(r string) { warned = r }})
	if err != nil || out.Trapped {
		t.Fatal(err, out.TrapMessage)
	}
	if warned != "" || scans.Load() == before {
		t.Fatalf("written pages not found through the kernel: %q", warned)
	}
	last := (64<<20+256*state.WasmPageSize)/state.PageSize - 1
	var got []uint64
	for _, p := range out.Heap.Pages {
		got = append(got, p.Index)
	}
	if !reflect.DeepEqual(got, []uint64{1, uint64(last)}) {
		t.Fatalf("dirty pages %v, want [1 %d]", got, last)
	}
}
