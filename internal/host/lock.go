package host

import (
	"container/list"
	"context"
	"log/slog"
	"runtime/debug"
	"sync"
)

// rwLock is a canister's readers-writer lock: sync.RWMutex's semantics
// (any number of readers or one writer; a waiting writer holds back the
// readers that come after it, so queries cannot starve updates), plus
// LockContext and RLockContext, a writer or a reader that gives up waiting
// when its context ends and leaves nothing behind. sync.RWMutex cannot
// take a waiter back, so giving up on it meant leaving a goroutine queued
// for the lock, one per caller that gave up, without bound.
//
// Waiters are served first come, first served; the zero value is unlocked.
type rwLock struct {
	mu      sync.Mutex
	readers int  // holding it shared
	writer  bool // held exclusively
	waiters list.List
}

// lockWaiter is a goroutine waiting for the lock; ready is closed when
// the lock is granted to it.
type lockWaiter struct {
	write bool
	ready chan struct{}
}

// free reports whether the lock can be taken in the mode asked (l.mu held).
func (l *rwLock) free(write bool) bool {
	return !l.writer && (!write || l.readers == 0)
}

func (l *rwLock) take(write bool) {
	if write {
		l.writer = true
	} else {
		l.readers++
	}
}

// acquire takes the lock, or gives up when ctx ends first.
func (l *rwLock) acquire(ctx context.Context, write bool) error {
	l.mu.Lock()
	if l.waiters.Len() == 0 && l.free(write) {
		l.take(write)
		l.mu.Unlock()
		return nil
	}
	w := &lockWaiter{write: write, ready: make(chan struct{})}
	e := l.waiters.PushBack(w)
	l.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-w.ready:
		// Granted as ctx ended: given up all the same, so hand it on.
		l.drop(write)
	default:
		l.waiters.Remove(e)
		// It may have held back those behind it.
		l.grant()
	}
	return ctx.Err()
}

// grant hands the lock to the waiters at the front that can have it
// (l.mu held).
func (l *rwLock) grant() {
	for e := l.waiters.Front(); e != nil; e = l.waiters.Front() {
		w := e.Value.(*lockWaiter)
		if !l.free(w.write) {
			return
		}
		l.take(w.write)
		l.waiters.Remove(e)
		close(w.ready)
	}
}

// drop releases a hold in the given mode (l.mu held). Releasing a hold
// nobody has is a bug of the host; it is logged and changes nothing (the
// lock still admits no second writer), rather than taking down the node and
// every canister on it.
func (l *rwLock) drop(write bool) {
	if write {
		if !l.writer {
			slog.Error("host: unlock of an unlocked canister lock (ignored)", "stack", string(debug.Stack()))
			return
		}
		l.writer = false
	} else {
		if l.readers <= 0 {
			slog.Error("host: read unlock of a canister lock not read-locked (ignored)", "stack", string(debug.Stack()))
			return
		}
		l.readers--
	}
	l.grant()
}

// Lock takes the lock exclusively.
func (l *rwLock) Lock() { _ = l.acquire(context.Background(), true) }

// LockContext takes the lock exclusively, or returns ctx's error when ctx
// ends first, holding nothing and leaving nothing waiting.
func (l *rwLock) LockContext(ctx context.Context) error { return l.acquire(ctx, true) }

// TryLock takes the lock exclusively if nobody holds it or waits for it.
func (l *rwLock) TryLock() bool { return l.try(true) }

// Unlock releases an exclusive hold.
func (l *rwLock) Unlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drop(true)
}

// RLock takes the lock shared.
func (l *rwLock) RLock() { _ = l.acquire(context.Background(), false) }

// RLockContext takes the lock shared, or returns ctx's error when ctx ends
// first, holding nothing and leaving nothing waiting: a query or a status
// read whose caller went away does not wait out a long update.
func (l *rwLock) RLockContext(ctx context.Context) error { return l.acquire(ctx, false) }

// TryRLock takes the lock shared if no writer holds it or waits for it.
func (l *rwLock) TryRLock() bool { return l.try(false) }

// RUnlock releases a shared hold.
func (l *rwLock) RUnlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drop(false)
}

func (l *rwLock) try(write bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.waiters.Len() > 0 || !l.free(write) {
		return false
	}
	l.take(write)
	return true
}
