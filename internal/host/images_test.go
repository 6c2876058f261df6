package host

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/cordon-dev/cordon/pkg/principal"
)

const imageCounterWAT = `(module
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func (export "canister_update inc")
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (call $append (i32.const 0) (i32.const 4))
    (call $reply)))`

// Only the MemoryImages most recently executed canisters keep their memory
// images (two descriptors and a copy of the heap each); the others give
// theirs back and build them again, with the same state, when they next
// run. A canister whose lock is held keeps its images.
func TestMemoryImagesBounded(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "")
	cfg.MemoryImages = 2
	f := openFixture(t, cfg)
	wasm := mustWat(t, imageCounterWAT)
	ids := map[string]principal.Principal{}
	inc := func(name string, want uint32) {
		t.Helper()
		got := f.update(ids[name], "inc", noArgs)
		if len(got) != 4 || binary.LittleEndian.Uint32(got) != want {
			t.Fatalf("%s inc = %x, want %d", name, got, want)
		}
		// The reply can come before the canister's queue goroutine lets
		// go of its lock; until it does, the canister counts as busy and
		// keeps its images (seen under the race detector). Wait for it.
		c, err := f.node.get(context.Background(), ids[name])
		if err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		_ = c.heap.HasImage()
		c.mu.Unlock()
	}
	can := func(name string) *canister {
		t.Helper()
		c, err := f.node.get(context.Background(), ids[name])
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	imaged := func(want map[string]bool) {
		t.Helper()
		for name, w := range want {
			if got := can(name).heap.HasImage(); got != w {
				t.Errorf("%s has an image: %v, want %v", name, got, w)
			}
		}
	}
	for _, name := range []string{"a", "b", "c", "d"} {
		ids[name] = f.install(wasm, noArgs)
	}
	for _, name := range []string{"a", "b", "c", "d"} {
		inc(name, 1)
	}
	imaged(map[string]bool{"a": false, "b": false, "c": true, "d": true})
	// a runs again from its page map, and has its image back; c, now the
	// coldest, gives its up.
	inc("a", 2)
	inc("a", 3)
	imaged(map[string]bool{"a": true, "b": false, "c": false, "d": true})
	// Running again put a's memory back to one host copy: its pages are
	// its image's, not copies beside it.
	if !can("a").heap.Backed() || !can("a").stable.Backed() {
		t.Fatal("a ran again but its memory is not backed by its image")
	}
	if can("c").heap.Backed() {
		t.Fatal("c gave up its image but its memory still reads through one")
	}
	// d is busy (its lock held): it keeps its image while b and c run.
	d := can("d")
	d.mu.Lock()
	inc("b", 2)
	inc("c", 2)
	d.mu.Unlock()
	imaged(map[string]bool{"a": false, "b": false, "c": true, "d": true})
	inc("d", 2)
	inc("b", 3)
	imaged(map[string]bool{"b": true, "c": false, "d": true})
	// A restart builds everything from the store: the counts survived.
	f.restart()
	for name, want := range map[string]uint32{"a": 4, "b": 4, "c": 3, "d": 3} {
		inc(name, want)
	}
}
