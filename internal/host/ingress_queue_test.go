package host

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

// A canister busy with a long execution gets many concurrent ingress
// messages: Messages.IngressQueue of them wait, every other one is refused
// at once (while the canister is still busy) with SYS_TRANSIENT and the
// IC-like message, the host holds no more than the bound, a neighbour keeps
// answering, and once the canister is free the waiting ones run and new
// ones are taken again. The busy execution is the test holding the
// canister's lock, as an execution does, so the count is exact whatever
// the machine's speed.
func TestIngressQueueBounded(t *testing.T) {
	const limit, senders, argBytes = 20, 400, 256 << 10
	for _, iso := range []string{"inprocess", "sandbox"} {
		t.Run(iso, func(t *testing.T) {
			f := queueFixture(t, iso, func(c *Config) { c.Messages.IngressQueue = limit })
			ctx := context.Background()
			slow := f.install(mustWat(t, fanWat), nil)
			neighbour := f.install(module(t, corpusDir, "counter"), noArgs)
			f.update(slow, "noop", nil) // its sandbox is up
			c, err := f.node.get(ctx, slow)
			if err != nil {
				t.Fatal(err)
			}

			c.mu.Lock() // the slow canister's execution
			locked := true
			defer func() {
				if locked {
					c.mu.Unlock()
				}
			}()
			type outcome struct {
				err error
				ok  bool
			}
			results := make(chan outcome, senders+1)
			var wg sync.WaitGroup
			send := func(arg []byte) {
				defer wg.Done()
				_, err := f.node.Update(ctx, Message{Canister: slow, Method: "noop", Arg: arg, Caller: user})
				results <- outcome{err, err == nil}
			}
			// The first message is taken by the drain goroutine, which then
			// waits for the lock: wait for that, so the count below is exact.
			wg.Add(1)
			go send(nil)
			for {
				c.qmu.Lock()
				taken := c.draining && len(c.queue) == 0 && c.ingress == 0
				c.qmu.Unlock()
				if taken {
					break
				}
				runtime.Gosched()
			}
			var ms runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms)
			baseHeap := ms.HeapInuse
			for range senders {
				wg.Add(1)
				go send(make([]byte, argBytes)) // each message's own payload
			}
			// Refusals come back while the canister is still busy: all but
			// the limit waiting.
			refused := 0
			stuck := time.After(2 * time.Minute) // a bound on a stuck test, not a performance assertion
			for refused < senders-limit {
				var r outcome
				select {
				case r = <-results:
				case <-stuck:
					t.Fatalf("only %d of %d messages refused while the canister was busy", refused, senders-limit)
				}
				if r.ok {
					t.Fatal("an ingress message ran while the canister was busy")
				}
				rej := f.reject(r.err)
				if rej.Code != SysTransient || rej.Message != "Canister "+slow.String()+" ingress queue is full" {
					t.Fatalf("refusal: %v", r.err)
				}
				refused++
			}
			c.qmu.Lock()
			queued, counted := len(c.queue), c.ingress
			c.qmu.Unlock()
			if queued != limit || counted != limit {
				t.Fatalf("%d messages queued (%d counted), want %d", queued, counted, limit)
			}
			runtime.GC()
			runtime.ReadMemStats(&ms)
			t.Logf("host heap in use %d KiB → %d KiB with %d waiting and %d refused", baseHeap>>10, ms.HeapInuse>>10, queued, refused)
			// What waits is held (20 × 256 KiB); what was refused is not
			// (it would be 100 MiB). 48 MiB leaves room for a loaded
			// machine's garbage.
			if grow := ms.HeapInuse - min(ms.HeapInuse, baseHeap); grow > 48<<20 {
				t.Fatalf("host heap grew by %d MiB", grow>>20)
			}
			// The neighbour answers meanwhile.
			for range 5 {
				f.update(neighbour, "inc", noArgs)
			}

			c.mu.Unlock()
			locked = false
			wg.Wait()
			close(results)
			ran := 0
			for r := range results {
				if !r.ok {
					t.Fatalf("a waiting message failed: %v", r.err)
				}
				ran++
			}
			if ran != limit+1 {
				t.Fatalf("%d messages ran, want %d", ran, limit+1)
			}
			f.update(slow, "noop", nil) // taken again
			c.qmu.Lock()
			counted = c.ingress
			c.qmu.Unlock()
			if counted != 0 {
				t.Fatalf("%d ingress messages still counted", counted)
			}
			if got := f.queryText(neighbour, "get", "()"); got != "(5 : nat)" {
				t.Fatalf("neighbour: %s", got)
			}
			f.checkCallsReleased(slow, neighbour)
		})
	}
}
