package host

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// probeWat is a hand-written canister that makes calls with chosen
// callbacks, so the tests can drive every path of a call context.
// Argument of call/call_trap_reply: [len(callee)] callee method.
const probeWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reject_code" (func $reject_code (result i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_on_cleanup" (func $call_on_cleanup (param i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "time" (func $time (result i64)))
  (memory (export "memory") 1)
  (table (export "table") 4 funcref)
  (elem (i32.const 0) $on_reply $on_reject $on_reply_trap $on_cleanup)
  (global $writes (mut i32) (i32.const 0))
  (global $cleanups (mut i32) (i32.const 0))
  (global $beats (mut i32) (i32.const 0))
  (data (i32.const 100) "ok:rejected:pong")
  (func $do_call (param $reply_cb i32) (param $cleanup i32)
    (local $n i32) (local $len i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 1000) (i32.const 0) (local.get $n))
    (local.set $len (i32.load8_u (i32.const 1000)))
    (call $call_new
      (i32.const 1001) (local.get $len)
      (i32.add (i32.const 1001) (local.get $len)) (i32.sub (i32.sub (local.get $n) (i32.const 1)) (local.get $len))
      (local.get $reply_cb) (i32.const 0) (i32.const 1) (i32.const 0))
    (if (local.get $cleanup) (then (call $call_on_cleanup (i32.const 3) (i32.const 0))))
    (drop (call $call_perform)))
  (func (export "canister_update call") (call $do_call (i32.const 0) (i32.const 0)))
  (func (export "canister_update call_trap_reply") (call $do_call (i32.const 2) (i32.const 1)))
  (func $on_reply (param i32)
    (local $n i32)
    (global.set $writes (i32.add (global.get $writes) (i32.const 1)))
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 2000) (i32.const 0) (local.get $n))
    (call $append (i32.const 100) (i32.const 3))
    (call $append (i32.const 2000) (local.get $n))
    (call $reply))
  (func $on_reject (param i32)
    (i32.store8 (i32.const 3000) (i32.add (i32.const 48) (call $reject_code)))
    (call $append (i32.const 103) (i32.const 9))
    (call $append (i32.const 3000) (i32.const 1))
    (call $reply))
  (func $on_reply_trap (param i32)
    (global.set $writes (i32.add (global.get $writes) (i32.const 100)))
    (call $trap (i32.const 100) (i32.const 2)))
  (func $on_cleanup (param i32)
    (global.set $cleanups (i32.add (global.get $cleanups) (i32.const 1))))
  (func (export "canister_query counters")
    (i32.store (i32.const 4000) (global.get $writes))
    (i32.store (i32.const 4004) (global.get $cleanups))
    (i32.store (i32.const 4008) (global.get $beats))
    (call $append (i32.const 4000) (i32.const 12))
    (call $reply))
  (func (export "canister_update ping") (call $append (i32.const 112) (i32.const 4)) (call $reply))
  (func (export "canister_update boom") (global.set $writes (i32.const 999)) (call $trap (i32.const 112) (i32.const 4)))
  (func (export "canister_update slow") (local $i i32)
    (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.const 100000000))))
    (call $append (i32.const 112) (i32.const 4)) (call $reply))
  (func (export "canister_update noreply"))
  (func (export "canister_heartbeat") (global.set $beats (i32.add (global.get $beats) (i32.const 1))))
  (func (export "canister_query now") (i64.store (i32.const 5000) (call $time)) (call $append (i32.const 5000) (i32.const 8)) (call $reply))
)`

func callArg(callee principal.Principal, method string) []byte {
	b := append([]byte{byte(len(callee.Bytes()))}, callee.Bytes()...)
	return append(b, method...)
}

type counters struct{ writes, cleanups, beats uint32 }

func (f *fixture) counters(id principal.Principal) counters {
	b := f.query(id, "counters", nil)
	return counters{binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])}
}

func TestCallPaths(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wasm := mustWat(t, probeWat)
	a := f.install(wasm, nil)
	b := f.install(wasm, nil)
	ctx := context.Background()

	eq(t, "reply", f.update(a, "call", callArg(b, "ping")), []byte("ok:pong"))
	if c := f.counters(a); c.writes != 1 {
		t.Fatalf("reply callback's write not kept: %+v", c)
	}
	// A callee that traps: its state is rolled back, the caller sees CANISTER_ERROR.
	eq(t, "callee traps", f.update(a, "call", callArg(b, "boom")), []byte("rejected:5"))
	if c := f.counters(b); c.writes != 0 {
		t.Fatalf("trapped callee kept a write: %+v", c)
	}
	eq(t, "missing canister", f.update(a, "call", callArg(principal.CanisterID(999), "ping")), []byte("rejected:3"))
	eq(t, "missing method", f.update(a, "call", callArg(b, "nope")), []byte("rejected:3"))
	eq(t, "callee never replies", f.update(a, "call", callArg(b, "noreply")), []byte("rejected:5"))
	eq(t, "call to self", f.update(a, "call", callArg(a, "ping")), []byte("ok:pong"))

	// A reply callback that traps: its writes roll back, the cleanup runs and
	// is kept, and the caller gets the trap as CANISTER_ERROR.
	before := f.counters(a)
	_, err := f.node.Update(ctx, Message{Canister: a, Method: "call_trap_reply", Arg: callArg(b, "ping"), Caller: user})
	if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "ic0.trap") {
		t.Fatalf("trap in reply callback: %v", r)
	}
	after := f.counters(a)
	if after.writes != before.writes || after.cleanups != before.cleanups+1 {
		t.Fatalf("trap in reply callback: before %+v after %+v", before, after)
	}
	f.checkConservation()

	// A caller stopped while it awaits a response: the response is still
	// delivered, the user gets the reply, then the caller is stopped. The
	// test holds the callee's lock so the response cannot come before the
	// stop (a fast machine ran "slow" between two polls).
	cb, err := f.node.get(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	cb.mu.Lock()
	done := make(chan []byte, 1)
	go func() {
		r, err := f.node.Update(ctx, Message{Canister: a, Method: "call", Arg: callArg(b, "slow"), Caller: user})
		if err != nil {
			t.Error(err)
			done <- nil
			return
		}
		done <- r.Data
	}()
	waitFor(t, 10*time.Second, func() bool {
		c, _ := f.node.get(ctx, a)
		c.mu.RLock()
		defer c.mu.RUnlock()
		return len(c.contexts) > 0
	})
	stopErr := make(chan error, 1)
	go func() { stopErr <- f.node.SetStatus(ctx, a, user, "stopped") }()
	waitFor(t, 10*time.Second, func() bool {
		c, _ := f.node.get(ctx, a)
		c.mu.RLock()
		defer c.mu.RUnlock()
		return c.meta.Status == "stopping"
	})
	cb.mu.Unlock()
	if err := <-stopErr; err != nil {
		t.Fatal(err)
	}
	eq(t, "reply after stop", <-done, []byte("ok:pong"))
	if st, _ := f.node.Status(ctx, a); st.Status != "stopped" {
		t.Fatalf("caller status %s", st.Status)
	}
	_, err = f.node.Update(ctx, Message{Canister: a, Method: "ping", Caller: user})
	if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "stopped") {
		t.Fatalf("call to stopped caller: %v", r)
	}
	f.checkConservation()
}

func TestHeartbeatAndTime(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(mustWat(t, probeWat), nil)
	waitFor(t, 10*time.Second, func() bool { return f.counters(id).beats >= 2 })
	t1 := binary.LittleEndian.Uint64(f.query(id, "now", nil))
	t2 := binary.LittleEndian.Uint64(f.query(id, "now", nil))
	if t2 <= t1 {
		t.Fatalf("ic0.time not increasing: %d then %d", t1, t2)
	}
	f.checkConservation()
}
