package host

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// ingressWat replies, rejects, traps, returns without answering, or calls
// a method of its own and replies in the callback.
const ingressWat = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reject" (func $reject (param i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (memory 1)
  (global $n (mut i32) (i32.const 0))
  (table (export "table") 2 funcref)
  (elem (i32.const 1) $on_reply)
  (data (i32.const 100) "ok")
  (data (i32.const 110) "no")
  (data (i32.const 120) "pong")
  (func (export "canister_update ok")
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (call $append (i32.const 100) (i32.const 2)) (call $reply))
  (func (export "canister_update no") (call $reject (i32.const 110) (i32.const 2)))
  (func (export "canister_update boom") (call $trap (i32.const 110) (i32.const 2)))
  (func (export "canister_update silent") (global.set $n (i32.add (global.get $n) (i32.const 1))))
  (func (export "canister_update pong") (call $reply))
  (func $on_reply (param i32) (call $append (i32.const 120) (i32.const 4)) (call $reply))
  (func (export "canister_update ping")
    (call $self_copy (i32.const 0) (i32.const 0) (call $self_size))
    (call $call_new (i32.const 0) (call $self_size) (i32.const 120) (i32.const 4)
      (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 0))
    (drop (call $call_perform))))`

// Each ingress outcome is stored under its key, encoded by the caller's
// function, and survives a restart: replied, rejected, trapped, no reply,
// and replied in a callback after an inter-canister call.
func TestIngressStatusRecorded(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		id := f.install(mustWat(t, ingressWat), nil)
		encode := func(o Outcome) []byte {
			switch {
			case o.Replied:
				return []byte("replied:" + string(o.Reply))
			case o.Reject != nil:
				return []byte(fmt.Sprintf("rejected:%d:%s", o.Reject.Code, o.Reject.Message))
			}
			return []byte("executing")
		}
		want := map[string]string{
			"ok":     "replied:ok",
			"no":     "rejected:4:no",
			"boom":   "rejected:5:",
			"silent": "rejected:5:",
			"ping":   "replied:pong",
			"nope":   "rejected:3:",
		}
		for method := range want {
			st := &IngressStatus{Key: []byte("key-" + method), Encode: encode}
			_, _ = f.node.Update(context.Background(), Message{Canister: id, Method: method, Caller: user, Status: st})
			if !st.final.Load() {
				t.Errorf("%s: status not final after the answer", method)
			}
		}
		// Statuses for a missing canister are recorded too.
		st := &IngressStatus{Key: []byte("key-missing"), Encode: encode}
		_, _ = f.node.Update(context.Background(), Message{Canister: principal.CanisterID(12345), Method: "ok", Caller: user, Status: st})
		want["missing"] = "rejected:3:"
		f.restart()
		got := map[string]string{}
		if err := f.node.IngressStatuses(func(k, v []byte) error { got[string(k)] = string(v); return nil }); err != nil {
			t.Fatal(err)
		}
		for method, w := range want {
			if g := got["key-"+method]; !strings.HasPrefix(g, w) {
				t.Errorf("%s: stored %q, want %q…", method, g, w)
			}
		}
		// A status with a nil value deletes.
		if err := f.node.PutIngressStatuses([]store.IngressRecord{{Key: []byte("key-ok")}}); err != nil {
			t.Fatal(err)
		}
		n := 0
		_ = f.node.IngressStatuses(func(k, v []byte) error {
			if string(k) == "key-ok" {
				t.Error("key-ok is still stored")
			}
			n++
			return nil
		})
		if n != len(want)-1 {
			t.Errorf("%d statuses stored after one was deleted, want %d", n, len(want)-1)
		}
		// The canister works on after the restart.
		if _, err := f.node.Update(context.Background(), Message{Canister: id, Method: "ok", Caller: user}); err != nil {
			t.Fatal(err)
		}
	})
}
