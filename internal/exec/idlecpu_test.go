package exec

import (
	"slices"
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
	honest.must(sysapi.CtxInit, "canister_init", empty)
	hostile.must(sysapi.CtxInit, "canister_init", empty)
	pids := func() map[string]int {
		m := map[string]int{}
		for _, s := range x.Sandboxes() {
			m[s.Canister] = s.PID
		}
		return m
	}
	// On a loaded machine the watch may have killed the spinner already
	// (two looks 100 ms apart suffice), so only the honest one must be here.
	before := pids()
	if before["honest"] == 0 {
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

// With more idle sandboxes than IdleCPUChecks, the watch looks at them in
// turns: every one is looked at once per round, in pid order.
func TestIdleCPUWatchTakesTurns(t *testing.T) {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), IdleCPUCheck: time.Hour, IdleCPUChecks: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	wasm := wasmFile(t, corpusDir, "counter")
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		newSim(t, x, id, wasm).must(sysapi.CtxInit, "canister_init", empty)
	}
	var pids, got []int
	for _, s := range x.Sandboxes() {
		pids = append(pids, s.PID)
	}
	slices.Sort(pids)
	if len(pids) != 5 {
		t.Fatalf("%d sandboxes, want 5", len(pids))
	}
	for turn := 0; turn < 5; turn++ {
		sbs := x.idleCPUTurn()
		if len(sbs) != 3 {
			t.Fatalf("turn %d: %d sandboxes, want 3", turn, len(sbs))
		}
		x.mu.Lock()
		for _, sb := range sbs {
			got = append(got, sb.pid)
		}
		x.mu.Unlock()
	}
	// 5 turns of 3 are 3 rounds of 5, each in pid order.
	want := slices.Concat(pids, pids, pids)
	if !slices.Equal(got, want) {
		t.Fatalf("looked at %v, want %v", got, want)
	}
}

// A spinning sandbox among honest ones is still killed when the watch looks
// at one sandbox per check, and only it.
func TestSandboxBurningCPUFoundOnItsTurn(t *testing.T) {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), IdleCPUCheck: 100 * time.Millisecond, IdleCPUChecks: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	wasm := wasmFile(t, corpusDir, "counter")
	for _, id := range []string{"honest-1", spinWhenIdle, "honest-2", "honest-3"} {
		newSim(t, x, id, wasm).must(sysapi.CtxInit, "canister_init", empty)
	}
	for deadline := time.Now().Add(2 * time.Minute); x.Stats().Faults["idle_cpu"] == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a sandbox spinning between messages was not killed")
		}
	}
	live := map[string]bool{}
	for _, s := range x.Sandboxes() {
		live[s.Canister] = true
	}
	if live[spinWhenIdle] || !live["honest-1"] || !live["honest-2"] || !live["honest-3"] {
		t.Fatalf("after the kill: %v", live)
	}
}
