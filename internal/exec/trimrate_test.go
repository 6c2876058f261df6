package exec

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// spreadWAT is a canister whose heap is large and spread out: "spread"
// grows it to 1 GiB and writes one byte at every MiB (1,024 runs; the
// engine maps them as one span, holes included), and "hole" is a free
// query reading the byte at the offset its argument names (4 bytes, little
// endian): one page fault in a hole of the host's image.
const spreadWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_arg_data_copy" (func $arg (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "canister_update spread") (local $p i32)
    (drop (memory.grow (i32.const 16383)))
    (loop $l
      (i32.store8 (local.get $p) (i32.const 1))
      (local.set $p (i32.add (local.get $p) (i32.const 1048576)))
      (br_if $l (i32.lt_u (local.get $p) (i32.const 1073741824))))
    (call $reply))
  (func (export "canister_query hole")
    (call $arg (i32.const 16) (i32.const 0) (i32.const 4))
    (drop (i32.load8_u (i32.load (i32.const 16))))
    (call $reply)))`

// spreadSim is a canister of spreadWAT with its heap spread (1 GiB heap
// limit).
func spreadSim(t testing.TB, x *Sandboxed, id string) *sim {
	t.Helper()
	wasm, err := wasmtime.Wat2Wasm(spreadWAT)
	if err != nil {
		t.Fatal(err)
	}
	s := newSim(t, x, id, wasm)
	s.runBig(sysapi.CtxUpdate, "canister_update spread", nil)
	backHeap(t, s)
	if s.heap.File() == nil {
		t.Fatal("no image of the heap")
	}
	return s
}

// backHeap gives s the heap it has as the store loads one: a backed page
// map of the same pages.
func backHeap(t testing.TB, s *sim) {
	t.Helper()
	b := state.NewBackedPageMap(0)
	d := state.Delta{Size: s.heap.Size()}
	for _, i := range s.heap.StoredPages() {
		d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: s.heap.Page(i)})
	}
	if err := b.Apply(d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Release)
	s.heap = b
}

// runBig is sim.run with a 1 GiB heap limit.
func (s *sim) runBig(ctx sysapi.Context, entry string, arg []byte) *sysapi.Output {
	s.t.Helper()
	in := s.input(ctx, entry, arg)
	in.Limits.HeapBytes = 1 << 30
	fresh := s.heap == nil
	out, err := s.x.Execute(context.Background(), s.id, &Request{Module: s.m, Heap: s.heap, Globals: s.globals, RunStart: fresh, Input: in})
	if err != nil {
		s.t.Fatalf("%s: %v", entry, err)
	}
	if out.Trapped {
		s.t.Fatalf("%s trapped: %+v", entry, out)
	}
	if ctx.IsQuery() {
		return out
	}
	if fresh {
		s.heap = state.NewPageMap(0)
	}
	if err := s.heap.Apply(out.Heap); err != nil {
		s.t.Fatal(err)
	}
	s.globals = out.Globals
	return out
}

// holeArg is the argument of "hole" reading the k-th hole: half a MiB past
// a written byte, a different page each time.
func holeArg(k int) []byte {
	off := uint32((k%1024)<<20 + 512<<10 + (k/1024%128)*4096)
	return binary.LittleEndian.AppendUint32(nil, off)
}

// hostCPU returns the CPU time this process (the host) used so far.
func hostCPU(t testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// The host CPU a free query costs on a canister whose 1 GiB heap is
// spread out, each query reading one hole (a page the trim after it finds).
func BenchmarkSpreadHeapHoleQuery(b *testing.B) {
	x, err := NewSandboxed(SandboxConfig{Dir: b.TempDir(), Logger: testLogger(b), NodeMemoryBytes: 2 << 30, IdleCPUCheck: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { x.Close() })
	s := spreadSim(b, x, "spread-bench")
	s.runBig(sysapi.CtxNonReplicatedQuery, "canister_query hole", holeArg(0))
	b.ResetTimer()
	cpu := hostCPU(b)
	for k := 0; k < b.N; k++ {
		s.runBig(sysapi.CtxNonReplicatedQuery, "canister_query hole", holeArg(k+1))
	}
	b.ReportMetric(float64((hostCPU(b)-cpu).Microseconds())/float64(b.N), "host-cpu-µs/op")
}

// A pass over an image costs in proportion to the span of its data, and
// each free query reading one hole of a spread heap asked for one: the
// host passed over the 1 GiB heap after every query. Real queries in a
// real sandbox, each reading a hole: the heap's image has at most one pass
// per state.TrimMinGap of the stream (counted, not timed), and the pass
// scheduled after it gives back every page the stream read.
func TestSpreadHeapHoleQueriesTrimBounded(t *testing.T) {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), NodeMemoryBytes: 2 << 30, IdleCPUCheck: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	s := spreadSim(t, x, "spread-stream")
	before := imageBytes(t, s.heap)
	const queries = 100
	passes, start := s.heap.TrimPasses(), time.Now()
	for k := 0; k < queries; k++ {
		s.runBig(sysapi.CtxNonReplicatedQuery, "canister_query hole", holeArg(k))
	}
	elapsed := time.Since(start)
	made := s.heap.TrimPasses() - passes
	// The first ask passes at once, and a scheduled pass may have come.
	if bound := 2 + uint64(elapsed/state.TrimMinGap); made > bound {
		t.Fatalf("%d queries reading a hole each made %d passes over the heap's image in %v, want at most %d", queries, made, elapsed, bound)
	}
	t.Logf("%d queries: %d passes in %v", queries, made, elapsed)
	waitFor(t, "the pages the queries read stay in the heap's image", func() bool {
		return imageBytes(t, s.heap) <= before
	})
}
