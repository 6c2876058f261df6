package bench

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// pagesWAT is the canister of the commit figures. Its arguments are raw
// little-endian u32s (not Candid), copied to address 0.
//
//   - grow(target): grows the memory to target Wasm pages (64 KiB) and
//     writes a byte in every 4 KiB page of the new part, so the whole heap
//     holds data (a page never written is not stored);
//   - touch(first, count): increments a byte (at offset 16) in each 4 KiB
//     page first .. first+count-1, so exactly count pages change (the
//     argument copied to address 0 is the same every time).
const pagesWAT = `(module
  (import "ic0" "msg_arg_data_copy" (func $arg (param i32 i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func (export "canister_update grow")
    (local $cur i32) (local $p i32) (local $end i32)
    (call $arg (i32.const 0) (i32.const 0) (i32.const 4))
    (local.set $cur (memory.size))
    (if (i32.gt_u (i32.load (i32.const 0)) (local.get $cur))
      (then (drop (memory.grow (i32.sub (i32.load (i32.const 0)) (local.get $cur))))))
    (local.set $p (i32.mul (local.get $cur) (i32.const 65536)))
    (local.set $end (i32.mul (memory.size) (i32.const 65536)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (i32.store8 offset=8 (local.get $p) (i32.const 1))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br $next)))
    (call $reply))
  (func (export "canister_update touch")
    (local $p i32) (local $end i32)
    (call $arg (i32.const 0) (i32.const 0) (i32.const 8))
    (local.set $p (i32.mul (i32.load (i32.const 0)) (i32.const 4096)))
    (local.set $end (i32.add (local.get $p) (i32.mul (i32.load (i32.const 4)) (i32.const 4096))))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (i32.store8 offset=16 (local.get $p) (i32.add (i32.load8_u offset=16 (local.get $p)) (i32.const 1)))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br $next)))
    (call $reply)))`

func u32s(vs ...uint32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], v)
	}
	return b
}

var dirtyCounts = []int{1, 16, 1024}

func (e *env) heapSizes() []uint64 {
	if e.opt.Quick {
		return []uint64{4 << 20, 64 << 20}
	}
	return []uint64{4 << 20, 64 << 20, 1 << 30}
}

func sizeName(b uint64) string {
	if b >= 1<<30 {
		return fmt.Sprintf("%d GiB", b>>30)
	}
	return fmt.Sprintf("%d MiB", b>>20)
}

func pagesName(d int) string {
	if d == 1 {
		return "1 dirty page"
	}
	return fmt.Sprintf("%d dirty pages", d)
}

// syncWriter is the baseline: it writes d pages to a file and fdatasyncs.
type syncWriter struct {
	f   *os.File
	buf []byte
	n   byte
}

func newSyncWriter(dir string, maxPages int) (*syncWriter, error) {
	f, err := os.OpenFile(filepath.Join(dir, "baseline"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	w := &syncWriter{f: f, buf: make([]byte, maxPages*4096)}
	// Allocate the file first: the store rewrites pages of an existing file too.
	if _, err := f.WriteAt(w.buf, 0); err != nil {
		f.Close()
		return nil, err
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// write times writing d changed pages and fdatasync, in seconds.
func (w *syncWriter) write(d int) (float64, error) {
	w.n++
	b := w.buf[:d*4096]
	for j := 0; j < len(b); j += 4096 {
		b[j] = w.n
	}
	t0 := time.Now()
	if _, err := w.f.WriteAt(b, 0); err != nil {
		return 0, err
	}
	if err := unix.Fdatasync(int(w.f.Fd())); err != nil {
		return 0, err
	}
	return time.Since(t0).Seconds(), nil
}

func (e *env) commit() error {
	ctx := e.ctx
	const sec = "commit"
	wasm, err := wasmtime.Wat2Wasm(pagesWAT)
	if err != nil {
		return fmt.Errorf("pages canister: %w", err)
	}
	sizes := e.heapSizes()
	runsFor := func(size uint64) int {
		if size >= 1<<30 {
			return e.runs(3, 9)
		}
		return e.runs(3, 9)
	}
	type cell struct {
		size uint64
		d    int
	}
	commitT := map[string]map[cell][]float64{"inprocess": {}, "sandbox": {}}
	updateT := map[string]map[cell][]float64{"inprocess": {}, "sandbox": {}}
	syncT := map[int][]float64{} // the baseline, by dirty count, measured in every round
	payload := map[cell]float64{}
	sw, err := newSyncWriter(e.tmp, dirtyCounts[len(dirtyCounts)-1])
	if err != nil {
		return err
	}
	defer sw.f.Close()
	nodes, closeAll, err := e.bothNodes(nil)
	if err != nil {
		return err
	}
	defer closeAll()
	ids := map[string]principal.Principal{}
	for _, iso := range modes {
		if ids[iso], err = nodes[iso].install(ctx, wasm); err != nil {
			return fmt.Errorf("%s: %w", iso, err)
		}
	}
	for _, size := range sizes {
		for _, iso := range modes {
			if err := growTo(e, nodes[iso], ids[iso], size); err != nil {
				return fmt.Errorf("%s: grow to %s: %w", iso, sizeName(size), err)
			}
		}
		// Growing wrote the whole heap to both stores and left its
		// deltas as garbage: collect it and let the kernel's writeback
		// and reclaim finish, so that steady-state messages are timed.
		runtime.GC()
		unix.Sync()
		time.Sleep(time.Second)
		for _, d := range dirtyCounts {
			c := cell{size, d}
			arg := u32s(0, uint32(d))
			for _, iso := range modes { // warm-up
				if _, err := nodes[iso].update(ctx, ids[iso], "touch", arg); err != nil {
					return fmt.Errorf("%s: %w", iso, err)
				}
			}
			for r := 0; r < runsFor(size); r++ {
				t, err := sw.write(d)
				if err != nil {
					return err
				}
				syncT[d] = append(syncT[d], t)
				for _, iso := range modes { // in turn: see interleave
					nd := nodes[iso]
					nd.commits.drain()
					t0 := time.Now()
					if _, err := nd.update(ctx, ids[iso], "touch", arg); err != nil {
						return fmt.Errorf("%s: %w", iso, err)
					}
					updateT[iso][c] = append(updateT[iso][c], time.Since(t0).Seconds())
					ev, ok := nd.commits.last()
					if !ok {
						return fmt.Errorf("%s: no commit recorded for touch", iso)
					}
					commitT[iso][c] = append(commitT[iso][c], ev.d.Seconds())
					payload[c] = float64(ev.bytes)
				}
			}
		}
	}
	base := map[int]string{}
	for _, d := range dirtyCounts {
		base[d] = fmt.Sprintf("write + fdatasync of %d × 4 KiB", d)
		e.rep.Add(&Figure{Section: sec, Name: base[d], Samples: syncT[d]})
	}
	for _, size := range sizes {
		for _, d := range dirtyCounts {
			c := cell{size, d}
			prefix := fmt.Sprintf("heap %s, %s: ", sizeName(size), pagesName(d))
			e.rep.Add(&Figure{Section: sec, Name: prefix + "store commit", Samples: commitT["inprocess"][c], Baseline: base[d]})
			// On the smallest heap, updates are compared with the fsync
			// baseline (in-process) and with in-process (sandboxed); on
			// larger heaps, with the same update on the smallest heap: the
			// ratio that must stay near 1 if cost follows dirty pages.
			inproc, sandboxed := prefix+"update, in-process", prefix+"update, sandboxed"
			inprocBase, sandboxedBase := base[d], inproc
			if size != sizes[0] {
				small := fmt.Sprintf("heap %s, %s: ", sizeName(sizes[0]), pagesName(d))
				inprocBase, sandboxedBase = small+"update, in-process", small+"update, sandboxed"
			}
			e.rep.Add(&Figure{Section: sec, Name: inproc, Samples: updateT["inprocess"][c], Baseline: inprocBase})
			e.rep.Add(&Figure{Section: sec, Name: sandboxed, Samples: updateT["sandbox"][c], Baseline: sandboxedBase})
		}
	}
	e.rep.Note(sec, "Commit payload as the store counts it (pages, metadata, logs), for 1, 16 and 1024 dirty pages "+
		"on the smallest heap: %s, %s, %s.", humanBytes(uint64(payload[cell{sizes[0], 1}])),
		humanBytes(uint64(payload[cell{sizes[0], 16}])), humanBytes(uint64(payload[cell{sizes[0], 1024}])))
	e.rep.Note(sec, "Each round writes the baseline, then runs the update on the in-process node, then on the "+
		"sandboxed one (both grown to the same heap, then `sync` so that the growth's writeback is not measured). "+
		"The store commit is the same work in both modes (the host commits); the table shows the in-process node's. "+
		"An update maps the committed heap's memfd image copy-on-write and asks the kernel which pages were "+
		"written (PAGEMAP_SCAN), so its cost follows the dirty pages, not the heap size: on heaps larger than the "+
		"smallest, each update's ratio is to the same update on the smallest heap (goal: ≤ 1.5 for one dirty page). "+
		"A sandbox receives the images as descriptors, never the pages.")
	if !e.opt.Quick {
		e.rep.Note(sec, "`--quick` measures the 4 MiB and 64 MiB heaps only.")
	}

	var series []Series
	add := func(name string, m map[cell][]float64, d int, color string, dashed bool) {
		s := Series{Name: name, Color: color, Dashed: dashed}
		for _, size := range sizes {
			s.X = append(s.X, float64(size>>20))
			s.Y = append(s.Y, Median(m[cell{size, d}])*1e3)
		}
		series = append(series, s)
	}
	add("update, sandboxed, 1024 dirty pages", updateT["sandbox"], 1024, palette[0], true)
	add("update, sandboxed, 1 dirty page", updateT["sandbox"], 1, palette[0], false)
	add("update, in-process, 1024 dirty pages", updateT["inprocess"], 1024, palette[1], true)
	add("update, in-process, 1 dirty page", updateT["inprocess"], 1, palette[1], false)
	add("store commit, 1024 dirty pages", commitT["inprocess"], 1024, palette[2], true)
	add("store commit, 1 dirty page", commitT["inprocess"], 1, palette[2], false)
	e.rep.Plots = append(e.rep.Plots, Plot{Section: sec, File: "commit-vs-heap.svg", Title: "Commit cost vs heap size",
		Chart: Chart{Title: "Commit and update cost vs heap size", XLabel: "heap size (MiB)", YLabel: "median time (ms)",
			LogX: true, LogY: true, FormatX: func(v float64) string { return fmt.Sprintf("%g", v) }, FormatY: fmtTick,
			Series: series}})
	return nil
}

// growTo grows the pages canister's heap to size, at most 64 MiB per
// message.
func growTo(e *env, nd *node, id principal.Principal, size uint64) error {
	target := uint32(size / 65536)
	for {
		st, err := nd.Status(e.ctx, id)
		if err != nil {
			return err
		}
		cur := uint32(st.HeapBytes / 65536)
		if cur >= target {
			return nil
		}
		next := min(target, cur+1024)
		if _, err := nd.update(e.ctx, id, "grow", u32s(next)); err != nil {
			return err
		}
	}
}
