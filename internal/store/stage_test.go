package store

import (
	"encoding/binary"
	"fmt"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/state"
)

// stagedPage is page i of a large replacement: its index in every word,
// or zeros for every 1000th page.
func stagedPage(i uint64) *state.Page {
	p := new(state.Page)
	if i%1000 == 999 {
		return p
	}
	for off := 0; off < state.PageSize; off += 8 {
		binary.LittleEndian.PutUint64(p[off:], i+1)
	}
	return p
}

// bigReplace replaces canister id's heap with n pages (more than one
// staging transaction holds).
func bigReplace(id []byte, version uint64, n uint64) Change {
	d := state.Delta{Size: n * state.PageSize}
	for i := range n {
		d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: stagedPage(i)})
	}
	return Change{ID: id, Meta: Meta{ID: fmt.Sprintf("%x", id), Version: version, HeapSize: d.Size},
		Heap: &MemoryChange{Replace: true, Delta: d}}
}

// stagingEmpty reports whether nothing is left staged.
func stagingEmpty(t *testing.T, s *Store) bool {
	t.Helper()
	empty := false
	if err := s.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketStaging).Cursor().First()
		empty = k == nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return empty
}

// checkHeap checks the stored heap of canister id: n staged pages of a
// replacement (n > 0), or the one page onePage(id, 1, 0, 1) wrote.
func checkHeap(t *testing.T, s *Store, id []byte, n uint64) {
	t.Helper()
	c, err := s.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if n == 0 {
		if c.Heap.NumStored() != 1 || c.Heap.Page(0)[0] != 1 {
			t.Fatalf("heap of %d pages, page 0 %v: not the one page committed first", c.Heap.NumStored(), c.Heap.Page(0) != nil)
		}
		return
	}
	if c.Heap.Size() != n*state.PageSize {
		t.Fatalf("heap of %d bytes, want %d", c.Heap.Size(), n*state.PageSize)
	}
	for i := range n {
		want := stagedPage(i)
		got := c.Heap.Page(i)
		if *want == *state.ZeroPage() {
			if got != nil {
				t.Fatalf("zero page %d stored", i)
			}
			continue
		}
		if got == nil || *got != *want {
			t.Fatalf("page %d differs", i)
		}
	}
}

// A replacement larger than a staging transaction is written in several
// and moved into place by the commit: the memory is exactly the new one,
// nothing stays staged, and it all survives a reopen.
func TestStagedReplace(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	id := []byte{1}
	if err := s.Commit(onePage(id, 1, 0, 1)); err != nil {
		t.Fatal(err)
	}
	const n = 2*stageBatchBytes/state.PageSize + 100
	before := s.SyncStats().Syncs
	if err := s.Commit(bigReplace(id, 2, n)); err != nil {
		t.Fatal(err)
	}
	if got := s.SyncStats().Syncs - before; got != 4 {
		t.Errorf("%d transactions, want 4 (three staging, one commit)", got)
	}
	if !stagingEmpty(t, s) {
		t.Fatal("pages left staged after the commit")
	}
	checkHeap(t, s, id, n)
	s.Close()
	s = openTest(t, dir)
	defer s.Close()
	checkHeap(t, s, id, n)
}

// A staged replacement whose commit fails (its request holds a change that
// cannot be stored) changes nothing and leaves nothing staged; nor does
// one whose commit never happens (a crash after staging: Open deletes what
// is staged).
func TestStagedReplaceFailure(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	id := []byte{1}
	if err := s.Commit(onePage(id, 1, 0, 1)); err != nil {
		t.Fatal(err)
	}
	const n = stageBatchBytes/state.PageSize + 10
	if err := s.Commit(bigReplace(id, 2, n), onePage(nil, 9, 0, 9)); err == nil {
		t.Fatal("a request with a bad change succeeded")
	}
	if !stagingEmpty(t, s) {
		t.Fatal("pages left staged after a failed commit")
	}
	checkHeap(t, s, id, 0)
	// Staged, then the process stops before the commit.
	if _, _, err := s.stage([]Change{bigReplace(id, 3, n)}); err != nil {
		t.Fatal(err)
	}
	if stagingEmpty(t, s) {
		t.Fatal("nothing staged")
	}
	checkHeap(t, s, id, 0)
	s.Close()
	s = openTest(t, dir)
	defer s.Close()
	if !stagingEmpty(t, s) {
		t.Fatal("Open left a crash's staged pages")
	}
	checkHeap(t, s, id, 0)
}
