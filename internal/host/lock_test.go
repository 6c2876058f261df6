package host

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// waiting reports how many wait for l.
func (l *rwLock) waiting() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiters.Len()
}

// lockWithin used to leave a goroutine queued for the lock (and one more
// to release it) whenever its caller gave up: callers giving up on a busy
// canister, as management calls about it do at their deadline, grew the
// goroutines without bound. Now giving up leaves nothing behind, and the
// lock works on as before.
func TestLockWithinGivingUpLeavesNothing(t *testing.T) {
	f := newFixture(t)
	id := f.install(mustWat(t, twoWordsWat), nil)
	c := f.loaded(id)
	c.mu.Lock() // busy

	before := runtime.NumGoroutine()
	const callers = 200
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() { errs <- f.node.lockWithin(ctx, c) })
	}
	for c.mu.waiting() < callers {
		runtime.Gosched()
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err == nil {
			t.Fatal("lockWithin took a lock held by the test")
		}
	}
	// What the node runs in the background comes and goes; 200 callers
	// used to leave 400 goroutines.
	if after := runtime.NumGoroutine(); after > before+callers/10 {
		t.Fatalf("%d goroutines after %d callers gave up, %d before", after, callers, before)
	}
	if n := c.mu.waiting(); n != 0 {
		t.Fatalf("%d waiters left", n)
	}
	c.mu.Unlock()
	if !c.mu.TryLock() {
		t.Fatal("the lock is held after its holder and every waiter left")
	}
	c.mu.Unlock()
	f.update(id, "bump", nil) // the canister works on
}

// rwLock keeps sync.RWMutex's rules: readers share it, a writer has it
// alone, and a waiting writer holds back readers that come after it (so
// queries cannot starve updates); a writer that gives up lets those
// behind it in.
func TestRWLock(t *testing.T) {
	var l rwLock
	l.RLock()
	if !l.TryRLock() {
		t.Fatal("a second reader was refused")
	}
	if l.TryLock() {
		t.Fatal("a writer got a read-locked lock")
	}
	wrote := make(chan struct{})
	go func() {
		l.Lock()
		close(wrote)
	}()
	for l.waiting() != 1 {
		runtime.Gosched()
	}
	if l.TryRLock() {
		t.Fatal("a reader overtook a waiting writer")
	}
	read := make(chan struct{})
	go func() {
		l.RLock()
		close(read)
	}()
	for l.waiting() != 2 {
		runtime.Gosched()
	}
	l.RUnlock()
	l.RUnlock()
	<-wrote
	select {
	case <-read:
		t.Fatal("a reader got the lock a writer holds")
	default:
	}
	l.Unlock()
	<-read
	l.RUnlock()

	// A writer giving up at the front lets the readers behind it in.
	l.RLock()
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error)
	go func() { gaveUp <- l.LockContext(ctx) }()
	for l.waiting() != 1 {
		runtime.Gosched()
	}
	read = make(chan struct{})
	go func() {
		l.RLock()
		close(read)
	}()
	for l.waiting() != 2 {
		runtime.Gosched()
	}
	cancel()
	if err := <-gaveUp; err == nil {
		t.Fatal("LockContext took a read-locked lock")
	}
	select {
	case <-read:
	case <-time.After(time.Minute):
		t.Fatal("the reader behind a writer that gave up still waits")
	}
	l.RUnlock()
	l.RUnlock()
	if !l.TryLock() {
		t.Fatal("the lock is held after everyone left")
	}
	l.Unlock()
}

// A release of a hold nobody has (a host bug) is ignored: it neither takes
// the node down nor lets a second writer in.
func TestRWLockStrayUnlockChangesNothing(t *testing.T) {
	// Not t.Parallel: it swaps the default logger to read what is logged.
	var logged bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logged, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })
	var l rwLock
	if !l.TryLock() {
		t.Fatal("a fresh lock is not free")
	}
	l.Unlock()
	l.Unlock()  // stray
	l.RUnlock() // stray
	l.Lock()
	if l.TryLock() || l.TryRLock() {
		t.Fatal("a stray unlock let a second holder in")
	}
	l.Unlock()
	if !l.TryRLock() {
		t.Fatal("the lock is not free after its only hold was released")
	}
	l.RUnlock()
	if n := strings.Count(logged.String(), "level=ERROR"); n != 2 {
		t.Fatalf("%d errors logged for two stray unlocks:\n%s", n, logged.String())
	}
}

// awaitWaiters waits until n wait for c's lock, failing if one of the
// callers whose answers come on done answered first (it did not wait).
func awaitWaiters(t *testing.T, c *canister, n int, done <-chan error) {
	t.Helper()
	for c.mu.waiting() < n {
		select {
		case err := <-done:
			t.Fatalf("answered before waiting for the lock: %v", err)
		default:
			runtime.Gosched()
		}
	}
}

// heldUpdate starts an update on x (lockWat's u) whose execution the gate
// holds, the canister write-locked, as a long update does until its
// watchdog; the update's answer comes on the channel returned.
func heldUpdate(t *testing.T, f *fixture, x principal.Principal, held *gate) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := f.node.Update(context.Background(), Message{Canister: x, Method: "u", Caller: user})
		done <- err
	}()
	held.await(t, "the update")
	return done
}

// A query waiting for a canister's lock while an update runs gives up when
// its context ends (its client went away, its deadline passed), leaving
// nothing queued: it used to wait out the update, up to its watchdog,
// holding the client's request slot. Status reads give up the same way.
func TestQueryGivesUpWaitingForAnUpdate(t *testing.T) {
	f := newFixture(t)
	x := f.install(mustWat(t, lockWat), nil)
	held := newGate()
	defer held.open()
	f.node.exec = &gatedExec{Executor: f.node.exec, hold: func(id string, in *sysapi.Input) *gate {
		if id == x.String() && in.Context == sysapi.CtxUpdate {
			return held
		}
		return nil
	}}
	updated := heldUpdate(t, f, x, held)
	c := f.loaded(x)

	for _, read := range []struct {
		name string
		fn   func(ctx context.Context) error
		want func(err error) bool
	}{
		{"query", func(ctx context.Context) error {
			_, err := f.node.Query(ctx, Message{Canister: x, Method: "get", Caller: user})
			return err
		}, func(err error) bool { return errors.Is(err, context.Canceled) }},
		{"status", func(ctx context.Context) error {
			_, err := f.node.Status(ctx, x)
			return err
		}, func(err error) bool {
			var r *Reject
			return errors.As(err, &r) && r.Code == SysTransient && strings.Contains(r.Message, "is busy")
		}},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		answered := make(chan error, 1)
		go func() { answered <- read.fn(ctx) }()
		awaitWaiters(t, c, 1, answered)
		cancel()
		select {
		case err := <-answered:
			if !read.want(err) {
				t.Fatalf("%s gave up waiting with %v", read.name, err)
			}
		case <-time.After(time.Minute):
			t.Fatalf("the %s still waits for the update's lock after its context ended", read.name)
		}
		if !writerWaits(c) {
			t.Fatalf("the update let go of the lock before the %s answered: the test proves nothing", read.name)
		}
		if n := c.mu.waiting(); n != 0 {
			t.Fatalf("the %s left %d waiters", read.name, n)
		}
	}
	held.open()
	if err := <-updated; err != nil {
		t.Fatal(err)
	}
	f.query(x, "get", nil)
}

// A composite query's callback waits for its canister's lock again (the
// lock is not held between a call's executions): when an update holds it,
// the callback gives up with the query's context too.
func TestCompositeCallbackGivesUpWaitingForAnUpdate(t *testing.T) {
	f := newFixture(t)
	x := f.install(mustWat(t, lockWat), nil)
	v := f.install(mustWat(t, lockWat), nil)
	calleeAt, updateAt := newGate(), newGate()
	defer calleeAt.open()
	defer updateAt.open()
	f.node.exec = &gatedExec{Executor: f.node.exec, hold: func(id string, in *sysapi.Input) *gate {
		switch {
		case id == v.String() && in.Context == sysapi.CtxNonReplicatedQuery:
			return calleeAt // x's call to v.get runs, x's lock free
		case id == x.String() && in.Context == sysapi.CtxUpdate:
			return updateAt
		}
		return nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	answered := make(chan error, 1)
	go func() {
		_, err := f.node.Query(ctx, Message{Canister: x, Method: "q3", Arg: lockArg(v), Caller: user})
		answered <- err
	}()
	calleeAt.await(t, "x's call to v")
	updated := heldUpdate(t, f, x, updateAt)
	c := f.loaded(x)
	calleeAt.open() // v answers; x's callback waits for the update
	awaitWaiters(t, c, 1, answered)
	cancel()
	select {
	case err := <-answered:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the composite query gave up waiting with %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the composite query's callback still waits for the update's lock after its context ended")
	}
	if !writerWaits(c) {
		t.Fatal("the update let go of the lock before the query answered: the test proves nothing")
	}
	if n := c.mu.waiting(); n != 0 {
		t.Fatalf("the callback left %d waiters", n)
	}
	updateAt.open()
	if err := <-updated; err != nil {
		t.Fatal(err)
	}
}
