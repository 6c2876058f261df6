package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

// rustCallbackWat is shaped like a Rust canister: its table is NOT exported,
// an element segment fills it with the callback functions (index 0 stays
// null, as rustc leaves it), and call_new / call_on_cleanup name callbacks
// by table index. %I is the pointer type (i32, or i64 with memory64, whose
// callbacks then take an i64 environment); %T is the table's index type.
//
// Table 0: 1 $on_reply, 2 $on_reject, 3 $on_cleanup, 4 $bad_type.
// Heap: 0 own id, 100 "echo", 110 "fail", 120 "ping" (the call's argument),
// 200 i32 count of reply callbacks, 204 i32 cleanup marker, 300 reply data.
const rustCallbackWat = `
(module
  (import "ic0" "canister_self_size" (func $self_size (result %I)))
  (import "ic0" "canister_self_copy" (func $self_copy (param %I %I %I)))
  (import "ic0" "call_new" (func $call_new (param %I %I %I %I %I %I %I %I)))
  (import "ic0" "call_on_cleanup" (func $call_on_cleanup (param %I %I)))
  (import "ic0" "call_data_append" (func $call_data_append (param %I %I)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_arg_data_size" (func $arg_size (result %I)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param %I %I %I)))
  (import "ic0" "msg_reject_code" (func $reject_code (result i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param %I %I)))
  (import "ic0" "msg_reply" (func $reply))
  (memory %MEM 1)
  (table %T 8 funcref)
  (elem (%T.const 1) $on_reply $on_reject $on_cleanup $bad_type)
  (data (%I.const 100) "echo")
  (data (%I.const 110) "fail")
  (data (%I.const 120) "ping")

  (func $call (param $name %I) (param $rf %I) (param $re %I) (param $jf %I) (param $je %I) (param $cf %I)
    (local $n %I)
    (local.set $n (call $self_size))
    (call $self_copy (%I.const 0) (%I.const 0) (local.get $n))
    (call $call_new (%I.const 0) (local.get $n) (local.get $name) (%I.const 4)
      (local.get $rf) (local.get $re) (local.get $jf) (local.get $je))
    (if (%I.ne (local.get $cf) (%I.const 0))
      (then (call $call_on_cleanup (local.get $cf) (%I.const 9))))
    (call $call_data_append (%I.const 120) (%I.const 4))
    (if (call $call_perform) (then unreachable)))

  ;; Reply callback: counts, traps if its environment is 13 (after writing),
  ;; else replies with the callee's reply followed by its environment (u64).
  (func $on_reply (param $env %I)
    (local $n %I)
    (i32.store (%I.const 200) (i32.add (i32.load (%I.const 200)) (i32.const 1)))
    (if (%I.eq (local.get $env) (%I.const 13)) (then unreachable))
    (local.set $n (call $arg_size))
    (call $arg_copy (%I.const 300) (%I.const 0) (local.get $n))
    (call $append (%I.const 300) (local.get $n))
    (i64.store (%I.const 400) (%TO64 (local.get $env)))
    (call $append (%I.const 400) (%I.const 8))
    (call $reply))
  ;; Reject callback: replies with its environment (u64) and the reject code (u32).
  (func $on_reject (param $env %I)
    (i64.store (%I.const 400) (%TO64 (local.get $env)))
    (i32.store (%I.const 408) (call $reject_code))
    (call $append (%I.const 400) (%I.const 12))
    (call $reply))
  (func $on_cleanup (param $env %I)
    (i32.store (%I.const 204) (%TO32 (local.get $env))))
  (func $bad_type (param %BAD))

  (func (export "canister_update go")
    (call $call (%I.const 100) (%I.const 1) (%ENV) (%I.const 2) (%I.const 8) (%I.const 3)))
  (func (export "canister_update go_fail")
    (call $call (%I.const 110) (%I.const 1) (%ENV) (%I.const 2) (%ENV) (%I.const 3)))
  (func (export "canister_update go_trap")
    (call $call (%I.const 100) (%I.const 1) (%I.const 13) (%I.const 2) (%I.const 8) (%I.const 3)))
  (func (export "canister_update bad_index")
    (call $call (%I.const 100) (%BIG) (%I.const 7) (%I.const 2) (%I.const 8) (%I.const 0)))
  (func (export "canister_update bad_null")
    (call $call (%I.const 100) (%I.const 0) (%I.const 7) (%I.const 2) (%I.const 8) (%I.const 0)))
  (func (export "canister_update bad_type")
    (call $call (%I.const 100) (%I.const 4) (%I.const 7) (%I.const 2) (%I.const 8) (%I.const 0)))
  (func (export "canister_update bad_reject")
    (call $call (%I.const 110) (%I.const 1) (%I.const 7) (%I.const 8) (%I.const 8) (%I.const 0)))
  (func (export "canister_update bad_cleanup")
    (call $call (%I.const 100) (%I.const 1) (%I.const 13) (%I.const 2) (%I.const 8) (%I.const 5)))

  (func (export "canister_update echo")
    (local $n %I)
    (local.set $n (call $arg_size))
    (call $arg_copy (%I.const 300) (%I.const 0) (local.get $n))
    (call $append (%I.const 300) (local.get $n))
    (call $reply))
  (func (export "canister_update fail") unreachable)
  (func (export "canister_query state")
    (call $append (%I.const 200) (%I.const 8))
    (call $reply))
)`

// rustCallbackModule instantiates rustCallbackWat for one memory width.
// The 64-bit variant uses a table64 and environments and indices beyond
// 32 bits, which must arrive intact.
func rustCallbackModule(t testing.TB, memory64 bool) (wasm []byte, env, bigIndex uint64) {
	// %TO64 and %TO32 before %T: the replacer tries the pairs in order.
	r := strings.NewReplacer("%TO64", "i64.extend_i32_u", "%TO32", "i32.add (i32.const 0)", "%I", "i32", "%T", "", "%MEM", "",
		"%BAD", "i32 i32", "%ENV", "i32.const 7", "%BIG", "i32.const 99")
	env, bigIndex = 7, 99
	if memory64 {
		r = strings.NewReplacer("%TO64", "i64.add (i64.const 0)", "%TO32", "i32.wrap_i64", "%I", "i64", "%T", "i64", "%MEM", "i64",
			"%BAD", "i32", "%ENV", "i64.const 0x100000007", "%BIG", "i64.const 0x100000001")
		env, bigIndex = 0x1_0000_0007, 0x1_0000_0001
	}
	src := r.Replace(rustCallbackWat)
	// %T.const with an empty %T would leave ".const": the 32-bit table
	// takes i32 offsets.
	src = strings.ReplaceAll(src, "(.const", "(i32.const")
	return mustWat(t, src), env, bigIndex
}

// Callbacks of a canister that does not export its table (every Rust
// canister) run through table 0, in both isolation modes and both memory
// widths: the reply and reject callbacks run and answer the original call,
// the cleanup runs when a callback traps and its writes are kept while the
// trapped callback's are rolled back, and a callback the table cannot
// resolve (outside the table, null, wrong type) traps with the IC's message,
// changing nothing, without harming the canister or the host.
func TestCallbacksThroughUnexportedTable(t *testing.T) {
	t.Parallel()
	for _, memory64 := range []bool{false, true} {
		t.Run(width(memory64), func(t *testing.T) {
			hashes := map[[32]byte]bool{}
			forIsolations(t, func(t *testing.T, f *fixture) {
				hashes[testCallbacks(t, f, memory64)] = true
			})
			if len(hashes) != 1 {
				t.Fatalf("the isolation modes ended with %d different memories", len(hashes))
			}
		})
	}
}

func width(memory64 bool) string {
	if memory64 {
		return "64-bit"
	}
	return "32-bit"
}

// testCallbacks runs the script and returns the canister's memory hash.
func testCallbacks(t *testing.T, f *fixture, memory64 bool) [32]byte {
	wasm, env, big := rustCallbackModule(t, memory64)
	id := f.install(wasm, nil)
	ctx := context.Background()
	state := func() (replies, cleanup uint32) {
		b := f.query(id, "state", nil)
		return binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])
	}
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

	// Reply: the callee's reply reaches the callback, which answers the
	// original call with it and its environment.
	eq(t, "go", f.update(id, "go", nil), append([]byte("ping"), u64(env)...))
	if n, c := state(); n != 1 || c != 0 {
		t.Fatalf("after go: %d reply callbacks, cleanup marker %d", n, c)
	}
	// Reject: the callee traps, the reject callback runs with its own
	// environment and the code CANISTER_ERROR.
	eq(t, "go_fail", f.update(id, "go_fail", nil), append(u64(env), 5, 0, 0, 0))
	if n, c := state(); n != 1 || c != 0 {
		t.Fatalf("after go_fail: %d reply callbacks, cleanup marker %d", n, c)
	}
	// A reply callback that traps after writing: its write is rolled back,
	// the cleanup runs and its write is kept, the caller gets the trap.
	_, err := f.node.Update(ctx, Message{Canister: id, Method: "go_trap", Caller: user})
	if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "unreachable") {
		t.Fatalf("go_trap: %v", r)
	}
	if n, c := state(); n != 1 || c != 9 {
		t.Fatalf("after go_trap: %d reply callbacks (want 1: rolled back), cleanup marker %d (want 9)", n, c)
	}

	// Callbacks the table cannot resolve trap with the IC's messages and
	// change nothing.
	for _, tc := range []struct{ method, want string }{
		{"bad_index", fmt.Sprintf("Canister requested to invoke a non-existent Wasm function %d from table 0", big)},
		{"bad_null", "unexpected null function reference"},
		{"bad_type", "callback 4 has type"},
		{"bad_reject", "Canister requested to invoke a non-existent Wasm function 8 from table 0"},
	} {
		hash := f.memoryHash(id)
		_, err := f.node.Update(ctx, Message{Canister: id, Method: tc.method, Caller: user})
		if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, tc.want) {
			t.Fatalf("%s: %v, want %q", tc.method, r, tc.want)
		}
		if f.memoryHash(id) != hash {
			t.Fatalf("%s changed the canister's memory", tc.method)
		}
	}
	// A cleanup the table cannot resolve: the callback's trap still
	// reaches the caller, nothing is written.
	hash := f.memoryHash(id)
	_, err = f.node.Update(ctx, Message{Canister: id, Method: "bad_cleanup", Caller: user})
	if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "unreachable") {
		t.Fatalf("bad_cleanup: %v", r)
	}
	if f.memoryHash(id) != hash {
		t.Fatal("bad_cleanup changed the canister's memory")
	}
	// The canister still works, and no cycles were made or lost.
	eq(t, "go again", f.update(id, "go", nil), append([]byte("ping"), u64(env)...))
	if n, _ := state(); n != 2 {
		t.Fatalf("after go again: %d reply callbacks, want 2", n)
	}
	f.checkConservation()
	return f.memoryHash(id)
}

// An attacker's canister whose table 0 holds externrefs, not functions,
// names an entry of it as its reply callback. The callback traps with a
// message (before the fix the engine called wasmtime's Val.Funcref on it,
// which panics: the whole in-process host went down); the node and the
// canister keep working.
func TestCallbackThroughExternrefTable(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		wasm := mustWat(t, `(module
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table (export "table") 4 externref)
  (data (i32.const 100) "echo")
  (func (export "canister_update attack")
    (call $self_copy (i32.const 0) (i32.const 0) (call $self_size))
    (call $call_new (i32.const 0) (call $self_size) (i32.const 100) (i32.const 4)
      (i32.const 1) (i32.const 0) (i32.const 2) (i32.const 0))
    (drop (call $call_perform)))
  (func (export "canister_update echo") (call $reply)))`)
		id := f.install(wasm, nil)
		_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "attack", Caller: user})
		if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "not a function reference") {
			t.Fatalf("attack: %v", r)
		}
		eq(t, "echo after the attack", f.update(id, "echo", nil), []byte{})
		f.checkConservation()
	})
}

// compositeCallbackWat: a composite query calls the query "q" of the
// canister whose id is its argument; the reply callback, found through the
// unexported table 0, answers with the callee's reply and its environment.
const compositeCallbackWat = `
(module
  (import "ic0" "call_new" (func $call_new (param %I %I %I %I %I %I %I %I)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_arg_data_size" (func $arg_size (result %I)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param %I %I %I)))
  (import "ic0" "msg_reply_data_append" (func $append (param %I %I)))
  (import "ic0" "msg_reply" (func $reply))
  (memory %I 1)
  (table %I 2 funcref)
  (elem (%I.const 1) $on_reply)
  (data (%I.const 100) "q")
  (data (%I.const 110) "pong")
  (func $on_reply (param $env %I)
    (local $n %I)
    (local.set $n (call $arg_size))
    (call $arg_copy (%I.const 300) (%I.const 0) (local.get $n))
    (call $append (%I.const 300) (local.get $n))
    (%I.store (%I.const 400) (local.get $env))
    (call $append (%I.const 400) (%I.const %W))
    (call $reply))
  (func (export "canister_composite_query cq")
    (local $n %I)
    (local.set $n (call $arg_size))
    (call $arg_copy (%I.const 0) (%I.const 0) (local.get $n))
    (call $call_new (%I.const 0) (local.get $n) (%I.const 100) (%I.const 1)
      (%I.const 1) (%I.const 42) (%I.const 1) (%I.const 43))
    (if (call $call_perform) (then unreachable)))
  (func (export "canister_query q")
    (call $append (%I.const 110) (%I.const 4))
    (call $reply))
)`

// Composite queries resolve their callbacks through table 0 too.
func TestCompositeQueryCallbackThroughUnexportedTable(t *testing.T) {
	t.Parallel()
	for _, memory64 := range []bool{false, true} {
		t.Run(width(memory64), func(t *testing.T) {
			forIsolations(t, func(t *testing.T, f *fixture) {
				r, envWidth := strings.NewReplacer("%I", "i32", "%W", "4"), 4
				if memory64 {
					r, envWidth = strings.NewReplacer("%I", "i64", "%W", "8"), 8
				}
				src := strings.ReplaceAll(r.Replace(compositeCallbackWat), "(memory i32 1)", "(memory 1)")
				src = strings.ReplaceAll(src, "(table i32 2 funcref)", "(table 2 funcref)")
				wasm := mustWat(t, src)
				a, b := f.install(wasm, nil), f.install(wasm, nil)
				want := append([]byte("pong"), make([]byte, envWidth)...)
				want[4] = 42
				eq(t, "cq", f.query(a, "cq", b.Bytes()), want)
			})
		})
	}
}

// cleanupWat: the composite query "cq" takes [mode byte][callee id] and
// makes two calls to the callee. The first one's callback ('t': the reply
// callback, 'j': the reject callback of a call to a method that does not
// exist, 'n': a reply callback that does not trap) writes 'X' at 600 and
// traps, its cleanup (environment 7) writes its environment at 500 and
// counts its runs at 504. The second call's reply callback answers with
// bytes 500..508 and the byte at 600: what the callbacks before it left.
const cleanupWat = `
(module
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_on_cleanup" (func $on_cleanup (param i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table 4 funcref)
  (elem (i32.const 0) $trap $cleanup $report $ok)
  (data (i32.const 100) "qnope")
  (func $trap (param i32) (i32.store8 (i32.const 600) (i32.const 88)) unreachable)
  (func $ok (param i32) (i32.store8 (i32.const 600) (i32.const 79)))
  (func $cleanup (param $env i32)
    (i32.store (i32.const 500) (local.get $env))
    (i32.store (i32.const 504) (i32.add (i32.load (i32.const 504)) (i32.const 1))))
  (func $report (param i32)
    (call $append (i32.const 500) (i32.const 8))
    (call $append (i32.const 600) (i32.const 1))
    (call $reply))
  (func (export "canister_composite_query cq")
    (local $n i32) (local $m i32) (local $mlen i32) (local $cb i32)
    (local.set $n (i32.sub (call $arg_size) (i32.const 1)))
    (call $arg_copy (i32.const 0) (i32.const 1) (local.get $n))
    (call $arg_copy (i32.const 50) (i32.const 0) (i32.const 1))
    (local.set $m (i32.const 100)) (local.set $mlen (i32.const 1)) (local.set $cb (i32.const 0))
    (if (i32.eq (i32.load8_u (i32.const 50)) (i32.const 106)) ;; 'j'
      (then (local.set $m (i32.const 101)) (local.set $mlen (i32.const 4))))
    (if (i32.eq (i32.load8_u (i32.const 50)) (i32.const 110)) ;; 'n'
      (then (local.set $cb (i32.const 3))))
    (call $call_new (i32.const 0) (local.get $n) (local.get $m) (local.get $mlen)
      (local.get $cb) (i32.const 0) (local.get $cb) (i32.const 0))
    (call $on_cleanup (i32.const 1) (i32.const 7))
    (if (call $call_perform) (then unreachable))
    (call $call_new (i32.const 0) (local.get $n) (i32.const 100) (i32.const 1)
      (i32.const 2) (i32.const 0) (i32.const 2) (i32.const 0))
    (if (call $call_perform) (then unreachable)))
  (func (export "canister_query q") (call $reply))
)`

// A composite query's reply or reject callback that traps has its cleanup
// callback run, as on the IC: on the working state without the trapped
// callback's writes, and the callbacks after it see what the cleanup wrote.
// A callback that does not trap gets no cleanup. The answer is the later
// callback's reply, not the trap.
func TestCompositeQueryCleanupRunsWhenCallbackTraps(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		wasm := mustWat(t, cleanupWat)
		a, b := f.install(wasm, nil), f.install(wasm, nil)
		for _, tc := range []struct {
			mode byte
			want []byte
		}{
			{'t', []byte{7, 0, 0, 0, 1, 0, 0, 0, 0}},
			{'j', []byte{7, 0, 0, 0, 1, 0, 0, 0, 0}},
			{'n', []byte{0, 0, 0, 0, 0, 0, 0, 0, 'O'}},
		} {
			eq(t, "cq "+string(tc.mode), f.query(a, "cq", append([]byte{tc.mode}, b.Bytes()...)), tc.want)
		}
		// Nothing of it was kept: the next query starts from the committed state.
		eq(t, "cq t again", f.query(a, "cq", append([]byte{'t'}, b.Bytes()...)), []byte{7, 0, 0, 0, 1, 0, 0, 0, 0})
	})
}
