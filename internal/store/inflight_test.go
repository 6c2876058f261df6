package store

import (
	"errors"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
)

// inFlight returns the store's records, keyed by caller and call.
func inFlight(t *testing.T, s *Store) map[string]cycles.Amount {
	t.Helper()
	out := map[string]cycles.Amount{}
	err := s.CyclesInFlight(func(r CallCycles) error {
		out[string(r.Caller)+"/"+string(inFlightKey(r.Call))] = r.Amount
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func key(caller []byte, call uint64) string { return string(caller) + "/" + string(inFlightKey(call)) }

// conserved checks the conservation count of the committed state.
func conserved(t *testing.T, s *Store) CycleTotals {
	t.Helper()
	tot, err := s.CycleTotals()
	if err != nil {
		t.Fatal(err)
	}
	if tot.Held() != tot.Minted {
		t.Fatalf("committed state holds %s (%+v), minted %s", tot.Held(), tot, tot.Minted)
	}
	return tot
}

// A call's cycles move from the caller's balance to its record in flight
// in the caller's commit; the callee's commit that accepts part of them
// lowers the record in the same transaction as its balance rises, and the
// caller's commit that takes the refund removes it. Every committed state
// conserves cycles, and a record never comes back once delivered: not for
// a caller that is gone, nor for a call already settled.
func TestCyclesInFlightMoveWithTheirCommits(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b := []byte("caller"), []byte("callee")
	ma := Meta{ID: "a", Balance: cycles.New(1000), CyclesMinted: cycles.New(1000)}
	mb := Meta{ID: "b", Balance: cycles.New(500), CyclesMinted: cycles.New(500)}
	if err := s.Commit(Change{ID: a, Meta: ma}, Change{ID: b, Meta: mb}); err != nil {
		t.Fatal(err)
	}
	conserved(t, s)

	// a sends 300 with call 7 and 100 with call 8.
	ma.Balance = cycles.New(600)
	if err := s.Commit(Change{ID: a, Meta: ma, Sent: []CallCycles{{Caller: a, Call: 7, Amount: cycles.New(300)}, {Caller: a, Call: 8, Amount: cycles.New(100)}}}); err != nil {
		t.Fatal(err)
	}
	if tot := conserved(t, s); tot.InFlight != cycles.New(400) {
		t.Fatalf("in flight %s, want 400", tot.InFlight)
	}
	// b accepts 120 of call 7.
	mb.Balance = cycles.New(620)
	if err := s.Commit(Change{ID: b, Meta: mb, Left: []CallCycles{{Caller: a, Call: 7, Amount: cycles.New(180)}}}); err != nil {
		t.Fatal(err)
	}
	conserved(t, s)
	if got := inFlight(t, s); got[key(a, 7)] != cycles.New(180) || got[key(a, 8)] != cycles.New(100) {
		t.Fatalf("records %v", got)
	}
	// Leaving more than is in flight is a bug of the caller: refused,
	// and nothing of that commit happens.
	mb2 := mb
	mb2.Balance = cycles.New(0)
	if err := s.Commit(Change{ID: b, Meta: mb2, Left: []CallCycles{{Caller: a, Call: 7, Amount: cycles.New(181)}}}); err == nil {
		t.Fatal("a commit leaving more in flight than recorded was accepted")
	}
	conserved(t, s)
	// A commit may record only its own canister's calls.
	if err := s.Commit(Change{ID: b, Meta: mb, Sent: []CallCycles{{Caller: a, Call: 9, Amount: cycles.New(1)}}}); err == nil {
		t.Fatal("a commit recorded cycles sent by another canister")
	}
	// a takes the refund of call 7.
	ma.Balance = ma.Balance.SaturatingAdd(cycles.New(180))
	if err := s.Commit(Change{ID: a, Meta: ma, Left: []CallCycles{{Caller: a, Call: 7}}}); err != nil {
		t.Fatal(err)
	}
	conserved(t, s)
	// A late delivery of a settled call, or one to a caller that is gone,
	// records nothing.
	if err := s.Commit(Change{ID: b, Meta: mb, Left: []CallCycles{{Caller: a, Call: 7, Amount: cycles.New(5)}, {Caller: []byte("gone"), Call: 1, Amount: cycles.New(5)}}}); err != nil {
		t.Fatal(err)
	}
	if got := inFlight(t, s); len(got) != 1 || got[key(a, 8)] != cycles.New(100) {
		t.Fatalf("records %v, want only a's call 8", got)
	}
	if _, err := s.Load([]byte("gone")); err != ErrNotFound {
		t.Fatalf("a delivery to a missing caller created it: %v", err)
	}
	conserved(t, s)
}

// After a restart the calls are gone: ReturnCyclesInFlight gives what is
// recorded back to the callers' balances in one transaction, and does
// not write at all when nothing is recorded.
func TestReturnCyclesInFlight(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	a, b := []byte("caller"), []byte("other")
	ma := Meta{ID: "a", Balance: cycles.New(600), CyclesMinted: cycles.New(1000)}
	mb := Meta{ID: "b", Balance: cycles.New(90), CyclesMinted: cycles.New(100), CyclesReserved: cycles.New(10)}
	err = s.Commit(Change{ID: a, Meta: ma, Sent: []CallCycles{{Caller: a, Call: 1, Amount: cycles.New(300)}, {Caller: a, Call: 2, Amount: cycles.New(100)}}},
		Change{ID: b, Meta: mb})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	if s, err = Open(dir, time.Second); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	back, err := s.ReturnCyclesInFlight()
	if err != nil || back != cycles.New(400) {
		t.Fatalf("returned %s, %v; want 400", back, err)
	}
	if tot := conserved(t, s); !tot.InFlight.IsZero() {
		t.Fatalf("%s still in flight", tot.InFlight)
	}
	c, err := s.Load(a)
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
	if c.Meta.Balance != cycles.New(1000) {
		t.Fatalf("caller's balance %s, want 1000", c.Meta.Balance)
	}
	syncs := s.SyncStats().Syncs
	if back, err := s.ReturnCyclesInFlight(); err != nil || !back.IsZero() {
		t.Fatalf("second return: %s, %v", back, err)
	}
	if s.SyncStats().Syncs != syncs {
		t.Fatal("returning nothing wrote a transaction")
	}
	// A deleted caller leaves its records in its tombstone (deleted.go):
	// the callee may still accept them. What its response would have
	// refunded burns when the response is dropped.
	c.Meta.Balance = cycles.New(990)
	if err := s.Commit(Change{ID: a, Meta: c.Meta, Sent: []CallCycles{{Caller: a, Call: 3, Amount: cycles.New(10)}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(Change{ID: a, Delete: true}); err != nil {
		t.Fatal(err)
	}
	if got := inFlight(t, s); len(got) != 1 || got[key(a, 3)] != cycles.New(10) {
		t.Fatalf("records of a deleted caller: %v", got)
	}
	conserved(t, s)
	mb.Balance = cycles.New(94)
	if err := s.Commit(Change{ID: b, Meta: mb,
		Left: []CallCycles{{Caller: a, Call: 3, Amount: cycles.New(6)}}}); err != nil {
		t.Fatal(err)
	}
	if got := inFlight(t, s); got[key(a, 3)] != cycles.New(6) {
		t.Fatalf("records of a deleted caller after a delivery: %v", got)
	}
	conserved(t, s)
	if err := s.BurnDropped(CallCycles{Caller: a, Call: 3}); err != nil {
		t.Fatal(err)
	}
	if got := inFlight(t, s); len(got) != 0 {
		t.Fatalf("records after the dropped response: %v", got)
	}
	if tot := conserved(t, s); tot.Minted != cycles.New(1100) {
		t.Fatalf("minted %s after the deletion, want 1100", tot.Minted)
	}
	if err := s.Commit(Change{ID: a, Create: true, Meta: Meta{ID: "a"}}); !errors.Is(err, ErrDeleted) {
		t.Fatalf("creation under a deleted canister's id: %v", err)
	}
}

// A store reopened with a deleted caller's record still in flight (a crash
// before the response that would have found nobody) burns it: the refund
// has nobody to go to, and no later commit would.
func TestReopenBurnsDeletedCallersCyclesInFlight(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	defer func() { s.Close() }()
	a, b := []byte("caller"), []byte("callee")
	ma := Meta{ID: "a", Balance: cycles.New(700), CyclesMinted: cycles.New(1000), CyclesBurned: cycles.New(100)}
	mb := Meta{ID: "b", Balance: cycles.New(50), CyclesMinted: cycles.New(50)}
	err := s.Commit(Change{ID: a, Meta: ma, Sent: []CallCycles{{Caller: a, Call: 1, Amount: cycles.New(200)}}}, Change{ID: b, Meta: mb})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(Change{ID: a, Delete: true}); err != nil {
		t.Fatal(err)
	}
	if d, err := s.Deleted(); err != nil || d != (DeletedCycles{Minted: cycles.New(1000), Burned: cycles.New(800), InFlight: cycles.New(200)}) {
		t.Fatalf("tombstone %+v, %v", d, err)
	}
	conserved(t, s)
	s.Close()
	s = openTest(t, dir)
	if back, err := s.ReturnCyclesInFlight(); err != nil || !back.IsZero() {
		t.Fatalf("returned %s to live callers, %v", back, err)
	}
	if d, err := s.Deleted(); err != nil || d != (DeletedCycles{Minted: cycles.New(1000), Burned: cycles.New(1000)}) {
		t.Fatalf("tombstone after reopening %+v, %v", d, err)
	}
	if tot := conserved(t, s); !tot.InFlight.IsZero() || tot.Balance != cycles.New(50) {
		t.Fatalf("totals after reopening %+v", tot)
	}
}

// Cycles coming back to a caller whose balance they would take past
// 2^128-1 are burned, what does not fit, and the store opens: before, the
// checked addition failed, ReturnCyclesInFlight with it, and so did every
// later open of the node.
func TestReturnCyclesInFlightPastMaxBurns(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	a := []byte("caller")
	start := cycles.Max.SaturatingSub(cycles.New(250))
	ma := Meta{ID: "a", Balance: start, CyclesBurned: cycles.New(7)}
	if err := s.Commit(Change{ID: a, Meta: ma, Sent: []CallCycles{{Caller: a, Call: 1, Amount: cycles.New(200)}, {Caller: a, Call: 2, Amount: cycles.New(100)}}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(dir, time.Second); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	back, err := s.ReturnCyclesInFlight()
	if err != nil || back != cycles.New(300) {
		t.Fatalf("returned %s, %v; want 300", back, err)
	}
	c, err := s.Load(a)
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
	if c.Meta.Balance != cycles.Max || c.Meta.CyclesBurned != cycles.New(7+50) {
		t.Fatalf("balance %s, burned %s; want the maximum and 57 (50 did not fit)", c.Meta.Balance, c.Meta.CyclesBurned)
	}
	if got := inFlight(t, s); len(got) != 0 {
		t.Fatalf("left in flight: %v", got)
	}
}
