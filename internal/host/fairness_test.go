package host

import (
	"context"
	"testing"
	"time"
)

// A canister busy with a long update must not hold back other canisters'
// timers: the node's timer loop never waits for one canister's execution.
func TestLongUpdateDoesNotDelayOtherTimers(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.node.Close()
	f.cfg.UpdateInstructions = 30_000_000_000 // spin runs for seconds
	f.open()
	busy := f.install(module(t, corpusDir, "compute"), noArgs)
	timer := f.install(module(t, corpusDir, "timer"), noArgs)

	spinDone := make(chan time.Time, 1)
	start := time.Now()
	go func() {
		_, err := f.node.Update(context.Background(), Message{Canister: busy, Method: "spin", Arg: noArgs, Caller: user})
		t.Logf("spin: %v", err)
		spinDone <- time.Now()
	}()
	time.Sleep(300 * time.Millisecond) // spin holds its canister now
	f.callText(timer, "once", "(1 : nat)")
	var fired time.Time
	for fired.IsZero() {
		select {
		case end := <-spinDone:
			t.Fatalf("the spin ended after %v before the other canister's 1 s timer fired", end.Sub(start).Round(time.Millisecond))
		case <-time.After(50 * time.Millisecond):
		}
		if f.queryText(timer, "count", "()") == "(1 : nat)" {
			fired = time.Now()
		}
	}
	t.Logf("timer fired %v after the spin started", fired.Sub(start).Round(time.Millisecond))
	end := <-spinDone
	t.Logf("spin ended after %v", end.Sub(start).Round(time.Millisecond))
}
