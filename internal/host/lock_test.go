package host

import (
	"bytes"
	"context"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
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
