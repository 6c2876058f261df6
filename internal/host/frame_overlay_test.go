package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// frameWat is a canister whose init grows its heap to heapMiB MiB and its
// stable memory to stableMiB MiB and writes a word on every 4 KiB page of
// both from heap byte 65536 and stable byte 8192 on (its own address | 1):
// every page is stored, so a frame copied whole costs the whole memory.
//
//	leaf (query): answers heap[0] (committed: 0).
//	inner (composite, arg: a canister id L): heap[8] = 0x2222, heap[0] +=
//	  100, stable[4096] = 0x6666, calls L.leaf; its callback adds 1 to
//	  heap[0] and answers heap[0], heap[8], leaf's answer, stable[4096].
//	cq (composite, arg: u32 n, then a canister id L): heap[8] = 0x1111,
//	  calls its own inner(L) n times; each callback adds 1 to heap[0] and
//	  writes a word on heap page 100 + heap[0]; the first also writes
//	  stable[4096] = 0x5151; the last answers heap[0], heap[8], the inner
//	  call's answer, stable[4096], heap[204800] and stable[8192] (u32 each).
//	bump (update): adds 1 to heap[204800] and stable[8192], pages no
//	  frame writes.
//
// Each call has its frame and sees no other's: cq answers n, 0x1111, 101,
// 0x2222, 0, 0x6666, 0x5151, then heap[204800] and stable[8192] as they
// were when cq started (204801 and 8193 before any bump).
func frameWat(heapMiB, stableMiB int) string {
	return fmt.Sprintf(`(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $call_arg (param i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "stable64_grow" (func $stable_grow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $stable_write (param i64 i64 i64)))
  (import "ic0" "stable64_read" (func $stable_read (param i64 i64 i64)))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 0) $inner_cb $outer_cb)
  (data (i32.const 200) "leaf")
  (data (i32.const 210) "inner")
  (func $call (param $id i32) (param $idlen i32) (param $m i32) (param $len i32) (param $cb i32) (param $arg i32) (param $arglen i32)
    (call $call_new (local.get $id) (local.get $idlen) (local.get $m) (local.get $len)
      (local.get $cb) (i32.const 0) (local.get $cb) (i32.const 0))
    (call $call_arg (local.get $arg) (local.get $arglen))
    (if (call $call_perform) (then unreachable)))
  (func $stable_put (param $off i64) (param $v i32)
    (i32.store (i32.const 16) (local.get $v))
    (call $stable_write (local.get $off) (i64.const 16) (i64.const 4)))
  (func $stable_get (param $off i64) (result i32)
    (call $stable_read (i64.const 16) (local.get $off) (i64.const 4))
    (i32.load (i32.const 16)))
  (func (export "canister_init")
    (local $a i32) (local $s i64)
    (if (i32.lt_s (memory.grow (i32.const %d)) (i32.const 0)) (then unreachable))
    (local.set $a (i32.const 65536))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $a) (i32.mul (memory.size) (i32.const 65536))))
      (i32.store (local.get $a) (i32.or (local.get $a) (i32.const 1)))
      (local.set $a (i32.add (local.get $a) (i32.const 4096)))
      (br $l)))
    (if (i64.lt_s (call $stable_grow (i64.const %d)) (i64.const 0)) (then unreachable))
    (local.set $s (i64.const 8192))
    (block $done2 (loop $l2
      (br_if $done2 (i64.ge_u (local.get $s) (i64.const %d)))
      (call $stable_put (local.get $s) (i32.wrap_i64 (i64.or (local.get $s) (i64.const 1))))
      (local.set $s (i64.add (local.get $s) (i64.const 4096)))
      (br $l2))))
  (func (export "canister_update bump")
    (i32.store (i32.const 204800) (i32.add (i32.load (i32.const 204800)) (i32.const 1)))
    (call $stable_put (i64.const 8192) (i32.add (call $stable_get (i64.const 8192)) (i32.const 1)))
    (call $reply))
  (func (export "canister_query leaf") (call $append (i32.const 0) (i32.const 4)) (call $reply))
  (func (export "canister_composite_query inner")
    (i32.store (i32.const 20) (call $arg_size))
    (call $arg_copy (i32.const 500) (i32.const 0) (call $arg_size))
    (i32.store (i32.const 8) (i32.const 0x2222))
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 100)))
    (call $stable_put (i64.const 4096) (i32.const 0x6666))
    (call $call (i32.const 500) (i32.load (i32.const 20)) (i32.const 200) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 0)))
  (func $inner_cb (param i32)
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (call $arg_copy (i32.const 24) (i32.const 0) (i32.const 4))
    (i32.store (i32.const 32) (call $stable_get (i64.const 4096)))
    (call $append (i32.const 0) (i32.const 4))
    (call $append (i32.const 8) (i32.const 4))
    (call $append (i32.const 24) (i32.const 4))
    (call $append (i32.const 32) (i32.const 4))
    (call $reply))
  (func (export "canister_composite_query cq")
    (local $i i32)
    (call $arg_copy (i32.const 12) (i32.const 0) (i32.const 4))
    (i32.store (i32.const 20) (i32.sub (call $arg_size) (i32.const 4)))
    (call $arg_copy (i32.const 500) (i32.const 4) (i32.load (i32.const 20)))
    (i32.store (i32.const 8) (i32.const 0x1111))
    (call $self_copy (i32.const 300) (i32.const 0) (call $self_size))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (i32.load (i32.const 12))))
      (call $call (i32.const 300) (call $self_size) (i32.const 210) (i32.const 5) (i32.const 1) (i32.const 500) (i32.load (i32.const 20)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l))))
  (func $outer_cb (param i32)
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (i32.store (i32.mul (i32.add (i32.const 100) (i32.load (i32.const 0))) (i32.const 4096)) (i32.const 7))
    (if (i32.eq (i32.load (i32.const 0)) (i32.const 1)) (then (call $stable_put (i64.const 4096) (i32.const 0x5151))))
    (call $arg_copy (i32.const 400) (i32.const 0) (i32.const 16))
    (if (i32.eq (i32.load (i32.const 0)) (i32.load (i32.const 12))) (then
      (i32.store (i32.const 48) (call $stable_get (i64.const 4096)))
      (i32.store (i32.const 52) (i32.load (i32.const 204800)))
      (i32.store (i32.const 56) (call $stable_get (i64.const 8192)))
      (call $append (i32.const 0) (i32.const 4))
      (call $append (i32.const 8) (i32.const 4))
      (call $append (i32.const 400) (i32.const 16))
      (call $append (i32.const 48) (i32.const 12))
      (call $reply)))))`, heapMiB*16-1, stableMiB*16, stableMiB<<20)
}

// frameNode opens a node of the given isolation mode and installs frameWat
// twice: x, with the given memories, whose composite query is run, and
// leaf, small, the canister its inner calls reach.
func frameNode(t *testing.T, mode string, heapMiB, stableMiB int) (f *fixture, x, leaf principal.Principal) {
	t.Helper()
	cfg := testConfig(t, mode)
	cfg.QueryWalltime = 0 // copying a frame whole is slow, not wrong
	f = openFixture(t, cfg)
	return f, f.install(mustWat(t, frameWat(heapMiB, stableMiB)), nil), f.install(mustWat(t, frameWat(1, 1)), nil)
}

// cqArg is cq's argument: n calls, each reaching leaf.
func cqArg(n uint32, leaf principal.Principal) []byte {
	return append(binary.LittleEndian.AppendUint32(nil, n), leaf.Bytes()...)
}

// checkFrameAnswer checks cq's answer for n calls, and what it read of the
// pages bump changes.
func checkFrameAnswer(t testing.TB, got []byte, n, heapWord, stableWord uint32) {
	t.Helper()
	want := []uint32{n, 0x1111, 101, 0x2222, 0, 0x6666, 0x5151, heapWord, stableWord}
	if len(got) != 4*len(want) {
		t.Fatalf("cq answered %x", got)
	}
	for i, w := range want {
		if v := binary.LittleEndian.Uint32(got[4*i:]); v != w {
			t.Fatalf("cq answered %x: word %d is %#x, want %#x (want %x)", got, i, v, w, want)
		}
	}
}

// memoryPagesMoved is what executions in this process have copied into
// instances (in process) or sent to sandboxes of the memories they ran on,
// in pages.
func memoryPagesMoved() uint64 { return engine.CopiedHeapPages() + boundary.SentMemoryPages() }

// A composite query's callbacks run on their frame (the canister's
// committed memories as of the call, plus what the call's executions
// wrote) without copying it: the executor is given the committed images
// and the pages the frame changed, so a callback costs those pages, not
// the 256 MiB heap and 64 MiB stable memory, all of whose pages are
// stored. Each callback still sees its own frame's earlier writes (heap
// and stable) and no other frame's. Once every callback copied both
// memories whole: 8 callbacks here moved 650,000 pages, 8.8 s of host CPU
// per query.
func TestCompositeQueryFrameCostsItsPages(t *testing.T) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f, x, leaf := frameNode(t, mode, 256, 64)
			// The graph: cq's execution, 4 inner calls (each an
			// execution, a leaf and a callback), cq's 4 callbacks. The
			// frames write 1 to 5 heap pages and 1 stable page each, so
			// laying them costs at most 8 pages per callback.
			const n, callbacks, perCallback = 4, 8, 8
			for round := range 2 {
				before := memoryPagesMoved()
				checkFrameAnswer(t, f.query(x, "cq", cqArg(n, leaf)), n, 204801, 8193)
				moved := memoryPagesMoved() - before
				t.Logf("round %d: %d memory pages copied or sent", round, moved)
				if moved > callbacks*perCallback {
					t.Fatalf("round %d: the query's executions moved %d memory pages (%d MiB); its frames changed at most %d",
						round, moved, moved>>8, callbacks*perCallback)
				}
			}
		})
	}
}

// A frame keeps its snapshot when the canister commits meanwhile, over
// pages the frame itself never wrote (so a commit, not the frame, makes
// them differ from the image the frame shares): the callbacks run after
// two updates committed and read the pages as they were when the query
// started; the next query reads the committed values.
func TestCompositeQueryFrameKeepsSnapshotAcrossCommits(t *testing.T) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f, x, leaf := frameNode(t, mode, 1, 1)
			held := newGate()
			defer held.open()
			f.node.exec = &gatedExec{Executor: f.node.exec, hold: func(id string, in *sysapi.Input) *gate {
				if id == leaf.String() && in.Context == sysapi.CtxNonReplicatedQuery {
					return held // x's frames hold no lock of x meanwhile
				}
				return nil
			}}
			type answer struct {
				data []byte
				err  error
			}
			qdone := make(chan answer, 1)
			go func() {
				r, err := f.node.Query(context.Background(), Message{Canister: x, Method: "cq", Arg: cqArg(3, leaf), Caller: user})
				if err != nil {
					qdone <- answer{err: err}
					return
				}
				qdone <- answer{data: r.Data}
			}()
			held.await(t, "the first leaf execution")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for range 2 {
				if _, err := f.node.Update(ctx, Message{Canister: x, Method: "bump", Caller: user}); err != nil {
					t.Fatalf("update while the composite query waits: %v", err)
				}
			}
			held.open()
			a := <-qdone
			if a.err != nil {
				t.Fatal(a.err)
			}
			checkFrameAnswer(t, a.data, 3, 204801, 8193)
			checkFrameAnswer(t, f.query(x, "cq", cqArg(3, leaf)), 3, 204803, 8195)
		})
	}
}

// A canister whose memory images were given back while it was cold (more
// canisters ran than keep images: Config.MemoryImages) holds ordinary page
// maps until an update takes the images back. A composite query on it
// takes them back first: otherwise its frames, clones of ordinary page
// maps with no image to share, were copied whole by every callback, and a
// canister that only ever answers queries stayed so.
func TestCompositeQueryFrameOfColdCanister(t *testing.T) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			cfg := testConfig(t, mode)
			cfg.QueryWalltime = 0
			cfg.MemoryImages = 1 // the last canister run keeps its images
			f := openFixture(t, cfg)
			x := f.install(mustWat(t, frameWat(64, 16)), nil)
			leaf := f.install(mustWat(t, frameWat(1, 1)), nil)
			f.update(leaf, "bump", nil) // x is cold now
			c, err := f.node.get(context.Background(), x)
			if err != nil {
				t.Fatal(err)
			}
			c.mu.RLock()
			cold := !c.heap.Backed() && !c.stable.Backed()
			c.mu.RUnlock()
			if !cold {
				t.Fatal("x kept its images")
			}
			const n, callbacks, perCallback = 4, 8, 8
			before := memoryPagesMoved()
			checkFrameAnswer(t, f.query(x, "cq", cqArg(n, leaf)), n, 204801, 8193)
			moved := memoryPagesMoved() - before
			t.Logf("%d memory pages copied or sent", moved)
			if moved > callbacks*perCallback {
				t.Fatalf("the query's executions moved %d memory pages (%d MiB); its frames changed at most %d",
					moved, moved>>8, callbacks*perCallback)
			}
		})
	}
}

// BenchmarkCompositeQueryLargeHeap measures one composite query of 8
// callbacks on a canister with a 256 MiB heap and a 64 MiB stable memory,
// every page stored (TestCompositeQueryFrameCostsItsPages).
//
//	go test ./internal/host -run '^$' -bench CompositeQueryLargeHeap -benchtime 3x
func BenchmarkCompositeQueryLargeHeap(b *testing.B) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		b.Run(mode, func(b *testing.B) {
			cfg := testConfig(b, mode)
			cfg.QueryWalltime = 0
			n := openBenchNode(b, cfg)
			x := benchInstall(b, n, mustWat(b, frameWat(256, 64)))
			leaf := benchInstall(b, n, mustWat(b, frameWat(1, 1)))
			ctx := context.Background()
			for b.Loop() {
				r, err := n.Query(ctx, Message{Canister: x, Method: "cq", Arg: cqArg(4, leaf), Caller: user})
				if err != nil {
					b.Fatal(err)
				}
				checkFrameAnswer(b, r.Data, 4, 204801, 8193)
			}
		})
	}
}
