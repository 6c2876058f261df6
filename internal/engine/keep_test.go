package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// leakWAT is a hostile canister: "peek" replies with what the previous
// query could have left behind (a mutable global, words on 4 KiB pages 0, 3 and
// 20 of its 4-Wasm-page memory, the memory size), then tries to
// leave something: it writes the global and those words, and "peek_trap"
// and "peek_grow" do the same and then trap or grow the memory. "write"
// (an update) commits its argument to page 3 and the global.
const leakWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg (param i32 i32 i32)))
  (memory (export "memory") 4)
  (global $g (mut i32) (i32.const 5))
  (global $h (mut i64) (i64.const 6))
  (func $peek
    (i32.store (i32.const 65536) (global.get $g))
    (i64.store (i32.const 65540) (global.get $h))
    (i32.store (i32.const 65548) (i32.load (i32.const 0)))
    (i32.store (i32.const 65552) (i32.load (i32.const 12288)))
    (i32.store (i32.const 65556) (i32.load (i32.const 81920)))
    (i32.store (i32.const 65560) (memory.size))
    (call $append (i32.const 65536) (i32.const 28))
    (call $reply)
    (global.set $g (i32.const 0x1eaf))
    (global.set $h (i64.const 0x1eaf))
    (i32.store (i32.const 0) (i32.const 0x1eaf))
    (i32.store (i32.const 12288) (i32.const 0x1eaf))
    (i32.store (i32.const 81920) (i32.const 0x1eaf))
    (i32.store (i32.const 65536) (i32.const 0x1eaf)))
  (func (export "canister_query peek") (call $peek))
  (func (export "canister_query peek_trap") (call $peek) (unreachable))
  (func (export "canister_query peek_grow") (call $peek) (drop (memory.grow (i32.const 1))))
  (func (export "canister_query spin") (loop $l (br $l)))
  (func (export "canister_update write")
    (call $arg (i32.const 12288) (i32.const 0) (i32.const 4))
    (global.set $g (i32.load (i32.const 12288)))
    (call $reply)))`

// keepFixture is a compiled leakWAT with a committed heap that has an image.
type keepFixture struct {
	e *Engine
	c *canister
}

func newKeepFixture(t *testing.T, wat string, keep int) *keepFixture {
	t.Helper()
	needScan(t)
	cfg := DefaultConfig()
	cfg.KeepInstances = keep
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(wat)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	c := &canister{m: m, stable: state.NewPageMap(0)}
	c.run(t, e, sysapi.CtxInit, "", nil, true)
	return &keepFixture{e: e, c: c}
}

func (f *keepFixture) write(t *testing.T, v uint32) {
	t.Helper()
	if out := f.c.run(t, f.e, sysapi.CtxUpdate, "canister_update write", binary.LittleEndian.AppendUint32(nil, v), false); out.Trapped {
		t.Fatal(out.TrapMessage)
	}
	if f.c.heap.File() == nil {
		t.Fatal("the committed heap has no image: nothing to keep")
	}
}

// peekWant is what peek replies on the committed state after write(v).
func peekWant(v uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, v) // $g
	b = binary.LittleEndian.AppendUint64(b, 6)    // $h
	b = binary.LittleEndian.AppendUint32(b, 0)    // page 0
	b = binary.LittleEndian.AppendUint32(b, v)    // page 3
	b = binary.LittleEndian.AppendUint32(b, 0)    // page 20
	return binary.LittleEndian.AppendUint32(b, 4) // memory.size
}

func (f *keepFixture) query(t *testing.T, entry string) *sysapi.Output {
	t.Helper()
	return f.c.run(t, f.e, sysapi.CtxNonReplicatedQuery, entry, nil, false)
}

// A hostile query writes its global, its memory (pages it read and pages it
// did not) and a word on the reply page; the next query on the kept
// instance sees exactly the committed state, at the same instruction count.
func TestKeptQueryCannotLeak(t *testing.T) {
	f := newKeepFixture(t, leakWAT, 2)
	if !f.c.m.reusable {
		t.Fatal("leakWAT changes no table or segment, it should be reusable")
	}
	f.write(t, 42)
	var instr uint64
	for i := 0; i < 5; i++ {
		out := f.query(t, "canister_query peek")
		if out.Trapped || !bytes.Equal(out.Reply, peekWant(42)) {
			t.Fatalf("query %d: %x trapped=%v %s, want %x", i, out.Reply, out.Trapped, out.TrapMessage, peekWant(42))
		}
		if i == 0 {
			instr = out.Instructions
		} else if out.Instructions != instr {
			t.Fatalf("query %d: %d instructions, the first took %d", i, out.Instructions, instr)
		}
		if f.e.Kept() != 1 || f.e.Reused() != uint64(i) {
			t.Fatalf("query %d: %d instances kept, %d reused", i, f.e.Kept(), f.e.Reused())
		}
	}
	// The heap committed in place (same image file) by an update: the kept
	// instance sees the new bytes, as a fresh one would.
	f.write(t, 43)
	for i := 0; i < 3; i++ {
		if out := f.query(t, "canister_query peek"); !bytes.Equal(out.Reply, peekWant(43)) {
			t.Fatalf("after the update, query %d: %x, want %x", i, out.Reply, peekWant(43))
		}
	}
	if f.e.DropKept() != 1 || f.e.Kept() != 0 {
		t.Fatal("DropKept did not drop the kept instance")
	}
	if out := f.query(t, "canister_query peek"); !bytes.Equal(out.Reply, peekWant(43)) {
		t.Fatalf("after DropKept: %x", out.Reply)
	}
}

// A query that traps, grows the memory or runs out of instructions is not
// kept; the next query sees the committed state.
func TestKeptQueryDroppedAfterTrapGrowOrLimit(t *testing.T) {
	f := newKeepFixture(t, leakWAT, 2)
	f.write(t, 7)
	f.query(t, "canister_query peek") // leaves a kept instance
	for _, entry := range []string{"canister_query peek_trap", "canister_query peek_grow", "canister_query spin"} {
		in := testInput(sysapi.CtxNonReplicatedQuery, entry, nil, f.c.m)
		in.Stable = f.c.stable
		in.Limits.Instructions = 1e6
		out, err := f.e.Run(&Request{Module: f.c.m, Heap: f.c.heap, Globals: f.c.globals, Input: in})
		if err != nil {
			t.Fatal(err)
		}
		if entry != "canister_query peek_grow" && !out.Trapped {
			t.Fatalf("%s did not trap", entry)
		}
		if f.e.Kept() != 0 {
			t.Fatalf("%s: the instance was kept", entry)
		}
		if out := f.query(t, "canister_query peek"); !bytes.Equal(out.Reply, peekWant(7)) {
			t.Fatalf("after %s: %x, want %x", entry, out.Reply, peekWant(7))
		}
	}
}

// A module that can change a table or drop a segment is never kept.
func TestKeptNotForTableOrSegmentChanges(t *testing.T) {
	for name, body := range map[string]string{
		"table.set":  `(table.set $t (i32.const 0) (ref.null func))`,
		"table.grow": `(drop (table.grow $t (ref.null func) (i32.const 1)))`,
		"table.fill": `(table.fill $t (i32.const 0) (ref.null func) (i32.const 1))`,
		"table.copy": `(table.copy $t $t (i32.const 0) (i32.const 0) (i32.const 1))`,
		"table.init": `(table.init $t $e (i32.const 0) (i32.const 0) (i32.const 1))`,
		"elem.drop":  `(elem.drop $e)`,
		"data.drop":  `(data.drop $d)`,
	} {
		wat := fmt.Sprintf(`(module
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (table $t 2 funcref)
  (elem $e func $f)
  (data $d "x")
  (func $f)
  (func (export "canister_query q") %s (call $reply)))`, body)
		f := newKeepFixture(t, wat, 2)
		if f.c.m.reusable {
			t.Fatalf("%s: module is reusable", name)
		}
		f.c.heap = state.NewPageMap(state.WasmPageSize)
		f.c.globals = nil
		f.query(t, "canister_query q")
		if f.e.Kept() != 0 {
			t.Fatalf("%s: instance kept", name)
		}
	}
}

// Concurrent queries never share an instance, every one sees the committed
// state, and no more than KeepInstances are kept.
func TestKeptConcurrentQueries(t *testing.T) {
	f := newKeepFixture(t, leakWAT, 3)
	f.write(t, 99)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				in := testInput(sysapi.CtxNonReplicatedQuery, "canister_query peek", nil, f.c.m)
				in.Stable = f.c.stable
				out, err := f.e.Run(&Request{Module: f.c.m, Heap: f.c.heap, Globals: f.c.globals, Input: in})
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(out.Reply, peekWant(99)) {
					errs <- fmt.Errorf("reply %x, want %x", out.Reply, peekWant(99))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := f.e.Kept(); n < 1 || n > 3 {
		t.Fatalf("%d instances kept, want 1..3", n)
	}
}

// Reuse changes no result: the corpus canisters' queries (and updates in
// between) give identical outputs and instruction counts with kept
// instances and with a fresh instance each time.
func TestKeptSameAsFreshOverCorpus(t *testing.T) {
	needScan(t)
	empty := []byte("DIDL\x00\x00")
	for _, name := range []string{"counter", "kv", "compute", "memory", "inspect", "types", "traps", "random", "stable", "wallet", "timer", "relay"} {
		t.Run(name, func(t *testing.T) {
			var cans [2]*canister
			var engs [2]*Engine
			for i, keep := range []int{0, 4} {
				cfg := DefaultConfig()
				cfg.KeepInstances = keep
				e, err := New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				m, err := e.Compile(corpus(t, name), DefaultModuleLimits())
				if err != nil {
					t.Fatal(err)
				}
				engs[i], cans[i] = e, &canister{m: m, stable: state.NewPageMap(0)}
				cans[i].run(t, e, sysapi.CtxInit, "canister_init", empty, true)
			}
			queries := cans[0].m.Info.MethodNames(QueryMethod)
			updates := cans[0].m.Info.MethodNames(UpdateMethod)
			if len(queries) == 0 {
				t.Skip("no query methods")
			}
			for round := 0; round < 3; round++ {
				for _, q := range queries {
					for rep := 0; rep < 2; rep++ {
						var outs [2]*sysapi.Output
						for i := range cans {
							outs[i] = cans[i].run(t, engs[i], sysapi.CtxNonReplicatedQuery, "canister_query "+q, empty, false)
						}
						a, b := outs[0], outs[1]
						if a.Trapped != b.Trapped || a.TrapMessage != b.TrapMessage || !bytes.Equal(a.Reply, b.Reply) ||
							a.RejectMessage != b.RejectMessage || a.Instructions != b.Instructions {
							t.Fatalf("%s round %d: fresh %+v, kept %+v", q, round, a, b)
						}
					}
				}
				if round < len(updates) {
					for i := range cans {
						cans[i].run(t, engs[i], sysapi.CtxUpdate, "canister_update "+updates[round], empty, false)
					}
				}
			}
			t.Logf("%s: reusable %v, %d queries on kept instances", name, cans[1].m.reusable, engs[1].Reused())
			if engs[0].Reused() != 0 || (name == "counter" && engs[1].Reused() == 0) {
				t.Fatalf("reused: fresh engine %d, keeping engine %d", engs[0].Reused(), engs[1].Reused())
			}
		})
	}
}

// A kept instance does not keep its module alive: once nothing references
// the module (its canisters deleted or upgraded), its kept instances are
// closed and its compiled code can go. Before the weak key, a node kept up to
// KeepInstances deleted modules (TestDeletedModulesReleaseMemory in host
// saw +48 MiB after 12 × 16 MiB modules).
func TestKeptInstanceDoesNotHoldItsModule(t *testing.T) {
	f := newKeepFixture(t, leakWAT, 2)
	f.write(t, 1)
	f.query(t, "canister_query peek")
	if f.e.Kept() != 1 {
		t.Fatalf("%d instances kept after a plain query, want 1", f.e.Kept())
	}
	collected := make(chan struct{})
	runtime.AddCleanup(f.c.m, func(ch chan struct{}) { close(ch) }, collected)
	e := f.e
	f.c.m, f.c = nil, nil // the canister and its module are gone
	for i := 0; e.Kept() != 0; i++ {
		if i == 500 {
			t.Fatalf("the module is unreferenced, yet %d instance is still kept", e.Kept())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-collected:
	case <-time.After(time.Minute):
		t.Fatal("the module was not collected")
	}
}

// scribbleWAT has 8 Wasm pages (128 OS pages). "sum" replies the sum of the
// first word of every OS page, then writes every page ("sum") or only three
// ("sum_few"); "set" (an update) commits its argument to every page.
const scribbleWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg (param i32 i32 i32)))
  (memory (export "memory") 8)
  (func $sum (result i32) (local $p i32) (local $s i32)
    (loop $l
      (local.set $s (i32.add (local.get $s) (i32.load (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get $p) (i32.const 524288))))
    (local.get $s))
  (func $scribble (param $n i32) (local $p i32)
    (loop $l
      (i32.store (local.get $p) (i32.const 0x1eaf))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get $p) (i32.mul (local.get $n) (i32.const 4096))))))
  (func $replySum
    (i32.store (i32.const 520000) (call $sum))
    (call $append (i32.const 520000) (i32.const 4))
    (call $reply))
  (func (export "canister_query sum") (call $replySum) (call $scribble (i32.const 128)))
  (func (export "canister_query sum_few") (call $replySum) (call $scribble (i32.const 3)))
  (func (export "canister_update set") (local $p i32) (local $v i32)
    (call $arg (i32.const 0) (i32.const 0) (i32.const 4))
    (local.set $v (i32.load (i32.const 0)))
    (loop $l
      (i32.store (local.get $p) (local.get $v))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get $p) (i32.const 524288))))
    (call $reply)))`

// A kept instance is made exact both ways (keep.go, reset): the few pages a
// query wrote stay private and are read again from the file before the next
// query, and when a query wrote more than copyPages they are mapped again
// from the file when it ends. Either way the next query, after an update
// committed into the same file or not, sees exactly the committed bytes.
func TestKeptResetCopiesFewPagesRemapsMany(t *testing.T) {
	f := newKeepFixture(t, scribbleWAT, 1)
	set := func(v uint32) {
		t.Helper()
		if out := f.c.run(t, f.e, sysapi.CtxUpdate, "canister_update set", binary.LittleEndian.AppendUint32(nil, v), false); out.Trapped {
			t.Fatal(out.TrapMessage)
		}
	}
	// private counts the kept instance's pages that are not the file's.
	private := func() int {
		t.Helper()
		f.e.kept.mu.Lock()
		defer f.e.kept.mu.Unlock()
		if len(f.e.kept.list) != 1 {
			t.Fatalf("%d instances kept, want 1", len(f.e.kept.list))
		}
		r := f.e.kept.list[0]
		pages, err := foreignPages(SelfPagemap(), r.mappedAddr, r.mappedLen)
		if err != nil {
			t.Fatal(err)
		}
		return len(pages)
	}
	sum := func(entry string, v uint32) {
		t.Helper()
		out := f.query(t, "canister_query "+entry)
		if out.Trapped || !bytes.Equal(out.Reply, binary.LittleEndian.AppendUint32(nil, 128*v)) {
			t.Fatalf("%s: %x trapped=%v %s, want the sum of 128 × %d", entry, out.Reply, out.Trapped, out.TrapMessage, v)
		}
	}
	set(1)
	for v := uint32(1); v <= 3; v++ {
		for i := 0; i < 3; i++ {
			sum("sum_few", v)
			// The three scribbled pages and the reply's stay private.
			if n := private(); n == 0 || n > copyPages {
				t.Fatalf("after sum_few: %d private pages, want a few (copied before the next query)", n)
			}
		}
		sum("sum", v)
		if n := private(); n != 0 {
			t.Fatalf("after sum: %d private pages, want none (more than %d: mapped again)", n, copyPages)
		}
		sum("sum_few", v)
		sum("sum", v)
		sum("sum_few", v)
		set(v + 1) // into the same image; the kept private pages are stale now
	}
	if f.e.Reused() == 0 {
		t.Fatal("no query ran on a kept instance")
	}
}

// A query on a kept instance asks the kernel once which pages to restore
// (one PAGEMAP_SCAN over the whole memory, when the previous query ended:
// nothing runs on the instance in between, so none before it starts), and
// looks the image's data extents up again only after the image changed.
// Each system call here costs microseconds on a virtual machine, which is
// what a small query costs in all.
func TestKeptQueryScansOnceLooksUpExtentsAfterCommits(t *testing.T) {
	f := newKeepFixture(t, leakWAT, 1)
	f.write(t, 42) // the image holds pages 0 and 3 (its spans), the rest are holes
	f.query(t, "canister_query peek")
	for i := 0; i < 3; i++ {
		scans0, lookups0, reused0 := scans.Load(), extentLookups.Load(), f.e.Reused()
		if out := f.query(t, "canister_query peek"); !bytes.Equal(out.Reply, peekWant(42)) {
			t.Fatalf("query %d: %x, want %x", i, out.Reply, peekWant(42))
		}
		if f.e.Reused() != reused0+1 {
			t.Fatalf("query %d did not run on the kept instance", i)
		}
		if n := scans.Load() - scans0; n != 1 {
			t.Errorf("query %d: %d page scans, want 1", i, n)
		}
		if n := extentLookups.Load() - lookups0; n != 0 {
			t.Errorf("query %d: the image's extents looked up %d times, nothing was committed", i, n)
		}
	}
	f.write(t, 43)
	lookups0, reused0 := extentLookups.Load(), f.e.Reused()
	if out := f.query(t, "canister_query peek"); !bytes.Equal(out.Reply, peekWant(43)) {
		t.Fatalf("after the update: %x, want %x", out.Reply, peekWant(43))
	}
	if f.e.Reused() != reused0+1 {
		t.Fatal("the query after the update did not run on the kept instance")
	}
	if n := extentLookups.Load() - lookups0; n != 1 {
		t.Errorf("after the update: the image's extents looked up %d times, want 1", n)
	}
}
