package exec

import (
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// spinWhenIdle, as a canister id (a canister sandbox's label is among its
// arguments), makes this test binary's worker start a goroutine that never
// stops computing: a sandbox that has taken control of its process and keeps
// a core busy between messages.
const spinWhenIdle = "test-spin-when-idle"

var spinSink uint64

func spin() {
	for i := uint64(0); ; i++ {
		spinSink = i
	}
}

// A sandbox that burns CPU between messages is killed, counted and replaced
// at its canister's next message; an idle honest sandbox next to it is left
// alone.
func TestSandboxBurningCPUWhileIdleIsKilled(t *testing.T) {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), IdleCPUCheck: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	wasm := wasmFile(t, corpusDir, "counter")
	hostile, honest := newSim(t, x, spinWhenIdle, wasm), newSim(t, x, "honest", wasm)
	hostile.must(sysapi.CtxInit, "canister_init", empty)
	honest.must(sysapi.CtxInit, "canister_init", empty)
	pids := func() map[string]int {
		m := map[string]int{}
		for _, s := range x.Sandboxes() {
			m[s.Canister] = s.PID
		}
		return m
	}
	before := pids()
	if before[spinWhenIdle] == 0 || before["honest"] == 0 {
		t.Fatalf("sandboxes %v", before)
	}
	for deadline := time.Now().Add(time.Minute); x.Stats().Faults["idle_cpu"] == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a sandbox spinning between messages was not killed")
		}
	}
	after := pids()
	if _, ok := after[spinWhenIdle]; ok {
		t.Fatalf("the hostile sandbox is still in the pool: %v", after)
	}
	if after["honest"] != before["honest"] {
		t.Fatalf("the idle honest sandbox was killed too: %v → %v", before, after)
	}
	if n := x.Stats().Faults["idle_cpu"]; n != 1 {
		t.Fatalf("%d idle-CPU kills, want 1", n)
	}
	// The canister itself is fine: its next message runs in a new sandbox.
	hostile.must(sysapi.CtxUpdate, "canister_update inc", empty)
	honest.must(sysapi.CtxUpdate, "canister_update inc", empty)
	if p := pids()[spinWhenIdle]; p == 0 || p == before[spinWhenIdle] {
		t.Fatalf("hostile canister's sandbox after the kill: pid %d (was %d)", p, before[spinWhenIdle])
	}
}
