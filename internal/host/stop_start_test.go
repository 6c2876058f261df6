package host

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// relayCallWat's forward calls the method its argument names (callee length,
// callee, method length, method, payload) and replies at once; spin never
// ends (until its instruction limit).
const relayCallWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $data (param i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (func (export "canister_update forward")
    (local $n i32) (local $clen i32) (local $mlen i32) (local $moff i32) (local $poff i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 1000) (i32.const 0) (local.get $n))
    (local.set $clen (i32.load8_u (i32.const 1000)))
    (local.set $mlen (i32.load8_u (i32.add (i32.const 1001) (local.get $clen))))
    (local.set $moff (i32.add (i32.const 1002) (local.get $clen)))
    (local.set $poff (i32.add (local.get $moff) (local.get $mlen)))
    (call $call_new (i32.const 1001) (local.get $clen) (local.get $moff) (local.get $mlen)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (call $data (local.get $poff) (i32.sub (i32.add (i32.const 1000) (local.get $n)) (local.get $poff)))
    (if (call $perform) (then unreachable))
    (call $reply))
  (func (export "canister_update take") (call $reply))
  (func (export "canister_update spin") (loop $l (br $l)))
  (func $on_reply (param i32))
  (func $on_reject (param i32))
)`

func relayCallArg(callee principal.Principal, method string, payload []byte) []byte {
	b := []byte{byte(len(callee.Bytes()))}
	b = append(b, callee.Bytes()...)
	b = append(b, byte(len(method)))
	b = append(b, method...)
	return append(b, payload...)
}

// A start_canister rejects the stop_canister calls waiting for the canister
// to stop (IC interface specification): they used to answer success while
// the canister ran on.
func TestStartRejectsPendingStop(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "inprocess")
	cfg.UpdateInstructions = 2_000_000_000
	f := openFixture(t, cfg)
	wasm := mustWat(t, relayCallWat)
	a, b := f.install(wasm, nil), f.install(wasm, nil)
	ctx := context.Background()
	// b is busy, so a's call to it stays open and a cannot stop.
	go f.node.Update(ctx, Message{Canister: b, Method: "spin", Caller: user}) //nolint:errcheck
	cb := f.loaded(b)
	waitFor(t, time.Minute, func() bool {
		if cb.mu.TryRLock() {
			cb.mu.RUnlock()
			return false
		}
		return true
	})
	f.update(a, "forward", relayCallArg(b, "take", noArgs))
	stopped := make(chan error, 1)
	go func() { stopped <- f.node.SetStatus(ctx, a, user, "stopped") }()
	waitFor(t, time.Minute, func() bool { return metaOf(f.loaded(a)).Status == "stopping" })
	if err := f.node.SetStatus(ctx, a, user, "running"); err != nil {
		t.Fatal(err)
	}
	err := <-stopped
	var rej *Reject
	if !errors.As(err, &rej) || rej.Code != CanisterError {
		t.Fatalf("the pending stop_canister answered %v, the canister being %q", err, metaOf(f.loaded(a)).Status)
	}
	if st := metaOf(f.loaded(a)).Status; st != "running" {
		t.Fatalf("after the start: %q", st)
	}
}

// A canister deleted while another goroutine was loading it from the store
// stays deleted: the load used to put what it read into the node's map
// (not marked deleted), and the next commit on it made the canister again,
// its module already released.
func TestLoadRacingDeleteDoesNotResurrect(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	id := f.install(module(t, corpusDir, "counter"), noArgs)
	if err := f.node.SetStatus(ctx, id, user, "stopped"); err != nil {
		t.Fatal(err)
	}
	f.restart() // not loaded
	var deleted error
	armed := true
	f.node.loadedHook = func(p principal.Principal) {
		if p != id || !armed {
			return
		}
		armed = false
		deleted = f.node.Delete(ctx, id, user) // loads, deletes, drops it
	}
	_, err := f.node.get(ctx, id)
	f.node.loadedHook = nil
	if deleted != nil {
		t.Fatalf("delete: %v", deleted)
	}
	var rej *Reject
	if !errors.As(err, &rej) || rej.Code != DestinationInvalid {
		t.Fatalf("the load that raced the deletion: %v", err)
	}
	// Nothing brings it back.
	if err := f.node.SetStatus(ctx, id, user, "running"); err == nil {
		t.Fatal("start_canister of the deleted canister succeeded")
	}
	if held, err := f.node.store.HasCanister(id.Bytes()); err != nil || held {
		t.Fatalf("the deleted canister is stored again (%v)", err)
	}
}
