package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// commitCounter counts the node's store commits.
type commitCounter struct {
	metrics.Nop
	n atomic.Int64
}

func (r *commitCounter) Commit(time.Duration, int64, error) { r.n.Add(1) }

// loaded returns the loaded canister id (the test holds no lock).
func (f *fixture) loaded(id principal.Principal) *canister {
	f.t.Helper()
	c, err := f.node.get(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// metaOf reads a loaded canister's metadata under its lock.
func metaOf(c *canister) store.Meta {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.meta
}

// The timer loop charges the storage fees of canisters that fall due
// together in batched commits (at most storageBatch canisters each), not
// one commit per canister, and every canister pays exactly what one
// charge per canister for the same time would (the fee's remainder carries
// across charges, so how the time is cut does not change the total).
func TestTimerLoopChargesDueCanistersTogether(t *testing.T) {
	// Not t.Parallel: it sets the package's storageBatch.
	const canisters, batch = 20, 8
	defer func(b int) { storageBatch = b }(storageBatch)
	storageBatch = batch

	clk := &fakeClock{}
	clk.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	rec := &commitCounter{}
	cfg := testConfig(t, "")
	cfg.Clock = clk.now
	cfg.Metrics = rec
	f := openFixture(t, cfg)

	wasm := mustWat(t, memWat)
	var cs []*canister
	for i := 0; i < canisters; i++ {
		id := f.install(wasm, nil)
		if i%2 == 0 { // two sizes of memory held
			if got := f.grow(id, "sgrow", 16); got != 0 {
				t.Fatalf("sgrow: %d", got)
			}
		}
		cs = append(cs, f.loaded(id))
	}
	first := make([]store.Meta, len(cs))
	bytes := make([]uint64, len(cs))
	for i, c := range cs {
		c.mu.RLock()
		first[i], bytes[i] = c.meta, chargedBytes(c.meta.Settings, usageOf(c))
		c.mu.RUnlock()
	}
	rate := cfg.Fees.GiBStoragePerSecond

	for round, step := range []time.Duration{61 * time.Second, 90 * time.Second, time.Hour + 7*time.Millisecond} {
		clk.advance(step)
		target := uint64(clk.ns.Load())
		before := rec.n.Load()
		waitFor(t, 20*time.Second, func() bool {
			for _, c := range cs {
				if metaOf(c).StoragePaidUntil < target {
					return false
				}
			}
			return true
		})
		commits := rec.n.Load() - before
		if want := int64((canisters + batch - 1) / batch); commits > want {
			t.Fatalf("round %d: %d canisters charged in %d commits, want at most %d", round, canisters, commits, want)
		}
		t.Logf("round %d: %d canisters charged in %d commits", round, canisters, commits)
	}

	// Every canister paid, in total, the fee of one charge over all the
	// time it was charged for (the old per-canister charge of that time),
	// to the cycle and to the carried remainder.
	for i, c := range cs {
		m := metaOf(c)
		want, rem := storageFee(rate, bytes[i], m.StoragePaidUntil-first[i].StoragePaidUntil, first[i].StorageFeeRemainder)
		burned := m.CyclesBurned.SaturatingSub(first[i].CyclesBurned)
		paid := first[i].Balance.SaturatingSub(m.Balance)
		if burned != want || paid != want || rem != m.StorageFeeRemainder {
			t.Fatalf("canister %d (%d bytes): burned %s, paid %s, remainder %d; one charge for the same %s: %s, remainder %d",
				i, bytes[i], burned, paid, m.StorageFeeRemainder, time.Duration(m.StoragePaidUntil-first[i].StoragePaidUntil), want, rem)
		}
		if want.IsZero() {
			t.Fatalf("canister %d paid nothing", i)
		}
	}
	// And the store has what memory has.
	f.restart()
	for i, c := range cs {
		got := metaOf(f.loaded(c.id))
		if got.Balance != metaOf(c).Balance || got.StoragePaidUntil != metaOf(c).StoragePaidUntil {
			t.Fatalf("canister %d: stored balance %s paid until %d, in memory %s until %d", i, got.Balance,
				got.StoragePaidUntil, metaOf(c).Balance, metaOf(c).StoragePaidUntil)
		}
	}
	f.checkConservation()
}

// timerWat sets its global timer 10 s ahead (arm) and counts the timer's
// runs (count).
const timerWat = `
(module
  (import "ic0" "time" (func $time (result i64)))
  (import "ic0" "global_timer_set" (func $timer_set (param i64) (result i64)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (global $fired (mut i64) (i64.const 0))
  (func (export "canister_update arm")
    (drop (call $timer_set (i64.add (call $time) (i64.const 10000000000))))
    (call $reply))
  (func (export "canister_global_timer")
    (global.set $fired (i64.add (global.get $fired) (i64.const 1))))
  (func (export "canister_query count")
    (i64.store (i32.const 0) (global.get $fired))
    (call $append (i32.const 0) (i32.const 8))
    (call $reply))
)`

// A global timer that falls due while its canister is stopped does not
// run (and the stopped canister is not looked at every tick for it: its
// deadline is the next storage charge); it runs once the canister starts.
func TestTimerDueWhileStoppedFiresOnStart(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{}
	clk.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	cfg := testConfig(t, "")
	cfg.Clock = clk.now
	f := openFixture(t, cfg)
	ctx := context.Background()

	id := f.install(mustWat(t, timerWat), nil)
	count := func() uint64 { return binary.LittleEndian.Uint64(f.query(id, "count", nil)) }
	f.update(id, "arm", nil)
	c := f.loaded(id)
	armed := metaOf(c).GlobalTimer
	if armed == 0 {
		t.Fatal("the timer was not set")
	}
	if err := f.node.SetStatus(ctx, id, user, "stopped"); err != nil {
		t.Fatal(err)
	}
	clk.advance(20 * time.Second) // the timer is due; the storage charge (a minute) is not
	now := uint64(clk.ns.Load())
	f.node.timerTick()
	due, in := f.node.deadlineOf(c)
	if !in || due <= now {
		t.Fatalf("a stopped canister's deadline: %d (in heap %v), want after now %d", due, in, now)
	}
	if g := metaOf(c).GlobalTimer; g != armed {
		t.Fatalf("the timer of a stopped canister was taken (it did not run: stopped): %d, was %d", g, armed)
	}

	if err := f.node.SetStatus(ctx, id, user, "running"); err != nil {
		t.Fatal(err)
	}
	if due, in := f.node.deadlineOf(c); !in || due != armed {
		t.Fatalf("a started canister's deadline: %d (in heap %v), want its timer %d", due, in, armed)
	}
	if got := count(); got > 1 {
		t.Fatalf("the timer ran %d times", got)
	}
	waitFor(t, 10*time.Second, func() bool { return count() == 1 })
	if g := metaOf(c).GlobalTimer; g != 0 {
		t.Fatalf("the timer is still set after it ran: %d", g)
	}
	// It ran once: deactivated, it is not due again.
	f.node.timerTick()
	f.update(id, "arm", nil) // a message after it: the queue has drained
	if got := count(); got != 1 {
		t.Fatalf("the timer ran %d times", got)
	}
}

// deadlineOf returns c's deadline in the heap (tests).
func (n *Node) deadlineOf(c *canister) (uint64, bool) {
	n.timers.mu.Lock()
	defer n.timers.mu.Unlock()
	if c.timerIdx < 0 {
		return 0, false
	}
	return n.timers.h[c.timerIdx].due, true
}

// The deadline heap gives back exactly the canisters due, earliest first,
// after deadlines were set, moved both ways and removed; storage charges
// fall on the grid.
func TestTimerScheduleOrder(t *testing.T) {
	t.Parallel()
	var q timerQueue
	mk := func() *canister { return &canister{timerIdx: -1} }
	cs := make([]*canister, 10)
	for i := range cs {
		cs[i] = mk()
	}
	// Deadlines 100, 90, …, 10 (inserted latest first).
	for i, c := range cs {
		q.set(c, uint64(100-10*i))
	}
	q.set(cs[0], 5)          // 100 → 5: earlier
	q.set(cs[9], 1000)       // 10 → 1000: later
	q.set(cs[5], noDeadline) // removed
	q.set(cs[5], noDeadline) // removing twice is nothing
	q.set(cs[3], 70)         // unchanged
	q.set(mk(), noDeadline)  // never in the heap
	if q.len() != 9 {
		t.Fatalf("%d in the heap, want 9", q.len())
	}
	got := q.popDue(60)
	want := []*canister{cs[0], cs[8], cs[7], cs[6], cs[4]} // 5, 20, 30, 40, 60
	if len(got) != len(want) {
		t.Fatalf("popDue(60): %d canisters, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("popDue(60)[%d] is not the %d-th earliest", i, i)
		}
		if got[i].timerIdx != -1 {
			t.Fatal("a popped canister still has a heap index")
		}
	}
	if len(q.popDue(60)) != 0 {
		t.Fatal("popped twice")
	}
	q.set(cs[0], 65) // back in, between the others
	order := []*canister{cs[0], cs[3], cs[2], cs[1], cs[9]}
	got = q.popDue(noDeadline - 1)
	for i := range order {
		if i >= len(got) || got[i] != order[i] {
			t.Fatalf("remaining order wrong at %d", i)
		}
	}
	if q.len() != 0 {
		t.Fatal("heap not empty")
	}

	for _, tc := range []struct{ in, want uint64 }{
		{0, 0}, {1, storageGrid}, {storageGrid, storageGrid}, {storageGrid + 1, 2 * storageGrid},
		{noDeadline - 5, noDeadline - 1},
	} {
		if got := gridUp(tc.in); got != tc.want {
			t.Fatalf("gridUp(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// BenchmarkTimerQueue is what the timer loop pays per canister unlock (a
// deadline moved in a heap of n canisters) and per tick with nothing due,
// at 100 and 10,000 loaded canisters. The loop it replaced took the read
// lock of every loaded canister on every tick.
func BenchmarkTimerQueue(b *testing.B) {
	for _, n := range []int{100, 10_000} {
		var q timerQueue
		cs := make([]*canister, n)
		for i := range cs {
			cs[i] = &canister{timerIdx: -1}
			q.set(cs[i], uint64(1_000_000+i*1000))
		}
		b.Run(fmt.Sprintf("unlock/%d", n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				c := cs[i%n]
				q.set(c, uint64(1_000_000+(i*7919)%(n*1000)))
			}
		})
		b.Run(fmt.Sprintf("tick-nothing-due/%d", n), func(b *testing.B) {
			for b.Loop() {
				if len(q.popDue(1)) != 0 {
					b.Fatal("due")
				}
			}
		})
	}
}
