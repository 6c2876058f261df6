package engine

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

func corpus(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "canisters", name+".wasm"))
	if err != nil {
		t.Fatalf("corpus module %s: %v", name, err)
	}
	return b
}

func testInput(ctx sysapi.Context, entry string, arg []byte, m *Module) *sysapi.Input {
	return &sysapi.Input{
		Context: ctx, Entry: entry, Arg: arg, Memory64: m.Info.Memory64,
		CanisterID: []byte{0, 0, 0, 0, 0, 0, 0, 1, 1, 1}, Caller: []byte{4},
		Status: sysapi.StatusRunning, Time: 1,
		Limits: sysapi.Limits{Instructions: 5e9, HeapBytes: 4 << 30, StableBytes: 1 << 30, ReplyBytes: 2 << 20,
			CallArgBytes: 2 << 20, MaxOutgoing: 100, DebugPrintBytes: 1024, MaxLogLines: 100},
		Stable: state.NewPageMap(0),
	}
}

// canister is a minimal stand-in for the host: it applies outputs.
type canister struct {
	m       *Module
	heap    *state.PageMap
	stable  *state.PageMap
	globals []state.Global
}

func (c *canister) run(t *testing.T, e *Engine, ctx sysapi.Context, entry string, arg []byte, fresh bool) *sysapi.Output {
	t.Helper()
	in := testInput(ctx, entry, arg, c.m)
	in.Stable = c.stable
	req := &Request{Module: c.m, Input: in, RunStart: fresh}
	if !fresh {
		req.Heap, req.Globals = c.heap, c.globals
	}
	out, err := e.Run(req)
	if err != nil {
		t.Fatalf("%s: %v", entry, err)
	}
	if out.Trapped || ctx.IsQuery() {
		return out
	}
	if fresh {
		c.heap = state.NewPageMap(0)
	}
	if err := c.heap.Apply(out.Heap); err != nil {
		t.Fatal(err)
	}
	if err := c.stable.Apply(out.Stable); err != nil {
		t.Fatal(err)
	}
	c.globals = out.Globals
	return out
}

func TestCounterInstallUpdateQuery(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(corpus(t, "counter"), DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	if m.Info.Methods["inc"] != UpdateMethod || m.Info.Methods["get"] != QueryMethod {
		t.Fatalf("methods: %v", m.Info.Methods)
	}
	c := &canister{m: m, stable: state.NewPageMap(0)}
	empty := []byte("DIDL\x00\x00")
	if out := c.run(t, e, sysapi.CtxInit, "canister_init", empty, true); out.Trapped {
		t.Fatalf("init trapped: %s", out.TrapMessage)
	}
	for i := 1; i <= 3; i++ {
		out := c.run(t, e, sysapi.CtxUpdate, "canister_update inc", empty, false)
		if out.Trapped {
			t.Fatalf("inc trapped: %s", out.TrapMessage)
		}
		want := []byte{'D', 'I', 'D', 'L', 0, 1, 0x7d, byte(i)}
		if !bytes.Equal(out.Reply, want) {
			t.Fatalf("inc %d: reply %x want %x", i, out.Reply, want)
		}
		t.Logf("inc %d: %d instructions, %d dirty heap pages", i, out.Instructions, len(out.Heap.Pages))
	}
	out := c.run(t, e, sysapi.CtxNonReplicatedQuery, "canister_query get", empty, false)
	if out.Trapped || !bytes.Equal(out.Reply, []byte("DIDL\x00\x01\x7d\x03")) {
		t.Fatalf("get: %+v", out)
	}
	// Determinism: the same message on the same state costs the same.
	a := c.run(t, e, sysapi.CtxNonReplicatedQuery, "canister_query get", empty, false)
	b := c.run(t, e, sysapi.CtxNonReplicatedQuery, "canister_query get", empty, false)
	if a.Instructions != b.Instructions || a.Instructions == 0 {
		t.Fatalf("instructions differ: %d vs %d", a.Instructions, b.Instructions)
	}
	// A call outside its context traps with a message naming it.
	out = c.run(t, e, sysapi.CtxInit, "canister_update inc", empty, false)
	if !out.Trapped || !bytes.Contains([]byte(out.TrapMessage), []byte("ic0.msg_reply")) {
		t.Fatalf("msg_reply in init: %+v", out)
	}
}
