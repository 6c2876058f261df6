package host

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// The global timer as the IC interface specification has it ("Global
// timer"; ic0.global_timer_set): set returns the previous value, 0
// deactivates, a deadline in the past fires at the next round; the timer
// is deactivated once its canister_global_timer is scheduled and on every
// change of the module (install_code in each mode, install_chunked_code,
// uninstall_code), after which only what the new module sets runs; a
// frozen canister's timer stays set and runs once it is topped up.

// farTimer is the deadline specNewWat's canister_init and
// canister_post_upgrade set: never due in these tests.
const farTimer = uint64(1) << 62

// specTimerWat is a timer canister: "set" sets the global timer to its
// argument (a little-endian u64) and replies the previous value;
// canister_global_timer counts its runs and records what
// global_timer_set reports there (the timer as the run sees it); "count"
// replies the runs, that value, and what global_timer_set returned in
// canister_init or canister_post_upgrade (initInstr, when not empty, is
// their body: it sets the timer to farTimer).
func specTimerWat(initInstr string) string {
	hooks := ""
	if initInstr != "" {
		hooks = fmt.Sprintf(`
  (func $init %s)
  (func (export "canister_init") (call $init))
  (func (export "canister_post_upgrade") (call $init))`, initInstr)
	}
	return fmt.Sprintf(`
(module
  (import "ic0" "global_timer_set" (func $timer_set (param i64) (result i64)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (global $fired (mut i64) (i64.const 0))
  (global $seen (mut i64) (i64.const -1))
  (global $initPrev (mut i64) (i64.const -1))
  (func (export "canister_update set")
    (call $arg_copy (i32.const 0) (i32.const 0) (i32.const 8))
    (i64.store (i32.const 0) (call $timer_set (i64.load (i32.const 0))))
    (call $append (i32.const 0) (i32.const 8))
    (call $reply))
  (func (export "canister_global_timer")
    (global.set $fired (i64.add (global.get $fired) (i64.const 1)))
    ;; read the timer without changing it
    (global.set $seen (call $timer_set (i64.const 0)))
    (drop (call $timer_set (global.get $seen))))
  (func (export "canister_query count")
    (i64.store (i32.const 0) (global.get $fired))
    (i64.store (i32.const 8) (global.get $seen))
    (i64.store (i32.const 16) (global.get $initPrev))
    (call $append (i32.const 0) (i32.const 24))
    (call $reply))%s
)`, hooks)
}

// specOldWat has no hooks; specNewWat, the module that replaces it, sets
// the timer far ahead in canister_init and canister_post_upgrade.
var (
	specOldWat = specTimerWat("")
	specNewWat = specTimerWat(fmt.Sprintf(`(global.set $initPrev (call $timer_set (i64.const %d)))`, farTimer))
)

// timerCounts is what specTimerWat's "count" replies.
type timerCounts struct{ fired, seen, initPrev uint64 }

func (f *fixture) timerCounts(id principal.Principal) timerCounts {
	f.t.Helper()
	b := f.query(id, "count", nil)
	if len(b) != 24 {
		f.t.Fatalf("count replied %d bytes", len(b))
	}
	le := binary.LittleEndian
	return timerCounts{le.Uint64(b), le.Uint64(b[8:]), le.Uint64(b[16:])}
}

func u64Arg(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// clockFixture is a node on a clock the test moves, in the given isolation
// mode ("" for the default).
func clockFixture(t *testing.T, isolation string) (*fixture, *fakeClock) {
	clk := &fakeClock{}
	clk.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	cfg := testConfig(t, isolation)
	cfg.Clock = clk.now
	return openFixture(t, cfg), clk
}

// holdQueue keeps c's queue from being drained until release is called:
// what is queued meanwhile (a timer's task) waits there, while lifecycle
// changes, which take c's lock without the queue, go ahead. The queue must
// be idle (quiesce first).
func (f *fixture) holdQueue(c *canister) (release func()) {
	f.t.Helper()
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.draining {
		f.t.Fatal("holdQueue: the queue is being drained")
	}
	c.draining = true
	f.node.busy.Add(1) // the drain that release starts ends it
	released := false
	release = func() {
		if released {
			return
		}
		released = true
		go f.node.drain(c)
	}
	f.t.Cleanup(release)
	return release
}

// waitTimerTaken waits until a due timer's task is queued: the timer loop took
// it (the test moved the clock past it).
func (f *fixture) waitTimerTaken(c *canister) {
	f.t.Helper()
	f.node.timerTick()
	waitFor(f.t, 30*time.Second, func() bool {
		c.mu.RLock()
		defer c.mu.RUnlock()
		return c.timerQueued && c.timerTaken
	})
}

// A timer task queued for a module never runs in the module that replaces
// it: upgrade, reinstall, install_chunked_code and uninstall_code each
// deactivate the timer and drop the run the old module's task owed, and
// the new module's timer is what its canister_init or post_upgrade set
// (global_timer_set there returns 0). Before, the install committed the
// taken timer's run as owed (Meta.TimerPending) and the queued task ran
// canister_global_timer in the new module.
func TestModuleChangeDropsQueuedTimerTask(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"upgrade", "reinstall", "chunked upgrade", "uninstall"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			isolation := ""
			if mode == "upgrade" {
				isolation = "sandbox" // one of them where the canisters run sandboxed
			}
			f, clk := clockFixture(t, isolation)
			ctx := context.Background()
			now := func() uint64 { return uint64(clk.ns.Load()) }
			newWasm := mustWat(t, specNewWat)
			id := f.install(mustWat(t, specOldWat), nil)
			if mode == "chunked upgrade" {
				if _, err := f.node.Update(ctx, Message{Canister: principal.Management(), Method: "upload_chunk", Arg: uploadArg(t, id, newWasm), Caller: user}); err != nil {
					t.Fatalf("upload_chunk: %v", err)
				}
			}
			t1 := now() + uint64(10*time.Second)
			f.update(id, "set", u64Arg(t1))
			c := f.loaded(id)
			f.quiesce()
			release := f.holdQueue(c)
			clk.advance(20 * time.Second)
			f.waitTimerTaken(c)

			switch mode {
			case "upgrade":
				f.upgrade(id, newWasm)
			case "reinstall":
				if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeReinstall, Wasm: newWasm, Caller: user}); err != nil {
					t.Fatal(err)
				}
			case "chunked upgrade":
				sum := sha256.Sum256(newWasm)
				if _, err := f.node.InstallChunked(ctx, InstallChunkedOptions{Mode: ModeUpgrade, Target: id,
					Hashes: [][]byte{sum[:]}, ModuleHash: sum[:], Arg: noArgs, Caller: user}); err != nil {
					t.Fatal(err)
				}
			case "uninstall":
				if err := f.node.Uninstall(ctx, id, user); err != nil {
					t.Fatal(err)
				}
				if m := f.storedMeta(id); m.GlobalTimer != 0 || m.TimerPending {
					t.Fatalf("after uninstall_code the stored timer is %d, run owed %v; want 0 and none", m.GlobalTimer, m.TimerPending)
				}
				if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: newWasm, Caller: user}); err != nil {
					t.Fatal(err)
				}
			}
			if m := f.storedMeta(id); m.GlobalTimer != farTimer || m.TimerPending {
				t.Fatalf("after the %s the stored timer is %d, run owed %v; want %d (set by the new module) and none", mode, m.GlobalTimer, m.TimerPending, farTimer)
			}
			release()
			f.quiesce()
			got := f.timerCounts(id)
			if got.fired != 0 {
				t.Fatalf("the new module's canister_global_timer ran %d times for the old module's timer", got.fired)
			}
			if got.initPrev != 0 {
				t.Fatalf("global_timer_set in the new module's init/post_upgrade returned %d, want 0 (deactivated)", got.initPrev)
			}
			if m := f.storedMeta(id); m.GlobalTimer != farTimer || m.TimerPending || f.status(id).GlobalTimer != farTimer {
				t.Fatalf("after the old task the stored timer is %d (status %d), run owed %v; want %d", m.GlobalTimer, f.status(id).GlobalTimer, m.TimerPending, farTimer)
			}
			// The new module's own timer works: a deadline in the past fires once.
			if prev := binary.LittleEndian.Uint64(f.update(id, "set", u64Arg(now()-1))); prev != farTimer {
				t.Fatalf("set returned %d, want %d", prev, farTimer)
			}
			waitFor(t, 30*time.Second, func() bool { return f.timerCounts(id).fired == 1 })
			f.quiesce()
			if got := f.timerCounts(id); got.fired != 1 || got.seen != 0 {
				t.Fatalf("the new module's timer: %d runs, seen as %d in its run; want 1 and 0", got.fired, got.seen)
			}
		})
	}
}

// The run a taken timer owed is not carried over an uninstall by the
// store either: a node closed with the task still queued (it is given
// back, not run) keeps no owed run for a module installed after the
// restart. Before, uninstall_code stored Meta.TimerPending, and the next
// module ran canister_global_timer for it.
func TestUninstallLeavesNoTimerRunOwed(t *testing.T) {
	t.Parallel()
	f, clk := clockFixture(t, "")
	ctx := context.Background()
	id := f.install(mustWat(t, specOldWat), nil)
	f.update(id, "set", u64Arg(uint64(clk.ns.Load())+uint64(10*time.Second)))
	c := f.loaded(id)
	f.quiesce()
	release := f.holdQueue(c)
	clk.advance(20 * time.Second)
	f.waitTimerTaken(c)
	if err := f.node.Uninstall(ctx, id, user); err != nil {
		t.Fatal(err)
	}
	// Close with the task queued: it is given back, not run.
	closed := make(chan error, 1)
	go func() { closed <- f.node.Close() }()
	waitFor(t, 30*time.Second, f.node.closing)
	release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	f.open()
	if m := f.storedMeta(id); m.TimerPending || m.GlobalTimer != 0 {
		t.Fatalf("an uninstalled canister stored timer %d, run owed %v; want 0 and none", m.GlobalTimer, m.TimerPending)
	}
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, specNewWat), Caller: user}); err != nil {
		t.Fatal(err)
	}
	f.node.timerTick()
	f.quiesce()
	if m := f.storedMeta(id); m.TimerPending || m.GlobalTimer != farTimer {
		t.Fatalf("the new module's stored timer %d, run owed %v; want %d and none", m.GlobalTimer, m.TimerPending, farTimer)
	}
	if got := f.timerCounts(id); got.fired != 0 {
		t.Fatalf("the new module's canister_global_timer ran %d times", got.fired)
	}
}

// A canister that runs out of cycles (here: its memory's storage fee took
// its balance) is frozen, and a frozen canister's due timer does not run:
// it stays set, as on the IC (whose timer task cannot be prepaid, and
// leaves the timer as it was), the timer loop does not look at it every
// tick, and it runs once the canister is topped up. Before, the task ran
// as nothing and deactivated the timer: it never ran.
func TestFrozenCanisterKeepsDueTimer(t *testing.T) {
	t.Parallel()
	f, clk := clockFixture(t, "")
	ctx := context.Background()
	amount := cycles.New(1_000_000_000_000)
	id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}, Cycles: &amount, Minted: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, specOldWat), Caller: user}); err != nil {
		t.Fatal(err)
	}
	// 1 GiB allocated costs 11 G cycles a day: 100 days take the balance.
	if err := f.setMemory(id, "memory_allocation", 1<<30); err != nil {
		t.Fatal(err)
	}
	t1 := uint64(clk.ns.Load()) + uint64(10*time.Second)
	f.update(id, "set", u64Arg(t1))
	c := f.loaded(id)
	clk.advance(100 * 24 * time.Hour)
	// The loop charges the fee and looks at the due timer in one go
	// (timerTick), under the canister's lock.
	f.node.timerTick()
	waitFor(t, 30*time.Second, func() bool { return metaOf(c).Balance.IsZero() })
	f.quiesce()
	if got := f.timerCounts(id); got.fired != 0 {
		t.Fatalf("a frozen canister's timer ran %d times", got.fired)
	}
	if m, st := f.storedMeta(id), f.status(id); m.GlobalTimer != t1 || st.GlobalTimer != t1 || m.TimerPending {
		t.Fatalf("a frozen canister's due timer is stored as %d (status %d, run owed %v), want it still set to %d", m.GlobalTimer, st.GlobalTimer, m.TimerPending, t1)
	}
	now := uint64(clk.ns.Load())
	if due, in := f.node.deadlineOf(c); in && due <= now {
		t.Fatalf("a frozen canister's deadline is %d, due at %d: the loop would look at it every tick", due, now)
	}

	if err := f.node.deposit(ctx, id, cycles.New(2_000_000_000_000), true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() bool { return f.timerCounts(id).fired == 1 })
	f.quiesce()
	if got := f.timerCounts(id); got.fired != 1 || got.seen != 0 {
		t.Fatalf("after the top-up the timer ran %d times, seen as %d in its run; want once, 0", got.fired, got.seen)
	}
	if m := f.storedMeta(id); m.GlobalTimer != 0 || m.TimerPending {
		t.Fatalf("after its run the timer is stored as %d, run owed %v; want 0", m.GlobalTimer, m.TimerPending)
	}
	f.checkConservation()
}

// A timer task queued while the canister could run it finds it stopped,
// or frozen, when its turn comes: it runs nothing and changes nothing.
// The timer stays set (it was only taken in memory) and runs after the
// start or once the freezing threshold is lowered again. Before, the task
// committed the timer deactivated, and it never ran.
func TestSkippedTimerTaskLeavesTimerSet(t *testing.T) {
	t.Parallel()
	for _, why := range []string{"stopped", "frozen"} {
		t.Run(why, func(t *testing.T) {
			t.Parallel()
			f, clk := clockFixture(t, "")
			ctx := context.Background()
			id := f.install(mustWat(t, specOldWat), nil)
			t1 := uint64(clk.ns.Load()) + uint64(10*time.Second)
			f.update(id, "set", u64Arg(t1))
			c := f.loaded(id)
			f.quiesce()
			release := f.holdQueue(c)
			clk.advance(20 * time.Second)
			f.waitTimerTaken(c)
			settings := func(threshold uint64) {
				t.Helper()
				if _, err := f.mgmt("update_settings", fmt.Sprintf(`(record { canister_id = principal %q; settings = record { freezing_threshold = opt (%d : nat) } })`, id, threshold)); err != nil {
					t.Fatal(err)
				}
			}
			if why == "stopped" {
				if err := f.node.SetStatus(ctx, id, user, "stopped"); err != nil {
					t.Fatal(err)
				}
			} else {
				settings(1 << 62) // a freezing limit no balance reaches
			}
			release()
			f.quiesce()
			if why == "frozen" { // a stopped canister answers no query
				if got := f.timerCounts(id); got.fired != 0 {
					t.Fatalf("the timer of a %s canister ran %d times", why, got.fired)
				}
			}
			if m, st := f.storedMeta(id), f.status(id); m.GlobalTimer != t1 || st.GlobalTimer != t1 || m.TimerPending {
				t.Fatalf("after its skipped task the timer of a %s canister is stored as %d (status %d, run owed %v); want still %d",
					why, m.GlobalTimer, st.GlobalTimer, m.TimerPending, t1)
			}
			if why == "stopped" {
				if err := f.node.SetStatus(ctx, id, user, "running"); err != nil {
					t.Fatal(err)
				}
			} else {
				settings(2_592_000) // the default 30 days
			}
			waitFor(t, 30*time.Second, func() bool { return f.timerCounts(id).fired == 1 })
			f.quiesce()
			if got, m := f.timerCounts(id), f.storedMeta(id); got.fired != 1 || got.seen != 0 || m.GlobalTimer != 0 {
				t.Fatalf("the timer ran %d times, seen as %d, stored as %d after; want once, 0, 0", got.fired, got.seen, m.GlobalTimer)
			}
		})
	}
}

// The state hash covers the committed global timer: the run owed besides
// the armed value (Meta.TimerPending) changes it, as that run is still to
// happen; a due timer taken by its queued task does not, as the store
// keeps it armed and a restart gives it back. Before, the run owed was
// left out, and the hash of a taken timer was that of a deactivated one.
func TestStateHashCoversGlobalTimerRunOwed(t *testing.T) {
	t.Parallel()
	f, clk := clockFixture(t, "")
	id := f.install(mustWat(t, specOldWat), nil)
	f.update(id, "set", u64Arg(uint64(clk.ns.Load())+uint64(10*time.Second)))
	c := f.loaded(id)
	f.quiesce()
	release := f.holdQueue(c)
	defer release()

	c.mu.Lock()
	defer c.mu.Unlock()
	clk.advance(20 * time.Second)
	due := f.node.stateHash(c)
	f.node.scheduleTimer(c)
	if !c.timerTaken {
		t.Fatal("the due timer was not taken")
	}
	if taken := f.node.stateHash(c); !slices.Equal(taken, due) {
		t.Fatalf("taking a due timer changed the state hash: %x, was %x", taken, due)
	}
	c.meta.TimerPending = true
	owed := f.node.stateHash(c)
	c.meta.TimerPending = false
	if slices.Equal(owed, due) {
		t.Fatal("a run of canister_global_timer owed does not change the state hash")
	}
}

// ic0.global_timer_set returns the previous value, 0 deactivates, and a
// deadline in the past fires at the next round; the run sees the timer
// deactivated, and it stays so after.
func TestGlobalTimerSetSemantics(t *testing.T) {
	t.Parallel()
	f, clk := clockFixture(t, "")
	id := f.install(mustWat(t, specOldWat), nil)
	c := f.loaded(id)
	now := func() uint64 { return uint64(clk.ns.Load()) }
	set := func(v uint64) uint64 { return binary.LittleEndian.Uint64(f.update(id, "set", u64Arg(v))) }
	t1, t2 := now()+uint64(time.Minute), now()+uint64(time.Hour)
	for _, step := range []struct{ set, prev uint64 }{{t1, 0}, {t2, t1}, {0, t2}, {0, 0}} {
		if got := set(step.set); got != step.prev {
			t.Fatalf("global_timer_set(%d) returned %d, want %d", step.set, got, step.prev)
		}
	}
	// Deactivated: the time passing its old deadlines runs nothing.
	clk.advance(2 * time.Hour)
	f.node.timerTick()
	f.quiesce()
	if m := metaOf(c); m.GlobalTimer != 0 || m.TimerPending {
		t.Fatalf("a deactivated timer is %d, run owed %v", m.GlobalTimer, m.TimerPending)
	}
	if got := f.timerCounts(id); got.fired != 0 {
		t.Fatalf("a deactivated timer ran %d times", got.fired)
	}
	// A deadline in the past: due at once.
	if got := set(1); got != 0 {
		t.Fatalf("global_timer_set(1) returned %d, want 0", got)
	}
	waitFor(t, 30*time.Second, func() bool { return f.timerCounts(id).fired == 1 })
	f.quiesce()
	if got := f.timerCounts(id); got.fired != 1 || got.seen != 0 {
		t.Fatalf("the past deadline ran %d times, seen as %d in its run; want once, 0", got.fired, got.seen)
	}
	if got := set(0); got != 0 {
		t.Fatalf("after its run global_timer_set returned %d, want 0 (deactivated)", got)
	}
}

// The same through Motoko's Timer library (shared/canisters timer.mo), on
// the node's clock: a timer fires once its time has passed and not
// before, a zero delay fires at the next round, a cancelled one never,
// and an upgrade deactivates the global timer (Motoko's timers do not
// survive it; its stable tick count does).
func TestMotokoTimerOnNodeClock(t *testing.T) {
	t.Parallel()
	f, clk := clockFixture(t, "")
	wasm := module(t, corpusDir, "timer")
	id := f.install(wasm, noArgs)
	c := f.loaded(id)
	count := func() string { return f.queryText(id, "count", "()") }
	idOf := func(reply string) string {
		return strings.TrimSuffix(strings.TrimPrefix(reply, "("), " : nat)")
	}

	f.callText(id, "once", "(5 : nat)")
	clk.advance(4 * time.Second)
	f.node.timerTick()
	f.quiesce()
	if got := count(); got != "(0 : nat)" {
		t.Fatalf("a 5 s timer ran before its time: count %s", got)
	}
	clk.advance(2 * time.Second)
	waitFor(t, 30*time.Second, func() bool { return count() == "(1 : nat)" })

	// Due at the message's own ic0.time: once the clock has moved on,
	// at the next round.
	f.callText(id, "once", "(0 : nat)")
	clk.advance(time.Millisecond)
	waitFor(t, 30*time.Second, func() bool { return count() == "(2 : nat)" })

	cancelled := idOf(f.callText(id, "once", "(10 : nat)"))
	f.callText(id, "cancel", "("+cancelled+" : nat)")
	clk.advance(20 * time.Second)
	f.node.timerTick()
	f.quiesce()
	if got := count(); got != "(2 : nat)" {
		t.Fatalf("a cancelled timer ran: count %s", got)
	}

	f.callText(id, "once", "(10 : nat)")
	if metaOf(c).GlobalTimer == 0 {
		t.Fatal("Motoko's setTimer did not set the global timer")
	}
	f.upgrade(id, wasm)
	if g := metaOf(c).GlobalTimer; g != 0 {
		t.Fatalf("after an upgrade the global timer is %d, want 0", g)
	}
	clk.advance(20 * time.Second)
	f.node.timerTick()
	f.quiesce()
	if got := count(); got != "(2 : nat)" {
		t.Fatalf("a timer set before the upgrade ran after it: count %s", got)
	}
}
