package host

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// greedyWat is a callee that tries to take more than it was given, or
// what it has already given back: greedy replies first, then accepts half
// of what is available and then all of it twice more (all nothing: the
// rest went back with the reply); twice accepts all of it twice, then replies; qtake is a
// query that accepts all (run in replicated mode when a canister calls
// it); cq is a composite query. got answers the three amounts greedy (or
// twice) accepted, 16 bytes each.
const greedyWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_cycles_accept128" (func $accept (param i64 i64 i32)))
  (import "ic0" "msg_cycles_available128" (func $available (param i32)))
  (memory 1)
  (func (export "canister_update greedy")
    (call $reply)
    (call $available (i32.const 100))
    (call $accept (i64.const 0) (i64.shr_u (i64.load (i32.const 100)) (i64.const 1)) (i32.const 0))
    (call $accept (i64.const -1) (i64.const -1) (i32.const 16))
    (call $accept (i64.const -1) (i64.const -1) (i32.const 32)))
  (func (export "canister_update twice")
    (call $accept (i64.const -1) (i64.const -1) (i32.const 0))
    (call $accept (i64.const -1) (i64.const -1) (i32.const 16))
    (call $reply))
  (func (export "canister_query qtake")
    (call $accept (i64.const -1) (i64.const -1) (i32.const 0))
    (call $reply))
  (func (export "canister_composite_query cq") (call $reply))
  (func (export "canister_query got") (call $append (i32.const 0) (i32.const 48)) (call $reply))
)`

// Calls whose cycles a hostile callee or caller tries to keep, double or
// send nowhere: each time the callee gains exactly what the caller loses,
// never more than was sent, nothing stays in flight and every committed
// state conserves cycles.
func TestCyclesHostileDeliveries(t *testing.T) {
	f, w := watchedFixture(t)
	a := f.install(mustWat(t, flightWat), nil)
	g := f.install(mustWat(t, greedyWat), nil)
	gone := f.install(mustWat(t, flightWat), nil)
	f.stopAndDelete(gone)
	never := principal.CanisterID(1 << 40) // no canister ever had it
	for _, tc := range []struct {
		name    string
		callee  principal.Principal
		method  string
		payload []byte
		gainer  principal.Principal // who may gain what a loses; zero: nobody
		most    uint64              // the most it may gain
		exact   bool
	}{
		{"deposit_cycles to the caller itself", principal.Management(), "deposit_cycles", depositArg(t, a), principal.Principal{}, 0, true},
		{"deposit_cycles to a deleted canister", principal.Management(), "deposit_cycles", depositArg(t, gone), principal.Principal{}, 0, true},
		{"deposit_cycles to no canister", principal.Management(), "deposit_cycles", depositArg(t, never), principal.Principal{}, 0, true},
		{"a call to a deleted canister", gone, "take", nil, principal.Principal{}, 0, true},
		{"a call to no canister", never, "take", nil, principal.Principal{}, 0, true},
		{"accept after reply", g, "greedy", nil, g, 0, true}, // the rest went back with the reply
		{"accept twice", g, "twice", nil, g, flightCycles, true},
		{"a query accepting in replicated mode", g, "qtake", nil, g, 0, true},
		{"a composite query in replicated mode", g, "cq", nil, g, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.t = t
			heldA, heldG := f.heldInStore(a), f.heldInStore(g)
			f.update(a, "forward", flightArg(tc.callee, tc.method, flightCycles, false, tc.payload))
			f.quiesce()
			if rs := f.records(); len(rs) != 0 {
				t.Fatalf("left in flight: %+v", rs)
			}
			lost := heldA.SaturatingSub(f.heldInStore(a))
			if f.heldInStore(a).Cmp(heldA) > 0 {
				t.Fatalf("the caller gained: holds %s, held %s", f.heldInStore(a), heldA)
			}
			gained := cycles.Amount{}
			if tc.gainer == g {
				gained = f.heldInStore(g).SaturatingSub(heldG)
			}
			if lost != gained || gained.Cmp(cycles.New(tc.most)) > 0 || (tc.exact && gained != cycles.New(tc.most)) {
				t.Fatalf("the caller lost %s, the callee gained %s; want the same, at most %d (exactly: %v)", lost, gained, tc.most, tc.exact)
			}
			if tc.method == "greedy" || tc.method == "twice" {
				got := f.query(g, "got", nil)
				var sum cycles.Amount
				for i := 0; i < 48; i += 16 {
					sum = sum.SaturatingAdd(cycles.Amount{Lo: binary.LittleEndian.Uint64(got[i:]), Hi: binary.LittleEndian.Uint64(got[i+8:])})
				}
				if sum != gained {
					t.Fatalf("the callee's accepts returned %s in all, it gained %s", sum, gained)
				}
			}
			f.checkConservation()
			w.check(t)
		})
	}
	f.t = t
}

// A caller reinstalled, or uninstalled and installed again, while its
// call with cycles is in flight: the refund reaches it exactly once (the
// new code's callback, or none), and the count holds.
func TestCyclesRefundToAReinstalledCaller(t *testing.T) {
	f, w := watchedFixture(t)
	ctx := context.Background()
	wasm := mustWat(t, flightWat)
	b := f.install(wasm, nil)
	cb := f.loaded(b)
	for _, how := range []string{"reinstall", "uninstall and install", "upgrade"} {
		t.Run(how, func(t *testing.T) {
			f.t = t
			a := f.install(wasm, nil)
			held := f.heldInStore(a)
			cb.mu.Lock()
			f.update(a, "forward", flightArg(b, "take_half", flightCycles, false, nil))
			var err error
			switch how {
			case "reinstall":
				_, err = f.node.Install(ctx, a, InstallOptions{Mode: ModeReinstall, Wasm: wasm, Caller: user})
			case "upgrade":
				_, err = f.node.Install(ctx, a, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Caller: user})
			default:
				if err = f.node.Uninstall(ctx, a, user); err == nil {
					_, err = f.node.Install(ctx, a, InstallOptions{Mode: ModeInstall, Wasm: wasm, Caller: user})
				}
			}
			cb.mu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			f.quiesce()
			if rs := f.records(); len(rs) != 0 {
				t.Fatalf("left in flight: %+v", rs)
			}
			// What the installs burned is in held too: only the half
			// the callee accepted left.
			if lost := held.SaturatingSub(f.heldInStore(a)); lost != cycles.New(flightCycles/2) || f.heldInStore(a).Cmp(held) > 0 {
				t.Fatalf("the caller lost %s (holds %s, held %s), want %d", lost, f.heldInStore(a), held, flightCycles/2)
			}
			f.checkConservation()
			w.check(t)
		})
	}
	f.t = t
}

// heartbeatWat's heartbeat counts itself, burns as much as it may and
// sends the rest of its balance with a call to a canister that does not
// exist, trapping when that is refused; stop_canister with the calls out.
const heartbeatWat = `
(module
  (import "ic0" "cycles_burn128" (func $burn (param i64 i64 i32)))
  (import "ic0" "canister_cycle_balance128" (func $balance (param i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_cycles_add128" (func $cadd (param i64 i64)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory 1)
  (table 1 funcref)
  (elem (i32.const 0) $cb)
  (data (i32.const 300) "\00\00\00\00\00\00\10\00\01\01")
  (data (i32.const 320) "x")
  (global $beats (mut i64) (i64.const 0))
  (func $cb (param i32))
  (func (export "canister_heartbeat")
    (global.set $beats (i64.add (global.get $beats) (i64.const 1)))
    (call $burn (i64.const 0) (i64.const 1000000000) (i32.const 0))
    (call $balance (i32.const 32))
    (call $call_new (i32.const 300) (i32.const 10) (i32.const 320) (i32.const 1)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $cadd (i64.const 0) (i64.shr_u (i64.load (i32.const 32)) (i64.const 8)))
    (drop (call $perform)))
  (func (export "canister_query beats")
    (i64.store (i32.const 64) (global.get $beats))
    (call $append (i32.const 64) (i32.const 8))
    (call $reply))
)`

// Heartbeats that burn, send cycles nowhere and are stopped with their
// calls out: whatever they manage, the count holds at every commit, and
// after a restart.
func TestCyclesHeartbeatBurnsAndSendsNowhere(t *testing.T) {
	f, w := watchedFixture(t)
	h := f.install(mustWat(t, heartbeatWat), nil)
	beats := func() uint64 { return binary.LittleEndian.Uint64(f.query(h, "beats", nil)) }
	waitFor(t, 60*time.Second, func() bool { return beats() >= 3 })
	if err := f.node.SetStatus(context.Background(), h, user, "stopped"); err != nil {
		t.Fatal(err)
	}
	f.quiesce()
	if rs := f.records(); len(rs) != 0 {
		t.Fatalf("left in flight: %+v", rs)
	}
	f.checkConservation()
	w.check(t)
	f.restart()
	w.st.Store(f.node.store)
	f.checkConservation()
	f.stopAndDelete(h)
	f.checkConservation()
	w.check(t)
}

// A random mix of hostile call patterns among colluding canisters (every
// callee behaviour of flightWat and greedyWat, deposits to live, deleted
// and unknown canisters, creations, raw_rand with cycles, trapping
// callbacks, reinstalls and uninstalls with calls out, restarts with calls
// in flight): after every round nothing is in flight, the committed count
// holds (and held at every transaction), and the minted total grew only by
// the canisters the test created from the CLI path.
func TestCyclesConservedUnderRandomHostileCalls(t *testing.T) {
	t.Parallel()
	f, w := watchedFixture(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 11))
	flight, greedy := mustWat(t, flightWat), mustWat(t, greedyWat)
	var callers []principal.Principal
	for range 3 {
		callers = append(callers, f.install(flight, nil))
	}
	g := f.install(greedy, nil)
	spare := f.install(flight, nil)
	f.stopAndDelete(spare)
	never := principal.CanisterID(1 << 40)
	minted := f.storeConserved().Minted
	methods := []string{"take", "take_half", "take_none", "reject_half", "trap", "missing"}
	for round := range 12 {
		for range 6 {
			a := callers[rng.IntN(len(callers))]
			amount := uint64(rng.IntN(4)) * flightCycles
			var callee principal.Principal
			var method string
			var payload []byte
			switch k := rng.IntN(10); {
			case k < 4:
				callee, method = callers[rng.IntN(len(callers))], methods[rng.IntN(len(methods))]
			case k < 6:
				callee, method = g, []string{"greedy", "twice", "qtake", "cq"}[rng.IntN(4)]
			case k == 6:
				to := []principal.Principal{callers[rng.IntN(len(callers))], spare, never, a}[rng.IntN(4)]
				callee, method, payload = principal.Management(), "deposit_cycles", depositArg(t, to)
			case k == 7:
				callee, method, payload = principal.Management(), "create_canister", createArg(t)
				amount = uint64(rng.IntN(3)) * f.cfg.Fees.CanisterCreation
			case k == 8:
				callee, method, payload = principal.Management(), "raw_rand", noArgs
			default:
				callee, method = never, "take"
			}
			f.update(a, "forward", flightArg(callee, method, amount, rng.IntN(3) == 0, payload))
		}
		switch rng.IntN(4) {
		case 0: // reinstall a caller with its calls out
			if _, err := f.node.Install(ctx, callers[rng.IntN(len(callers))], InstallOptions{Mode: ModeReinstall, Wasm: flight, Caller: user}); err != nil {
				t.Fatal(err)
			}
		case 1: // uninstall and install again
			id := callers[rng.IntN(len(callers))]
			if err := f.node.Uninstall(ctx, id, user); err != nil {
				t.Fatal(err)
			}
			if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: flight, Caller: user}); err != nil {
				t.Fatal(err)
			}
		case 2: // restart with whatever is still in flight
			f.restart()
			w.st.Store(f.node.store)
		}
		f.quiesce()
		if rs := f.records(); len(rs) != 0 {
			t.Fatalf("round %d: left in flight: %+v", round, rs)
		}
		tot := f.storeConserved()
		if tot.Minted != minted {
			t.Fatalf("round %d: minted %s, want %s", round, tot.Minted, minted)
		}
		f.checkConservation()
		w.check(t)
	}
}

// lateAcceptWat's update calls a canister that does not exist and answers
// from its reject callback, which first accepts all that is available of
// the cycles its call context came with (and tries again, after the
// reply); got answers the two accepts.
const lateAcceptWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (import "ic0" "msg_cycles_accept128" (func $accept (param i64 i64 i32)))
  (memory 1)
  (table 1 funcref)
  (elem (i32.const 0) $late)
  (data (i32.const 300) "\00\00\01\00\00\00\00\00\01\01")
  (data (i32.const 320) "x")
  (func (export "canister_update relay")
    (call $call_new (i32.const 300) (i32.const 10) (i32.const 320) (i32.const 1)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (if (call $perform) (then unreachable)))
  (func $late (param i32)
    (call $accept (i64.const -1) (i64.const -1) (i32.const 0))
    (call $reply)
    (call $accept (i64.const -1) (i64.const -1) (i32.const 16)))
  (func (export "canister_query got") (call $append (i32.const 0) (i32.const 32)) (call $reply))
)`

// Cycles a call context came with, accepted from a reject callback: the
// callee gains exactly what the caller loses, an accept after the reply
// gets nothing, and the caller's callback is told the rest came back.
func TestCyclesAcceptedInARejectCallback(t *testing.T) {
	t.Parallel()
	f, w := watchedFixture(t)
	a := f.install(mustWat(t, flightWat), nil)
	b := f.install(mustWat(t, lateAcceptWat), nil)
	heldA, heldB := f.heldInStore(a), f.heldInStore(b)
	f.update(a, "forward", flightArg(b, "relay", flightCycles, false, nil))
	f.quiesce()
	w.check(t)
	got := f.query(b, "got", nil)
	first, second := binary.LittleEndian.Uint64(got), binary.LittleEndian.Uint64(got[16:])
	lost, gained := heldA.SaturatingSub(f.heldInStore(a)), f.heldInStore(b).SaturatingSub(heldB)
	refunded := binary.LittleEndian.Uint64(f.query(a, "refunded", nil))
	if first != flightCycles || second != 0 || lost != cycles.New(flightCycles) || gained != cycles.New(flightCycles) || refunded != 0 {
		t.Fatalf("accepts %d then %d; the caller lost %s, the callee gained %s, the caller was refunded %d", first, second, lost, gained, refunded)
	}
	if rs := f.records(); len(rs) != 0 {
		t.Fatalf("left in flight: %+v", rs)
	}
}
