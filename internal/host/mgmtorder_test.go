package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// mgmtSeqWat: "go" sends one call to aaaaa-aa per argument record of its
// argument ([u32 method len][method][u32 arg len][arg]...), in order, and
// replies; the responses are ignored.
const mgmtSeqWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $append_arg (param i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 2)
  (table 1 funcref)
  (elem (i32.const 0) $ignore)
  (func $ignore (param i32))
  (func (export "canister_update go")
    (local $p i32) (local $end i32) (local $mlen i32) (local $alen i32)
    (local.set $end (i32.add (i32.const 16) (call $arg_size)))
    (call $arg_copy (i32.const 16) (i32.const 0) (call $arg_size))
    (local.set $p (i32.const 16))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $mlen (i32.load (local.get $p)))
      (call $call_new (i32.const 0) (i32.const 0) (i32.add (local.get $p) (i32.const 4)) (local.get $mlen)
        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
      (local.set $p (i32.add (local.get $p) (i32.add (i32.const 4) (local.get $mlen))))
      (local.set $alen (i32.load (local.get $p)))
      (call $append_arg (i32.add (local.get $p) (i32.const 4)) (local.get $alen))
      (local.set $p (i32.add (local.get $p) (i32.add (i32.const 4) (local.get $alen))))
      (if (call $call_perform) (then unreachable))
      (br $l)))
    (call $reply)))`

// mgmtSeq is the argument of mgmtSeqWat's "go": calls of method and
// Candid text, pairwise.
func mgmtSeq(t *testing.T, calls ...string) []byte {
	t.Helper()
	var arg []byte
	for i := 0; i+1 < len(calls); i += 2 {
		m := encodeTyped(t, calls[i], calls[i+1])
		arg = binary.LittleEndian.AppendUint32(arg, uint32(len(calls[i])))
		arg = append(arg, calls[i]...)
		arg = binary.LittleEndian.AppendUint32(arg, uint32(len(m)))
		arg = append(arg, m...)
	}
	return arg
}

func freezingArg(id principal.Principal, v int) string {
	return fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { freezing_threshold = opt %d } })`, id, v)
}

// Calls from one canister to the management canister used to run on a
// goroutine each (route → go n.management), so they took effect in any
// order. The IC delivers the requests of one canister to one callee, the
// management canister included, in the order they were made: a canister
// that sends update_settings(freezing_threshold = 1001), then 1002, … 1020
// ends with 1020; one that alternates stop and start ends as the last one
// says.
func TestManagementCallsReordered(t *testing.T) {
	f := newFixture(t)
	a := f.install(mustWat(t, mgmtSeqWat), nil)
	c, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user, a}})
	if err != nil {
		t.Fatal(err)
	}
	const trials, calls = 10, 20
	for trial := 0; trial < trials; trial++ {
		var seq []string
		for i := 1; i <= calls; i++ {
			seq = append(seq, "update_settings", freezingArg(c, 1000+i))
			if i%2 == 0 {
				seq = append(seq, "start_canister", idArg(c))
			} else {
				seq = append(seq, "stop_canister", idArg(c))
			}
		}
		seq = append(seq, "stop_canister", idArg(c)) // last: stopped
		f.update(a, "go", mgmtSeq(t, seq...))
		f.quiesce() // every call is answered
		st, err := f.node.Status(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		if st.FreezingThreshold != 1000+calls || st.Status != "stopped" {
			t.Fatalf("trial %d: freezing threshold %d, status %s; the last sent were %d and stopped: a canister's management calls took effect out of the order it made them",
				trial, st.FreezingThreshold, st.Status, 1000+calls)
		}
		// Reset for the next trial.
		if err := f.node.applySettings(context.Background(), c, settings{freezingThreshold: big.NewInt(1)}, true); err != nil {
			t.Fatal(err)
		}
		if err := f.node.SetStatus(context.Background(), c, user, "running"); err != nil {
			t.Fatal(err)
		}
	}
}

// A stop_canister that waits for the canister's calls holds back none of
// the calls its caller sends after it (the IC answers it later and goes
// on): here b cannot stop while its own management call waits for d, which
// is busy, and a's update_settings about b, sent after the stop, takes
// effect meanwhile. Nothing deadlocks: once d is free, b's call ends, b
// stops and a's stop is answered.
func TestManagementStopDoesNotHoldBackLaterCalls(t *testing.T) {
	f := newFixture(t)
	wasm := mustWat(t, mgmtSeqWat)
	a := f.install(wasm, nil)
	b, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user, a}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.Install(context.Background(), b, InstallOptions{Mode: ModeInstall, Wasm: wasm, Caller: user}); err != nil {
		t.Fatal(err)
	}
	d, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user, b}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.Install(context.Background(), d, InstallOptions{Mode: ModeInstall, Wasm: wasm, Caller: user}); err != nil {
		t.Fatal(err)
	}

	// d is busy (the test holds its lock, as a long execution does): b's
	// install_code about it waits, and b's call context stays open.
	cd := f.loaded(d)
	cd.mu.Lock()
	locked := true
	defer func() {
		if locked {
			cd.mu.Unlock()
		}
	}()
	var blob strings.Builder
	for _, x := range wasm {
		fmt.Fprintf(&blob, `\%02x`, x)
	}
	f.update(b, "go", mgmtSeq(t, "install_code",
		fmt.Sprintf(`(record { mode = variant { install }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "" })`, d, blob.String())))

	// a sends stop(b) then update_settings(b): the stop waits, the
	// settings take effect.
	f.update(a, "go", mgmtSeq(t, "stop_canister", idArg(b), "update_settings", freezingArg(b, 4242)))
	deadline := time.Now().Add(time.Minute)
	for {
		st := f.status(b)
		if st.FreezingThreshold == 4242 {
			if st.Status != "stopping" {
				t.Fatalf("b is %s, want stopping (its call to aaaaa-aa waits for d)", st.Status)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("update_settings sent after a pending stop_canister did not take effect (b: %s, freezing threshold %d)", st.Status, st.FreezingThreshold)
		}
		time.Sleep(5 * time.Millisecond)
	}

	cd.mu.Unlock()
	locked = false
	f.quiesce()
	if st := f.status(b); st.Status != "stopped" {
		t.Fatalf("b is %s once its call ended, want stopped", st.Status)
	}
}
