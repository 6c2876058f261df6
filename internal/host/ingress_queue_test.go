package host

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
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
	// Not t.Parallel: it measures the process's heap.
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
				taken := c.draining && c.queue.len() == 0 && c.ingress == 0
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
			queued, counted := c.queue.len(), c.ingress
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

// Ingress waiting is bounded in bytes, per canister and on the node, not
// only in count: a user who sends large arguments to busy canisters gets
// SYS_TRANSIENT once a canister's queue holds IngressQueueBytes of them or
// all queues NodeIngressBytes; an argument beyond IngressArgBytes is
// refused by every entry (update, query, the management canister) before
// anything holds it. Once the canisters are free the waiting ones run and
// nothing stays counted.
func TestIngressQueueBytesBounded(t *testing.T) {
	t.Parallel()
	const arg = 256 << 10
	f := queueFixture(t, "inprocess", func(c *Config) {
		c.Messages.IngressQueue = 0 // no count bound: the bytes bound
		c.Messages.IngressQueueBytes = 4 * arg
		c.Messages.NodeIngressBytes = 6 * arg
		c.Messages.IngressArgBytes = 4 * arg
	})
	ctx := context.Background()
	a := f.install(mustWat(t, fanWat), nil)
	b := f.install(mustWat(t, fanWat), nil)

	for _, m := range []Message{
		{Canister: a, Method: "noop"}, {Canister: principal.Management(), Method: "canister_status"},
	} {
		m.Arg, m.Caller = make([]byte, 4*arg+1), user
		_, err := f.node.Update(ctx, m)
		if rej := f.reject(err); rej.Code != SysFatal || !strings.Contains(rej.Message, "exceeds the ingress message limit") {
			t.Fatalf("update of %d bytes: %v", len(m.Arg), err)
		}
		_, err = f.node.Query(ctx, m)
		if rej := f.reject(err); rej.Code != SysFatal {
			t.Fatalf("query of %d bytes: %v", len(m.Arg), err)
		}
	}

	results := make(chan error, 16)
	var wg sync.WaitGroup
	send := func(id principal.Principal, n int) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.node.Update(ctx, Message{Canister: id, Method: "noop", Arg: make([]byte, n), Caller: user})
			results <- err
		}()
	}
	// waitQueued waits until c's queue holds n messages (the first one
	// sent to a canister is taken by its drain goroutine at once).
	waitQueued := func(c *canister, n int) {
		for {
			c.qmu.Lock()
			q, taken := c.queue.len(), c.draining
			c.qmu.Unlock()
			if taken && q == n {
				return
			}
			runtime.Gosched()
		}
	}
	refused := func(want string) {
		t.Helper()
		var err error
		select {
		case err = <-results:
		case <-time.After(2 * time.Minute): // a bound on a stuck test
			t.Fatalf("no refusal (%s) while the canisters were busy", want)
		}
		if rej := f.reject(err); rej.Code != SysTransient || !strings.Contains(rej.Message, want) {
			t.Fatalf("want a refusal (%s): %v", want, err)
		}
	}
	var cs []*canister
	locked := false
	defer func() {
		for _, c := range cs {
			if locked {
				c.mu.Unlock()
			}
		}
	}()
	for _, id := range []principal.Principal{a, b} {
		c, err := f.node.get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		c.mu.Lock() // busy
		cs, locked = append(cs, c), true
		send(id, 0)
		waitQueued(c, 0)
	}
	for i := range 4 {
		send(a, arg)
		waitQueued(cs[0], i+1)
	}
	send(a, 1) // one byte more than a's queue may hold
	refused("Canister " + a.String() + " ingress queue is full")
	send(b, arg)
	send(b, arg)
	waitQueued(cs[1], 2)
	send(b, 1) // the node's bound
	refused("the node's ingress queues are full")
	if got := f.node.ingressBytes.Load(); got != 6*arg {
		t.Fatalf("node counts %d bytes queued, want %d", got, 6*arg)
	}

	for _, c := range cs {
		c.mu.Unlock()
	}
	locked = false
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Fatalf("a waiting message failed: %v", err)
		}
	}
	for _, c := range cs {
		c.qmu.Lock()
		n, bytes := c.ingress, c.ingressBytes
		c.qmu.Unlock()
		if n != 0 || bytes != 0 {
			t.Fatalf("%d messages of %d bytes still counted", n, bytes)
		}
	}
	if got := f.node.ingressBytes.Load(); got != 0 {
		t.Fatalf("node counts %d bytes queued after they ran", got)
	}
	f.update(a, "noop", make([]byte, 4*arg)) // at the limit: taken
}
