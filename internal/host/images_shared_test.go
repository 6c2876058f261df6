package host

import (
	"context"
	"testing"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// A canister whose images cannot be given back when it is the coldest (a
// composite query's frame, still running, shares them) stays in the
// bound's order and gives them back at a later turn. It was dropped from the order instead, so it kept its images (two
// descriptors each memory) until it next executed, outside the bound: a
// canister that never runs again kept them for the node's life, and one
// that is made the coldest while a frame of it lives, again and again,
// takes the node past MemoryImages, up to its descriptor limit.
func TestMemoryImagesGivenBackAfterAFrame(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "")
	cfg.MemoryImages = 1
	f := openFixture(t, cfg)
	wasm := mustWat(t, imageCounterWAT)
	ids := map[string]principal.Principal{}
	can := func(name string) *canister {
		t.Helper()
		c, err := f.node.get(context.Background(), ids[name])
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	inc := func(name string) {
		t.Helper()
		f.update(ids[name], "inc", noArgs)
		c := can(name)
		c.mu.Lock() // its queue goroutine has let go (TestMemoryImagesBounded)
		_ = c.heap.HasImage()
		c.mu.Unlock()
	}
	for _, name := range []string{"a", "b", "c"} {
		ids[name] = f.install(wasm, noArgs)
	}
	inc("a")
	// A frame of a's memories, as a composite query takes under a's
	// read lock and holds between its executions.
	a := can("a")
	a.mu.RLock()
	heap, stable := a.heap.Clone(), a.stable.Clone()
	a.mu.RUnlock()
	inc("b") // a is the coldest: its images are shared, so it keeps them
	if !a.heap.HasImage() {
		t.Fatal("a gave up images a frame shares")
	}
	heap.Release()
	stable.Release()
	// The frame is over: the next turns give a's images back.
	inc("c")
	inc("b")
	inc("c")
	if a.heap.HasImage() || a.heap.Backed() {
		t.Fatalf("a kept its images after its frame ended and other canisters ran (MemoryImages %d)", cfg.MemoryImages)
	}
}
