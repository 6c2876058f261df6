package exec

import (
	"sync"
	"testing"
	"time"
)

// TestModuleLockKeptWhileWaited is the race the refcount closes: A holds a
// module's lock, B waits for it, A releases. The lock must stay in the map
// while B holds it, or a third caller would take a fresh lock and run beside B.
func TestModuleLockKeptWhileWaited(t *testing.T) {
	x := &Sandboxed{compile: map[[32]byte]*moduleLock{}}
	h := [32]byte{1}
	releaseA := x.lockModule(h)

	acquiredB := make(chan func())
	go func() { acquiredB <- x.lockModule(h) }()
	waiters := func() int {
		x.mu.Lock()
		defer x.mu.Unlock()
		if l := x.compile[h]; l != nil {
			return l.refs
		}
		return 0
	}
	for waiters() != 2 { // B registered itself and waits on A's lock
		time.Sleep(time.Millisecond)
	}
	releaseA()
	releaseB := <-acquiredB
	if unlock, ok := x.tryLockModule(h); ok {
		unlock()
		t.Fatal("a third caller took the module's lock while B held it")
	}

	// Many callers: never two inside at once, and the map empties.
	releaseB()
	var mu sync.Mutex
	inside, most := 0, 0
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				unlock := x.lockModule(h)
				mu.Lock()
				inside++
				most = max(most, inside)
				mu.Unlock()
				mu.Lock()
				inside--
				mu.Unlock()
				unlock()
			}
		}()
	}
	wg.Wait()
	if most != 1 {
		t.Fatalf("%d callers held one module's lock at once", most)
	}
	if n := len(x.compile); n != 0 {
		t.Fatalf("%d module locks left after every caller released", n)
	}
}
