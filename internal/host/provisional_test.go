package host

import (
	"context"
	"math/big"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// minterWat calls any method of any canister with any argument and reports
// the outcome: "ok:" and the reply, or "rejected:" the code as a digit,
// ":" and the reject message.
// Argument of call: [len(callee)] callee [len(method)] method payload.
const minterWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reject_code" (func $reject_code (result i32)))
  (import "ic0" "msg_reject_msg_size" (func $reject_msg_size (result i32)))
  (import "ic0" "msg_reject_msg_copy" (func $reject_msg_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $call_data_append (param i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (memory (export "memory") 2)
  (table (export "table") 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (data (i32.const 100) "ok:rejected::")
  (func (export "canister_update call")
    (local $n i32) (local $clen i32) (local $mlen i32) (local $m i32) (local $p i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 1000) (i32.const 0) (local.get $n))
    (local.set $clen (i32.load8_u (i32.const 1000)))
    (local.set $mlen (i32.load8_u (i32.add (i32.const 1001) (local.get $clen))))
    (local.set $m (i32.add (i32.const 1002) (local.get $clen)))
    (local.set $p (i32.add (local.get $m) (local.get $mlen)))
    (call $call_new
      (i32.const 1001) (local.get $clen)
      (local.get $m) (local.get $mlen)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (call $call_data_append (local.get $p) (i32.sub (i32.add (i32.const 1000) (local.get $n)) (local.get $p)))
    (drop (call $call_perform)))
  (func $on_reply (param i32)
    (local $n i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 30000) (i32.const 0) (local.get $n))
    (call $append (i32.const 100) (i32.const 3))
    (call $append (i32.const 30000) (local.get $n))
    (call $reply))
  (func $on_reject (param i32)
    (local $n i32)
    (i32.store8 (i32.const 3000) (i32.add (i32.const 48) (call $reject_code)))
    (local.set $n (call $reject_msg_size))
    (call $reject_msg_copy (i32.const 30000) (i32.const 0) (local.get $n))
    (call $append (i32.const 103) (i32.const 9))
    (call $append (i32.const 3000) (i32.const 1))
    (call $append (i32.const 112) (i32.const 1))
    (call $append (i32.const 30000) (local.get $n))
    (call $reply))
)`

func minterArg(callee principal.Principal, method string, payload []byte) []byte {
	b := append([]byte{byte(len(callee.Bytes()))}, callee.Bytes()...)
	b = append(b, byte(len(method)))
	b = append(b, method...)
	return append(b, payload...)
}

// mgmtArg encodes the argument of a management method.
func mgmtArg(t *testing.T, method string, fields ...candid.FieldValue) []byte {
	t.Helper()
	svc, err := managementService()
	if err != nil {
		t.Fatal(err)
	}
	m, ok := svc.Method(method)
	if !ok {
		t.Fatalf("no management method %s", method)
	}
	b, err := candid.EncodeArgs(candid.Args{Types: m.Args(), Values: []candid.Value{candid.Record(sortFields(fields))}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sortFields(fs []candid.FieldValue) []candid.FieldValue {
	for i := range fs {
		for j := i + 1; j < len(fs); j++ {
			if fs[j].ID < fs[i].ID {
				fs[i], fs[j] = fs[j], fs[i]
			}
		}
	}
	return fs
}

// A canister that calls the provisional methods to mint itself 10^24
// cycles, or a new canister with 10^24, is rejected the way the IC rejects
// a sender that is not on the provisional whitelist (DESTINATION_INVALID,
// "Sender not authorized to use method."): no balance changes, no
// canister is created, the node's cycles still add up. Both isolation
// modes: in sandbox mode the caller is a confined process.
func TestCanisterCannotMintCycles(t *testing.T) {
	t.Parallel()
	huge, _ := new(big.Int).SetString("1000000000000000000000000", 10) // 10^24
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newCrashFixture(t, mode) // zero fees: any change of balance is a mint
			ctx := context.Background()
			a := f.install(mustWat(t, minterWat), nil)
			other := f.install(mustWat(t, minterWat), nil)
			balance := func(id principal.Principal) cycles.Amount {
				st, err := f.node.Status(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				return st.Balance
			}
			beforeA, beforeOther := balance(a), balance(other)
			idsBefore, _ := f.node.List()

			topUp := func(target principal.Principal) []byte {
				return mgmtArg(t, "provisional_top_up_canister",
					candid.FieldValue{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: target}},
					candid.FieldValue{ID: candid.Hash("amount"), Value: candid.Nat{Int: huge}})
			}
			create := mgmtArg(t, "provisional_create_canister_with_cycles",
				candid.FieldValue{ID: candid.Hash("amount"), Value: candid.Opt{Value: candid.Nat{Int: huge}}},
				candid.FieldValue{ID: candid.Hash("settings"), Value: candid.Opt{}},
				candid.FieldValue{ID: candid.Hash("specified_id"), Value: candid.Opt{}},
				candid.FieldValue{ID: candid.Hash("sender_canister_version"), Value: candid.Opt{}})
			for _, c := range []struct {
				name, method string
				payload      []byte
			}{
				{"top up itself", "provisional_top_up_canister", topUp(a)},
				{"top up another", "provisional_top_up_canister", topUp(other)},
				{"create with cycles", "provisional_create_canister_with_cycles", create},
			} {
				got := string(f.update(a, "call", minterArg(principal.Management(), c.method, c.payload)))
				want := "rejected:3:Sender not authorized to use method. (" + c.method + " mints cycles"
				if !strings.HasPrefix(got, want) {
					t.Fatalf("%s: the canister got %q, want a reject starting %q", c.name, got, want)
				}
			}
			if got := balance(a); got != beforeA {
				t.Fatalf("caller's balance %s, was %s", got, beforeA)
			}
			if got := balance(other); got != beforeOther {
				t.Fatalf("other canister's balance %s, was %s", got, beforeOther)
			}
			if ids, _ := f.node.List(); len(ids) != len(idsBefore) {
				t.Fatalf("%d canisters after the calls, %d before", len(ids), len(idsBefore))
			}
			// The same canister can still reach the management canister:
			// the refusal is of minting, not of every call.
			got := string(f.update(a, "call", minterArg(principal.Management(), "raw_rand", mgmtEmpty(t))))
			if !strings.HasPrefix(got, "ok:DIDL") {
				t.Fatalf("raw_rand: %q", got)
			}
			f.checkConservation()
		})
	}
}

func mgmtEmpty(t *testing.T) []byte {
	b, err := candid.EncodeArgs(candid.Args{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The operator's provisional path (a canister created from the CLI or API
// with a balance of its choosing) works by default and counts what it
// minted; a node with fees.provisional = none refuses it.
func TestOperatorProvisionalSetting(t *testing.T) {
	t.Parallel()
	f := newCrashFixture(t, "inprocess")
	ctx := context.Background()
	amount := cycles.New(7_000_000_000_000)
	id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}, Cycles: &amount, Minted: true})
	if err != nil {
		t.Fatalf("operator create with cycles: %v", err)
	}
	if st, _ := f.node.Status(ctx, id); st.Balance != amount || st.CyclesMinted != amount {
		t.Fatalf("balance %s minted %s, want %s", st.Balance, st.CyclesMinted, amount)
	}
	f.checkConservation()

	f.node.Close()
	f.cfg.Provisional = ProvisionalNone
	f.open()
	_, err = f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}, Cycles: &amount, Minted: true})
	if r := f.reject(err); r.Code != CanisterReject || !strings.Contains(r.Message, "fees.provisional = none") {
		t.Fatalf("create with cycles on a node that mints nothing: %v", r)
	}
	// The initial balance is still given.
	if _, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}}); err != nil {
		t.Fatal(err)
	}

	f.node.Close()
	f.cfg.Provisional = "sometimes"
	if _, err := Open(f.cfg, nil); err == nil || !strings.Contains(err.Error(), "want ingress or none") {
		t.Fatalf("bad setting: %v", err)
	}
	f.cfg.Provisional = ProvisionalIngress
	f.open()
}

// On a strict sandboxed node an in-process install is refused, and a
// canister installed in-process before the node became strict runs in a
// sandbox (it keeps its state and its answers), unless the node allows
// in-process canisters.
func TestStrictNodeConfinesInProcessCanisters(t *testing.T) {
	t.Parallel()
	f := newCrashFixture(t, "sandbox")
	ctx := context.Background()
	wasm := mustWat(t, minterWat)
	id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: wasm, Arg: noArgs, Caller: user, Isolation: "inprocess"}); err != nil {
		t.Fatal(err)
	}
	call := func() string {
		return string(f.update(id, "call", minterArg(principal.Management(), "raw_rand", mgmtEmpty(t))))
	}
	if got := call(); !strings.HasPrefix(got, "ok:") || f.canisterPid(id) != 0 {
		t.Fatalf("not strict: %q, sandbox pid %d", got, f.canisterPid(id))
	}

	f.node.Close()
	f.cfg.Sandbox.Strict = true
	f.open()
	if got := call(); !strings.HasPrefix(got, "ok:") {
		t.Fatalf("strict: %q", got)
	}
	if f.canisterPid(id) == 0 {
		t.Fatal("a strict node ran an in-process canister outside a sandbox")
	}
	other, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.node.Install(ctx, other, InstallOptions{Mode: ModeInstall, Wasm: wasm, Arg: noArgs, Caller: user, Isolation: "inprocess"})
	if r := f.reject(err); r.Code != CanisterReject || !strings.Contains(r.Message, "strict") {
		t.Fatalf("in-process install on a strict node: %v", r)
	}

	f.node.Close()
	f.cfg.Sandbox.AllowInProcess = true
	f.open()
	if got := call(); !strings.HasPrefix(got, "ok:") || f.canisterPid(id) != 0 {
		t.Fatalf("strict, in-process allowed: %q, sandbox pid %d", got, f.canisterPid(id))
	}
}
