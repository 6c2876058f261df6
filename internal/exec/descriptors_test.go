package exec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// withCustomSection returns wasm with a custom section appended: the same
// module to the engine, a different module hash (another compilation).
func withCustomSection(wasm []byte, payload string) []byte {
	name := "cordon-test"
	body := append([]byte{byte(len(name))}, name...)
	body = append(body, payload...)
	out := append([]byte(nil), wasm...)
	out = append(out, 0) // custom section id
	for n := len(body); ; n >>= 7 {
		if n < 0x80 {
			out = append(out, byte(n))
			break
		}
		out = append(out, byte(n&0x7f|0x80))
	}
	return append(out, body...)
}

// Compilations of different modules run in at most MaxCompiles compiler
// sandboxes at once, however many are asked for together (a canister can
// send install_code calls for many canisters it controls, each handled at
// once): the others wait, and every one completes.
func TestCompilesBounded(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	x, _ := newPooled(t, SandboxConfig{MaxCompiles: 2})
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = x.Prepare(context.Background(), withCustomSection(wasm, fmt.Sprint("module ", i)))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("prepare %d: %v", i, err)
		}
	}
	if st := x.Stats(); st.Compiles != n || st.MostCompiles < 1 || st.MostCompiles > 2 {
		t.Fatalf("%d compilations, at most %d at once: want %d, at most 2", st.Compiles, st.MostCompiles, n)
	}
	// A compilation waiting for a slot gives up with its context.
	x.compileSlots <- struct{}{}
	x.compileSlots <- struct{}{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := x.Prepare(ctx, withCustomSection(wasm, "waits"))
	<-x.compileSlots
	<-x.compileSlots
	if err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("prepare with every slot taken and a cancelled context: %v", err)
	}
	s := newSim(t, x, "c", withCustomSection(wasm, "module 5"))
	s.must(sysapi.CtxInit, "canister_init", empty)
}

// Each live sandbox holds at most HostDescriptorsPerSandbox host
// descriptors, the figure a node's descriptor budget counts on (the memory
// images the test's canisters keep and the sealed artifacts are counted
// apart).
func TestHostDescriptorsPerSandbox(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	x, _ := newPooled(t, SandboxConfig{})
	sandboxFDs := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range ents {
			l, _ := os.Readlink("/proc/self/fd/" + e.Name())
			if !strings.HasPrefix(l, "/memfd:cordon-memory") && !strings.HasPrefix(l, "/memfd:cordon-artifact") {
				n++
			}
		}
		return n
	}
	first := newSim(t, x, "first", wasm) // the spawner and the artifact
	first.must(sysapi.CtxInit, "canister_init", empty)
	before := sandboxFDs()
	const n = 5
	for i := range n {
		s := newSim(t, x, fmt.Sprint("c", i), wasm)
		s.must(sysapi.CtxInit, "canister_init", empty)
		s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty)
	}
	if got := sandboxFDs() - before; got < n || got > n*HostDescriptorsPerSandbox {
		t.Fatalf("%d live sandboxes hold %d host descriptors, want %d to %d: %s", n, got, n, n*HostDescriptorsPerSandbox, fdList())
	}
}

// The sealed artifact cache holds at most its number of memfds, whatever
// their bytes: the least recently used are closed.
func TestSealedArtifactsBounded(t *testing.T) {
	c := newSealedCache(1<<30, 3)
	defer c.close()
	var files []*os.File
	for i := range 5 {
		f, _, size, err := sealedMemfd("test", strings.NewReader(fmt.Sprint("artifact ", i)), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if !c.put([32]byte{byte(i)}, f, size) {
			t.Fatalf("artifact %d not kept", i)
		}
		files = append(files, f)
	}
	if c.count() != 3 {
		t.Fatalf("%d memfds held, want 3", c.count())
	}
	for i, f := range files {
		_, err := f.Stat()
		if closed := err != nil; closed != (i < 2) {
			t.Fatalf("artifact %d: closed=%v (%v), want the two oldest closed", i, closed, err)
		}
		if g, _ := c.get([32]byte{byte(i)}); (g != nil) != (i >= 2) {
			t.Fatalf("artifact %d cached=%v", i, g != nil)
		} else if g != nil {
			g.Close()
		}
	}
	if c0 := newSealedCache(1<<30, 0); c0.put([32]byte{9}, files[4], 1) {
		t.Fatal("a cache of no memfds kept one")
	}
}

// In process too, compilations wait for one of DefaultMaxCompiles slots,
// bounded by their context.
func TestInProcessCompilesBounded(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	x, err := NewInProcess(engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	if cap(x.compiling) != DefaultMaxCompiles() {
		t.Fatalf("%d compile slots, want %d", cap(x.compiling), DefaultMaxCompiles())
	}
	for range cap(x.compiling) {
		x.compiling <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := x.Prepare(ctx, wasm); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("prepare with every slot taken: %v", err)
	}
	<-x.compiling
	if _, err := x.Prepare(context.Background(), wasm); err != nil {
		t.Fatal(err)
	}
}
