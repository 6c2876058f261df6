package host

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// lockWat: composite queries that reach other canisters in a chosen order.
// The argument (kept at heap 1000 by every entry point): u32 (unused), u8
// len a, a, u8 len b, b.
//
//	q1: calls a.get at once; its callback calls b.get.
//	q2: calls a.get.
//	q3: calls a.get at once; its callback (reply or reject) replies.
const lockWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table 4 funcref)
  (elem (i32.const 0) $answer $then_b $just_reply)
  (data (i32.const 100) "get")
  (func $load_arg (call $arg_copy (i32.const 1000) (i32.const 0) (call $arg_size)))
  (func $a_len (result i32) (i32.load8_u (i32.const 1004)))
  (func $call_get (param $ptr i32) (param $len i32) (param $cb i32)
    (call $call_new (local.get $ptr) (local.get $len) (i32.const 100) (i32.const 3)
      (local.get $cb) (i32.const 0) (local.get $cb) (i32.const 0))
    (drop (call $call_perform)))
  (func $answer (param i32) (call $reply))
  (func $then_b (param i32)
    (call $call_get (i32.add (i32.const 1006) (call $a_len))
      (i32.load8_u (i32.add (i32.const 1005) (call $a_len))) (i32.const 0)))
  (func $just_reply (param i32) (call $reply))
  (func (export "canister_composite_query q1")
    (call $load_arg)
    (call $call_get (i32.const 1005) (call $a_len) (i32.const 1)))
  (func (export "canister_composite_query q2")
    (call $load_arg)
    (call $call_get (i32.const 1005) (call $a_len) (i32.const 0)))
  (func (export "canister_composite_query q3")
    (call $load_arg)
    (call $call_get (i32.const 1005) (call $a_len) (i32.const 2)))
  (func (export "canister_query get") (call $reply))
  (func (export "canister_update u") (call $reply))
)`

// updateOnlyWat has no query method at all.
const updateOnlyWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func (export "canister_update u") (call $reply)))`

func lockArg(ids ...principal.Principal) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0)
	for _, id := range ids {
		b = append(b, byte(len(id.Bytes())))
		b = append(b, id.Bytes()...)
	}
	return b
}

// gate holds the executions it is given until released: the test knows
// where a query is, without sleeping.
type gate struct {
	reached chan struct{} // closed when the first held execution starts
	release chan struct{} // closed by the test
	once    sync.Once
}

func newGate() *gate { return &gate{reached: make(chan struct{}), release: make(chan struct{})} }

func (g *gate) open() {
	select {
	case <-g.release:
	default:
		close(g.release)
	}
}

// await waits for the gate to be reached.
func (g *gate) await(t *testing.T, what string) {
	t.Helper()
	select {
	case <-g.reached:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s never started", what)
	}
}

// gatedExec runs executions through the gate hold picks for them (nil:
// none).
type gatedExec struct {
	exec.Executor
	hold func(canister string, in *sysapi.Input) *gate
}

func (x *gatedExec) Execute(ctx context.Context, id string, req *exec.Request) (*sysapi.Output, error) {
	if g := x.hold(id, req.Input); g != nil {
		g.once.Do(func() { close(g.reached) })
		select {
		case <-g.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return x.Executor.Execute(ctx, id, req)
}

// writerWaits reports whether a writer holds or waits for c's lock (a new
// reader would block).
func writerWaits(c *canister) bool {
	if c.mu.TryRLock() {
		c.mu.RUnlock()
		return false
	}
	return true
}

// Two composite queries reaching two canisters in opposite orders, plus an
// ordinary update queued on each of those canisters, must all finish. When
// a composite query read-locked every canister of its call graph until it
// ended, they deadlocked for ever (Go's RWMutex blocks new readers once a
// writer waits): Q2 held X2 and wanted V, Q1 held V and wanted X2, and the
// updates on X2 and V queued between them. The victim V needed no
// cooperation: an ordinary canister and an update sent to it. The
// executions are held at the points that made the deadlock, and the test
// checks each update got as far as it could before letting them go.
func TestCompositeQueryLockOrderNoDeadlock(t *testing.T) {
	cfg := testConfig(t, "")
	f := &fixture{t: t, home: cfg.Home, cfg: cfg}
	f.open()
	hung := false
	t.Cleanup(func() {
		if !hung {
			f.node.Close()
		} // else Close would hang for ever: the node is leaked, the test failed
	})
	wasm := mustWat(t, lockWat)
	x1 := f.install(wasm, nil)
	x2 := f.install(wasm, nil)
	v := f.install(wasm, nil) // the victim: an ordinary canister

	q2At, q1At := newGate(), newGate()
	defer q2At.open()
	defer q1At.open()
	f.node.exec = &gatedExec{Executor: f.node.exec, hold: func(id string, in *sysapi.Input) *gate {
		switch {
		case id == x2.String() && in.Context == sysapi.CtxCompositeQuery:
			return q2At // Q2 runs on X2, before it calls V
		case id == x1.String() && in.Context == sysapi.CtxCompositeReply:
			return q1At // Q1 has had V's answer, before it calls X2
		}
		return nil
	}}
	c := func(id principal.Principal) *canister {
		cn, err := f.node.get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		return cn
	}

	ctx := context.Background()
	done := make(chan string, 4)
	run := func(name string, fn func() error) {
		go func() { done <- name + ": " + errString(fn()) }()
	}
	updated := map[principal.Principal]*atomic.Bool{x2: {}, v: {}}
	update := func(id principal.Principal) {
		run("update "+id.String(), func() error {
			_, err := f.node.Update(ctx, Message{Canister: id, Method: "u", Caller: user})
			updated[id].Store(true)
			return err
		})
	}
	run("Q2 x2.q2", func() error {
		_, err := f.node.Query(ctx, Message{Canister: x2, Method: "q2", Arg: lockArg(v), Caller: user})
		return err
	})
	q2At.await(t, "Q2's execution on X2")
	run("Q1 x1.q1", func() error {
		_, err := f.node.Query(ctx, Message{Canister: x1, Method: "q1", Arg: lockArg(v, x2), Caller: user})
		return err
	})
	q1At.await(t, "Q1's callback on X1")
	// An update on each: on X2 it waits for Q2's execution there; on V
	// it runs, or (the deadlock's precondition) waits for Q1 to let go.
	update(x2)
	update(v)
	waitFor(t, 30*time.Second, func() bool { return writerWaits(c(x2)) })
	waitFor(t, 30*time.Second, func() bool { return updated[v].Load() || writerWaits(c(v)) })
	q2At.open()
	q1At.open()

	timeout := time.After(60 * time.Second)
	for range 4 {
		select {
		case s := <-done:
			if !strings.HasSuffix(s, ": ok") {
				t.Errorf("%s", s)
			}
		case <-timeout:
			hung = true
			t.Fatalf("two composite queries and two updates deadlocked: not all finished in 60 s")
		}
	}
	// The victim still processes messages.
	f.update(v, "u", nil)
	f.update(x2, "u", nil)
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// A composite query must not hold up the updates of a canister it called,
// even one without a query method, while its other executions run: the
// callback of x's call to v is held, and v's update must still run. (Once
// the composite query kept the read lock of every canister it had called
// until it ended, so v's updates waited for the attacker's callbacks, up to
// the whole query budget, as often as it sent such queries.)
func TestCompositeQueryDoesNotHoldCalleeLock(t *testing.T) {
	f := newFixture(t)
	x := f.install(mustWat(t, lockWat), nil)
	v := f.install(mustWat(t, updateOnlyWat), nil) // no query methods

	held := newGate()
	defer held.open()
	f.node.exec = &gatedExec{Executor: f.node.exec, hold: func(id string, in *sysapi.Input) *gate {
		if id == x.String() && in.Context == sysapi.CtxCompositeReject {
			return held // the call to v was rejected; x's callback is held
		}
		return nil
	}}
	qdone := make(chan error, 1)
	go func() {
		_, err := f.node.Query(context.Background(), Message{Canister: x, Method: "q3", Arg: lockArg(v), Caller: user})
		qdone <- err
	}()
	held.await(t, "the callback of x's call to v")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := f.node.Update(ctx, Message{Canister: v, Method: "u", Caller: user}); err != nil {
		t.Fatalf("an update of %s (which has no query method) waited for another canister's composite query: %v", v, err)
	}
	held.open()
	if err := <-qdone; err != nil {
		t.Fatalf("composite query: %v", err)
	}
}

// snapWat: "inc" adds one to heap[0]. The composite query "cq" copies
// heap[0] to heap[8] (its own working state) and calls "get" on the
// canister its argument names; the reply callback answers heap[0] and
// heap[8]. "get" answers heap[0].
const snapWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table 1 funcref)
  (elem (i32.const 0) $answer)
  (data (i32.const 100) "get")
  (func $answer (param i32) (call $append (i32.const 0) (i32.const 4)) (call $append (i32.const 8) (i32.const 4)) (call $reply))
  (func (export "canister_update inc")
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (call $reply))
  (func (export "canister_query get") (call $append (i32.const 0) (i32.const 4)) (call $reply))
  (func (export "canister_composite_query cq")
    (i32.store (i32.const 8) (i32.load (i32.const 0)))
    (call $arg_copy (i32.const 200) (i32.const 0) (call $arg_size))
    (call $call_new (i32.const 200) (call $arg_size) (i32.const 100) (i32.const 3)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (if (call $call_perform) (then unreachable))))`

// A composite query's callbacks run on the snapshot its call started from:
// an update of the caller that commits while the callee runs (the caller
// is not locked meanwhile) is not seen by the callback, whose own earlier
// write is.
func TestCompositeQueryCallbacksSeeSnapshot(t *testing.T) {
	f := newFixture(t)
	wasm := mustWat(t, snapWat)
	x := f.install(wasm, nil)
	y := f.install(wasm, nil)
	f.update(x, "inc", nil) // heap[0] = 1

	held := newGate()
	defer held.open()
	f.node.exec = &gatedExec{Executor: f.node.exec, hold: func(id string, in *sysapi.Input) *gate {
		if id == y.String() && in.Context == sysapi.CtxNonReplicatedQuery {
			return held
		}
		return nil
	}}
	type answer struct {
		data []byte
		err  error
	}
	qdone := make(chan answer, 1)
	go func() {
		r, err := f.node.Query(context.Background(), Message{Canister: x, Method: "cq", Arg: y.Bytes(), Caller: user})
		if err != nil {
			qdone <- answer{err: err}
			return
		}
		qdone <- answer{data: r.Data}
	}()
	held.await(t, "the callee's execution")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 3 { // heap[0] = 4, committed page by page over the snapshot
		if _, err := f.node.Update(ctx, Message{Canister: x, Method: "inc", Caller: user}); err != nil {
			t.Fatalf("the caller's update waited for its composite query's callee: %v", err)
		}
	}
	held.open()
	a := <-qdone
	if a.err != nil {
		t.Fatal(a.err)
	}
	if len(a.data) != 8 {
		t.Fatalf("answer %x", a.data)
	}
	if now, before := binary.LittleEndian.Uint32(a.data), binary.LittleEndian.Uint32(a.data[4:]); now != 1 || before != 1 {
		t.Fatalf("the callback saw heap[0] = %d and its own copy %d; want 1 and 1 (the snapshot)", now, before)
	}
	if got := binary.LittleEndian.Uint32(f.query(x, "get", nil)); got != 4 {
		t.Fatalf("committed heap[0] = %d, want 4", got)
	}
}

// chainWat: the composite query "cq" calls its own plain query "leaf";
// every callback calls "leaf" again. Callbacks make their calls at their
// caller's depth, so the depth limit never ends the chain.
const chainWat = `
(module
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table 1 funcref)
  (elem (i32.const 0) $again)
  (data (i32.const 100) "leaf")
  (func $again (param i32)
    (local $n i32)
    (local.set $n (call $self_size))
    (call $self_copy (i32.const 0) (i32.const 0) (local.get $n))
    (call $call_new (i32.const 0) (local.get $n) (i32.const 100) (i32.const 4)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (drop (call $call_perform)))
  (func (export "canister_composite_query cq") (call $again (i32.const 0)))
  (func (export "canister_query leaf") (call $reply)))`

// A composite query's call graph is bounded by its budget with every call
// paying the IC's 50 M instructions (at most 100 calls with the default
// 5 B): a chain of calls made from callbacks ends with the IC's
// CANISTER_ERROR. Without the charge, one free query made the host run
// about 1.76 million executions.
func TestCompositeQueryCallGraphBounded(t *testing.T) {
	for _, budget := range []uint64{50_000_000, 5_000_000_000} {
		cfg := testConfig(t, "")
		cfg.QueryInstructions = budget
		f := &fixture{t: t, home: cfg.Home, cfg: cfg}
		f.open()
		counted := &countQueries{Executor: f.node.exec}
		f.node.exec = counted
		id := f.install(mustWat(t, chainWat), nil)
		start := time.Now()
		_, err := f.node.Query(context.Background(), Message{Canister: id, Method: "cq", Caller: user})
		execs := counted.execs.Load()
		t.Logf("budget %d: %d executions in %v (%v)", budget, execs, time.Since(start), err)
		// Each call: the callee's execution and a callback; plus the first.
		if max := 2*int64(budget/queryCallInstructions) + 1; execs > max {
			t.Errorf("budget %d: %d executions, want at most %d", budget, execs, max)
		}
		var r *Reject
		if !errors.As(err, &r) || r.Code != CanisterError || r.Message != queryGraphInstructionsMsg {
			t.Errorf("budget %d: want CANISTER_ERROR %q, got %v", budget, queryGraphInstructionsMsg, err)
		}
		f.node.Close()
	}
}

// A composite query's call graph is bounded in wall time
// (Config.QueryWalltime, the IC's max_query_call_walltime): the deadline is
// checked between executions, so an execution that finishes past it (the
// callee's, held here until the deadline has passed) ends the graph with
// the IC's CANISTER_ERROR.
func TestCompositeQueryWalltimeBounded(t *testing.T) {
	cfg := testConfig(t, "")
	cfg.QueryWalltime = 300 * time.Millisecond
	cfg.QueryInstructions = 200_000_000 // a few calls; without the deadline, the chain ends with the budget
	f := openFixture(t, cfg)
	inner := f.node.exec
	counted := &countQueries{Executor: &pastDeadline{Executor: inner, wait: cfg.QueryWalltime}}
	f.node.exec = counted
	id := f.install(mustWat(t, chainWat), nil)
	_, err := f.node.Query(context.Background(), Message{Canister: id, Method: "cq", Caller: user})
	var r *Reject
	if !errors.As(err, &r) || r.Code != CanisterError || r.Message != queryGraphTimeMsg {
		t.Fatalf("want CANISTER_ERROR %q, got %v", queryGraphTimeMsg, err)
	}
	// The first execution and the callee's, held past the deadline; no
	// callback after it.
	if n := counted.execs.Load(); n != 2 {
		t.Fatalf("%d executions, want 2", n)
	}
	// The node is fine: the next query with a callee that does not dawdle.
	if _, err := f.node.Query(context.Background(), Message{Canister: id, Method: "leaf", Caller: user}); err != nil {
		t.Fatal(err)
	}
}

// pastDeadline holds the first execution of a "leaf" query for wait, the
// query's wall-time bound: the query started before it, so its deadline has
// passed when the execution goes on (a lower bound, not a race).
type pastDeadline struct {
	exec.Executor
	wait time.Duration
	once sync.Once
}

func (x *pastDeadline) Execute(ctx context.Context, id string, req *exec.Request) (*sysapi.Output, error) {
	if req.Input.Entry == "canister_query leaf" {
		x.once.Do(func() { time.Sleep(x.wait) })
	}
	return x.Executor.Execute(ctx, id, req)
}
