package host

import (
	"context"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// sparseHeapWat has a 1 GiB heap it never writes; its free query reads one
// byte of every 4 KiB page.
const sparseHeapWat = `(module
  (import "ic0" "msg_reply" (func $reply))
  (memory 16384)
  (func (export "canister_update noop") (call $reply))
  (func (export "canister_query read") (local $p i32)
    (loop $l (drop (i32.load (local.get $p)))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get $p) (i32.const 0x40000000))))
    (call $reply)))`

// heapImageBytes returns the bytes allocated to id's heap image.
func (f *fixture) heapImageBytes(id principal.Principal) int64 {
	f.t.Helper()
	c, err := f.node.get(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	img := c.heap.File()
	if img == nil {
		f.t.Fatal("the heap has no image")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(img.Fd()), &st); err != nil {
		f.t.Fatal(err)
	}
	return st.Blocks * 512
}

// A free query that reads every page of a never-written 1 GiB heap does
// not fill the host's memory image of it with zero pages.
func TestSparseHeapQueryDoesNotFillTheImage(t *testing.T) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newModeFixture(t, mode)
			id := f.install(mustWat(t, sparseHeapWat), nil)
			f.update(id, "noop", nil)
			before := f.heapImageBytes(id)
			f.query(id, "read", nil)
			f.query(id, "read", nil)
			if grew := f.heapImageBytes(id) - before; grew > 1<<20 {
				t.Fatalf("the heap image grew by %d MiB", grew>>20)
			}
		})
	}
}
