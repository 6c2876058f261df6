package host

import (
	"context"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// echoCallerWat calls the canister its argument names (raw principal
// bytes; empty: aaaaa-aa) with a method name of 20 000 bytes, the most
// ic0.call_new takes, and replies with the reject message it gets.
const echoCallerWat = `(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reject_msg_size" (func $rej_size (result i32)))
  (import "ic0" "msg_reject_msg_copy" (func $rej_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 2)
  (table 2 funcref)
  (elem (i32.const 1) $answered)
  (func $answered (param i32)
    (call $rej_copy (i32.const 65536) (i32.const 0) (call $rej_size))
    (call $append (i32.const 65536) (call $rej_size))
    (call $reply))
  (func (export "canister_update call")
    (memory.fill (i32.const 100) (i32.const 109) (i32.const 20000))
    (call $arg_copy (i32.const 0) (i32.const 0) (call $arg_size))
    (call $call_new (i32.const 0) (call $arg_size) (i32.const 100) (i32.const 20000)
      (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 0))
    (drop (call $call_perform))))`

// A reject names the method its caller asked for, which the caller chose:
// a user's up to the whole of an ingress message (2 MiB), a canister's up
// to 20 000 bytes. The IC interface keeps such rejects for request_status
// (10 000 refused calls of 2 MiB names were ~30 GiB). Every reject that
// echoes a method name now repeats at most its first 128 bytes.
func TestRejectsClipTheMethodNameTheyEcho(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(mustWat(t, echoCallerWat), nil)
	ctx := context.Background()
	long := strings.Repeat("m", 1<<20)
	check := func(what string, msg string) {
		t.Helper()
		if len(msg) > 1024 || !strings.Contains(msg, "… (") {
			t.Errorf("%s: a %d-byte reject message (%.120q…)", what, len(msg), msg)
		}
	}
	for _, c := range []struct {
		what  string
		run   func(context.Context, Message) (*Reply, error)
		canst principal.Principal
	}{
		{"update of a canister", f.node.Update, id},
		{"query of a canister", f.node.Query, id},
		{"update of aaaaa-aa", f.node.Update, principal.Management()},
		{"query of aaaaa-aa", f.node.Query, principal.Management()},
	} {
		_, err := c.run(ctx, Message{Canister: c.canst, Method: long, Arg: []byte("DIDL\x00\x00"), Caller: user})
		check(c.what, f.reject(err).Message)
	}
	for _, callee := range []principal.Principal{id, principal.Management()} {
		r, err := f.node.Update(ctx, Message{Canister: id, Method: "call", Arg: callee.Bytes(), Caller: user})
		if err != nil {
			t.Fatalf("call %s: %v", callee, err)
		}
		check("a canister's call of "+callee.String(), string(r.Data))
	}
}
