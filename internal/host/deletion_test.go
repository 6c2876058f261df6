package host

import (
	"context"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// deletedConserved checks the node's cycles after a deletion: conserved in
// the committed state and in what the canisters report, nothing left in
// flight, and the same again after the node reopens its store.
func (f *fixture) deletedConserved(w *conservationWatch) store.DeletedCycles {
	f.t.Helper()
	f.quiesce()
	if rs := f.records(); len(rs) != 0 {
		f.t.Fatalf("left in flight: %+v", rs)
	}
	f.checkConservation()
	w.check(f.t)
	gone, err := f.node.store.Deleted()
	if err != nil {
		f.t.Fatal(err)
	}
	f.restart()
	w.st.Store(f.node.store)
	f.checkConservation()
	again, err := f.node.store.Deleted()
	if err != nil || again != gone {
		f.t.Fatalf("deleted canisters' cycles %+v after reopening, were %+v (%v)", again, gone, err)
	}
	return gone
}

// A canister that received cycles from another (minted there) is deleted:
// its balance is burned, not lost to the count, and what it minted stays
// counted though it is gone. The deleted canister's transferred cycles
// were the ones that broke the count before deletions left a tombstone.
func TestDeletionBurnsTransferredCycles(t *testing.T) {
	f, w := watchedFixture(t)
	wasm := mustWat(t, flightWat)
	a, b := f.install(wasm, nil), f.install(wasm, nil)
	f.update(a, "forward", flightArg(b, "take", flightCycles, false, nil))
	f.update(b, "forward", flightArg(a, "take_half", flightCycles/4, false, nil))
	f.quiesce()
	held := f.heldInStore(b) // what b burned and holds
	minted := f.storedMeta(b).CyclesMinted
	f.checkConservation()
	f.stopAndDelete(b)
	gone := f.deletedConserved(w)
	if gone.Burned != held || gone.Minted != minted || !gone.InFlight.IsZero() {
		t.Fatalf("deleted: %+v; b had burned and held %s, minted %s", gone, held, minted)
	}
	// The deleted id is not given out again: a response to one of its
	// calls must not reach another canister.
	_, err := f.node.Create(context.Background(), CreateOptions{ID: &b, Controllers: []principal.Principal{user}})
	if err == nil || !strings.Contains(err.Error(), "was deleted") {
		t.Fatalf("a canister created under a deleted canister's id: %v", err)
	}
	f.checkConservation()
}

// Calls with cycles to a canister that is deleted while they wait in its
// queue, and to its id once it is gone: the cycles come back to the
// callers, and the count holds across the deletion and a restart.
func TestDeletionWithCallsToTheCanisterInFlight(t *testing.T) {
	f, w := watchedFixture(t)
	ctx := context.Background()
	wasm := mustWat(t, flightWat)
	a, b := f.install(wasm, nil), f.install(wasm, nil)
	f.update(a, "forward", flightArg(b, "take", flightCycles, false, nil))
	f.quiesce()
	if err := f.node.SetStatus(ctx, b, user, "stopped"); err != nil {
		t.Fatal(err)
	}
	cb := f.loaded(b)
	heldA := f.heldInStore(a)
	cb.mu.Lock() // b busy: the calls wait in its queue
	for range 3 {
		f.update(a, "forward", flightArg(b, "take", flightCycles, false, nil))
	}
	done := make(chan error, 1)
	go func() { done <- f.node.Delete(ctx, b, user) }()
	cb.mu.Unlock() // the queue or the deletion goes first: either way the calls find nobody
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	f.update(a, "forward", flightArg(b, "take", flightCycles, false, nil))
	f.quiesce()
	if got := f.heldInStore(a); got != heldA {
		t.Fatalf("the caller holds %s after its calls to a deleted canister, held %s", got, heldA)
	}
	f.deletedConserved(w)
}

// A caller deleted while its call, with cycles, is in flight (a state the
// management canister does not reach, as a stopped canister has no calls
// awaiting responses; dropCalls is there for it all the same): the callee
// still accepts part of the cycles, which must lower the caller's record
// in its tombstone, and the refund the response brings to nobody is
// burned at once.
func TestDeletionOfACallerWithACallInFlight(t *testing.T) {
	f, w := watchedFixture(t)
	ctx := context.Background()
	wasm := mustWat(t, flightWat)
	a, b := f.install(wasm, nil), f.install(wasm, nil)
	ca, cb := f.loaded(a), f.loaded(b)
	heldB := f.heldInStore(b)
	cb.mu.Lock() // the callee is busy: the call waits
	f.update(a, "forward", flightArg(b, "take_half", flightCycles, false, nil))
	ca.mu.Lock()
	ca.meta.Status = "stopped"
	ca.mu.Unlock()
	if err := f.node.Delete(ctx, a, user); err != nil {
		cb.mu.Unlock()
		t.Fatal(err)
	}
	if rs := f.records(); len(rs) != 1 || rs[0].Amount != cycles.New(flightCycles) {
		cb.mu.Unlock()
		t.Fatalf("records after the caller's deletion: %+v", rs)
	}
	f.storeConserved()
	cb.mu.Unlock()
	gone := f.deletedConserved(w)
	if got := f.heldInStore(b).SaturatingSub(heldB); got != cycles.New(flightCycles/2) {
		t.Fatalf("the callee gained %s, want %d", got, flightCycles/2)
	}
	if gone.Burned.Cmp(cycles.New(flightCycles/2)) < 0 {
		t.Fatalf("the refund to the deleted caller was not burned: %+v", gone)
	}
}
