package host

import (
	"sync"
	"testing"
)

// The counter may rise from zero while others wait for zero, as queue
// drainers do while Quiesce waits: no panic, and every waiter returns once
// the count is zero again.
func TestBusyCounterReusedWhileWaiting(t *testing.T) {
	t.Parallel()
	var b busyCounter
	b.Wait() // zero from the start
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 1000 {
				b.Add(1)
				b.Done()
			}
		}()
		go func() {
			defer wg.Done()
			for range 1000 {
				b.Wait()
			}
		}()
	}
	wg.Wait()
	b.Add(2)
	select {
	case <-b.Idle():
		t.Fatal("idle with work in flight")
	default:
	}
	b.Done()
	b.Done()
	<-b.Idle()
}

// A Done without its Add leaves the counter at zero, not below it: later
// work is still waited for.
func TestBusyCounterNeverBelowZero(t *testing.T) {
	t.Parallel()
	var b busyCounter
	b.Done()
	<-b.Idle()
	b.Add(1)
	select {
	case <-b.Idle():
		t.Fatal("idle with work in flight after an unmatched Done")
	default:
	}
	b.Done()
	<-b.Idle()
}
