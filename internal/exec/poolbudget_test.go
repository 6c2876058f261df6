package exec

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// evictions records the pool's evictions by reason.
type evictions struct {
	metrics.Nop
	mu  sync.Mutex
	why []string
}

func (e *evictions) SandboxEvicted(reason string) {
	e.mu.Lock()
	e.why = append(e.why, reason)
	e.mu.Unlock()
}

func (e *evictions) reasons() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.why)
}

// sized is a stand-in process whose RSS is what the test says.
type sized struct {
	*fakeProc
	rss uint64
}

func (p sized) RSS() (uint64, error) { return p.rss, nil }

func liveIDs(x *Sandboxed) string {
	var out []string
	for _, s := range x.List() {
		out = append(out, s.CanisterID)
	}
	return strings.Join(out, ",")
}

// Sandboxes being spawned hold their place in the pool: spawns that run
// at once each evict an idle sandbox rather than all counting the same free
// slot, so the pool exceeds its size only by what is busy, never while an
// idle sandbox could have made room.
func TestPoolCountsSpawnsInFlight(t *testing.T) {
	h := &honest{}
	entered := make(chan string)
	release := make(chan struct{})
	gated := map[string]bool{"c": true, "d": true, "e": true, "f": true}
	launch := func(ctx context.Context, spec sandbox.Spec) (Process, error) {
		if gated[spec.Label] {
			entered <- spec.Label
			<-release
		}
		return h.launch(ctx, spec)
	}
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), Launch: launch,
		MaxSandboxes: 2, IdleTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	wasm := wasmFile(t, corpusDir, "counter")
	sims := map[string]*sim{}
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		sims[id] = newSim(t, x, id, wasm)
	}
	sims["a"].must(sysapi.CtxInit, "canister_init", empty)
	sims["b"].must(sysapi.CtxInit, "canister_init", empty)
	if got := liveIDs(x); got != "a,b" {
		t.Fatalf("live %s, want a,b", got)
	}
	// c, d, e, f start one after the other, each held in its spawn until
	// all four are spawning.
	errs := make(chan error, 4)
	for _, id := range []string{"c", "d", "e", "f"} {
		s := sims[id]
		go func() {
			_, err := x.Execute(context.Background(), s.id, &Request{Module: s.m, RunStart: true,
				Input: s.input(sysapi.CtxInit, "canister_init", empty)})
			errs <- err
		}()
		if got := <-entered; got != id {
			t.Fatalf("spawn of %s entered, want %s", got, id)
		}
	}
	close(release)
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// a and b were idle: both made room. The four busy at once are over
	// the pool's size of 2, as nothing idle was left to evict.
	if got := liveIDs(x); got != "c,d,e,f" {
		t.Fatalf("live %s, want c,d,e,f (idle a and b evicted before the pool grew)", got)
	}
	// The next spawn brings the pool back to its size: the three coldest go.
	sims["a"].must(sysapi.CtxUpdate, "canister_update inc", empty)
	if n := len(x.List()); n != 2 {
		t.Fatalf("%d live after a spawn into an over-full pool (%s), want 2", n, liveIDs(x))
	}
}

// The memory budget (MaxTotalRSS) evicts the coldest idle sandboxes once
// the live ones' RSS, as measured after their exchanges, reaches it.
func TestPoolMemoryBudget(t *testing.T) {
	h := &honest{}
	const each = 100 << 20
	launch := func(ctx context.Context, spec sandbox.Spec) (Process, error) {
		p, err := h.launch(ctx, spec)
		if err != nil {
			return nil, err
		}
		return sized{p.(*fakeProc), each}, nil
	}
	ev := &evictions{}
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), Launch: launch,
		MaxSandboxes: 10, MaxTotalRSS: 250 << 20, IdleTimeout: time.Hour, Metrics: ev})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	wasm := wasmFile(t, corpusDir, "counter")
	for _, id := range []string{"a", "b", "c"} {
		s := newSim(t, x, id, wasm)
		s.must(sysapi.CtxInit, "canister_init", empty)
		time.Sleep(2 * time.Millisecond) // distinct last-use times
	}
	// 300 MiB measured, over the budget of 250 MiB only after c's message:
	// c still got its sandbox.
	if got := liveIDs(x); got != "a,b,c" || len(ev.reasons()) != 0 {
		t.Fatalf("live %s, evictions %v; want a,b,c and none", got, ev.reasons())
	}
	d := newSim(t, x, "d", wasm)
	d.must(sysapi.CtxInit, "canister_init", empty)
	if got := liveIDs(x); got != "b,c,d" {
		t.Fatalf("live %s, want b,c,d (a, the coldest, evicted for memory)", got)
	}
	if got := ev.reasons(); !slices.Equal(got, []string{"memory"}) {
		t.Fatalf("evictions %v, want [memory]", got)
	}
	// An evicted sandbox's memory leaves the budget: a's respawn evicts
	// one sandbox (b), not all.
	a := newSim(t, x, "a", wasm)
	a.must(sysapi.CtxInit, "canister_init", empty)
	if got := liveIDs(x); got != "a,c,d" {
		t.Fatalf("live %s, want a,c,d", got)
	}
}

// Real sandboxes: the memory budget counts what each sandbox's cgroup is
// charged, not its RSS, which counts the pages of cordon's code that every
// sandbox maps from the host's one copy (charged to the host): a budget of
// RSS held about half the sandboxes the memory had room for.
func TestPoolMemoryBudgetCountsCgroupCharge(t *testing.T) {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), MaxTotalRSS: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	s := newSim(t, x, "counter-charge", wasmFile(t, corpusDir, "counter"))
	s.must(sysapi.CtxInit, "canister_init", empty)
	s.must(sysapi.CtxUpdate, "canister_update inc", empty)
	x.mu.Lock()
	sb := x.pool["counter-charge"]
	counted := x.rss
	x.mu.Unlock()
	if sb == nil || counted == 0 {
		t.Fatalf("nothing counted against the budget (%d)", counted)
	}
	sb.mu.Lock()
	p, ok := sb.proc.(*sandbox.Process)
	var charge, rss uint64
	var cerr, rerr error
	if ok {
		charge, cerr = p.MemoryCharge()
		rss, rerr = p.RSS()
	}
	sb.mu.Unlock()
	if !ok || cerr != nil || rerr != nil {
		t.Fatalf("process %T: charge %v, rss %v", sb.proc, cerr, rerr)
	}
	if p.Layers()[sandbox.LayerCgroup].Applied && counted >= rss {
		t.Fatalf("the budget counted %d bytes for a sandbox whose RSS is %d and cgroup charge %d: RSS, not the charge",
			counted, rss, charge)
	}
	t.Logf("counted %d KiB; cgroup charge now %d KiB, RSS %d KiB", counted>>10, charge>>10, rss>>10)
}
