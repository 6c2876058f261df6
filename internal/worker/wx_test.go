package worker

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
)

// When the host planned the W^X layer, a PR_SET_MDWE that fails (here: a
// kernel or filter that refuses it) ends the sandbox: the load is answered
// with an error naming the layer and the worker exits ExitConfine, so no
// canister runs without the layer the host reports applied. Where the host
// did not plan it (no PR_SET_MDWE: doctor reports it missing), the load
// goes on with a warning, as before.
func TestWXFailureFatalWhenPlanned(t *testing.T) {
	wasm, err := wasmtime.Wat2Wasm(`(module (memory (export "memory") 1) (func (export "canister_query q")))`)
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
	refused := errors.New("operation not permitted (test)")
	forbidNewCode = func() error { return refused }
	t.Cleanup(func() { forbidNewCode, wxRequired = nil, false })

	for _, planned := range []bool{true, false} {
		wxRequired = planned
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		c, done := startWorker(t, "canister")
		errc := make(chan error, 1)
		go func() {
			errc <- c.Send(&boundary.Msg{Kind: boundary.KindLoad, ID: 1, Body: boundary.EncodeHash(m.Info.Hash), Files: []*os.File{f}})
		}()
		err = c.AwaitLoaded(1, m.Info.Hash, nil)
		f.Close()
		if serr := <-errc; serr != nil {
			t.Fatal(serr)
		}
		if !planned {
			if err != nil {
				t.Fatalf("wx not planned: load failed: %v", err)
			}
			continue
		}
		if err == nil {
			t.Fatal("wx planned, PR_SET_MDWE refused: the module loaded anyway")
		}
		t.Logf("wx planned, PR_SET_MDWE refused: %v", err)
		if code := <-done; code != ExitConfine {
			t.Fatalf("worker exited %d, want ExitConfine (%d)", code, ExitConfine)
		}
		done <- ExitConfine // for the cleanup's receive
	}
}
