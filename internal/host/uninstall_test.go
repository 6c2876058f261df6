package host

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

// holdingCalleeWat is a callee that keeps calls open until told to answer them:
// "hold" counts itself at heap[0] and loops through self-calls until
// "release" sets heap[4]; then each held call is replied "done".
const holdingCalleeWat = `
(module
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table 1 funcref)
  (elem (i32.const 0) $loop)
  (data (i32.const 100) "noop")
  (data (i32.const 120) "done")
  (func $again
    (local $n i32)
    (local.set $n (call $self_size))
    (call $self_copy (i32.const 200) (i32.const 0) (local.get $n))
    (call $call_new (i32.const 200) (local.get $n) (i32.const 100) (i32.const 4)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (if (call $call_perform) (then unreachable)))
  (func $loop (param i32)
    (if (i32.load (i32.const 4))
      (then (call $append (i32.const 120) (i32.const 4)) (call $reply))
      (else (call $again))))
  (func (export "canister_update hold")
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (call $again))
  (func (export "canister_update noop") (call $reply))
  (func (export "canister_update release") (i32.store (i32.const 4) (i32.const 1)) (call $reply))
  (func (export "canister_query holding") (call $append (i32.const 0) (i32.const 4)) (call $reply)))`

// oldCallerWat accepts half of the cycles its call came with and calls
// "hold" on the canister its argument names; reply and reject callback are
// table index 1, which answers "old code".
const oldCallerWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_cycles_available128" (func $available (param i32)))
  (import "ic0" "msg_cycles_accept128" (func $accept (param i64 i64 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 1) $old_cb)
  (data (i32.const 100) "hold")
  (data (i32.const 120) "old code")
  (func $old_cb (param i32) (call $append (i32.const 120) (i32.const 8)) (call $reply))
  (func (export "canister_update go")
    (local $n i32)
    (call $available (i32.const 300))
    (call $accept (i64.const 0) (i64.shr_u (i64.load (i32.const 300)) (i64.const 1)) (i32.const 320))
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 0) (i32.const 0) (local.get $n))
    (call $call_new (i32.const 0) (local.get $n) (i32.const 100) (i32.const 4)
      (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 0))
    (if (call $call_perform) (then unreachable))))`

// newCodeWat is a different program installed after uninstall_code: its
// table index 1 is a privileged function that trusts msg_caller. It does
// not answer (an answer to a call already answered would trap and hide
// that it ran): it counts its runs and keeps the caller it saw.
const newCodeWat = `
(module
  (import "ic0" "msg_caller_size" (func $caller_size (result i32)))
  (import "ic0" "msg_caller_copy" (func $caller_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 1) $privileged)
  (func $privileged (param i32)
    (i32.store (i32.const 200) (i32.add (i32.load (i32.const 200)) (i32.const 1)))
    (i32.store (i32.const 204) (call $caller_size))
    (call $caller_copy (i32.const 208) (i32.const 0) (call $caller_size)))
  (func (export "canister_query ran") (call $append (i32.const 200) (i32.const 4)) (call $reply))
  (func (export "canister_query caller") (call $append (i32.const 208) (i32.load (i32.const 204))) (call $reply)))`

// uninstallCycles is what F attaches to its call to the canister that is
// uninstalled; that canister accepts half.
const uninstallCycles = 1_000_000_000

// uninstall_code rejects every call the canister has not answered at once
// (CANISTER_REJECT, the cycles it did not accept back to the caller), and
// the responses to the calls it made run no callback, even once other code
// is installed: its table index 1 would run in the new module with the old
// call's caller (interface specification, uninstall_code). A user's call
// and a canister's call with cycles wait on a callee that holds them;
// their canister is uninstalled, then a new program installed, then the
// callee answers. The variant "restart" restarts the node between the
// uninstall and the install: the calls do not survive it, nor any
// callback.
func TestUninstallRejectsCallsAndDropsCallbacks(t *testing.T) {
	for _, restart := range []bool{false, true} {
		name := "no restart"
		if restart {
			name = "restart"
		}
		t.Run(name, func(t *testing.T) {
			forIsolations(t, func(t *testing.T, f *fixture) { testUninstallDropsCalls(t, f, restart) })
		})
	}
}

func testUninstallDropsCalls(t *testing.T, f *fixture, restart bool) {
	ctx := context.Background()
	b := f.install(mustWat(t, holdingCalleeWat), nil)
	a := f.install(mustWat(t, oldCallerWat), nil)
	fw := f.install(mustWat(t, flightWat), nil)
	holding := func() uint32 { return binary.LittleEndian.Uint32(f.query(b, "holding", nil)) }

	userDone := make(chan error, 1)
	status := &IngressStatus{Key: []byte("held call"), Encode: statusText}
	go func() {
		r, err := f.node.Update(ctx, Message{Canister: a, Method: "go", Arg: b.Bytes(), Caller: user, Status: status})
		if err == nil {
			err = errors.New("replied " + string(r.Data))
		}
		userDone <- err
	}()
	waitFor(t, 30*time.Second, func() bool { return holding() == 1 })
	// fw's call to a.go carries cycles; fw's callbacks add up the refunds.
	f.update(fw, "forward", flightArg(a, "go", uninstallCycles, false, b.Bytes()))
	waitFor(t, 30*time.Second, func() bool { return holding() == 2 })

	// The user's call's status commits with the uninstall, not on its own.
	f.node.noSeparateAnswer = true
	if err := f.node.Uninstall(ctx, a, user); err != nil {
		t.Fatal(err)
	}
	f.node.noSeparateAnswer = false
	if got, want := f.storedStatuses()["held call"], "rejected:4:Canister has been uninstalled."; got != want {
		t.Fatalf("the held call's stored status: %q, want %q", got, want)
	}
	select {
	case err := <-userDone:
		var r *Reject
		if !errors.As(err, &r) || r.Code != CanisterReject || !strings.Contains(r.Message, "uninstalled") {
			t.Fatalf("the user's call was answered at uninstall with %v, want CANISTER_REJECT", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("uninstall_code did not reject the call its canister had not answered")
	}
	refunds := func() (total, count uint64) {
		r := f.query(fw, "refunded", nil)
		return binary.LittleEndian.Uint64(r), binary.LittleEndian.Uint64(r[8:])
	}
	waitFor(t, 30*time.Second, func() bool { _, n := refunds(); return n == 1 })
	if total, _ := refunds(); total != uninstallCycles/2 {
		t.Fatalf("the rejected call refunded %d cycles, want the %d not accepted", total, uninstallCycles/2)
	}

	if restart {
		f.restart()
	}
	if _, err := f.node.Install(ctx, a, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, newCodeWat), Caller: user}); err != nil {
		t.Fatal(err)
	}
	f.update(b, "release", nil)
	f.checkConservation() // waits until the responses have run
	f.storeConserved()
	if ran := binary.LittleEndian.Uint32(f.query(a, "ran", nil)); ran != 0 {
		t.Fatalf("a response to the uninstalled code's call ran table index 1 of the new module %d times", ran)
	}
	if _, n := refunds(); n != 1 {
		t.Fatalf("%d callbacks ran on the forwarding canister, want 1", n)
	}
	c, err := f.node.get(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.RLock()
	contexts, callbacks, calls := len(c.contexts), len(c.callbacks), c.calls.bytes
	reserved := c.meta.CyclesReserved
	c.mu.RUnlock()
	if contexts != 0 || callbacks != 0 || calls != 0 || !reserved.IsZero() {
		t.Fatalf("after the responses: %d call contexts, %d callbacks, %d bytes of calls held, %s cycles reserved",
			contexts, callbacks, calls, reserved)
	}
	if len(f.records()) != 0 {
		t.Fatalf("cycles left in flight: %+v", f.records())
	}
	// The canister works again, and a stop does not wait for anything.
	stop, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := f.node.SetStatus(stop, a, user, "stopped"); err != nil {
		t.Fatalf("stop after the responses: %v", err)
	}
}

// install_code in mode reinstall is not uninstall_code: on the IC the
// calls stay open and their callbacks run in the new code (interface
// specification, install_code: "this is different from uninstall_code
// followed by install_code"). A stop, or an uninstall first, is how a
// controller prevents it.
func TestReinstallKeepsCallbacks(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	b := f.install(mustWat(t, holdingCalleeWat), nil)
	a := f.install(mustWat(t, oldCallerWat), nil)
	done := make(chan error, 1)
	go func() {
		_, err := f.node.Update(ctx, Message{Canister: a, Method: "go", Arg: b.Bytes(), Caller: user})
		done <- err
	}()
	waitFor(t, 30*time.Second, func() bool { return binary.LittleEndian.Uint32(f.query(b, "holding", nil)) == 1 })
	if _, err := f.node.Install(ctx, a, InstallOptions{Mode: ModeReinstall, Wasm: mustWat(t, newCodeWat), Caller: user}); err != nil {
		t.Fatal(err)
	}
	f.update(b, "release", nil)
	// The new code's table index 1 ran for the old call, with its caller,
	// and did not answer it.
	if r := f.reject(<-done); r.Code != CanisterError || !strings.Contains(r.Message, "did not reply") {
		t.Fatalf("the call after reinstall: %v", r)
	}
	if ran := binary.LittleEndian.Uint32(f.query(a, "ran", nil)); ran != 1 {
		t.Fatalf("the callback ran %d times in the reinstalled code, want 1", ran)
	}
	eq(t, "the caller the callback saw", f.query(a, "caller", nil), user.Bytes())
	f.checkConservation()
}
