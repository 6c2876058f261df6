package worker

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// startWorker runs Serve in a goroutine over a socket pair.
func startWorker(t *testing.T, mode string) (*boundary.Conn, chan int) {
	t.Helper()
	return startWorkerArgs(t, mode)
}

// startWorkerArgs is startWorker with the worker's whole argument list.
func startWorkerArgs(t *testing.T, args ...string) (*boundary.Conn, chan int) {
	t.Helper()
	h, s, err := boundary.Pair()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() { done <- Serve(s, args) }()
	c := boundary.NewConn(h)
	t.Cleanup(func() { h.Close(); <-done })
	if err := c.AwaitReady(map[string]boundary.Mode{"compile": boundary.ModeCompile, "canister": boundary.ModeCanister}[args[0]], nil); err != nil {
		t.Fatal(err)
	}
	return c, done
}

func input(ctx sysapi.Context, entry string, m64 bool, stable *state.PageMap) *sysapi.Input {
	return &sysapi.Input{
		Context: ctx, Entry: entry, Arg: []byte("DIDL\x00\x00"), Memory64: m64,
		CanisterID: []byte{0, 0, 0, 0, 0, 0, 0, 1, 1, 1}, Caller: []byte{4}, Status: sysapi.StatusRunning, Time: 1,
		Limits: sysapi.Limits{Instructions: 5e9, HeapBytes: 4 << 30, StableBytes: 1 << 30, ReplyBytes: 2 << 20,
			CallArgBytes: 2 << 20, MaxOutgoing: 100, DebugPrintBytes: 1024, MaxLogLines: 100},
		Stable: stable,
	}
}

// The worker compiles, loads and runs the counter exactly like the engine
// does in-process.
func TestWorkerCounter(t *testing.T) {
	wasm, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "canisters", "counter.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	comp, _ := startWorker(t, "compile")
	lim := engine.DefaultModuleLimits()
	errc := make(chan error, 1)
	go func() {
		errc <- comp.Send(&boundary.Msg{Kind: boundary.KindCompile, ID: 1, Body: boundary.EncodeCompile(&boundary.CompileRequest{Limits: lim, Wasm: wasm})})
	}()
	c, err := comp.AwaitCompiled(1, lim, len(wasm), 1<<30, nil)
	if err != nil || <-errc != nil {
		t.Fatal(err)
	}
	if c.Info.Methods["inc"] != engine.UpdateMethod {
		t.Fatalf("methods %v", c.Info.Methods)
	}
	// A bad module is refused with ErrInvalidModule.
	go func() {
		errc <- comp.Send(&boundary.Msg{Kind: boundary.KindCompile, ID: 2, Body: boundary.EncodeCompile(&boundary.CompileRequest{Limits: lim, Wasm: []byte("junk")})})
	}()
	_, err = comp.AwaitCompiled(2, lim, 4, 1<<30, nil)
	if re, ok := err.(*boundary.RemoteError); !ok || re.Code != boundary.ErrInvalidModule {
		t.Fatalf("junk module: %v", err)
	}
	<-errc

	// The in-process reference.
	e, err := engine.New(engine.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	ref, err := e.Compile(wasm, lim)
	if err != nil {
		t.Fatal(err)
	}

	art := filepath.Join(t.TempDir(), "a.cwasm")
	if err := os.WriteFile(art, c.Artifact, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(art)
	if err != nil {
		t.Fatal(err)
	}
	cw, _ := startWorker(t, "canister")
	go func() {
		errc <- cw.Send(&boundary.Msg{Kind: boundary.KindLoad, ID: 3, Body: boundary.EncodeHash(ref.Info.Hash), Files: []*os.File{f}})
	}()
	if err := cw.AwaitLoaded(3, ref.Info.Hash, nil); err != nil || <-errc != nil {
		t.Fatal(err)
	}
	f.Close()

	heap := state.NewPageMap(0)
	stable := state.NewPageMap(0)
	var globals []state.Global
	id := uint64(10)
	for i, step := range []struct {
		ctx   sysapi.Context
		entry string
		fresh bool
	}{
		{sysapi.CtxInit, "canister_init", true},
		{sysapi.CtxUpdate, "canister_update inc", false},
		{sysapi.CtxUpdate, "canister_update inc", false},
		{sysapi.CtxNonReplicatedQuery, "canister_query get", false},
		{sysapi.CtxUpdate, "canister_update nope", false},
	} {
		id++
		req := &engine.Request{Module: ref, Input: input(step.ctx, step.entry, ref.Info.Memory64, stable), RunStart: step.fresh}
		var sendHeap *state.PageMap
		if !step.fresh {
			req.Heap, req.Globals, sendHeap = heap, globals, heap
		}
		want, err := e.Run(req)
		if err != nil {
			t.Fatal(err)
		}
		boundary.Normalize(step.ctx, want)
		q := &boundary.ExecRequest{Module: ref.Info.Hash, RunStart: step.fresh, HasGlobals: globals != nil && !step.fresh, Globals: req.Globals,
			Input: input(step.ctx, step.entry, ref.Info.Memory64, stable)}
		go func() { errc <- cw.SendExecute(id, q, sendHeap, stable) }()
		got, err := cw.AwaitOutput(boundary.ExpectFor(id, q.Input, sendHeap, stable, ref.GlobalTypes()), nil)
		if err != nil || <-errc != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if !boundary.Equal(got, want) {
			t.Fatalf("step %d (%s): sandboxed output differs from in-process:\n%+v\n%+v", i, step.entry, got, want)
		}
		if !got.Trapped && !step.ctx.IsQuery() {
			if err := heap.Apply(got.Heap); err != nil {
				t.Fatal(err)
			}
			if err := stable.Apply(got.Stable); err != nil {
				t.Fatal(err)
			}
			globals = got.Globals
		}
		t.Logf("step %d %s: %d instructions, %d dirty pages, trapped=%v", i, step.entry, got.Instructions, len(got.Heap.Pages), got.Trapped)
	}
	// Ping, then a request the mode does not serve, then shutdown.
	go func() { errc <- cw.Send(&boundary.Msg{Kind: boundary.KindPing, ID: 50}) }()
	if err := cw.AwaitPong(50, nil); err != nil || <-errc != nil {
		t.Fatal(err)
	}
}
