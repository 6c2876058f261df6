package host

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// creatorWat calls aaaaa-aa.create_canister with 10 T cycles attached; the
// argument of its update create is create_canister's Candid argument. It
// replies "ok" followed by the reply, or "rejected:" with the reject
// code's digit and message.
const creatorWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reject_code" (func $reject_code (result i32)))
  (import "ic0" "msg_reject_msg_size" (func $rmsg_size (result i32)))
  (import "ic0" "msg_reject_msg_copy" (func $rmsg_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_cycles_add128" (func $cycles_add (param i64 i64)))
  (import "ic0" "call_data_append" (func $call_data (param i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (memory (export "memory") 2)
  (table (export "table") 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (data (i32.const 0) "rejected:")
  (data (i32.const 16) "create_canister")
  (data (i32.const 40) "ok")
  (func $create
    (local $n i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 1024) (i32.const 0) (local.get $n))
    (call $call_new (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 15)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (call $cycles_add (i64.const 0) (i64.const 10000000000000))
    (call $call_data (i32.const 1024) (local.get $n))
    (if (call $call_perform) (then unreachable)))
  (func $on_reply (param i32)
    (local $n i32)
    (call $append (i32.const 40) (i32.const 2))
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 1024) (i32.const 0) (local.get $n))
    (call $append (i32.const 1024) (local.get $n))
    (call $reply))
  (func $on_reject (param i32)
    (local $n i32)
    (i32.store8 (i32.const 100) (i32.add (i32.const 48) (call $reject_code)))
    (call $append (i32.const 0) (i32.const 9))
    (call $append (i32.const 100) (i32.const 1))
    (local.set $n (call $rmsg_size))
    (call $rmsg_copy (i32.const 1024) (i32.const 0) (local.get $n))
    (call $append (i32.const 1024) (local.get $n))
    (call $reply))
  (export "canister_update create" (func $create))
)`

// A canister's create_canister whose settings the management canister
// refuses must create nothing: no canister, and the attached cycles back
// to the caller. It used to create the canister (with the cycles attached,
// less the fee), refuse the settings afterwards and refund everything, so
// each call minted the new canister's balance.
func TestCreateCanisterRefusedSettingsCreateNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	creator := f.install(mustWat(t, creatorWat), nil)
	var eleven []string
	for i := 0; i < 11; i++ {
		eleven = append(eleven, fmt.Sprintf("principal %q", creator))
	}
	var viewers []string
	for i := 0; i < 11; i++ {
		viewers = append(viewers, fmt.Sprintf("principal %q", creator))
	}
	var vars []string
	for i := 0; i < 30; i++ {
		vars = append(vars, fmt.Sprintf("record { name = \"v%d\"; value = \"x\" }", i))
	}
	for name, settings := range map[string]string{
		"compute_allocation":    `compute_allocation = opt 101`,
		"freezing_threshold":    `freezing_threshold = opt 9223372036854775808`,
		"controllers":           `controllers = opt vec {` + strings.Join(eleven, ";") + `}`,
		"memory_allocation":     `memory_allocation = opt 281474976710657`,
		"memory_allocation_fee": `memory_allocation = opt 281474976710656; freezing_threshold = opt 4611686018427387904`,
		"wasm_memory_limit":     `wasm_memory_limit = opt 281474976710656`,
		"log_visibility":        `log_visibility = opt variant { allowed_viewers = vec {` + strings.Join(viewers, ";") + `} }`,
		"environment_variables": `environment_variables = opt vec {` + strings.Join(vars, ";") + `}`,
	} {
		t.Run(name, func(t *testing.T) {
			idsBefore, err := f.node.List()
			if err != nil {
				t.Fatal(err)
			}
			before, err := f.node.Status(ctx, creator)
			if err != nil {
				t.Fatal(err)
			}
			got := f.update(creator, "create", encodeTyped(t, "create_canister", `(record { settings = opt record { `+settings+` } })`))
			if !bytes.HasPrefix(got, []byte("rejected:")) {
				t.Fatalf("create_canister with refused settings answered %q", got)
			}
			ids, err := f.node.List()
			if err != nil {
				t.Fatal(err)
			}
			if len(ids) != len(idsBefore) {
				t.Fatalf("%q, yet %d canisters were created", got, len(ids)-len(idsBefore))
			}
			after, err := f.node.Status(ctx, creator)
			if err != nil {
				t.Fatal(err)
			}
			// The 10 T attached came back: the caller paid only the
			// message's and the call's fees.
			if paid := before.Balance.SaturatingSub(after.Balance); paid.Cmp(cycles.New(1_000_000_000)) > 0 {
				t.Errorf("%q cost the caller %s cycles", got, paid)
			}
			f.checkConservation()
		})
	}
}

// Settings the management canister accepts are the new canister's from
// its creation, and the cycles add up: the new canister holds what was
// attached less the creation fee, which is booked as burned on it.
func TestCreateCanisterWithSettings(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	creator := f.install(mustWat(t, creatorWat), nil)
	got := f.update(creator, "create", encodeTyped(t, "create_canister",
		fmt.Sprintf(`(record { settings = opt record { controllers = opt vec { principal %q; principal %q }; freezing_threshold = opt 1000; compute_allocation = opt 5 } })`, creator, user)))
	if !bytes.HasPrefix(got, []byte("ok")) {
		t.Fatalf("create_canister answered %q", got)
	}
	ids, err := f.node.List()
	if err != nil {
		t.Fatal(err)
	}
	var created []string
	for _, id := range ids {
		if id != creator {
			created = append(created, id.String())
			st, err := f.node.Status(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			fee := cycles.New(f.node.cfg.Fees.CanisterCreation)
			if want := cycles.New(10_000_000_000_000).SaturatingSub(fee); st.Balance != want || st.CyclesBurned != fee {
				t.Errorf("new canister: balance %s, burned %s; want %s and %s", st.Balance, st.CyclesBurned, want, fee)
			}
			if st.FreezingThreshold != 1000 || st.ComputeAllocation != 5 || strings.Join(st.Controllers, ",") != creator.String()+","+user.String() {
				t.Errorf("new canister's settings: freezing threshold %d, compute allocation %d, controllers %v", st.FreezingThreshold, st.ComputeAllocation, st.Controllers)
			}
		}
	}
	if len(created) != 1 {
		t.Fatalf("created %v", created)
	}
	f.checkConservation()
}

// A canister is created only under an id of the form the IC allocates
// canister ids in. Any other principal may be a user's: a canister under
// a user's self-authenticating principal would make calls as that user
// and pass the controller checks of whatever the user controls.
func TestCreateRefusesNonCanisterIDs(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	for _, text := range []string{
		"3rxhx-t2uul-37sks-7s5oy-bfvpo-6qsn3-o2pwt-aywvi-olxrx-byxag-xae", // self-authenticating
		"2chl6-4hpzw-vqaaa-aaaaa-c",                                       // opaque, not 10 bytes
		"2vxsx-fae",                                                       // anonymous
		"aaaaa-aa",                                                        // the management canister
	} {
		p := principal.MustFromText(text)
		if _, err := f.node.Create(ctx, CreateOptions{ID: &p, Controllers: []principal.Principal{user}}); err == nil {
			t.Errorf("a canister was created under %s", text)
		}
	}
	id := principal.CanisterID(1 << 40)
	got, err := f.node.Create(ctx, CreateOptions{ID: &id, Controllers: []principal.Principal{user}})
	if err != nil || got != id {
		t.Fatalf("create under the canister id %s: %s, %v", id, got, err)
	}
	ids, err := f.node.List()
	if err != nil || len(ids) != 1 {
		t.Fatalf("canisters %v (%v), want only %s", ids, err, id)
	}
}

// Of concurrent creations of one specified id only one succeeds: the
// others were told they created it while each overwrote the last (the
// existence check and the commit were separate transactions).
func TestConcurrentCreatesOfOneID(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := principal.CanisterID(777)
	const racers = 8
	type result struct {
		ctrl principal.Principal
		err  error
	}
	out := make(chan result, racers)
	start := make(chan struct{})
	for i := range racers {
		ctrl := principal.CanisterID(uint64(1000 + i))
		go func() {
			<-start
			_, err := f.node.Create(context.Background(), CreateOptions{ID: &id, Controllers: []principal.Principal{ctrl}})
			out <- result{ctrl, err}
		}()
	}
	close(start)
	var won []string
	for range racers {
		if r := <-out; r.err == nil {
			won = append(won, r.ctrl.String())
		} else if !strings.Contains(r.err.Error(), "already exists") {
			t.Errorf("a losing creation: %v", r.err)
		}
	}
	st, err := f.node.Status(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if len(won) != 1 || len(st.Controllers) != 1 || st.Controllers[0] != won[0] {
		t.Fatalf("creations told they succeeded: %v; the canister's controllers: %v", won, st.Controllers)
	}
	// An allocated id passes over the one taken.
	next, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil || next == id {
		t.Fatalf("allocated %s (%v) beside %s", next, err, id)
	}
}
