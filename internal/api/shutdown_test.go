package api

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/candid"
)

// natReply decodes a reply holding one nat.
func natReply(t testing.TB, b []byte) uint64 {
	t.Helper()
	a, err := candid.Decode(b)
	if err != nil || len(a.Values) != 1 {
		t.Fatalf("reply %x: %v", b, err)
	}
	n, ok := a.Values[0].(candid.Nat)
	if !ok {
		t.Fatalf("reply %x is not a nat", b)
	}
	if n.Int == nil {
		return 0
	}
	return n.Int.Uint64()
}

// refusal reports whether err is a clean refusal during shutdown: the 503
// of a server shutting down, or the connection refused or closed before an
// answer.
func refusal(err error) bool {
	msg := err.Error()
	for _, s := range []string{"shutting down", "connection refused", "EOF", "connection reset", "server closed idle connection"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// TestShutdownWithCallsInFlight: calls keep coming while the server shuts
// down. Every call is answered or cleanly refused, Serve returns nil, and
// after a restart the counters hold exactly the increments that were
// answered: none lost, none done without an answer.
func TestShutdownWithCallsInFlight(t *testing.T) {
	home := t.TempDir()
	node := openNodeAt(t, home, false)
	s := serveNode(t, node, home, nil)
	ctx := context.Background()
	const canisters, workers = 4, 32
	ids := make([]string, canisters)
	for i := range ids {
		r, err := s.client.Install(ctx, InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = r.ID
	}
	var answered [canisters]atomic.Int64
	var refused atomic.Int64
	var mu sync.Mutex
	var failures []error
	var wg sync.WaitGroup
	started := make(chan struct{}, workers)
	for w := range workers {
		wg.Go(func() {
			c := NewClientWith(s.base, ClientOptions{Token: s.token})
			defer c.Close()
			i := w % canisters
			for n := 0; ; n++ {
				if n == 3 {
					started <- struct{}{}
				}
				_, err := c.Call(ctx, CallRequest{ID: ids[i], Method: "inc", Arg: noArgs})
				switch {
				case err == nil:
					answered[i].Add(1)
				case refusal(err):
					refused.Add(1)
					return
				default:
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	for range workers {
		<-started
	}
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return")
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("calls still waiting after the server stopped")
	}
	for _, err := range failures {
		t.Errorf("call neither answered nor cleanly refused: %v", err)
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := node.Quiesce(qctx); err != nil {
		t.Fatal(err)
	}
	if err := node.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart: exactly the answered increments are there.
	node2 := openNodeAt(t, home, true)
	local := &Local{Node: node2}
	total := int64(0)
	for i, id := range ids {
		r, err := local.Call(ctx, CallRequest{ID: id, Method: "get", Arg: noArgs, Query: true})
		if err != nil {
			t.Fatal(err)
		}
		got, want := natReply(t, r.Reply), answered[i].Load()
		if int64(got) != want {
			t.Errorf("canister %s: counter %d after restart, %d increments answered", id, got, want)
		}
		total += want
	}
	t.Logf("%d increments answered, %d calls refused during shutdown", total, refused.Load())
	if total == 0 || refused.Load() == 0 {
		t.Fatalf("the test did not overlap the shutdown: %d answered, %d refused", total, refused.Load())
	}
}
