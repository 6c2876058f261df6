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

// compileIn compiles a corpus canister in a compile-mode worker and returns
// its artifact as a file and its hash.
func compileIn(t *testing.T, e *engine.Engine, comp *boundary.Conn, id uint64, name string) (*os.File, [32]byte, *engine.Module) {
	t.Helper()
	wasm, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "canisters", name+".wasm"))
	if err != nil {
		t.Fatal(err)
	}
	lim := engine.DefaultModuleLimits()
	errc := make(chan error, 1)
	go func() {
		errc <- comp.Send(&boundary.Msg{Kind: boundary.KindCompile, ID: id, Body: boundary.EncodeCompile(&boundary.CompileRequest{Limits: lim, Wasm: wasm})})
	}()
	c, err := comp.AwaitCompiled(id, lim, len(wasm), 1<<30, nil)
	if err != nil || <-errc != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name+".cwasm")
	if err := os.WriteFile(path, c.Artifact, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	ref, err := e.Compile(wasm, lim)
	if err != nil {
		t.Fatal(err)
	}
	return f, ref.Info.Hash, ref
}

// Warm loads a module as Load does (answered by Loaded) and readies it;
// the canister's first execution after it gives exactly what the engine
// gives in-process. Warm is refused in compile mode, with an artifact of
// another module, and executions of another module are refused after it.
func TestWorkerWarm(t *testing.T) {
	e, err := engine.New(engine.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	comp, _ := startWorker(t, "compile")
	counter, hc, ref := compileIn(t, e, comp, 1, "counter")
	kv, hk, _ := compileIn(t, e, comp, 2, "kv")
	errc := make(chan error, 1)

	// Compile mode serves no Warm.
	go func() {
		errc <- comp.Send(&boundary.Msg{Kind: boundary.KindWarm, ID: 3, Body: boundary.EncodeHash(hc), Files: []*os.File{counter}})
	}()
	if err := comp.AwaitLoaded(3, hc, nil); !isRemote(err, boundary.ErrBadRequest) {
		t.Fatalf("warm in compile mode: %v", err)
	}
	<-errc

	// An artifact that is not the named module's is refused.
	cw, _ := startWorker(t, "canister")
	go func() {
		errc <- cw.Send(&boundary.Msg{Kind: boundary.KindWarm, ID: 4, Body: boundary.EncodeHash(hc), Files: []*os.File{kv}})
	}()
	if err := cw.AwaitLoaded(4, hc, nil); !isRemote(err, boundary.ErrArtifact) {
		t.Fatalf("warm with kv's artifact for counter: %v", err)
	}
	<-errc

	go func() {
		errc <- cw.Send(&boundary.Msg{Kind: boundary.KindWarm, ID: 5, Body: boundary.EncodeHash(hc), Files: []*os.File{counter}})
	}()
	if err := cw.AwaitLoaded(5, hc, nil); err != nil || <-errc != nil {
		t.Fatalf("warm: %v", err)
	}

	stable := state.NewPageMap(0)
	req := &engine.Request{Module: ref, Input: input(sysapi.CtxInit, "canister_init", false, stable), RunStart: true}
	want, err := e.Run(req)
	if err != nil {
		t.Fatal(err)
	}
	boundary.Normalize(sysapi.CtxInit, want)
	q := &boundary.ExecRequest{Module: hc, RunStart: true, Input: input(sysapi.CtxInit, "canister_init", false, stable)}
	go func() { errc <- cw.SendExecute(6, q, nil, stable) }()
	got, err := cw.AwaitOutput(boundary.ExpectFor(6, q.Input, nil, stable, ref.GlobalTypes()), nil)
	if err != nil || <-errc != nil {
		t.Fatalf("first execution after warm: %v", err)
	}
	if !boundary.Equal(got, want) {
		t.Fatalf("output after warm differs from in-process:\n%+v\n%+v", got, want)
	}

	// Only its module runs.
	qk := &boundary.ExecRequest{Module: hk, RunStart: true, Input: input(sysapi.CtxInit, "canister_init", false, stable)}
	go func() { errc <- cw.SendExecute(7, qk, nil, stable) }()
	if _, err := cw.AwaitOutput(boundary.ExpectFor(7, qk.Input, nil, stable, nil), nil); !isRemote(err, boundary.ErrBadRequest) {
		t.Fatalf("execution of another module after warm: %v", err)
	}
	<-errc
}

func isRemote(err error, code boundary.ErrorCode) bool {
	re, ok := err.(*boundary.RemoteError)
	return ok && re.Code == code
}

// Warm runs on an executor that stays for the first execution: after Warm
// one executor exists (its stack grown, engine.Warm's instance made on it)
// and waits, and the first execution runs on it and on Warm's instance,
// starting no executor and instantiating nothing.
func TestWarmRunsOnFirstExecutor(t *testing.T) {
	m, path := compiledArtifact(t, spinQuickWat)
	w, we, h, c, done := loopingWorker(t)
	defer func() {
		h.Close()
		<-done
	}()

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	errc := make(chan error, 1)
	go func() {
		errc <- c.Send(&boundary.Msg{Kind: boundary.KindWarm, ID: 1, Body: boundary.EncodeHash(m.Info.Hash), Files: []*os.File{f}})
	}()
	if err := c.AwaitLoaded(1, m.Info.Hash, nil); err != nil || <-errc != nil {
		t.Fatalf("warm: %v", err)
	}
	if n, live := w.started.Load(), w.live.Load(); n != 1 || live != 1 || !we.Fresh() {
		t.Fatalf("after Warm: %d executors started, %d live, fresh instance %v; want 1, 1, true", n, live, we.Fresh())
	}
	infl := boundary.NewInflight(c)
	sendQuery(t, c, infl, m, 2, "canister_query quick", 1_000_000, state.NewPageMap(0))
	if _, out, err := infl.Next(nil); err != nil || out.Trapped {
		t.Fatalf("first execution: %v %+v", err, out)
	}
	if n := w.started.Load(); n != 1 || we.Fresh() {
		t.Fatalf("the first execution started an executor (%d started) or instantiated afresh (fresh instance left: %v)", n, we.Fresh())
	}
}
