package exec

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/internal/worker"
)

// artifactFiles lists the files of h's artifact in the cache.
func artifactFiles(t *testing.T, x *Sandboxed, h [32]byte) []string {
	t.Helper()
	var out []string
	for _, ext := range []string{".cwasm", ".info"} {
		if _, err := os.Stat(x.artifactPath(h, ext)); err == nil {
			out = append(out, filepath.Base(x.artifactPath(h, ext)))
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	return out
}

// A module the host forgets loses its files and sealed memfd at once,
// while a sandbox that loaded it goes on running it (it holds its own
// descriptor), and a canister that loads it afterwards gets it compiled
// again from its Wasm instead of failing.
func TestForgetModuleKeepsLoadedSandboxes(t *testing.T) {
	x := newReal(t)
	wasm := wasmFile(t, corpusDir, "counter")
	h := sha256.Sum256(wasm)
	a := newSim(t, x, "a", wasm)
	a.must(sysapi.CtxInit, "canister_init", empty)
	if len(artifactFiles(t, x, h)) != 2 || x.sealed.count() != 1 {
		t.Fatalf("after the install: files %v, %d sealed memfds", artifactFiles(t, x, h), x.sealed.count())
	}
	x.ForgetModule(h)
	if fs := artifactFiles(t, x, h); len(fs) != 0 || x.sealed.count() != 0 {
		t.Fatalf("forgotten module: files %v, %d sealed memfds kept", fs, x.sealed.count())
	}
	compiles := x.Stats().Compiles
	if out := a.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("a after the forget: inc: %x", out.Reply)
	}
	if c := x.Stats().Compiles; c != compiles {
		t.Fatalf("a's loaded sandbox compiled again (%d → %d)", compiles, c)
	}
	// b runs the module a holds (prepared before the forget), as a
	// canister loaded earlier would.
	b := &sim{t: t, x: x, id: "b", m: a.m, stable: state.NewPageMap(0)}
	b.must(sysapi.CtxInit, "canister_init", empty)
	if out := b.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("b: inc: %x", out.Reply)
	}
	if len(artifactFiles(t, x, h)) != 2 {
		t.Fatalf("b's load did not compile the module again: files %v", artifactFiles(t, x, h))
	}
}

// A compiler that returns an artifact far larger than its module could
// make (a module that took over the compiler, or a tiny module compiled
// again and again) is refused: no artifact of more than
// artifactLimit(module size) reaches the cache.
func TestHostileCompilerArtifactBound(t *testing.T) {
	wasm, err := wasmtime.Wat2Wasm(`(module (func (export "canister_query q")))`)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := engine.New(engine.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	var padTo int
	launch := func(ctx context.Context, spec sandbox.Spec) (Process, error) {
		host, child, err := boundary.Pair()
		if err != nil {
			return nil, err
		}
		p := &fakeProc{host: host, child: child, pid: int(fakePids.Add(1)), killed: make(chan struct{}), done: make(chan struct{})}
		if spec.Args[0] != boundary.ModeCompile.String() {
			go func() { defer close(p.done); worker.Serve(child, spec.Args) }()
			return p, nil
		}
		pad := padTo
		go func() {
			defer close(p.done)
			defer child.Close()
			bloatedCompiler(t, ref, child, pad)
		}()
		return p, nil
	}
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), Launch: launch})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	limit := x.artifactLimit(len(wasm))
	if limit >= x.cfg.MaxArtifactBytes {
		t.Fatalf("the bound for a %d-byte module is the absolute one (%d)", len(wasm), limit)
	}
	padTo = int(limit) + 1
	_, err = x.Prepare(context.Background(), wasm)
	var v *boundary.Violation
	if !errors.As(err, &v) {
		t.Fatalf("an artifact of %d bytes for a module of %d: %v, want a violation", padTo, len(wasm), err)
	}
	if fs := artifactFiles(t, x, sha256.Sum256(wasm)); len(fs) != 0 {
		t.Fatalf("refused artifact cached: %v", fs)
	}
	// The same compiler within the bound is an honest one.
	padTo = int(limit)
	if _, err := x.Prepare(context.Background(), wasm); err != nil {
		t.Fatalf("an artifact at the bound: %v", err)
	}
}

// bloatedCompiler compiles the module it is sent honestly and pads the
// artifact to padTo bytes.
func bloatedCompiler(t *testing.T, ref *engine.Engine, child *net.UnixConn, padTo int) {
	c := boundary.NewConn(child)
	if c.Send(&boundary.Msg{Kind: boundary.KindReady, Body: boundary.EncodeReady(boundary.ModeCompile)}) != nil {
		return
	}
	q, err := c.NextRequest()
	if err != nil || q.Kind != boundary.KindCompile {
		return
	}
	m, err := ref.Compile(q.Compile.Wasm, q.Compile.Limits)
	if err != nil {
		t.Error(err)
		return
	}
	art, err := m.Serialize()
	if err != nil {
		t.Error(err)
		return
	}
	art = append(art, make([]byte, max(padTo-len(art), 0))...)
	body := boundary.EncodeCompiled(&boundary.Compiled{Info: m.Info, GlobalTypes: m.GlobalTypes(), Artifact: art})
	if c.Send(&boundary.Msg{Kind: boundary.KindCompiled, ID: q.ID, Body: body}) == nil {
		_, _ = c.NextRequest() // until the host kills it (closes child)
	}
}

// dirBytes is the bytes of the files in dir.
func dirBytes(t *testing.T, dir string) uint64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		n += uint64(fi.Size())
	}
	return n
}

// The artifact cache on disk stays within its bound: compiling a module
// beyond it removes the least recently used artifacts of modules no live
// sandbox runs, while the artifact of the module a canister's sandbox runs
// stays. A module whose artifact went still runs (its sealed memfd, or
// compiled again).
func TestArtifactCacheBound(t *testing.T) {
	small := func(i int) []byte {
		wasm, err := wasmtime.Wat2Wasm(fmt.Sprintf(`(module (import "ic0" "msg_reply" (func $reply)) (func (export "canister_query q%02d") (call $reply)))`, i))
		if err != nil {
			t.Fatal(err)
		}
		return wasm
	}
	// The sizes of the artifacts, measured in a cache without a bound.
	probe, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	counter := wasmFile(t, corpusDir, "counter")
	var sizes []uint64
	for _, w := range [][]byte{counter, small(0)} {
		before := dirBytes(t, probe.cfg.Dir)
		if _, err := probe.Prepare(context.Background(), w); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, dirBytes(t, probe.cfg.Dir)-before)
	}
	probe.Close()
	t.Logf("artifacts: counter %d bytes, a small module %d", sizes[0], sizes[1])
	// Room for counter's artifact and one and a half small ones.
	dir := t.TempDir()
	x, err := NewSandboxed(SandboxConfig{Dir: dir, Logger: testLogger(t), ArtifactCacheBytes: sizes[0] + sizes[1] + sizes[1]/2})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	a := newSim(t, x, "a", counter)
	a.must(sysapi.CtxInit, "canister_init", empty) // a live sandbox runs counter
	var mods []*sim
	for i := range 4 {
		mods = append(mods, newSim(t, x, fmt.Sprintf("s%d", i), small(i)))
		if used := dirBytes(t, dir); used > x.cfg.ArtifactCacheBytes {
			t.Fatalf("after %d modules the cache holds %d bytes, beyond its bound of %d", i+1, used, x.cfg.ArtifactCacheBytes)
		}
	}
	if fs := artifactFiles(t, x, sha256.Sum256(counter)); len(fs) != 2 {
		t.Fatalf("the artifact a live sandbox runs was removed: %v", fs)
	}
	if fs := artifactFiles(t, x, sha256.Sum256(small(3))); len(fs) != 2 {
		t.Fatalf("the artifact just compiled was removed: %v", fs)
	}
	if fs := artifactFiles(t, x, sha256.Sum256(small(0))); len(fs) != 0 {
		t.Fatalf("the least recently used artifact was kept: %v", fs)
	}
	// The evicted module's canister still runs.
	if out := mods[0].must(sysapi.CtxNonReplicatedQuery, "canister_query q00", empty); out.Trapped {
		t.Fatalf("q00 after its artifact was evicted: %s", out.TrapMessage)
	}
	if out := a.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("a: inc: %x", out.Reply)
	}
}

// A small module whose data segments lie far apart has a large memory
// image: wasmtime puts one image of everything between the first and the
// last initialized byte into the artifact when it is under 16 MiB, so a
// module of about a hundred bytes compiles to an artifact of about 16 MiB.
// Both executors run it alike: the sandboxed one does not take its artifact
// for a compiler's lie (artifactLimit).
func TestSparseDataImageInBothModes(t *testing.T) {
	const high = 16<<20 - 8<<10 // the image ends just under 16 MiB
	wasm, err := wasmtime.Wat2Wasm(fmt.Sprintf(`(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory 256)
  (data (i32.const 0) "a")
  (data (i32.const %d) "b")
  (func (export "canister_init"))
  (func (export "canister_query high")
    (call $append (i32.const %d) (i32.const 1))
    (call $reply)))`, high, high))
	if err != nil {
		t.Fatal(err)
	}
	inproc, err := NewInProcess(engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer inproc.Close()
	for _, mode := range []struct {
		name string
		x    Executor
	}{{"inprocess", inproc}, {"sandbox", newReal(t)}} {
		t.Run(mode.name, func(t *testing.T) {
			m, err := mode.x.Prepare(context.Background(), wasm)
			if err != nil {
				t.Fatalf("a %d-byte module with data at 0 and %d: %v", len(wasm), high, err)
			}
			s := &sim{t: t, x: mode.x, id: "sparse", m: m, stable: state.NewPageMap(0)}
			s.must(sysapi.CtxInit, "canister_init", empty)
			if out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query high", empty); string(out.Reply) != "b" {
				t.Fatalf("the byte at %d: %q (trapped %v: %s)", high, out.Reply, out.Trapped, out.TrapMessage)
			}
		})
	}
}
