package exec

import (
	"crypto/sha256"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// With SandboxConfig.InstalledModule a Module does not keep its Wasm (the
// host held the module of every loaded canister in memory), and a module
// whose artifact is gone is compiled again from what the store returns,
// checked against its hash.
func TestArtifactCompiledAgainFromInstalledModule(t *testing.T) {
	h := &honest{}
	dir := t.TempDir()
	wasm := wasmFile(t, corpusDir, "counter")
	hash := sha256.Sum256(wasm)
	var reads atomic.Int32
	stored := wasm
	newX := func() *Sandboxed {
		x, err := NewSandboxed(SandboxConfig{Dir: dir, Logger: testLogger(t), Launch: h.launch,
			InstalledModule: func(got [32]byte) ([]byte, error) {
				reads.Add(1)
				if got != hash {
					return nil, errors.New("no such module")
				}
				return stored, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { x.Close() })
		return x
	}
	s := newSim(t, newX(), "c", wasm)
	if s.m.Wasm != nil {
		t.Fatal("the prepared module keeps its Wasm")
	}
	s.must(sysapi.CtxInit, "canister_init", empty)
	if h.count("compiler") != 1 || reads.Load() != 0 {
		t.Fatalf("%d compilations, %d reads of the installed module", h.count("compiler"), reads.Load())
	}
	// The artifact goes (the store released the module) while a canister
	// still holds it, and its sandbox is stopped: the next execution
	// compiles it again from the installed module.
	x := s.x.(*Sandboxed)
	x.ForgetModule(hash)
	x.Forget("c")
	s.must(sysapi.CtxUpdate, "canister_update inc", empty)
	if h.count("compiler") != 2 || reads.Load() != 1 {
		t.Fatalf("missing artifact: %d compilations, %d reads of the installed module", h.count("compiler"), reads.Load())
	}
	// What the store returns must be the module: other bytes are refused.
	x.ForgetModule(hash)
	x.Forget("c")
	stored = wasmFile(t, corpusDir, "kv")
	if _, err := s.run(sysapi.CtxUpdate, "canister_update inc", empty); err == nil || !strings.Contains(err.Error(), "read again has hash") {
		t.Fatalf("another module from the store: %v", err)
	}
	if h.count("compiler") != 2 {
		t.Fatalf("compiled what the store returned for another hash: %d compilations", h.count("compiler"))
	}
}
