package host

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

func encodeText(t testing.TB, text string) []byte {
	t.Helper()
	a, err := candid.ParseArgs(text)
	if err != nil {
		t.Fatalf("parse %s: %v", text, err)
	}
	b, err := candid.EncodeArgs(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeText(t testing.TB, b []byte) string {
	t.Helper()
	a, err := candid.Decode(b)
	if err != nil {
		t.Fatalf("decode %x: %v", b, err)
	}
	return a.String()
}

// callText makes an update call with Candid text and returns the reply as text.
func (f *fixture) callText(id principal.Principal, method, arg string) string {
	f.t.Helper()
	return decodeText(f.t, f.update(id, method, encodeText(f.t, arg)))
}

func (f *fixture) queryText(id principal.Principal, method, arg string) string {
	f.t.Helper()
	return decodeText(f.t, f.query(id, method, encodeText(f.t, arg)))
}

// checkConservation asserts that no cycles were created or lost: the sum of
// balances, burned cycles and cycles in flight (store/inflight.go) equals
// what was minted, deleted canisters included (their tombstones,
// store/deleted.go: what they minted, and burned, and their calls still
// carry). It also checks the store's own count of the committed state.
func (f *fixture) checkConservation() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.node.Quiesce(ctx); err != nil {
		f.t.Fatal(err)
	}
	ids, err := f.node.List()
	if err != nil {
		f.t.Fatal(err)
	}
	var have, minted cycles.Amount
	for _, id := range ids {
		st, err := f.node.Status(ctx, id)
		if err != nil {
			f.t.Fatal(err)
		}
		have = have.SaturatingAdd(st.Balance).SaturatingAdd(st.CyclesBurned)
		minted = minted.SaturatingAdd(st.CyclesMinted)
	}
	err = f.node.store.CyclesInFlight(func(r store.CallCycles) error {
		have = have.SaturatingAdd(r.Amount)
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	gone, err := f.node.store.Deleted()
	if err != nil {
		f.t.Fatal(err)
	}
	have, minted = have.SaturatingAdd(gone.Burned), minted.SaturatingAdd(gone.Minted)
	if have != minted {
		f.t.Fatalf("cycles not conserved: balances+burned+in flight = %s, minted = %s (deleted canisters: %+v)", have, minted, gone)
	}
	tot, err := f.node.store.CycleTotals()
	if err != nil {
		f.t.Fatal(err)
	}
	if tot.Held() != tot.Minted || tot.Minted != minted {
		f.t.Fatalf("the committed state holds %s (%+v), minted %s; the canisters' status says minted %s", tot.Held(), tot, tot.Minted, minted)
	}
}

func TestRelay(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	counters := make([]principal.Principal, 3)
	for i := range counters {
		counters[i] = f.install(module(t, corpusDir, "counter"), noArgs)
	}
	relay := f.install(module(t, corpusDir, "relay"), noArgs)
	if got := f.callText(relay, "add", fmt.Sprintf("(principal %q, 5 : nat)", counters[0])); got != "(5 : nat)" {
		t.Fatalf("relay.add: %s", got)
	}
	if got := f.queryText(counters[0], "get", "()"); got != "(5 : nat)" {
		t.Fatalf("counter after relay.add: %s", got)
	}
	vec := fmt.Sprintf("(vec { principal %q; principal %q; principal %q }, 2 : nat)", counters[0], counters[1], counters[2])
	if got := f.callText(relay, "fanout", vec); got != "(11 : nat)" { // 7 + 2 + 2
		t.Fatalf("relay.fanout: %s", got)
	}
	f.checkConservation()

	// A stopped callee and a deleted one: the reject reaches the caller's code.
	ctx := context.Background()
	if err := f.node.SetStatus(ctx, counters[1], user, "stopped"); err != nil {
		t.Fatal(err)
	}
	got := f.callText(relay, "tryGet", fmt.Sprintf("(principal %q)", counters[1]))
	if !strings.Contains(got, "rejected #canister_error") || !strings.Contains(got, "is stopped") {
		t.Fatalf("tryGet stopped: %s", got)
	}
	if err := f.node.Delete(ctx, counters[1], user); err != nil {
		t.Fatal(err)
	}
	got = f.callText(relay, "tryGet", fmt.Sprintf("(principal %q)", counters[1]))
	if !strings.Contains(got, "rejected #destination_invalid") || !strings.Contains(got, "not found") {
		t.Fatalf("tryGet deleted: %s", got)
	}
	got = f.callText(relay, "tryGet", fmt.Sprintf("(principal %q)", counters[2]))
	if got != `("ok 2")` {
		t.Fatalf("tryGet running: %s", got)
	}
	// A missing method on the callee.
	got = f.callText(relay, "tryGet", fmt.Sprintf("(principal %q)", relay))
	if !strings.Contains(got, "rejected") || !strings.Contains(got, "no update method 'get'") {
		t.Fatalf("tryGet on a canister without get: %s", got)
	}
	// A deletion no longer has to be kept out of the count.
	f.checkConservation()
}

func TestWallet(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wallet := f.install(module(t, corpusDir, "wallet"), noArgs)
	relay := f.install(module(t, corpusDir, "relay"), noArgs)
	before, _ := f.node.Status(context.Background(), relay)
	got := f.callText(relay, "sendCycles", fmt.Sprintf("(principal %q, 1_000_000 : nat)", wallet))
	if got != "(500_000 : nat)" && got != "(500000 : nat)" {
		t.Fatalf("sendCycles: %s", got)
	}
	if got := f.queryText(wallet, "total", "()"); got != "(500_000 : nat)" && got != "(500000 : nat)" {
		t.Fatalf("wallet.total: %s", got)
	}
	after, _ := f.node.Status(context.Background(), relay)
	// The relay lost exactly the accepted half plus its execution fees.
	spent := before.Balance.SaturatingSub(after.Balance)
	fees := after.CyclesBurned.SaturatingSub(before.CyclesBurned)
	if moved := spent.SaturatingSub(fees); moved != cycles.New(500_000) {
		t.Fatalf("relay paid %s besides fees, want 500000", moved)
	}
	f.checkConservation()
}

func TestTimer(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(module(t, corpusDir, "timer"), noArgs)
	f.callText(id, "once", "(1 : nat)")
	waitFor(t, 10*time.Second, func() bool { return f.queryText(id, "count", "()") == "(1 : nat)" })
	rec := f.callText(id, "startRecurring", "(1 : nat)")
	waitFor(t, 15*time.Second, func() bool { return f.queryText(id, "count", "()") == "(3 : nat)" })
	timerID := strings.TrimSuffix(strings.TrimPrefix(rec, "("), " : nat)")
	f.callText(id, "cancel", "("+timerID+" : nat)")
	time.Sleep(200 * time.Millisecond)
	n := f.queryText(id, "count", "()")
	time.Sleep(2500 * time.Millisecond)
	if again := f.queryText(id, "count", "()"); again != n {
		t.Fatalf("timer fired after cancel: %s then %s", n, again)
	}
	f.checkConservation()
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in time")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRandom(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(module(t, corpusDir, "random"), noArgs)
	if got := f.callText(id, "bytes", "()"); got != "(32 : nat)" {
		t.Fatalf("random.bytes: %s", got)
	}
	f.checkConservation()
}

func TestCallToMissingCanisterFromUser(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, err := f.node.Update(context.Background(), Message{Canister: principal.CanisterID(77), Method: "x", Arg: noArgs, Caller: user})
	var r *Reject
	if !errors.As(err, &r) || r.Code != DestinationInvalid {
		t.Fatalf("got %v", err)
	}
}
