package host

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// hoardWat's composite query "cq" (argument: three bytes K, W1, W2) calls
// its own "leaf" K times; the first callback writes W1 fresh 4 KiB pages,
// every later one W2, each its own pages, so the frame of the call keeps
// them all for the callbacks that follow; the last callback replies. Each
// execution also changes page 0 (its counters). A query of an attacker's
// canister so made the host keep the sum of all its executions' pages.
const hoardWat = `
(module
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (memory 64) ;; 1024 pages of 4 KiB
  (table 1 funcref)
  (elem (i32.const 0) $hoard)
  (data (i32.const 100) "leaf")
  ;; page 0: 0 calls, 4 callbacks run, 8 W1, 12 W2, 16 next page to write
  (func $hoard (param i32)
    (local $p i32) (local $end i32) (local $w i32)
    (local.set $w (i32.load (i32.const 12)))
    (if (i32.eqz (i32.load (i32.const 4))) (then (local.set $w (i32.load (i32.const 8)))))
    (local.set $p (i32.mul (i32.load (i32.const 16)) (i32.const 4096)))
    (local.set $end (i32.add (local.get $p) (i32.mul (local.get $w) (i32.const 4096))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (i32.store8 (local.get $p) (i32.const 1))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br $l)))
    (i32.store (i32.const 16) (i32.add (i32.load (i32.const 16)) (local.get $w)))
    (i32.store (i32.const 4) (i32.add (i32.load (i32.const 4)) (i32.const 1)))
    (if (i32.eq (i32.load (i32.const 4)) (i32.load (i32.const 0))) (then (call $reply))))
  (func (export "canister_composite_query cq")
    (local $n i32) (local $i i32)
    (call $arg_copy (i32.const 200) (i32.const 0) (i32.const 3))
    (i32.store (i32.const 0) (i32.load8_u (i32.const 200)))
    (i32.store (i32.const 8) (i32.load8_u (i32.const 201)))
    (i32.store (i32.const 12) (i32.load8_u (i32.const 202)))
    (i32.store (i32.const 16) (i32.const 1))
    (local.set $n (call $self_size))
    (call $self_copy (i32.const 300) (i32.const 0) (local.get $n))
    (loop $l
      (call $call_new (i32.const 300) (local.get $n) (i32.const 100) (i32.const 4)
        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
      (drop (call $call_perform))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.load (i32.const 0))))))
  (func (export "canister_query leaf") (call $reply))
  ;; flood (argument: one byte N) changes N pages from page 600 on.
  (func (export "canister_update flood")
    (local $p i32) (local $end i32)
    (call $arg_copy (i32.const 200) (i32.const 0) (i32.const 1))
    (local.set $p (i32.const 2457600))
    (local.set $end (i32.add (local.get $p) (i32.mul (i32.load8_u (i32.const 200)) (i32.const 4096))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (i32.store8 (local.get $p) (i32.add (i32.load8_u (local.get $p)) (i32.const 1)))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br $l)))
    (call $reply)))`

// memTestPages is the dirty-page cap of one query execution in these tests,
// for the heap and for stable memory alike: a query graph may hold twice
// that (queryGraphBytes).
const memTestPages = 32

// memFixture is a node whose queries may change memTestPages pages of each
// memory per execution and whose execution memory is budget pages (0: the
// default).
func memFixture(t *testing.T, mode string, budget uint64) *fixture {
	t.Helper()
	cfg := testConfig(t, mode)
	cfg.Fees.GiBStoragePerSecond = 0
	cfg.HeapDirty.Query = memTestPages * state.PageSize
	cfg.StableDirty.Query = memTestPages * state.PageSize
	cfg.ExecutionMemory = budget * state.PageSize
	return openFixture(t, cfg)
}

// hoard runs hoardWat's composite query on id.
func (f *fixture) hoard(ctx context.Context, id principal.Principal, calls, w1, w2 byte) (*Reply, error) {
	return f.node.Query(ctx, Message{Canister: id, Method: "cq", Arg: []byte{calls, w1, w2}, Caller: user})
}

// idleMemory waits until the node has no message in progress and checks
// that its execution memory is all given back.
func (f *fixture) idleMemory() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.node.Quiesce(ctx); err != nil {
		f.t.Fatal(err)
	}
	if used, queries, _ := f.node.pages.inUse(); used != 0 || queries != 0 {
		f.t.Fatalf("execution memory still held with nothing running: %d bytes (%d by queries)", used, queries)
	}
}

// Audit (B1): the dirty-page caps bound each execution, and a composite
// query kept every execution's pages in its frames for the executions
// after: a canister calling itself kept 260 MiB live under 32 MiB caps in
// one query. A query's call graph now holds at most what one of its
// executions may change (here 64 pages, each execution writing 17): the
// query that would hold more fails with CANISTER_ERROR, having held no
// more than that, and gives everything back; the node serves the same
// canister's next queries.
func TestCompositeQueryGraphMemoryBounded(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f := memFixture(t, mode, 0)
			id := f.install(mustWat(t, hoardWat), nil)
			limit := f.node.queryGraphBytes()
			if limit != 2*memTestPages*state.PageSize {
				t.Fatalf("graph bound %d, want %d", limit, 2*memTestPages*state.PageSize)
			}

			// 8 callbacks of 16 pages each: 129 pages in all would be kept.
			_, err := f.hoard(context.Background(), id, 8, 16, 16)
			var rej *Reject
			if !errors.As(err, &rej) || rej.Code != CanisterError || !strings.Contains(rej.Message, "Composite query exceeded its memory limit") {
				t.Fatalf("want CANISTER_ERROR for the graph's memory, got %v", err)
			}
			t.Logf("%v", rej)
			if f.node.pages.peakBytes() > limit {
				t.Fatalf("the graph held %d bytes at once, its bound is %d", f.node.pages.peakBytes(), limit)
			}
			f.idleMemory()

			// The node is fine: a graph within its bound (1 + 17 + 17
			// pages) answers, and so does an update.
			if _, err := f.hoard(context.Background(), id, 2, 16, 16); err != nil {
				t.Fatalf("a query within the bound: %v", err)
			}
			if _, err := f.node.Query(context.Background(), Message{Canister: id, Method: "leaf", Caller: user}); err != nil {
				t.Fatal(err)
			}
			f.idleMemory()
		})
	}
}

// gateNth holds the nth execution (from 1) in context kind of each canister
// it has a gate for, before it runs.
func gateNth(gates map[string]*gate, kind sysapi.Context, nth int64) func(string, *sysapi.Input) *gate {
	var mu sync.Mutex
	seen := map[string]int64{}
	return func(id string, in *sysapi.Input) *gate {
		if in.Context != kind || gates[id] == nil {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if seen[id]++; seen[id] == nth {
			return gates[id]
		}
		return nil
	}
}

// Audit (B1, node-wide): many composite queries at once each within its
// own bound could together hold any amount. The query graphs of a node
// hold at most half of its execution memory (here 64 of 128 pages): two
// graphs hold 18 pages each and are held there; a third whose callback
// brings 31 more fails at once with SYS_TRANSIENT (a query never waits for
// memory while holding some); the two go on and answer, and every page is
// given back.
func TestQueryGraphsShareNodeMemory(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f := memFixture(t, mode, 4*memTestPages)
			ids := []principal.Principal{f.install(mustWat(t, hoardWat), nil), f.install(mustWat(t, hoardWat), nil), f.install(mustWat(t, hoardWat), nil)}
			gates := map[string]*gate{ids[0].String(): newGate(), ids[1].String(): newGate()}
			t.Cleanup(func() { // before the node closes, should the test fail
				for _, g := range gates {
					g.open()
				}
			})
			f.node.exec = &gatedExec{Executor: f.node.exec, hold: gateNth(gates, sysapi.CtxCompositeReply, 2)}

			errs := make(chan error, 2)
			for _, id := range ids[:2] {
				go func() {
					_, err := f.hoard(context.Background(), id, 2, 16, 0)
					errs <- err
				}()
				gates[id.String()].await(t, "the second callback of "+id.String())
			}
			_, queries, total := f.node.pages.inUse()
			if want := uint64(2 * 18 * state.PageSize); queries != want {
				t.Fatalf("the two held graphs hold %d bytes, want %d", queries, want)
			}
			_, err := f.hoard(context.Background(), ids[2], 1, 30, 0)
			var rej *Reject
			if !errors.As(err, &rej) || rej.Code != SysTransient || !strings.Contains(rej.Message, "limits.execution_memory") {
				t.Fatalf("want SYS_TRANSIENT for the node's execution memory, got %v", err)
			}
			if _, queries, _ := f.node.pages.inUse(); queries > total/2 || f.node.pages.peakBytes() > total/2 {
				t.Fatalf("queries hold %d bytes (at most %d at once) of %d: more than half", queries, f.node.pages.peakBytes(), total)
			}
			for _, g := range gates {
				g.open()
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatalf("a held graph: %v", err)
				}
			}
			f.idleMemory()
		})
	}
}

// returnGate holds every execution of the gated method after it returned
// (its output's pages reserved, its commit not made) until released, and
// reports each on returned.
type returnGate struct {
	exec.Executor
	method   string
	returned chan struct{}
	release  chan struct{}
}

func (x *returnGate) Execute(ctx context.Context, id string, req *exec.Request) (*sysapi.Output, error) {
	out, err := x.Executor.Execute(ctx, id, req)
	if err == nil && req.Input.Entry == "canister_update "+x.method {
		select {
		case <-x.release: // released: no more holding
		default:
			x.returned <- struct{}{}
			<-x.release
		}
	}
	return out, err
}

// Audit (B3): concurrent executions each took what their own caps allow,
// and nothing bounded the sum of what the host held for them. Against an
// execution memory whose messages' half is two outputs (64 of 128 pages;
// each update changes 32),
// five canisters' updates at once: two hold their outputs (held here,
// before their commits), the other three wait for room before they receive
// a page, and the budget is never exceeded. Released, all five commit, and
// everything is given back.
func TestExecutionMemoryBoundsConcurrentUpdates(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			const n, room = 5, 2
			f := memFixture(t, mode, 2*room*32)
			var ids []principal.Principal
			for range n {
				ids = append(ids, f.install(mustWat(t, dirtyWat), nil))
			}
			waited := make(chan struct{}, n)
			f.node.pages.mu.Lock()
			f.node.pages.onWait = func() { waited <- struct{}{} }
			f.node.pages.mu.Unlock()
			g := &returnGate{Executor: f.node.exec, method: "heap_dirty", returned: make(chan struct{}, n), release: make(chan struct{})}
			f.node.exec = g
			var released sync.Once
			release := func() { released.Do(func() { close(g.release) }) }
			t.Cleanup(release) // before the node closes, should the test fail

			errs := make(chan error, n)
			for _, id := range ids {
				go func() {
					_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "heap_dirty", Caller: user})
					errs <- err
				}()
			}
			// Each update either holds its output or waits for room.
			var held, waiting int
			for held+waiting < n {
				select {
				case <-g.returned:
					held++
				case <-waited:
					waiting++
				case err := <-errs:
					t.Fatalf("an update ended while others were held: %v", err)
				case <-time.After(time.Minute):
					t.Fatalf("%d updates hold their outputs, %d wait: the others never got there", held, waiting)
				}
			}
			used, _, total := f.node.pages.inUse()
			t.Logf("%d hold their outputs (%d bytes of %d), %d wait", held, used, total, waiting)
			if used > total/2 || f.node.pages.peakBytes() > total/2 {
				t.Fatalf("%d bytes held (%d at most) of an execution memory of %d: more than the messages' half", used, f.node.pages.peakBytes(), total)
			}
			if held != room {
				t.Fatalf("%d updates hold their outputs, want %d", held, room)
			}
			release()
			for range n {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			if f.node.pages.peakBytes() > total/2 {
				t.Fatalf("%d bytes held at most, of %d: more than the messages' half", f.node.pages.peakBytes(), total)
			}
			f.idleMemory()
			for _, id := range ids {
				if r := f.update(id, "heap_dirty", nil); r == nil {
					t.Fatal("no reply")
				}
			}
			f.idleMemory()
		})
	}
}

// The node's execution memory comes back whatever ends an execution that
// reserved some: a sandbox that breaks the protocol after its answer's
// header (killed, charged, its pages never all received), a trap the host
// makes of an output it received (beyond the canister's memory
// allocation), and a query given up on whose sandbox answers after it
// ended (refused: nobody would give those pages back).
func TestExecutionMemoryNoLeak(t *testing.T) {
	t.Parallel()

	t.Run("sandbox failure", func(t *testing.T) {
		t.Parallel()
		f := memFixture(t, "sandbox", 0)
		var broken atomic.Bool
		f.node.exec.Close()
		f.node.exec = relayExecutor(t, f.cfg, func(pkt []byte) {
			// The answer's first page goes past the memory: a violation
			// found after the header, once its pages were reserved.
			if broken.Load() && len(pkt) >= boundary.HeaderSize+5+8 && boundary.Kind(pkt[0]) == boundary.KindPages {
				binary.LittleEndian.PutUint64(pkt[boundary.HeaderSize+5:], math.MaxUint64)
			}
		})
		id := f.install(mustWat(t, dirtyWat), nil)
		broken.Store(true)
		_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "heap_dirty", Caller: user})
		var rej *Reject
		if !errors.As(err, &rej) || rej.Code != CanisterError || !strings.Contains(rej.Message, "outside") {
			t.Fatalf("want CANISTER_ERROR for the broken answer, got %v", err)
		}
		if f.node.pages.peakBytes() == 0 {
			t.Fatal("the answer's pages were never reserved")
		}
		f.idleMemory()
		broken.Store(false)
		if r := f.update(id, "heap_dirty", nil); r == nil {
			t.Fatal("no reply")
		}
		f.idleMemory()
	})

	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run("trap after receipt/"+mode, func(t *testing.T) {
			t.Parallel()
			f := memFixture(t, mode, 0)
			id := f.install(mustWat(t, growBothWat), nil)
			// Room for one more Wasm page: each memory may take it, both
			// together exceed the allocation, which the host finds in the
			// output it received (checkMemory) and makes a trap.
			if err := f.setMemory(id, "memory_allocation", f.status(id).MemorySize+wasmPage); err != nil {
				t.Fatal(err)
			}
			_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "both", Caller: user})
			if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "exceeded its memory allocation") {
				t.Fatalf("%s: want the allocation's trap, got %v", mode, r)
			}
			if f.node.pages.peakBytes() == 0 {
				t.Fatalf("%s: the output's pages were never reserved", mode)
			}
			f.idleMemory()
		})
	}

	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run("query given up/"+mode, func(t *testing.T) {
			t.Parallel()
			f := memFixture(t, mode, 0)
			id := f.install(mustWat(t, hoardWat), nil)
			ctx, cancel := context.WithCancel(context.Background())
			late := &lateAnswer{Executor: f.node.exec, cancel: cancel, resume: make(chan struct{}), answered: make(chan error, 1)}
			f.node.exec = late
			_, err := f.hoard(ctx, id, 1, 16, 0)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("%s: want the query's context's error, got %v", mode, err)
			}
			// Its first execution goes on, and answers now: its one page
			// (it made a call) is refused.
			close(late.resume)
			if err := <-late.answered; !errors.Is(err, errHoldClosed) {
				t.Fatalf("%s: the late answer: want it refused (%v), got %v", mode, errHoldClosed, err)
			}
			f.idleMemory()
			if _, err := f.hoard(context.Background(), id, 1, 16, 0); err != nil {
				t.Fatal(err)
			}
			f.idleMemory()
		})
	}
}

// peakBytes is the most the budget held at once.
func (b *pageBudget) peakBytes() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak
}

// growBothWat's "both" grows the heap and stable memory by a Wasm page each
// and writes to each new page.
const growBothWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $swrite (param i64 i64 i64)))
  (memory 1)
  (data (i32.const 0) "x")
  (func (export "canister_update both")
    (drop (memory.grow (i32.const 1)))
    (i32.store8 (i32.const 70000) (i32.const 1))
    (drop (call $sgrow (i64.const 1)))
    (call $swrite (i64.const 0) (i64.const 0) (i64.const 1))
    (call $reply)))`

// lateAnswer gives up the first composite query execution as its query's
// context ends (it ends it), and runs it when resumed, as a sandbox that
// answers after its query was given up on: what it reserves then, nobody
// would give back.
type lateAnswer struct {
	exec.Executor
	cancel   context.CancelFunc
	resume   chan struct{}
	answered chan error
	once     sync.Once
}

func (x *lateAnswer) Execute(ctx context.Context, id string, req *exec.Request) (*sysapi.Output, error) {
	late := false
	if req.Input.Context == sysapi.CtxCompositeQuery {
		x.once.Do(func() { late = true })
	}
	if !late {
		return x.Executor.Execute(ctx, id, req)
	}
	go func() {
		<-x.resume
		_, err := x.Executor.Execute(context.Background(), id, req)
		x.answered <- err
	}()
	x.cancel()
	<-ctx.Done()
	return nil, ctx.Err()
}

// relayExecutor is a sandboxed executor whose sandboxes' packets to the
// host pass through edit: real, confined sandboxes, and a compromised one
// where edit says so.
func relayExecutor(t *testing.T, cfg Config, edit func([]byte)) exec.Executor {
	t.Helper()
	return relayExecutorWith(t, cfg, exec.SandboxConfig{}, func(_ string, pkt []byte) bool { edit(pkt); return true })
}

// relayExecutorWith is relayExecutor with the executor's watchdog settings
// of sc, whose relays act on each packet of the sandbox of canister label
// as relayUntil's act.
func relayExecutorWith(t *testing.T, cfg Config, sc exec.SandboxConfig, act func(label string, pkt []byte) bool) exec.Executor {
	t.Helper()
	return relayExecutorPiped(t, cfg, sc, func(label string, mid, sb *net.UnixConn) {
		go relay(mid, sb, func([]byte) {})
		go relayUntil(sb, mid, func(pkt []byte) bool { return act(label, pkt) })
	})
}

// relayExecutorPiped is relayExecutorWith whose relays pipe starts: from
// mid (the host's peer) to sb (the sandbox's socket) and back.
func relayExecutorPiped(t *testing.T, cfg Config, sc exec.SandboxConfig, pipe func(label string, mid, sb *net.UnixConn)) exec.Executor {
	t.Helper()
	launch := func(ctx context.Context, spec sandbox.Spec) (exec.Process, error) {
		p, err := sandbox.Start(ctx, spec)
		if err != nil {
			return nil, err
		}
		host, mid, err := boundary.Pair()
		if err != nil {
			p.Kill()
			p.Wait()
			return nil, err
		}
		pipe(spec.Label, mid, p.Conn())
		return &lyingSandbox{Process: p, host: host}, nil
	}
	x, err := exec.NewSandboxed(exec.SandboxConfig{Dir: filepath.Join(cfg.Home, "relay-artifacts"),
		ModuleLimits: cfg.ModuleLimits, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Launch: launch,
		WatchdogBase: sc.WatchdogBase, InstructionsPerSecond: sc.InstructionsPerSecond})
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// upgradeWat's pre_upgrade writes 24 pages of stable memory and its
// post_upgrade 24 pages of heap: an upgrade keeps the first execution's
// pages while the second runs.
const upgradeWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $swrite (param i64 i64 i64)))
  (memory 2)
  (func (export "canister_pre_upgrade")
    (local $i i64)
    (i32.store8 (i32.const 0) (i32.const 1))
    (drop (call $sgrow (i64.const 2)))
    (loop $l
      (call $swrite (i64.mul (local.get $i) (i64.const 4096)) (i64.const 0) (i64.const 1))
      (br_if $l (i64.lt_u (local.tee $i (i64.add (local.get $i) (i64.const 1))) (i64.const 24)))))
  (func (export "canister_post_upgrade")
    (local $p i32)
    (loop $l
      (i32.store8 (local.get $p) (i32.const 1))
      (br_if $l (i32.lt_u (local.tee $p (i32.add (local.get $p) (i32.const 4096))) (i32.const 98304)))))
  (func (export "canister_update ping") (call $reply)))`

// An upgrade holds pre_upgrade's pages while post_upgrade runs. Together
// they need more than the whole execution memory (48 pages of 32): with
// nothing else held it runs anyway, as any execution larger than the
// budget does, alone; it must not wait for its own pages to be given back.
func TestUpgradeLargerThanExecutionMemory(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f := memFixture(t, mode, 32)
			wasm := mustWat(t, upgradeWat)
			id := f.install(wasm, nil)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user}); err != nil {
				t.Fatalf("upgrade: %v", err)
			}
			_, _, total := f.node.pages.inUse()
			if peak := f.node.pages.peakBytes(); peak < 48*state.PageSize || peak <= total {
				t.Fatalf("the upgrade held %d bytes at most, want its 48 pages (budget %d)", peak, total)
			}
			f.idleMemory()
			if r := f.update(id, "ping", nil); r == nil {
				t.Fatal("no reply")
			}
		})
	}
}

// A composite query holds pages of the node's execution memory between its
// executions; an update of the canister it runs on next may hold that
// canister's lock while it waits for those very pages. The query waits for
// the lock no longer than its deadline (limits.query_walltime) and fails
// with the IC's time limit, giving its pages back, and the update goes on.
// Without the deadline on that wait, both waited for ever.
func TestQueryHoldingPagesDoesNotDeadlockUpdate(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t, mode)
			cfg.HeapDirty.Query = memTestPages * state.PageSize
			cfg.StableDirty.Query = memTestPages * state.PageSize
			cfg.ExecutionMemory = 64 * state.PageSize
			cfg.QueryWalltime = time.Second
			f := &fixture{t: t, home: cfg.Home, cfg: cfg}
			f.open()
			hung := false
			t.Cleanup(func() {
				if !hung {
					f.node.Close()
				} // else Close would hang for ever: the node is leaked, the test failed
			})
			id := f.install(mustWat(t, hoardWat), nil)
			c, err := f.node.get(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			waited := f.notifyWaits()
			// The query's second call to "leaf" is held (with the read lock):
			// by then its frame keeps 22 pages (cq's, and 20 of its first
			// callback's and its counters' page).
			at := newGate()
			defer at.open()
			f.node.exec = &gatedExec{Executor: f.node.exec, hold: gateNth(map[string]*gate{id.String(): at}, sysapi.CtxNonReplicatedQuery, 2)}
			queried := make(chan error, 1)
			go func() {
				_, err := f.hoard(context.Background(), id, 2, 20, 0)
				queried <- err
			}()
			at.await(t, "the query's second call")
			// An update of 51 pages queues for the lock; it gets it before
			// the query's next callback, and then waits for room (22 + 51
			// of 64 pages) holding it.
			updated := make(chan error, 1)
			go func() {
				_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "flood", Arg: []byte{50}, Caller: user})
				updated <- err
			}()
			waitFor(t, 30*time.Second, func() bool { return writerWaits(c) })
			at.open()
			select {
			case <-waited:
			case <-time.After(time.Minute):
				t.Fatal("the update never waited for room")
			}
			timeout := time.After(time.Minute)
			select {
			case err := <-queried:
				var rej *Reject
				if !errors.As(err, &rej) || rej.Code != CanisterError || rej.Message != queryGraphTimeMsg {
					t.Fatalf("the query: want CANISTER_ERROR %q, got %v", queryGraphTimeMsg, err)
				}
			case <-timeout:
				hung = true
				t.Fatal("the query and the update waited for each other for a minute")
			}
			select {
			case err := <-updated:
				if err != nil {
					t.Fatalf("the update: %v", err)
				}
			case <-timeout:
				hung = true
				t.Fatal("the update never went on")
			}
			f.idleMemory()
		})
	}
}

// A message waiting for room that gives up (its context ends: the node is
// closing) holds nothing afterwards and no longer holds back those behind
// it; one granted as its context ended keeps what it was granted, for its
// holder to give back. Waiters are served in order: one that would fit
// waits behind one that does not, and then for the messages' half.
func TestPageBudgetWaitGivenUp(t *testing.T) {
	b := newPageBudget(10)
	waiting := make(chan struct{}, 4)
	b.onWait = func() { waiting <- struct{}{} }
	if err := b.acquire(context.Background(), 8); err != nil {
		t.Fatal(err)
	}
	ctxA, cancelA := context.WithCancel(context.Background())
	errA, errB := make(chan error, 1), make(chan error, 1)
	go func() { errA <- b.acquire(ctxA, 5) }()
	<-waiting
	go func() { errB <- b.acquire(context.Background(), 2) }()
	<-waiting // 2 would fit, but waits behind 5
	if !b.tryMore(1, 8) || !b.tryQuery(1) {
		t.Fatal("a message holding pages takes what fits at once; a query takes room of its half while messages wait")
	}
	b.release(1, false)
	b.release(1, true)
	cancelA()
	if err := <-errA; !errors.Is(err, context.Canceled) {
		t.Fatalf("given up: %v", err)
	}
	if behind := b.waitingCount(); behind != 1 {
		t.Fatalf("%d waiting, want the one behind (the messages' half is held)", behind)
	}
	b.release(8, false)
	if err := <-errB; err != nil {
		t.Fatalf("the waiter behind: %v", err)
	}
	if used, _, _ := b.inUse(); used != 2 {
		t.Fatalf("%d bytes held, want 2", used)
	}
	b.release(2, false)
	if used, queries, _ := b.inUse(); used != 0 || queries != 0 || len(b.waiting) != 0 {
		t.Fatalf("after all: %d bytes held (%d by queries), %d waiting", used, queries, len(b.waiting))
	}
	// Larger than the whole budget: admitted alone.
	if err := b.acquire(context.Background(), 25); err != nil {
		t.Fatal(err)
	}
	if b.tryQuery(1) {
		t.Fatal("a query took room beside a request larger than the budget")
	}
	b.release(25, false)
}
