package worker

import (
	"errors"
	"testing"
)

// When the host planned the W^X layer, a PR_SET_MDWE that fails (here: a
// kernel or filter that refuses it) ends the sandbox: the load is answered
// with an error naming the layer and the worker exits ExitConfine, so no
// canister runs without the layer the host reports applied. Where the host
// did not plan it (no PR_SET_MDWE: doctor reports it missing), the load
// goes on with a warning, as before.
func TestWXFailureFatalWhenPlanned(t *testing.T) {
	m, path := compiledArtifact(t, `(module (memory (export "memory") 1) (func (export "canister_query q")))`)
	refused := errors.New("operation not permitted (test)")
	forbidNewCode = func() error { return refused }
	t.Cleanup(func() { forbidNewCode, wxRequired = nil, false })

	for _, planned := range []bool{true, false} {
		wxRequired = planned
		c, done := startWorker(t, "canister")
		err := loadArtifact(t, c, m.Info.Hash, path)
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
