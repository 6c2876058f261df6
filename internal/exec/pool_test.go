package exec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/internal/worker"
)

// honest launches stand-ins running the real worker in this process.
type honest struct {
	mu     sync.Mutex
	spawns map[string]int // by label
}

func (h *honest) launch(ctx context.Context, spec sandbox.Spec) (Process, error) {
	host, child, err := boundary.Pair()
	if err != nil {
		return nil, err
	}
	p := &fakeProc{host: host, child: child, pid: int(fakePids.Add(1)), killed: make(chan struct{}), done: make(chan struct{})}
	h.mu.Lock()
	if h.spawns == nil {
		h.spawns = map[string]int{}
	}
	h.spawns[spec.Label]++
	h.mu.Unlock()
	go func() {
		defer close(p.done)
		worker.Serve(child, spec.Args)
	}()
	return p, nil
}

func (h *honest) count(label string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.spawns[label]
}

func TestPoolEviction(t *testing.T) {
	h := &honest{}
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), Launch: h.launch,
		MaxSandboxes: 2, IdleTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	wasm := wasmFile(t, corpusDir, "counter")
	sims := map[string]*sim{}
	for _, id := range []string{"a", "b", "c"} {
		sims[id] = newSim(t, x, id, wasm)
		sims[id].must(sysapi.CtxInit, "canister_init", empty)
		time.Sleep(5 * time.Millisecond)
	}
	// Over the count budget: the coldest (a) was evicted.
	ids := func() []string {
		var out []string
		for _, s := range x.List() {
			out = append(out, s.CanisterID)
		}
		return out
	}
	if got := strings.Join(ids(), ","); got != "b,c" {
		t.Fatalf("live sandboxes %s, want b,c", got)
	}
	// a respawns transparently (evicting b, now the coldest).
	out := sims["a"].must(sysapi.CtxUpdate, "canister_update inc", empty)
	if string(out.Reply) != "DIDL\x00\x01\x7d\x01" || h.count("a") != 2 {
		t.Fatalf("a after eviction: %x, %d spawns", out.Reply, h.count("a"))
	}
	if got := strings.Join(ids(), ","); got != "a,c" {
		t.Fatalf("live sandboxes %s, want a,c", got)
	}
	// Idle sandboxes are stopped.
	deadline := time.Now().Add(5 * time.Second)
	for len(x.List()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("idle sandboxes not evicted: %v", ids())
		}
		time.Sleep(20 * time.Millisecond)
	}
	out = sims["c"].must(sysapi.CtxUpdate, "canister_update inc", empty)
	if string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
		t.Fatalf("c after idle eviction: %x", out.Reply)
	}
	st := x.Stats()
	if st.Evicted < 3 {
		t.Fatalf("stats: %+v", st)
	}
	// Forget and Close stop them.
	x.Forget("c")
	if len(x.List()) != 0 {
		t.Fatal("Forget left a sandbox")
	}
	if _, err := x.Execute(context.Background(), "c", &Request{Module: sims["c"].m, Input: sims["c"].input(sysapi.CtxUpdate, "canister_update inc", empty)}); err != nil {
		t.Fatal(err)
	}
	x.Close()
	if len(x.List()) != 0 {
		t.Fatal("Close left a sandbox")
	}
	if _, err := x.Execute(context.Background(), "c", &Request{Module: sims["c"].m, Input: sims["c"].input(sysapi.CtxUpdate, "canister_update inc", empty)}); err == nil {
		t.Fatal("executed after Close")
	}
}

// A damaged or missing cached artifact is compiled again; the module info is
// cached on disk across executors; invalid modules are refused with
// engine.ErrInvalidModule, exactly as in-process.
func TestArtifactCache(t *testing.T) {
	h := &honest{}
	dir := t.TempDir()
	newX := func() *Sandboxed {
		x, err := NewSandboxed(SandboxConfig{Dir: dir, Logger: testLogger(t), Launch: h.launch})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { x.Close() })
		return x
	}
	wasm := wasmFile(t, corpusDir, "kv")
	x := newX()
	s := newSim(t, x, "kv", wasm)
	s.must(sysapi.CtxInit, "canister_init", empty)
	if h.count("compiler") != 1 {
		t.Fatalf("%d compilations", h.count("compiler"))
	}
	// A new executor (a restarted host) finds the module in the cache.
	x2 := newX()
	s2 := newSim(t, x2, "kv", wasm)
	s2.must(sysapi.CtxInit, "canister_init", empty)
	if h.count("compiler") != 1 {
		t.Fatalf("recompiled despite the cache: %d", h.count("compiler"))
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "*.cwasm"))
	if len(matches) != 1 {
		t.Fatalf("cache files: %v", matches)
	}
	// Damage the artifact: the next load compiles again.
	b, _ := os.ReadFile(matches[0])
	b[len(b)/2] ^= 0xff
	os.WriteFile(matches[0], b, 0o600)
	x3 := newX()
	s3 := newSim(t, x3, "kv3", wasm)
	s3.must(sysapi.CtxInit, "canister_init", empty)
	if h.count("compiler") != 2 {
		t.Fatalf("damaged artifact: %d compilations", h.count("compiler"))
	}
	// Remove it: compiled again too.
	os.Remove(matches[0])
	s4 := newSim(t, newX(), "kv4", wasm)
	s4.must(sysapi.CtxInit, "canister_init", empty)
	if h.count("compiler") != 3 {
		t.Fatalf("missing artifact: %d compilations", h.count("compiler"))
	}
	// Invalid modules: the same error class and text as in-process.
	ip, _ := NewInProcess(engine.DefaultModuleLimits())
	for _, bad := range [][]byte{[]byte("junk"), wasm[:len(wasm)/2]} {
		_, err1 := x.Prepare(context.Background(), bad)
		_, err2 := ip.Prepare(context.Background(), bad)
		if !errors.Is(err1, engine.ErrInvalidModule) || err1.Error() != err2.Error() {
			t.Fatalf("invalid module:\nsandboxed:  %v\nin-process: %v", err1, err2)
		}
	}
}
