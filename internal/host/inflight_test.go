package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// flightWat makes calls with cycles and answers them in every way a callee
// can. "forward" makes one call described by its argument (see flightArg)
// and replies at once, the call still outstanding; its callbacks add the
// refund to a total at 0 and count themselves at 8, and trap when the
// forward asked so. The callee methods accept all (take), half (take_half,
// reject_half, which then rejects) or nothing (take_none) of what came,
// or accept all and trap (trap); spin never ends.
const flightWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reject" (func $reject (param i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $data (param i32 i32)))
  (import "ic0" "call_cycles_add128" (func $cadd (param i64 i64)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (import "ic0" "msg_cycles_accept128" (func $accept (param i64 i64 i32)))
  (import "ic0" "msg_cycles_available128" (func $available (param i32)))
  (import "ic0" "msg_cycles_refunded128" (func $refunded (param i32)))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (data (i32.const 200) "nope")
  ;; [trap_callback u8][amount u64 LE][callee len][callee][method len][method][payload]
  (func (export "canister_update forward")
    (local $n i32) (local $clen i32) (local $mlen i32) (local $moff i32) (local $poff i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 1000) (i32.const 0) (local.get $n))
    (i32.store8 (i32.const 16) (i32.load8_u (i32.const 1000)))
    (local.set $clen (i32.load8_u (i32.const 1009)))
    (local.set $mlen (i32.load8_u (i32.add (i32.const 1010) (local.get $clen))))
    (local.set $moff (i32.add (i32.const 1011) (local.get $clen)))
    (local.set $poff (i32.add (local.get $moff) (local.get $mlen)))
    (call $call_new (i32.const 1010) (local.get $clen) (local.get $moff) (local.get $mlen)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (call $data (local.get $poff) (i32.sub (i32.add (i32.const 1000) (local.get $n)) (local.get $poff)))
    (call $cadd (i64.const 0) (i64.load (i32.const 1001)))
    (if (call $perform) (then unreachable))
    (call $reply))
  (func $note
    (call $refunded (i32.const 100))
    (i64.store (i32.const 0) (i64.add (i64.load (i32.const 0)) (i64.load (i32.const 100))))
    (i64.store (i32.const 8) (i64.add (i64.load (i32.const 8)) (i64.const 1)))
    (if (i32.load8_u (i32.const 16)) (then unreachable)))
  (func $on_reply (param i32) (call $note))
  (func $on_reject (param i32) (call $note))
  (func $half
    (call $available (i32.const 100))
    (call $accept (i64.const 0) (i64.shr_u (i64.load (i32.const 100)) (i64.const 1)) (i32.const 120)))
  (func (export "canister_update take")
    (call $accept (i64.const -1) (i64.const -1) (i32.const 100))
    (call $reply))
  (func (export "canister_update take_half") (call $half) (call $reply))
  (func (export "canister_update take_none") (call $reply))
  (func (export "canister_update reject_half") (call $half) (call $reject (i32.const 200) (i32.const 4)))
  (func (export "canister_update trap")
    (call $accept (i64.const -1) (i64.const -1) (i32.const 100))
    unreachable)
  (func (export "canister_update spin") (loop $l (br $l)))
  (func (export "canister_query refunded") (call $append (i32.const 0) (i32.const 16)) (call $reply))
)`

// flightArg is forward's argument: a call of method on callee with amount
// cycles and payload; trapCallback makes its callback trap.
func flightArg(callee principal.Principal, method string, amount uint64, trapCallback bool, payload []byte) []byte {
	b := []byte{0}
	if trapCallback {
		b[0] = 1
	}
	b = binary.LittleEndian.AppendUint64(b, amount)
	b = append(b, byte(len(callee.Bytes())))
	b = append(b, callee.Bytes()...)
	b = append(b, byte(len(method)))
	b = append(b, method...)
	return append(b, payload...)
}

func depositArg(t *testing.T, to principal.Principal) []byte {
	return mgmtArg(t, "deposit_cycles", candid.FieldValue{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: to}})
}

func createArg(t *testing.T) []byte {
	return mgmtArg(t, "create_canister", candid.FieldValue{ID: candid.Hash("settings"), Value: candid.Opt{}},
		candid.FieldValue{ID: candid.Hash("sender_canister_version"), Value: candid.Opt{}})
}

// conservationWatch checks the conservation count of the committed state
// after every transaction of the store's group committer: what a crash at
// any point would leave.
type conservationWatch struct {
	metrics.Nop
	st     atomic.Pointer[store.Store]
	checks atomic.Int64
	mu     sync.Mutex
	bad    []string
}

func (w *conservationWatch) StoreSync(int) {
	st := w.st.Load()
	if st == nil {
		return
	}
	w.checks.Add(1)
	tot, err := st.CycleTotals()
	if err == nil && tot.Held() == tot.Minted {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.bad = append(w.bad, fmt.Sprintf("%+v (held %s, minted %s) %v", tot, tot.Held(), tot.Minted, err))
}

func (w *conservationWatch) check(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.bad) > 0 {
		t.Fatalf("%d of %d committed states do not conserve cycles, the first: %s", len(w.bad), w.checks.Load(), w.bad[0])
	}
}

// watchedFixture is an in-process node, without the storage fee and with
// tweaks applied, whose every committed state is checked by a
// conservationWatch.
func watchedFixture(t *testing.T, tweaks ...func(*Config)) (*fixture, *conservationWatch) {
	w := &conservationWatch{}
	cfg := testConfig(t, "inprocess")
	cfg.Fees.GiBStoragePerSecond = 0
	cfg.Metrics = w
	for _, tweak := range tweaks {
		tweak(&cfg)
	}
	f := openFixture(t, cfg)
	w.st.Store(f.node.store)
	return f, w
}

// heldInStore is what a canister's committed metadata holds of the cycles
// it was given: balance, burned and reserved.
func (f *fixture) heldInStore(id principal.Principal) cycles.Amount {
	m := f.storedMeta(id)
	return m.Balance.SaturatingAdd(m.CyclesBurned).SaturatingAdd(m.CyclesReserved)
}

// records returns the cycles recorded in flight.
func (f *fixture) records() []store.CallCycles {
	f.t.Helper()
	var rs []store.CallCycles
	if err := f.node.store.CyclesInFlight(func(r store.CallCycles) error { rs = append(rs, r); return nil }); err != nil {
		f.t.Fatal(err)
	}
	return rs
}

// storeConserved checks the conservation count of the committed state.
func (f *fixture) storeConserved() store.CycleTotals {
	f.t.Helper()
	tot, err := f.node.store.CycleTotals()
	if err != nil {
		f.t.Fatal(err)
	}
	if tot.Held() != tot.Minted {
		f.t.Fatalf("the committed state holds %s (%+v), minted %s", tot.Held(), tot, tot.Minted)
	}
	return tot
}

func (f *fixture) quiesce() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.node.Quiesce(ctx); err != nil {
		f.t.Fatal(err)
	}
}

const flightCycles = 1_000_000_000

// Every way a call's cycles can go, callee by callee: accepted in full, in
// part or not at all, with a reply or a reject; a callee that traps, has
// no such method, is stopped or is gone; deposit_cycles and
// create_canister; a caller whose callback traps. What the callee kept is
// what the caller lost, nothing is left in flight, and every committed
// state on the way conserved cycles.
func TestCyclesInFlightEveryDelivery(t *testing.T) {
	t.Parallel()
	f, w := watchedFixture(t)
	ctx := context.Background()
	wasm := mustWat(t, flightWat)
	a, b := f.install(wasm, nil), f.install(wasm, nil)
	stopped, gone := f.install(wasm, nil), f.install(wasm, nil)
	if err := f.node.SetStatus(ctx, stopped, user, "stopped"); err != nil {
		t.Fatal(err)
	}
	if err := f.node.SetStatus(ctx, gone, user, "stopped"); err != nil {
		t.Fatal(err)
	}
	if err := f.node.Delete(ctx, gone, user); err != nil {
		t.Fatal(err)
	}
	fee := f.cfg.Fees.CanisterCreation
	for _, tc := range []struct {
		name         string
		callee       principal.Principal
		method       string
		payload      []byte
		amount, kept uint64
		trapCallback bool
	}{
		{"accept all", b, "take", nil, flightCycles, flightCycles, false},
		{"accept half", b, "take_half", nil, flightCycles, flightCycles / 2, false},
		{"accept none", b, "take_none", nil, flightCycles, 0, false},
		{"accept half and reject", b, "reject_half", nil, flightCycles, flightCycles / 2, false},
		{"callee traps", b, "trap", nil, flightCycles, 0, false},
		{"no such method", b, "missing", nil, flightCycles, 0, false},
		{"callee stopped", stopped, "take", nil, flightCycles, 0, false},
		{"callee deleted", gone, "take", nil, flightCycles, 0, false},
		{"caller's callback traps", b, "take_half", nil, flightCycles, flightCycles / 2, true},
		{"deposit_cycles", principal.Management(), "deposit_cycles", depositArg(t, b), flightCycles, flightCycles, false},
		{"create_canister", principal.Management(), "create_canister", createArg(t), 2 * fee, 2 * fee, false},
		{"create_canister refused", principal.Management(), "create_canister", createArg(t), fee / 2, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			before, _ := f.node.List()
			heldA, heldB := f.heldInStore(a), f.heldInStore(b)
			f.update(a, "forward", flightArg(tc.callee, tc.method, tc.amount, tc.trapCallback, tc.payload))
			f.quiesce()
			if rs := f.records(); len(rs) != 0 {
				t.Fatalf("left in flight: %+v", rs)
			}
			if lost := heldA.SaturatingSub(f.heldInStore(a)); lost != cycles.New(tc.kept) || f.heldInStore(a).Cmp(heldA) > 0 {
				t.Fatalf("the caller lost %s (held %s, was %s), want %d", lost, f.heldInStore(a), heldA, tc.kept)
			}
			gained := f.heldInStore(b).SaturatingSub(heldB)
			if tc.method == "create_canister" {
				after, _ := f.node.List()
				var created []principal.Principal
				for _, id := range after {
					if !slices.Contains(before, id) {
						created = append(created, id)
					}
				}
				gained = cycles.Amount{}
				if len(created) == 1 {
					gained = f.heldInStore(created[0]) // its balance and the creation fee, burned
				}
			}
			if gained != cycles.New(tc.kept) {
				t.Fatalf("the destination gained %s, want %d", gained, tc.kept)
			}
			f.storeConserved()
			f.checkConservation()
			w.check(t)
		})
	}
	f.t = t
	if w.checks.Load() == 0 {
		t.Fatal("no committed state was checked")
	}
}

// The two points between the commits that move a call's cycles: before
// the callee's commit (the callee busy), the caller's commit has recorded
// them in flight; after it and before the caller's (the caller busy), what
// the callee did not accept is. Each state conserves cycles, and a
// management canister deposit waiting for its target is the same.
func TestCyclesInFlightBetweenCommits(t *testing.T) {
	t.Parallel()
	f, w := watchedFixture(t)
	wasm := mustWat(t, flightWat)
	a, b := f.install(wasm, nil), f.install(wasm, nil)
	ca, cb := f.loaded(a), f.loaded(b)
	expect := func(what string, want ...uint64) {
		t.Helper()
		rs := f.records()
		var got []uint64
		for _, r := range rs {
			if string(r.Caller) != string(a.Bytes()) || r.Amount.Hi != 0 {
				t.Fatalf("%s: a record of %x", what, r.Caller)
			}
			got = append(got, r.Amount.Lo)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: in flight %v, want %v", what, got, want)
		}
		f.storeConserved()
	}
	messagesOf := func(id principal.Principal) uint64 {
		var n uint64
		_ = f.node.store.Metas(func(k []byte, m store.Meta) error {
			if string(k) == string(id.Bytes()) {
				n = m.Messages
			}
			return nil
		})
		return n
	}

	for _, tc := range []struct {
		method  string
		payload []byte
		left    []uint64 // after the callee's commit
	}{
		{"take_half", nil, []uint64{flightCycles / 2}},
		{"take", nil, nil},
		{"take_none", nil, []uint64{flightCycles}},
		{"deposit_cycles", depositArg(t, b), nil},
	} {
		t.Run(tc.method, func(t *testing.T) {
			f.t = t
			callee := b
			if tc.method == "deposit_cycles" {
				callee = principal.Management()
			}
			cb.mu.Lock() // the callee is busy
			f.update(a, "forward", flightArg(callee, tc.method, flightCycles, false, tc.payload))
			expect("before the callee's commit", flightCycles)
			ca.mu.Lock() // then the caller is
			n := messagesOf(b)
			cb.mu.Unlock()
			if tc.method == "deposit_cycles" {
				waitFor(t, 30*time.Second, func() bool { return len(f.records()) == 0 })
			} else {
				waitFor(t, 30*time.Second, func() bool { return messagesOf(b) > n })
			}
			expect("after the callee's commit, before the caller's", tc.left...)
			ca.mu.Unlock()
			f.quiesce()
			expect("after the caller's commit")
			f.checkConservation()
			w.check(t)
		})
	}
	f.t = t
}

// A caller stopped or uninstalled while its call is in flight still gets
// its refund, with the commit that removes the record: a stopping caller
// runs the callback, an uninstalled one is credited without running
// anything.
func TestCyclesInFlightCallerStoppedOrUninstalled(t *testing.T) {
	t.Parallel()
	f, w := watchedFixture(t)
	ctx := context.Background()
	wasm := mustWat(t, flightWat)
	b := f.install(wasm, nil)
	cb := f.loaded(b)
	for _, then := range []string{"stopped", "uninstalled"} {
		t.Run(then, func(t *testing.T) {
			f.t = t
			a := f.install(wasm, nil)
			held := f.heldInStore(a)
			cb.mu.Lock()
			f.update(a, "forward", flightArg(b, "take_half", flightCycles, false, nil))
			done := make(chan error, 1)
			if then == "stopped" {
				go func() { done <- f.node.SetStatus(ctx, a, user, "stopped") }()
				waitFor(t, 30*time.Second, func() bool { return metaOf(f.loaded(a)).Status == "stopping" })
			} else {
				done <- f.node.Uninstall(ctx, a, user)
			}
			cb.mu.Unlock()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			f.quiesce()
			if rs := f.records(); len(rs) != 0 {
				t.Fatalf("left in flight: %+v", rs)
			}
			if lost := held.SaturatingSub(f.heldInStore(a)); lost != cycles.New(flightCycles/2) {
				t.Fatalf("the caller lost %s, want %d", lost, flightCycles/2)
			}
			if then == "stopped" && metaOf(f.loaded(a)).Status != "stopped" {
				t.Fatalf("the caller is %s", metaOf(f.loaded(a)).Status)
			}
			f.checkConservation()
			w.check(t)
		})
	}
	f.t = t
}
