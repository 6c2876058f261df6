package exec

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sandbox/confine"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// growWhenIdle, as a canister id (a canister sandbox's label is among its
// arguments), makes this test binary's worker start a goroutine that keeps
// taking memory and holding it, 8 MiB every 50 ms up to 1 GiB: a sandbox
// that has taken control of its process and grows between messages, for
// as long as its canister stays warm.
const growWhenIdle = "test-grow-when-idle"

var growSink [][]byte

func grow() {
	for len(growSink) < 128 {
		time.Sleep(50 * time.Millisecond)
		b := make([]byte, 8<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		growSink = append(growSink, b)
	}
}

// livePids maps the canisters of the live sandboxes to their pids.
func livePids(x *Sandboxed) map[string]int {
	m := map[string]int{}
	for _, s := range x.Sandboxes() {
		if s.Kind == "canister" {
			m[s.Canister] = s.PID
		}
	}
	return m
}

// waitFor polls cond with a generous bound (the machine may be loaded).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
	}
}

// A sandbox whose memory grows between messages is killed and counted,
// and its canister's next message runs in a new sandbox; an idle honest
// sandbox next to it is left alone. The CPU watch is set so that it never
// acts here: the memory it takes is what gives it away.
func TestSandboxGrowingWhileIdleIsKilled(t *testing.T) {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), IdleCPUCheck: 100 * time.Millisecond, IdleCPUPercent: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	wasm := wasmFile(t, corpusDir, "counter")
	honest, hostile := newSim(t, x, "honest", wasm), newSim(t, x, growWhenIdle, wasm)
	honest.must(sysapi.CtxInit, "canister_init", empty)
	hostile.must(sysapi.CtxInit, "canister_init", empty)
	before := livePids(x)
	if before["honest"] == 0 {
		t.Fatalf("sandboxes %v", before)
	}
	// Every sandbox is the kernel's first choice when memory runs out.
	b, err := os.ReadFile("/proc/" + strconv.Itoa(before["honest"]) + "/oom_score_adj")
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(confine.OOMScoreAdj) {
		t.Fatalf("the honest sandbox's oom_score_adj: %q (%v), want %d", b, err, confine.OOMScoreAdj)
	}
	waitFor(t, "a sandbox growing between messages was not killed", func() bool { return x.Stats().Faults["idle_memory"] > 0 })
	after := livePids(x)
	if _, ok := after[growWhenIdle]; ok {
		t.Fatalf("the hostile sandbox is still in the pool: %v", after)
	}
	if after["honest"] != before["honest"] {
		t.Fatalf("the idle honest sandbox was killed too: %v → %v", before, after)
	}
	st := x.Stats()
	if st.Faults["idle_memory"] != 1 || st.Faults["idle_cpu"] != 0 {
		t.Fatalf("faults %v, want one idle_memory", st.Faults)
	}
	// Both canisters are fine: the hostile one's next message runs in a
	// new sandbox.
	honest.must(sysapi.CtxUpdate, "canister_update inc", empty)
	hostile.must(sysapi.CtxUpdate, "canister_update inc", empty)
	if p := livePids(x)[growWhenIdle]; p == 0 || p == before[growWhenIdle] {
		t.Fatalf("hostile canister's sandbox after the kill: pid %d (was %d)", p, before[growWhenIdle])
	}
}

// The memory budget is kept between messages too: a sandbox that grows
// while idle (its growth allowed here) takes the node past the budget, and
// the least recently used idle sandboxes are evicted until it holds again,
// the grower among them, without any canister sending a message.
func TestIdleGrowthPastBudgetEvicts(t *testing.T) {
	const budget = 128 << 20
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), IdleCPUCheck: 100 * time.Millisecond, IdleCPUPercent: 1000,
		IdleMemoryGrowth: 1 << 40, MaxTotalRSS: budget})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	wasm := wasmFile(t, corpusDir, "counter")
	honest, hostile := newSim(t, x, "honest", wasm), newSim(t, x, growWhenIdle, wasm)
	honest.must(sysapi.CtxInit, "canister_init", empty)
	hostile.must(sysapi.CtxInit, "canister_init", empty)
	waitFor(t, "a sandbox that grew past the memory budget while idle was not evicted", func() bool {
		_, ok := livePids(x)[growWhenIdle]
		return !ok
	})
	if st := x.Stats(); st.Evicted == 0 || st.Faults["idle_memory"] != 0 {
		t.Fatalf("stats %+v, want evictions and no idle_memory fault", st)
	}
	x.mu.Lock()
	total := x.rss + x.blankMem
	x.mu.Unlock()
	if total > budget {
		t.Fatalf("%d bytes counted after the evictions, budget %d", total, budget)
	}
	honest.must(sysapi.CtxUpdate, "canister_update inc", empty)
	hostile.must(sysapi.CtxUpdate, "canister_update inc", empty)
}

// All sandboxes of a node are in one group cgroup whose memory limit binds
// them together: a sandbox that grows while idle far below its own limit
// but past the group's (the host's watches turned off here) is OOM-killed
// by the kernel, in its own cgroup; the host and the other canister carry
// on.
func TestNodeMemoryLimitOOMKillsSandbox(t *testing.T) {
	const nodeLimit = 256 << 20
	x, started := nodeGroupSandboxed(t, SandboxConfig{NodeMemoryBytes: nodeLimit, MemoryBytes: 2 << 30,
		IdleCPUCheck: time.Hour, IdleMemoryGrowth: 1 << 40, MaxTotalRSS: 1 << 40})
	if got := x.group.MemoryLimit(); got != nodeLimit {
		t.Fatalf("node group limit %d, want %d", got, nodeLimit)
	}
	wasm := wasmFile(t, corpusDir, "counter")
	honest, hostile := newSim(t, x, "honest", wasm), newSim(t, x, growWhenIdle, wasm)
	honest.must(sysapi.CtxInit, "canister_init", empty)
	hostile.must(sysapi.CtxInit, "canister_init", empty)
	grower, neighbour := started.proc(growWhenIdle), started.proc("honest")
	for _, p := range []*sandbox.Process{grower, neighbour} {
		if d := p.Layers()[sandbox.LayerCgroup].Detail; !strings.Contains(d, x.group.String()) {
			t.Fatalf("a sandbox's cgroup is not in the node group: %s", d)
		}
	}
	done := make(chan sandbox.ExitStatus, 1)
	go func() { done <- grower.Wait() }()
	select {
	case st := <-done:
		// It alone took the group past its limit: its own doing.
		if !errors.Is(st.Err, sandbox.ErrOutOfMemory) || errors.Is(st.Err, sandbox.ErrNodeOutOfMemory) || st.Signal != syscall.SIGKILL {
			t.Fatalf("the sandbox past the node's limit: want an OOM kill of its own doing, got %+v", st)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("a sandbox growing past the node's memory limit was not OOM-killed")
	}
	// Never more than the limit, but for a few pages the kernel lets a
	// task it is OOM-killing take on its way out.
	if peak, err := x.group.MemoryPeak(); err != nil || peak > nodeLimit+1<<20 {
		t.Fatalf("the node group's peak charge %d (%v), its limit %d", peak, err, nodeLimit)
	}
	select {
	case <-neighbour.Done():
		t.Fatalf("the neighbour died too: %+v", neighbour.Wait())
	default:
	}
	honest.must(sysapi.CtxUpdate, "canister_update inc", empty)
	if p := livePids(x)["honest"]; p != neighbour.Pid() {
		t.Fatalf("the honest canister's sandbox changed: pid %d, was %d", p, neighbour.Pid())
	}
}

// A blank sandbox, and a primed one (it has loaded an artifact the compiler
// sandbox, which its module may have taken over, wrote), that grows while
// it waits for its canister is killed as an idle canister sandbox is,
// counted, and replaced; the evicted canister still runs.
func TestBlankAndPrimedSandboxGrowingIsKilled(t *testing.T) {
	cfg := SandboxConfig{IdleCPUCheck: 100 * time.Millisecond, IdleCPUPercent: 1000}
	t.Run("blank", func(t *testing.T) {
		cfg := cfg
		cfg.WarmPool, cfg.blankLabel = 1, growWhenIdle
		x, m := newPooled(t, cfg)
		pid := waitBlanks(t, x, 1)[0]
		waitFor(t, "a blank sandbox growing before it had work was not killed", func() bool { return x.Stats().Faults["idle_memory"] > 0 })
		waitGone(t, pid)
		if n := m.get("crashed idle_memory"); n == 0 {
			t.Fatalf("not counted: %v", m.n)
		}
	})
	t.Run("primed", func(t *testing.T) {
		cfg := cfg
		cfg.PreloadPool, cfg.primedLabel = 1, growWhenIdle
		x, m := newPooled(t, cfg)
		s := newSim(t, x, "a", wasmFile(t, corpusDir, "counter"))
		s.must(sysapi.CtxInit, "canister_init", empty)
		s.must(sysapi.CtxUpdate, "canister_update inc", empty)
		evict(t, x, "a")
		pid := waitPrimed(t, x, 1)[0]
		waitFor(t, "a primed sandbox growing before it had work was not killed", func() bool { return x.Stats().Faults["idle_memory"] > 0 })
		waitGone(t, pid)
		if st := x.Stats(); st.PrimeFailures == 0 || m.get("crashed idle_memory") == 0 {
			t.Fatalf("stats %+v, metrics %v: want the primed sandbox counted as failed", st, m.n)
		}
		if out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty); string(out.Reply) != counterReply+"\x01" {
			t.Fatalf("get: %x", out.Reply)
		}
	})
}

// A blank sandbox's memory counts in the budget as it is now, not as it
// was when it joined the pool: one that grows past the budget while it
// waits (its growth allowed here) is stopped to keep it, without any
// canister starting.
func TestBlankGrowthPastBudgetTrims(t *testing.T) {
	x, m := newPooled(t, SandboxConfig{WarmPool: 1, blankLabel: growWhenIdle, IdleCPUCheck: 100 * time.Millisecond, IdleCPUPercent: 1000,
		IdleMemoryGrowth: 1 << 40, MaxTotalRSS: 128 << 20})
	pid := waitBlanks(t, x, 1)[0]
	waitFor(t, "a blank sandbox that grew past the memory budget was not stopped", func() bool { return x.Stats().Evicted > 0 })
	waitGone(t, pid)
	if st := x.Stats(); st.Evicted == 0 || len(st.Faults) != 0 || m.get("evicted pool") == 0 {
		t.Fatalf("stats %+v, metrics %v: want the blank sandbox stopped for the budget, no fault", st, m.n)
	}
}
