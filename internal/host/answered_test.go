package host

import (
	"context"
	"encoding/binary"
	"testing"
	"time"
)

// replyTwiceWat: each entry calls its own "noop" with a callback (table 0)
// whose environment says what it then does: 0 msg_reply, 1 msg_reject, 2
// msg_reply_data_append. The callback first counts itself at heap[200];
// the cleanup (table 1) counts itself at heap[204]. "go", "go_reject" and
// "go_append" answer their call before the callback runs; the global timer
// (armed by "arm") is a system task, which has nobody to answer.
const replyTwiceWat = `
(module
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_on_cleanup" (func $on_cleanup (param i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reject" (func $reject (param i32 i32)))
  (import "ic0" "global_timer_set" (func $timer_set (param i64) (result i64)))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 0) $cb $cleanup)
  (data (i32.const 100) "noop")
  (func $cb (param $env i32)
    (i32.store (i32.const 200) (i32.add (i32.load (i32.const 200)) (i32.const 1)))
    (if (i32.eqz (local.get $env)) (then (call $reply)))
    (if (i32.eq (local.get $env) (i32.const 1)) (then (call $reject (i32.const 100) (i32.const 4))))
    (if (i32.eq (local.get $env) (i32.const 2)) (then (call $append (i32.const 100) (i32.const 4)))))
  (func $cleanup (param i32)
    (i32.store (i32.const 204) (i32.add (i32.load (i32.const 204)) (i32.const 1))))
  (func $call_self (param $env i32)
    (local $n i32)
    (local.set $n (call $self_size))
    (call $self_copy (i32.const 0) (i32.const 0) (local.get $n))
    (call $call_new (i32.const 0) (local.get $n) (i32.const 100) (i32.const 4)
      (i32.const 0) (local.get $env) (i32.const 0) (local.get $env))
    (call $on_cleanup (i32.const 1) (i32.const 0))
    (if (call $call_perform) (then unreachable)))
  (func (export "canister_update go") (call $call_self (i32.const 0)) (call $reply))
  (func (export "canister_update go_reject") (call $call_self (i32.const 1)) (call $reject (i32.const 100) (i32.const 4)))
  (func (export "canister_update go_append") (call $call_self (i32.const 2)) (call $reply))
  (func (export "canister_update arm") (drop (call $timer_set (i64.const 1))) (call $reply))
  (func (export "canister_global_timer") (call $call_self (i32.const 0)))
  (func (export "canister_update noop") (call $reply))
  (func (export "canister_query count") (call $append (i32.const 200) (i32.const 8)) (call $reply)))`

// A callback of a call context that was already answered, or of a system
// task's, cannot answer it: msg_reply, msg_reject and
// msg_reply_data_append trap there as on the IC, the callback's changes
// are rolled back and its cleanup runs; the first answer stands.
func TestReplyTwiceInCallbackTraps(t *testing.T) {
	forIsolations(t, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		id := f.install(mustWat(t, replyTwiceWat), nil)
		f.update(id, "go", nil)
		_, err := f.node.Update(ctx, Message{Canister: id, Method: "go_reject", Caller: user})
		if r := f.reject(err); r.Code != CanisterReject || r.Message != "noop" {
			t.Fatalf("go_reject: %v", r)
		}
		f.update(id, "go_append", nil)
		f.update(id, "arm", nil)
		count := func() (callbacks, cleanups uint32) {
			r := f.query(id, "count", nil)
			return binary.LittleEndian.Uint32(r), binary.LittleEndian.Uint32(r[4:])
		}
		// Each callback either committed its count or trapped and ran its
		// cleanup: wait until all four have done one or the other.
		waitFor(t, 30*time.Second, func() bool { n, c := count(); return n+c == 4 })
		f.checkConservation()
		if n, c := count(); n != 0 || c != 4 {
			t.Fatalf("%d callbacks that answered an answered call committed, %d cleanups ran (want 0 and 4)", n, c)
		}
	})
}
