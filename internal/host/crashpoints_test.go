package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Crash points. Each test installs canisters, closes the node and runs
// this test binary again as a child host that does something and says so
// on stdout at a chosen point; the parent SIGKILLs it there, opens the
// store again and checks what the restart must give.

// slowTaskWat has a global timer ("arm" sets it to a time long past) and a
// low-memory hook ("grow" grows the heap by its argument, a little-endian
// u32 of Wasm pages), each working for a while (a loop of 5e8 iterations)
// before it counts its run; "count" returns both counts.
const slowTaskWat = `
(module
  (import "ic0" "global_timer_set" (func $timer_set (param i64) (result i64)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (global $timers (mut i64) (i64.const 0))
  (global $hooks (mut i64) (i64.const 0))
  (func $work
    (local $i i64)
    (loop $l
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $l (i64.lt_u (local.get $i) (i64.const 500000000)))))
  (func (export "canister_update arm")
    (drop (call $timer_set (i64.const 1)))
    (call $reply))
  (func (export "canister_update grow")
    (call $arg_copy (i32.const 8) (i32.const 0) (i32.const 4))
    (drop (memory.grow (i32.load (i32.const 8))))
    (call $reply))
  (func (export "canister_global_timer")
    (call $work)
    (global.set $timers (i64.add (global.get $timers) (i64.const 1))))
  (func (export "canister_on_low_wasm_memory")
    (call $work)
    (global.set $hooks (i64.add (global.get $hooks) (i64.const 1))))
  (func (export "canister_query count")
    (i64.store (i32.const 0) (global.get $timers))
    (i64.store (i32.const 8) (global.get $hooks))
    (call $append (i32.const 0) (i32.const 16))
    (call $reply))
)`

func crashCfg(home string) Config {
	cfg := DefaultConfig()
	cfg.Home = home
	cfg.Isolation = "inprocess"
	cfg.Fees.GiBStoragePerSecond = 0
	return cfg
}

func crashFixture(t *testing.T) *fixture {
	return openFixture(t, crashCfg(t.TempDir()))
}

// childIDs is the canisters a test child host is given in the environment
// variable env, comma-separated.
func childIDs(t *testing.T, env string) []principal.Principal {
	t.Helper()
	var ps []principal.Principal
	for _, s := range strings.Split(os.Getenv(env), ",") {
		p, err := principal.FromText(s)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

// crashChild is the host that dies: it runs the scenario named by
// CORDON_CRASH_SCENARIO on the canisters CORDON_CRASH_IDS, says when it is
// at the point, and waits to be killed.
func crashChild(t *testing.T, home string) {
	ps := childIDs(t, "CORDON_CRASH_IDS")
	say := func(s string) { os.Stdout.WriteString(s + "\n") }
	scenario := os.Getenv("CORDON_CRASH_SCENARIO")
	testHookTaskStarts = func(_ principal.Principal, entry string) {
		switch {
		case scenario == "timer" && entry == "canister_global_timer",
			scenario == "lowmem" && entry == "canister_on_low_wasm_memory":
			say("TASK RUNNING")
		case scenario == "retimer" && entry == "canister_global_timer":
			say("TASK RUNNING")
			select {} // killed here: the task never commits
		}
	}
	cfg := crashCfg(home)
	clk := &fakeClock{}
	clk.ns.Store(time.Now().UnixNano())
	if scenario == "retimer" {
		cfg.Clock = clk.now
	}
	n, err := Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	update := func(id principal.Principal, method string, arg []byte) {
		if _, err := n.Update(ctx, Message{Canister: id, Method: method, Arg: arg, Caller: user}); err != nil {
			t.Fatalf("%s: %v", method, err)
		}
	}
	// spinning occupies id with a message that never ends.
	spinning := func(id principal.Principal) {
		go n.Update(ctx, Message{Canister: id, Method: "spin", Caller: user}) //nolint:errcheck // never returns
		c, err := n.get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for c.mu.TryRLock() {
			c.mu.RUnlock()
			time.Sleep(10 * time.Millisecond)
		}
	}
	switch scenario {
	case "call", "deposit": // the callee is busy: the cycles are in flight
		a, b := ps[0], ps[1]
		spinning(b)
		if scenario == "call" {
			update(a, "forward", flightArg(b, "take_half", flightCycles, false, nil))
		} else {
			update(a, "forward", flightArg(principal.Management(), "deposit_cycles", flightCycles, false, depositArg(t, b)))
		}
		say("SENT") // the caller's commit is durable: its reply came after it
	case "delivered": // the callee took half; the refund waits for the busy caller
		a, b := ps[0], ps[1]
		ca, err := n.get(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		messages := func() (count uint64) {
			_ = n.store.Metas(func(k []byte, m store.Meta) error {
				if string(k) == string(b.Bytes()) {
					count = m.Messages
				}
				return nil
			})
			return count
		}
		before := messages()
		// Queued together, in this order: the response comes after spin.
		replied := make(chan result, 1)
		n.enqueue(ca, &message{kind: kindRequest, ingress: true, caller: user, method: "forward",
			arg: flightArg(b, "take_half", flightCycles, false, nil), origin: origin{ingress: replied}})
		n.enqueue(ca, &message{kind: kindRequest, ingress: true, caller: user, method: "spin", origin: origin{ingress: make(chan result, 1)}})
		if r := <-replied; r.err != nil {
			t.Fatalf("forward: %v", r.err)
		}
		for messages() == before { // until the callee's commit is durable
			time.Sleep(5 * time.Millisecond)
		}
		say("DELIVERED")
	case "timer":
		update(ps[0], "arm", nil)
	case "lowmem":
		update(ps[0], "grow", binary.LittleEndian.AppendUint32(nil, 5))
	case "retimer": // the timer falls due while a message that sets it again waits
		c, err := n.get(ctx, ps[0])
		if err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		t1 := c.meta.GlobalTimer
		go n.Update(ctx, Message{Canister: ps[0], Method: "set", Caller: user, //nolint:errcheck // its commit is what counts
			Arg: binary.LittleEndian.AppendUint64(nil, t1+uint64(24*time.Hour))})
		for {
			c.qmu.Lock()
			draining := c.draining
			c.qmu.Unlock()
			if draining {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		clk.ns.Store(int64(t1))
		n.scheduleTimer(c) // the task is queued behind the message
		if !c.timerQueued {
			t.Fatal("the due timer was not queued")
		}
		n.unlock(c)
	default:
		t.Fatalf("unknown scenario %q", scenario)
	}
	select {}
}

// crashAt runs the child host of test testName and SIGKILLs it when it
// prints marker.
func crashAt(t *testing.T, testName, home, scenario, marker string, ids ...principal.Principal) {
	t.Helper()
	var s []string
	for _, id := range ids {
		s = append(s, id.String())
	}
	cmd := faultinject.Child(testName, "CORDON_CRASH_HOME="+home, "CORDON_CRASH_SCENARIO="+scenario, "CORDON_CRASH_IDS="+strings.Join(s, ","))
	// A child that never gets there is killed too.
	reached := faultinject.KillAt(t, cmd, 2*time.Minute, func(line string) bool { return strings.HasPrefix(line, marker) })
	if !reached {
		t.Fatalf("the child host never reached %q", marker)
	}
}

// storedMeta is id's committed metadata (read without loading it, so the
// node has nothing of it to run yet).
func (f *fixture) storedMeta(id principal.Principal) store.Meta {
	f.t.Helper()
	var meta store.Meta
	found := false
	err := f.node.store.Metas(func(k []byte, m store.Meta) error {
		if string(k) == string(id.Bytes()) {
			meta, found = m, true
		}
		return nil
	})
	if err != nil || !found {
		f.t.Fatalf("metadata of %s: found %v, %v", id, found, err)
	}
	return meta
}

// A host killed while a call's cycles are between commits: before the
// callee's (a call, a deposit_cycles waiting for its target), or after it
// and before the caller takes the refund. The restart returns what was in
// flight to the caller: nothing is lost or counted twice, the callee keeps
// exactly what it accepted, and calls work again.
func TestCrashReturnsCyclesInFlight(t *testing.T) {
	t.Parallel()
	if home := os.Getenv("CORDON_CRASH_HOME"); home != "" {
		crashChild(t, home)
		return
	}
	for _, tc := range []struct {
		scenario, marker string
		kept             uint64 // by the callee
	}{
		{"call", "SENT", 0},
		{"deposit", "SENT", 0},
		{"delivered", "DELIVERED", flightCycles / 2},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			f := crashFixture(t)
			wasm := mustWat(t, flightWat)
			a, b := f.install(wasm, nil), f.install(wasm, nil)
			f.storeConserved()
			heldA, heldB := f.heldInStore(a), f.heldInStore(b)
			if err := f.node.Close(); err != nil {
				t.Fatal(err)
			}
			crashAt(t, "TestCrashReturnsCyclesInFlight", f.home, tc.scenario, tc.marker, a, b)
			f.open()
			if rs := f.records(); len(rs) != 0 {
				t.Fatalf("still in flight after the restart: %+v", rs)
			}
			tot := f.storeConserved()
			lost, gained := heldA.SaturatingSub(f.heldInStore(a)), f.heldInStore(b).SaturatingSub(heldB)
			t.Logf("after the restart: the caller lost %s, the callee gained %s; %s minted, %s burned", lost, gained, tot.Minted, tot.Burned)
			if lost != cycles.New(tc.kept) || gained != cycles.New(tc.kept) {
				t.Fatalf("the caller lost %s and the callee gained %s, want %d each", lost, gained, tc.kept)
			}
			// The restarted node's calls record and settle as before.
			f.update(a, "forward", flightArg(b, "take", flightCycles, false, nil))
			f.quiesce()
			if got := f.heldInStore(b).SaturatingSub(heldB); got != cycles.New(tc.kept+flightCycles) {
				t.Fatalf("a call after the restart: the callee gained %s in all, want %d", got, tc.kept+flightCycles)
			}
			f.checkConservation()
		})
	}
}

// A host killed while a due global timer's task runs: the timer was taken
// in memory only, so after the restart it is still armed and fires.
func TestCrashKeepsGlobalTimerArmed(t *testing.T) {
	t.Parallel()
	if home := os.Getenv("CORDON_CRASH_HOME"); home != "" {
		crashChild(t, home)
		return
	}
	f := crashFixture(t)
	id := f.install(mustWat(t, slowTaskWat), nil)
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	crashAt(t, "TestCrashKeepsGlobalTimerArmed", f.home, "timer", "TASK RUNNING", id)
	f.open()
	if m := f.storedMeta(id); m.GlobalTimer != 1 {
		t.Fatalf("after the restart the stored global timer is %d, want 1 (armed)", m.GlobalTimer)
	}
	runs := func() uint64 { return binary.LittleEndian.Uint64(f.query(id, "count", nil)) }
	waitFor(t, time.Minute, func() bool { return runs() > 0 })
	f.quiesce()
	if n, timer := runs(), metaOf(f.loaded(id)).GlobalTimer; n != 1 || timer != 0 {
		t.Fatalf("the timer ran %d times and is %d after it ran, want once and 0", n, timer)
	}
}

// A host killed while the low-memory hook runs: taken in memory only, the
// hook is still ready after the restart and runs.
func TestCrashKeepsLowMemoryHookReady(t *testing.T) {
	t.Parallel()
	if home := os.Getenv("CORDON_CRASH_HOME"); home != "" {
		crashChild(t, home)
		return
	}
	f := crashFixture(t)
	id := f.install(mustWat(t, slowTaskWat), nil)
	// The hook is due above 5 of 10 pages.
	f.settings(id, fmt.Sprintf("wasm_memory_limit = opt (%d : nat); wasm_memory_threshold = opt (%d : nat)", 10*wasmPage, 5*wasmPage))
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	crashAt(t, "TestCrashKeepsLowMemoryHookReady", f.home, "lowmem", "TASK RUNNING", id)
	f.open()
	if h := f.storedMeta(id).LowMemoryHook; h != hookReady {
		t.Fatalf("after the restart the hook's stored state is %d, want ready (%d)", h, hookReady)
	}
	runs := func() uint64 { return binary.LittleEndian.Uint64(f.query(id, "count", nil)[8:]) }
	waitFor(t, time.Minute, func() bool { return runs() > 0 })
	f.quiesce()
	if n, h := runs(), metaOf(f.loaded(id)).LowMemoryHook; n != 1 || h != hookExecuted {
		t.Fatalf("the hook ran %d times and its state is %d, want once and executed", n, h)
	}
}

// timerTakeWat: "set" sets the global timer to its argument (a u64) and
// replies the previous value; "again" has the timer's next run set the
// timer to its argument; the timer counts its runs.
const timerTakeWat = `
(module
  (import "ic0" "global_timer_set" (func $timer_set (param i64) (result i64)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (global $fired (mut i64) (i64.const 0))
  (global $again (mut i64) (i64.const 0))
  (func (export "canister_update set")
    (call $arg_copy (i32.const 0) (i32.const 0) (i32.const 8))
    (i64.store (i32.const 8) (call $timer_set (i64.load (i32.const 0))))
    (call $append (i32.const 8) (i32.const 8))
    (call $reply))
  (func (export "canister_update again")
    (call $arg_copy (i32.const 0) (i32.const 0) (i32.const 8))
    (global.set $again (i64.load (i32.const 0)))
    (call $reply))
  (func (export "canister_global_timer")
    (global.set $fired (i64.add (global.get $fired) (i64.const 1)))
    (if (i64.ne (global.get $again) (i64.const 0))
      (then (drop (call $timer_set (global.get $again))) (global.set $again (i64.const 0)))))
  (func (export "canister_query count")
    (i64.store (i32.const 0) (global.get $fired))
    (call $append (i32.const 0) (i32.const 8))
    (call $reply))
)`

// A due global timer is taken when its task is queued, in memory: the
// store keeps it armed until the task's own commit, which is the only
// commit its run makes. Messages meanwhile see it deactivated (as on the
// IC) and one that sets it again keeps its value; the task still runs,
// once. Without a crash the timer never fires twice, and a timer that sets
// itself again from its handler keeps the new value.
func TestGlobalTimerTakenUntilItsTaskCommits(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{}
	clk.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	rec := &commitCounter{}
	cfg := crashCfg(t.TempDir())
	cfg.Clock, cfg.Metrics = clk.now, rec
	f := openFixture(t, cfg)
	ctx := context.Background()
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	a := f.install(mustWat(t, timerTakeWat), nil)
	runs := func() uint64 { return binary.LittleEndian.Uint64(f.query(a, "count", nil)) }
	now := func() uint64 { return uint64(clk.ns.Load()) }
	t1, t2 := now()+uint64(10*time.Second), now()+uint64(time.Hour)
	f.update(a, "set", u64(t1))
	c := f.loaded(a)

	// The timer falls due while a message that sets it again waits.
	c.mu.Lock()
	prev := make(chan []byte, 1)
	go func() {
		r, err := f.node.Update(ctx, Message{Canister: a, Method: "set", Arg: u64(t2), Caller: user})
		if err != nil {
			t.Error(err)
			prev <- nil
			return
		}
		prev <- r.Data
	}()
	waitFor(t, 30*time.Second, func() bool {
		c.qmu.Lock()
		defer c.qmu.Unlock()
		return c.draining
	})
	clk.advance(20 * time.Second)
	f.node.scheduleTimer(c)
	if !c.timerQueued || c.globalTimer() != 0 || c.meta.GlobalTimer != t1 {
		c.mu.Unlock()
		t.Fatalf("after scheduling: queued %v, seen %d, kept %d (want true, 0, %d)", c.timerQueued, c.globalTimer(), c.meta.GlobalTimer, t1)
	}
	f.node.commitMeta(c, "a commit meanwhile")
	stored := f.storedMeta(a).GlobalTimer
	c.mu.Unlock()
	if stored != t1 {
		t.Fatalf("the store has the taken timer as %d, want %d (armed until its task commits)", stored, t1)
	}
	if p := <-prev; binary.LittleEndian.Uint64(p) != 0 {
		t.Fatalf("a message after the timer was taken saw it as %d, want 0 (deactivated)", binary.LittleEndian.Uint64(p))
	}
	f.quiesce()
	if n, m := runs(), f.storedMeta(a); n != 1 || m.GlobalTimer != t2 {
		t.Fatalf("the timer ran %d times and is stored as %d; want once and %d (the value set meanwhile)", n, m.GlobalTimer, t2)
	}

	// It fires at t2, with one commit: its own.
	commits := rec.n.Load()
	clk.advance(time.Hour)
	waitFor(t, 30*time.Second, func() bool { return runs() == 2 })
	f.quiesce()
	if d := rec.n.Load() - commits; d != 1 {
		t.Fatalf("the timer's run made %d commits, want 1", d)
	}
	if m := f.storedMeta(a); m.GlobalTimer != 0 {
		t.Fatalf("after its run the timer is stored as %d, want 0", m.GlobalTimer)
	}
	// Never again without being set: messages and time go by.
	for range 5 {
		f.update(a, "again", u64(0))
		clk.advance(time.Hour)
	}
	f.quiesce()
	if n := runs(); n != 2 {
		t.Fatalf("the timer ran %d times, want 2", n)
	}

	// A handler that sets the timer again keeps the new value.
	t3 := now() + uint64(time.Hour)
	f.update(a, "again", u64(t3))
	f.update(a, "set", u64(now()))
	waitFor(t, 30*time.Second, func() bool { return runs() == 3 })
	f.quiesce()
	if m := f.storedMeta(a); m.GlobalTimer != t3 || metaOf(c).GlobalTimer != t3 {
		t.Fatalf("the timer set by its handler is stored as %d, in memory %d; want %d", m.GlobalTimer, metaOf(c).GlobalTimer, t3)
	}
}

// A host killed after a message that was queued before a due timer's task
// set the timer again, and before the task committed. On the IC the timer
// is deactivated when its task is scheduled: the message sees it inactive,
// sets a new deadline, and the task still runs. The restart must give the
// canister exactly that: the one run the task owed, and the new deadline
// still armed (neither lost with the value it replaced, nor run twice).
func TestCrashKeepsTimerRunOwedWhenSetAgain(t *testing.T) {
	if home := os.Getenv("CORDON_CRASH_HOME"); home != "" {
		crashChild(t, home)
		return
	}
	f := crashFixture(t)
	id := f.install(mustWat(t, timerTakeWat), nil)
	t1 := uint64(time.Now().Add(time.Hour).UnixNano())
	t2 := t1 + uint64(24*time.Hour)
	f.update(id, "set", binary.LittleEndian.AppendUint64(nil, t1))
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	crashAt(t, "TestCrashKeepsTimerRunOwedWhenSetAgain", f.home, "retimer", "TASK RUNNING", id)
	f.open()
	if m := f.storedMeta(id); m.GlobalTimer != t2 || !m.TimerPending {
		t.Fatalf("after the restart the stored global timer is %d, run owed %v; want %d (set by the message) and the run owed", m.GlobalTimer, m.TimerPending, t2)
	}
	runs := func() uint64 { return binary.LittleEndian.Uint64(f.query(id, "count", nil)) }
	waitFor(t, time.Minute, func() bool { return runs() > 0 })
	f.quiesce()
	if n, timer := runs(), metaOf(f.loaded(id)).GlobalTimer; n != 1 || timer != t2 {
		t.Fatalf("the timer ran %d times and is %d after the restart, want once and %d", n, timer, t2)
	}
	if m := f.storedMeta(id); m.GlobalTimer != t2 || m.TimerPending {
		t.Fatalf("after the run the stored global timer is %d, run owed %v; want %d and none", m.GlobalTimer, m.TimerPending, t2)
	}
	// Reopened once more, it owes nothing: the run is not repeated.
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	f.open()
	f.loaded(id)
	f.quiesce()
	if n := runs(); n != 1 {
		t.Fatalf("after a second restart the timer has run %d times, want 1", n)
	}
}
