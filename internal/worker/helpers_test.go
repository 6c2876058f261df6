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

// spinQuickWat's query spin loops until its instructions run out; quick
// replies at once.
const spinQuickWat = `(module
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (func (export "canister_query spin") (loop $l (br $l)))
  (func (export "canister_query quick") (call $reply)))`

// compiledArtifact compiles wat in this process with the engine's
// defaults and writes its artifact to a file: the module and the file.
func compiledArtifact(t *testing.T, wat string) (*engine.Module, string) {
	t.Helper()
	wasm, err := wasmtime.Wat2Wasm(wat)
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
	return m, path
}

// loadArtifact sends the artifact at path to the worker on c as load 1
// of module hash, and returns the worker's answer; a failed send fails
// the test. The worker has its own copy of the descriptor: this one is
// closed once the load is answered.
func loadArtifact(t *testing.T, c *boundary.Conn, hash [32]byte, path string) error {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	errc := make(chan error, 1)
	go func() {
		errc <- c.Send(&boundary.Msg{Kind: boundary.KindLoad, ID: 1, Body: boundary.EncodeHash(hash), Files: []*os.File{f}})
	}()
	err = c.AwaitLoaded(1, hash, nil)
	if serr := <-errc; serr != nil {
		t.Fatal(serr)
	}
	return err
}

// sendQuery sends query id of m, a run of entry from m's start with the
// given instruction limit, to the worker on c, its answer expected in
// infl.
func sendQuery(t *testing.T, c *boundary.Conn, infl *boundary.Inflight, m *engine.Module, id uint64, entry string, instructions uint64, stable *state.PageMap) {
	t.Helper()
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
