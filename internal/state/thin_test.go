package state

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"
)

// A clone of a backed page map holds only the pages in which it differs
// from the image (its own writes, the pages commits overwrote since it was
// taken), whatever the memory's size: taking one, and giving it to an
// execution as layers, costs those pages. Everything else it reads from
// the image, and reading the image's holes through it does not fill them.
func TestCloneHoldsOnlyItsPages(t *testing.T) {
	const n = 4096 // 16 MiB
	idx := make([]uint64, 0, n/2)
	for i := uint64(0); i < n; i += 2 { // every other page: the rest are holes
		idx = append(idx, i)
	}
	m := backed(t, n, 1, idx...)
	defer m.Release()
	want := mapBytes(t, m)
	c := m.Clone()
	defer c.Release()
	held := func() int {
		m.img.mu.Lock()
		defer m.img.mu.Unlock()
		return len(c.pages)
	}
	if k := held(); k != 0 {
		t.Fatalf("a fresh clone holds %d pages of a memory of %d", k, n)
	}
	if l, ok := c.Layers(); !ok || len(l.Pages) != 0 || l.Base != n*PageSize {
		t.Fatalf("a fresh clone's layers: %v, %d pages over %d bytes", ok, len(l.Pages), l.Base)
	}
	// A commit over a data page and a hole, and the clone's own write.
	if err := m.Apply(Delta{Size: n * PageSize, Pages: []DirtyPage{{Index: 10, Data: numbered(10, 2)}, {Index: 11, Data: numbered(11, 2)}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(Delta{Size: n * PageSize, Pages: []DirtyPage{{Index: 101, Data: numbered(101, 3)}}}); err != nil {
		t.Fatal(err)
	}
	copy(want[101*PageSize:], numbered(101, 3)[:])
	if k := held(); k != 2 { // the old page 10 and its own page 101; page 11 was zeros
		t.Fatalf("the clone holds %d pages, want 2", k)
	}
	if l, ok := c.Layers(); !ok || len(l.Pages) != 3 {
		t.Fatalf("the clone's layers: %v, %d pages laid, want 3 (10, 11, 101)", ok, len(l.Pages))
	}
	var before unix.Stat_t
	if err := unix.Fstat(int(m.File().Fd()), &before); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mapBytes(t, c), want) {
		t.Fatal("the clone does not read the memory it was taken from")
	}
	if got := c.StoredPages(); len(got) != n/2+1 {
		t.Fatalf("the clone stores %d pages, want %d", len(got), n/2+1)
	}
	var after unix.Stat_t
	if err := unix.Fstat(int(m.File().Fd()), &after); err != nil {
		t.Fatal(err)
	}
	if after.Blocks != before.Blocks {
		t.Fatalf("reading the clone filled the image's holes: %d blocks, then %d", before.Blocks, after.Blocks)
	}
}
