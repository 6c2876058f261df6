package worker

import (
	"testing"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/state"
)

// The worker runs a second execution while the first still computes: the
// quick query sent after the spinning one is answered first, and both
// answers are whole and valid (boundary.Inflight checks each against its
// own request).
func TestWorkerRunsExecutionsConcurrently(t *testing.T) {
	m, path := compiledArtifact(t, spinQuickWat)
	c, _ := startWorker(t, "canister")
	if err := loadArtifact(t, c, m.Info.Hash, path); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	infl := boundary.NewInflight(c)
	stable := state.NewPageMap(0)
	send := func(id uint64, entry string, instructions uint64) {
		sendQuery(t, c, infl, m, id, entry, instructions, stable)
	}
	send(2, "canister_query spin", 1_000_000_000) // a second or so
	send(3, "canister_query quick", 1_000_000)
	id, out, err := infl.Next(nil)
	if err != nil || id != 3 || out.Trapped {
		t.Fatalf("first answer: %d %v %+v (the spinning query came first: executions ran one at a time)", id, err, out)
	}
	id, out, err = infl.Next(nil)
	if err != nil || id != 2 || !out.Trapped {
		t.Fatalf("second answer: %d %v %+v", id, err, out)
	}
	t.Logf("spin: %s after %d instructions", out.TrapMessage, out.Instructions)
	// Anything else waits for the executions in flight, then is served.
	go func() { errc <- c.Send(&boundary.Msg{Kind: boundary.KindPing, ID: 4}) }()
	if err := c.AwaitPong(4, nil); err != nil || <-errc != nil {
		t.Fatal(err)
	}
}
