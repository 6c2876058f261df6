package worker

import (
	"testing"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// A canister sandbox keeps a reset query instance for each query the host
// may run in it at once (its query-threads argument), never fewer than the
// engine's default: with fewer, every query beyond them would instantiate a
// fresh instance and tear it down again. Each query here has a heap limit
// of its own, so none can reuse another's instance and each leaves one
// behind, whatever the timing.
func TestWorkerKeepsInstancePerQueryThread(t *testing.T) {
	m, path := compiledArtifact(t, `(module
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (func (export "canister_query quick") (call $reply)))`)
	const queries = 12
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"canister", "t", boundary.QueryThreadsArg + "8"}, 8},
		{[]string{"canister", "t", boundary.QueryThreadsArg + "16"}, queries},
		{[]string{"canister", "t", boundary.QueryThreadsArg + "2"}, engine.DefaultKeepInstances},
		{[]string{"canister", "t"}, engine.DefaultKeepInstances},
	} {
		t.Run(c.args[len(c.args)-1], func(t *testing.T) {
			var sandboxEngine *engine.Engine
			engineMade = func(e *engine.Engine) { sandboxEngine = e }
			t.Cleanup(func() { engineMade = nil })
			cw, _ := startWorkerArgs(t, c.args...)
			if err := loadArtifact(t, cw, m.Info.Hash, path); err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			heap, stable := state.NewPageMap(1<<16), state.NewPageMap(0)
			for i := range queries {
				id := uint64(10 + i)
				in := input(sysapi.CtxNonReplicatedQuery, "canister_query quick", false, stable)
				in.Limits.HeapBytes = 1<<30 + uint64(i)<<16
				q := &boundary.ExecRequest{Module: m.Info.Hash, Input: in}
				go func() { errc <- cw.SendExecute(id, q, heap, stable) }()
				out, err := cw.AwaitOutput(boundary.ExpectFor(id, in, heap, stable, m.GlobalTypes()), nil)
				if err != nil || <-errc != nil || out.Trapped {
					t.Fatalf("query %d: %v %+v", i, err, out)
				}
			}
			// An answer leaves before its instance is reset and kept; a Ping
			// is served once every execution has ended.
			go func() { errc <- cw.Send(&boundary.Msg{Kind: boundary.KindPing, ID: 99}) }()
			if err := cw.AwaitPong(99, nil); err != nil || <-errc != nil {
				t.Fatal(err)
			}
			if got := sandboxEngine.Kept(); got != c.want {
				t.Fatalf("%d instances kept after %d queries, want %d", got, queries, c.want)
			}
		})
	}
}

// The worker's arguments: anything but a mode, an optional label and an
// optional query-threads=N (1 to MaxInFlight) is a usage error.
func TestParseArgs(t *testing.T) {
	for _, c := range []struct {
		args    []string
		threads int
		ok      bool
	}{
		{[]string{"canister"}, 0, true},
		{[]string{"compile"}, 0, true},
		{[]string{"canister", "rwlgt-iiaaa-aaaaa-aaaaa-cai"}, 0, true},
		{[]string{"canister", "blank", "query-threads=1"}, 1, true},
		{[]string{"canister", "blank", "query-threads=16"}, 16, true},
		{nil, 0, false},
		{[]string{"sandbox"}, 0, false},
		{[]string{"canister", "blank", "query-threads=0"}, 0, false},
		{[]string{"canister", "blank", "query-threads=17"}, 0, false},
		{[]string{"canister", "blank", "query-threads=-1"}, 0, false},
		{[]string{"canister", "blank", "query-threads="}, 0, false},
		{[]string{"canister", "blank", "threads=4"}, 0, false},
		{[]string{"canister", "blank", "query-threads=4", "x"}, 0, false},
	} {
		o, err := parseArgs(c.args)
		if (err == nil) != c.ok || (c.ok && o.queryThreads != c.threads) {
			t.Errorf("parseArgs(%q) = %+v, %v; want ok %v, %d threads", c.args, o, err, c.ok, c.threads)
		}
	}
}
