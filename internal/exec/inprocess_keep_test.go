package exec

import (
	"fmt"
	"testing"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// The in-process executor's one engine serves every canister: queries to
// more canisters than the sandbox's kept-instance count, in turn, still
// reuse their instances (with 4 kept and least recently used closed first,
// none ever was).
func TestInProcessReusesAcrossManyCanisters(t *testing.T) {
	x, err := NewInProcess(engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	wasm := wasmFile(t, corpusDir, "counter")
	const n = 3 * engine.DefaultKeepInstances
	sims := make([]*sim, n)
	for i := range sims {
		sims[i] = newSim(t, x, fmt.Sprintf("c%d", i), wasm)
		sims[i].must(sysapi.CtxInit, "canister_init", empty)
		sims[i].must(sysapi.CtxUpdate, "canister_update inc", empty)
	}
	for _, s := range sims { // each canister's first query leaves an instance
		s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty)
	}
	before := x.engine.Reused()
	const rounds = 3
	for r := 0; r < rounds; r++ {
		for _, s := range sims {
			if out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty); string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
				t.Fatalf("reply %x", out.Reply)
			}
		}
	}
	if got := x.engine.Reused() - before; got != rounds*n {
		t.Fatalf("%d of %d queries reused an instance", got, rounds*n)
	}
}
