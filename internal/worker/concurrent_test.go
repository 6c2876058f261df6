package worker

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// The worker runs a second execution while the first still computes: the
// quick query sent after the spinning one is answered first, and both
// answers are whole and valid (boundary.Inflight checks each against its
// own request).
func TestWorkerRunsExecutionsConcurrently(t *testing.T) {
	wasm, err := wasmtime.Wat2Wasm(`(module
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (func (export "canister_query spin") (loop $l (br $l)))
  (func (export "canister_query quick") (call $reply)))`)
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.New(engine.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	art, err := m.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "a.cwasm")
	if err := os.WriteFile(path, art, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, _ := startWorker(t, "canister")
	errc := make(chan error, 1)
	go func() {
		errc <- c.Send(&boundary.Msg{Kind: boundary.KindLoad, ID: 1, Body: boundary.EncodeHash(m.Info.Hash), Files: []*os.File{f}})
	}()
	if err := c.AwaitLoaded(1, m.Info.Hash, nil); err != nil || <-errc != nil {
		t.Fatal(err)
	}
	infl := boundary.NewInflight(c)
	stable := state.NewPageMap(0)
	send := func(id uint64, entry string, instructions uint64) {
		in := input(sysapi.CtxNonReplicatedQuery, entry, false, stable)
		in.Limits.Instructions = instructions
		if err := infl.Add(boundary.ExpectFor(id, in, nil, stable, m.GlobalTypes())); err != nil {
			t.Fatal(err)
		}
		q := &boundary.ExecRequest{Module: m.Info.Hash, RunStart: true, Input: in}
		if err := c.SendExecute(id, q, nil, stable); err != nil {
			t.Fatal(err)
		}
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
