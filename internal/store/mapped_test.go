package store

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/state"
)

// rssFile is the process's resident file-backed memory (/proc/self/status).
func rssFile(t *testing.T) uint64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RssFile:"); ok {
			n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n << 10
		}
	}
	t.Skip("no RssFile in /proc/self/status")
	return 0
}

// heapOf is a delta writing n pages, each filled with b.
func heapOf(n uint64, b byte) state.Delta {
	d := state.Delta{Size: n * state.PageSize}
	for i := range n {
		p := new(state.Page)
		for k := range p {
			p[k] = b
		}
		d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: p})
	}
	return d
}

// Overwriting a large memory makes bbolt read every old page through its
// mapping; those pages must not stay resident in the process after the
// commit (they are the file's, a second copy of the memory), and the store
// must read back exactly what was committed afterwards.
func TestLargeCommitReleasesMappedPages(t *testing.T) {
	const pages = 96 << 20 / state.PageSize
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id := []byte{7}
	meta := Meta{ID: "big", HeapSize: pages * state.PageSize}
	if err := s.Commit(Change{ID: id, Meta: meta, Heap: &MemoryChange{Replace: true, Delta: heapOf(pages, 1)}}); err != nil {
		t.Fatal(err)
	}
	before := rssFile(t)
	if err := s.Commit(Change{ID: id, Meta: meta, Heap: &MemoryChange{Delta: heapOf(pages, 2)}}); err != nil {
		t.Fatal(err)
	}
	if after := rssFile(t); after > before+16<<20 {
		t.Fatalf("file-backed RSS %d MiB → %d MiB after overwriting %d MiB", before>>20, after>>20, pages*state.PageSize>>20)
	}
	c, err := s.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []uint64{0, pages / 2, pages - 1} {
		if p := c.Heap.Page(i); p == nil || p[0] != 2 || p[state.PageSize-1] != 2 {
			t.Fatalf("page %d after the overwrite", i)
		}
	}
	if n := len(c.Heap.StoredPages()); n != pages {
		t.Fatalf("%d pages stored, want %d", n, pages)
	}
	if after := rssFile(t); after > before+16<<20 {
		t.Fatalf("file-backed RSS %d MiB → %d MiB after loading %d MiB", before>>20, after>>20, pages*state.PageSize>>20)
	}
	if err := s.releaseMapped(); err != nil {
		t.Fatal(err)
	}
}

// The mapping is found by device and inode, whatever path the store was
// opened by, and another file's mapping at that address is refused.
func TestMappingEnd(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	s, err := Open("rel", time.Second) // a relative path
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.releaseMapped(); err != nil {
		t.Fatal(err)
	}
	other, err := os.CreateTemp(dir, "other")
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
	if _, err := mappingEnd(s.db.Info().Data, other.Name()); err == nil {
		t.Fatal("the store's mapping was taken for another file's")
	}
}
