package engine

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// freshWAT declares 1 GiB of initial memory and data on three pages in its
// first MiB (page 10's bytes are zeros): wasmtime maps them from a
// copy-on-write image of the initial memory. sparse adds a byte at the end
// of the memory, which makes the image too sparse for wasmtime, so it
// writes the segments into the memory instead. canister_init writes page 2
// and reads a page far away; canister_post_upgrade stores at byte 4104
// (page 1) the sum of the first bytes of the data pages and the last page.
func freshWAT(sparse bool) string {
	last := ""
	if sparse {
		last = `(data (i32.const 1073741823) "Z")`
	}
	return `(module
  (memory (export "memory") 16384)
  (data (i32.const 0) "first")
  (data (i32.const 40960) "\00\00")
  (data (i32.const 70000) "seventeen")
  (data (i32.const 1048576) "mid")
  ` + last + `
  (func (export "canister_init")
    (i32.store (i32.const 8192) (i32.const 1))
    (drop (i32.load (i32.const 500000000))))
  (func (export "canister_post_upgrade")
    (i32.store8 (i32.const 4104) (i32.add (i32.add (i32.load8_u (i32.const 0)) (i32.load8_u (i32.const 70000)))
      (i32.add (i32.load8_u (i32.const 1048576)) (i32.load8_u (i32.const 1073741823)))))))`
}

func compileWAT(t testing.TB, e *Engine, src string) *Module {
	t.Helper()
	wasm, err := wasmtime.Wat2Wasm(src)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func minorFaults(t testing.TB) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return ru.Minflt
}

func deltaPages(d state.Delta) []uint64 {
	var out []uint64
	for _, p := range d.Pages {
		out = append(out, p.Index)
	}
	return out
}

// An install's delta is found without touching the declared memory: the
// pages written (the kernel's answer) and the pages the data segments
// wrote, which wasmtime maps from its image file (or writes, for a sparse
// image), so the kernel may not report them. The delta is exactly the
// pages that are not zero, as comparing every page gives.
func TestFreshMemoryDelta(t *testing.T) {
	needScan(t)
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, sparse := range []bool{false, true} {
		m := compileWAT(t, e, freshWAT(sparse))
		want := []uint64{0, 2, 17, 256}
		if sparse {
			want = append(want, 262143)
		}
		install := func() *sysapi.Output {
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
		install() // wasmtime builds its memory image on the first instantiation
		before, faults := scans.Load(), minorFaults(t)
		out := install()
		faults = minorFaults(t) - faults
		if got := deltaPages(out.Heap); !reflect.DeepEqual(got, want) || out.Heap.Size != 1<<30 {
			t.Fatalf("sparse %v: delta pages %v of %d bytes, want %v of 1 GiB", sparse, got, out.Heap.Size, want)
		}
		if scans.Load() == before {
			t.Fatal("the kernel was not asked for the pages written")
		}
		t.Logf("sparse %v: install of a module declaring 1 GiB: %d page faults", sparse, faults)
		if faults > 20_000 {
			t.Fatalf("%d page faults to install a module declaring 1 GiB: the memory was scanned", faults)
		}
		if sparse {
			continue
		}
		// Without the data segments' pages the kernel's answer misses
		// those wasmtime mapped from its image: the runs are needed.
		data := m.data
		m.data = nil
		out = install()
		m.data = data
		if got := deltaPages(out.Heap); !reflect.DeepEqual(got, []uint64{2}) {
			t.Fatalf("without the data pages the delta is %v, want [2] (the data pages mapped from wasmtime's image are not reported written)", got)
		}
	}
}

// A kernel without PAGEMAP_SCAN: a fresh memory is compared page by page,
// giving the same delta, up to MaxComparedBytes; beyond, the execution
// traps instead of comparing a memory the module declared for free.
func TestFreshMemoryWithoutScan(t *testing.T) {
	needScan(t)
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	notPagemap, err := os.Create(filepath.Join(t.TempDir(), "not-a-pagemap"))
	if err != nil {
		t.Fatal(err)
	}
	defer notPagemap.Close()
	small := compileWAT(t, e, strings.NewReplacer("16384", "300", "500000000", "5000000").Replace(freshWAT(false)))
	run := func(m *Module, pagemap *os.File) *sysapi.Output {
		t.Helper()
		var warned []string
		out, err := e.Run(&Request{Module: m, RunStart: true, Pagemap: pagemap, Warn: func(s string) { warned = append(warned, s) },
			Input: testInput(sysapi.CtxInit, "canister_init", nil, m)})
		if err != nil {
			t.Fatal(err)
		}
		if pagemap == notPagemap && !out.Trapped && len(warned) == 0 {
			t.Error("no warning that every page was compared")
		}
		return out
	}
	scanned, compared := run(small, nil), run(small, notPagemap)
	if scanned.Trapped || compared.Trapped {
		t.Fatal(scanned.TrapMessage, compared.TrapMessage)
	}
	if !reflect.DeepEqual(scanned.Heap, compared.Heap) || !reflect.DeepEqual(deltaPages(scanned.Heap), []uint64{0, 2, 17, 256}) {
		t.Fatalf("scanned %v, compared %v", deltaPages(scanned.Heap), deltaPages(compared.Heap))
	}
	faults := minorFaults(t)
	out := run(compileWAT(t, e, freshWAT(false)), notPagemap)
	faults = minorFaults(t) - faults
	if !out.Trapped || !strings.Contains(out.TrapMessage, "cannot be checked on this node") {
		t.Fatalf("1 GiB compared without the kernel's help: trapped %v %q", out.Trapped, out.TrapMessage)
	}
	if faults > 20_000 {
		t.Fatalf("%d page faults before refusing", faults)
	}
	t.Log(out.TrapMessage)
}

// A kept heap smaller than the new module's initial memory is copied: only
// its stored pages are written, and of the rest only the data segments'
// pages are made zero again; the instance's memory is the heap followed by
// zeros, without touching the 1 GiB declared. The same for a heap read
// from a file (as a sandbox gets it), which lists no pages, and for data
// segments mapped from wasmtime's image or written.
func TestRestoreSmallHeapIntoLargeMemory(t *testing.T) {
	needScan(t)
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	heap := state.NewPageMap(2 * state.WasmPageSize) // 32 pages: the data on page 17 is inside it
	if err := heap.SetPage(0, pageOf(40)); err != nil {
		t.Fatal(err)
	}
	if err := heap.SetPage(31, pageOf(3)); err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(t.TempDir(), "heap")
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range heap.StoredPages() {
		if _, err := f.WriteAt(heap.Page(i)[:], int64(i*state.PageSize)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(int64(heap.Size())); err != nil {
		t.Fatal(err)
	}
	fileHeap, err := state.OpenFileMemory(f, heap.Size())
	if err != nil {
		t.Fatal(err)
	}
	defer fileHeap.Close()
	for _, sparse := range []bool{false, true} {
		m := compileWAT(t, e, freshWAT(sparse))
		for name, h := range map[string]state.Memory{"page map": heap, "file": fileHeap} {
			upgrade := func() *sysapi.Output {
				t.Helper()
				in := testInput(sysapi.CtxInit, "canister_post_upgrade", nil, m)
				out, err := e.Run(&Request{Module: m, Heap: h, RunStart: true, Input: in})
				if err != nil {
					t.Fatal(err)
				}
				if out.Trapped {
					t.Fatal(out.TrapMessage)
				}
				return out
			}
			upgrade()
			faults := minorFaults(t)
			out := upgrade()
			faults = minorFaults(t) - faults
			// Only byte 4104 changed: 40 (the heap's page 0) + 0 + 0 + 0.
			if got := deltaPages(out.Heap); !reflect.DeepEqual(got, []uint64{1}) || out.Heap.Size != 1<<30 {
				t.Fatalf("%s, sparse %v: delta pages %v of %d bytes, want [1] of 1 GiB", name, sparse, got, out.Heap.Size)
			}
			if p := out.Heap.Pages[0].Data; p[8] != 40 {
				t.Fatalf("%s, sparse %v: post_upgrade summed %d: the data segments' bytes were not replaced by the heap and zeros", name, sparse, p[8])
			}
			if faults > 20_000 {
				t.Fatalf("%s, sparse %v: %d page faults to restore a 128 KiB heap into a 1 GiB memory", name, sparse, faults)
			}
		}
	}
}
