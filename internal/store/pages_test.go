package store

import (
	"errors"
	"math/rand"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/state"
)

// TestPageRunsMatchModel commits random mixes of whole chunks, parts of
// chunks and zeroed pages over one heap, reopening the store now and then,
// and checks that what loads is what was committed, and that the store
// holds whole chunks as runs.
func TestPageRunsMatchModel(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	const pages = 6 * runPages
	size := uint64(pages * state.PageSize)
	id := []byte{7}
	meta := Meta{ID: "runs", HeapSize: size}
	want := memModel{size: size, pages: map[uint64]*state.Page{}}
	for step := range 60 * raceScale {
		var d []state.DirtyPage
		replace := step == 0 || rng.Intn(10) == 0
		if replace {
			want.pages = map[uint64]*state.Page{}
		}
		for c := range uint64(pages / runPages) {
			switch rng.Intn(4) {
			case 0: // untouched
			case 1: // whole chunk, non-zero
				for i := c * runPages; i < (c+1)*runPages; i++ {
					d = append(d, state.DirtyPage{Index: i, Data: pageOf(byte(rng.Intn(255) + 1))})
				}
			default: // some pages, some of them zero
				for i := c * runPages; i < (c+1)*runPages; i++ {
					switch rng.Intn(3) {
					case 0:
						d = append(d, state.DirtyPage{Index: i, Data: pageOf(byte(rng.Intn(255) + 1))})
					case 1:
						d = append(d, state.DirtyPage{Index: i, Data: state.ZeroPage()})
					}
				}
			}
		}
		for _, p := range d {
			if *p.Data == *state.ZeroPage() {
				delete(want.pages, p.Index)
			} else {
				want.pages[p.Index] = p.Data
			}
		}
		if err := s.Commit(Change{ID: id, Create: step == 0, Meta: meta, Heap: &MemoryChange{Replace: replace, Delta: state.Delta{Size: size, Pages: d}}}); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if rng.Intn(8) == 0 {
			s.Close()
			if s, err = Open(dir, time.Second); err != nil {
				t.Fatal(err)
			}
		}
		c, err := s.Load(id)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		checkMem(t, "heap", c.Heap, want)
		c.Release()
		checkRuns(t, s, id, want)
	}
}

// checkRuns checks that the heap's chunks whose pages are all non-zero
// and were last written together are runs, and no entry overlaps another:
// here, that every run holds a whole non-zero chunk.
func checkRuns(t *testing.T, s *Store, id []byte, want memModel) {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		var next uint64
		return tx.Bucket(bucketCanisters).Bucket(id).Bucket(keyHeap).ForEach(func(k, v []byte) error {
			first, n, err := storedPages(k, v, next, want.size/state.PageSize)
			if err != nil {
				return err
			}
			next = first + n
			for i := first; i < first+n; i++ {
				if want.pages[i] == nil {
					t.Fatalf("page %d stored (run at %d), want zero", i, first)
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCommitWritesAboutOnePagePerDirtyPage commits whole chunks of a heap
// over and over and checks the store pages bbolt allocates per dirty page:
// one 4 KiB page per 4 KiB value was about 1.5 store pages (leaves of two
// values and a header).
func TestCommitWritesAboutOnePagePerDirtyPage(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const pages = 64 * runPages
	size := uint64(pages * state.PageSize)
	id := []byte{1}
	meta := Meta{ID: "amp", HeapSize: size}
	data := make([]state.Page, pages)
	d := make([]state.DirtyPage, pages)
	for i := range d {
		data[i][0] = 1
		d[i] = state.DirtyPage{Index: uint64(i), Data: &data[i]}
	}
	if err := s.Commit(Change{ID: id, Create: true, Meta: meta, Heap: &MemoryChange{Replace: true, Delta: state.Delta{Size: size, Pages: d}}}); err != nil {
		t.Fatal(err)
	}
	// The first commits may still turn single pages into runs.
	var alloc int64
	const rounds = 4
	for r := range rounds + 2 {
		for i := range data {
			data[i][1]++
		}
		before := pageAlloc(s)
		if err := s.Commit(Change{ID: id, Meta: meta, Heap: &MemoryChange{Delta: state.Delta{Size: size, Pages: d}}}); err != nil {
			t.Fatal(err)
		}
		if r >= 2 {
			alloc += pageAlloc(s) - before
		}
	}
	perPage := float64(alloc) / rounds / pages
	t.Logf("%.0f bytes allocated per dirty page", perPage)
	if perPage > 1.1*state.PageSize {
		t.Fatalf("%.0f bytes of store pages per dirty 4 KiB page, want at most %.0f", perPage, 1.1*state.PageSize)
	}
}

// TestOldFormatStoreIsRead opens a store of the format before page runs
// (single pages only, format key cordon-store-1): its pages load, the
// format key is upgraded, and commits over it (whole chunks and parts)
// load back.
func TestOldFormatStoreIsRead(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	const pages = 3 * runPages
	size := uint64(pages * state.PageSize)
	id := []byte{3}
	want := memModel{size: size, pages: map[uint64]*state.Page{}}
	if err := s.Commit(Change{ID: id, Create: true, Meta: Meta{ID: "old", HeapSize: size}}); err != nil {
		t.Fatal(err)
	}
	// What a cordon-store-1 binary wrote: one value per non-zero page.
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketNode).Put(keyFormat, []byte(formatVersion1)); err != nil {
			return err
		}
		b, err := tx.Bucket(bucketCanisters).Bucket(id).CreateBucketIfNotExists(keyHeap)
		if err != nil {
			return err
		}
		for i := uint64(0); i < pages; i++ {
			if i == 20 {
				continue
			}
			p := pageOf(byte(i + 1))
			want.pages[i] = p
			if err := b.Put(pageKey(i), p[:]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(dir, time.Second); err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	c, err := s.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	checkMem(t, "heap of the old format", c.Heap, want)
	c.Release()
	_ = s.db.View(func(tx *bolt.Tx) error {
		if f := tx.Bucket(bucketNode).Get(keyFormat); string(f) != formatVersion {
			t.Errorf("format %q after open, want %q", f, formatVersion)
		}
		return nil
	})
	// Chunk 0 whole (singles become a run), chunk 1 in part (page 20 stays
	// zero, page 17 zeroed).
	var d []state.DirtyPage
	for i := uint64(0); i < runPages; i++ {
		d = append(d, state.DirtyPage{Index: i, Data: pageOf(0xa0)})
	}
	d = append(d, state.DirtyPage{Index: 17, Data: state.ZeroPage()}, state.DirtyPage{Index: 18, Data: pageOf(0xb0)})
	for _, p := range d {
		if *p.Data == *state.ZeroPage() {
			delete(want.pages, p.Index)
		} else {
			want.pages[p.Index] = p.Data
		}
	}
	if err := s.Commit(Change{ID: id, Meta: Meta{ID: "old", HeapSize: size}, Heap: &MemoryChange{Delta: state.Delta{Size: size, Pages: d}}}); err != nil {
		t.Fatal(err)
	}
	if c, err = s.Load(id); err != nil {
		t.Fatal(err)
	}
	checkMem(t, "heap after commits", c.Heap, want)
	c.Release()
	checkRuns(t, s, id, want)
}

// TestCorruptPageEntriesRefused crafts memory entries the format never
// writes: Load fails with an error, it does not load overlapping or
// misplaced pages.
func TestCorruptPageEntriesRefused(t *testing.T) {
	run := make([]byte, runPages*state.PageSize)
	run[0] = 1
	for _, tc := range []struct {
		name    string
		entries map[uint64][]byte
	}{
		{"run not at a chunk's start", map[uint64][]byte{3: run}},
		{"run overlapping a page", map[uint64][]byte{16: run, 17: pageOf(1)[:]}},
		{"value of two pages", map[uint64][]byte{0: run[:2*state.PageSize]}},
		{"short value", map[uint64][]byte{0: {1, 2, 3}}},
		{"run beyond the memory", map[uint64][]byte{32: run}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.TempDir(), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			id := []byte{9}
			size := uint64(40 * state.PageSize)
			if err := s.Commit(Change{ID: id, Create: true, Meta: Meta{ID: "bad", HeapSize: size}}); err != nil {
				t.Fatal(err)
			}
			err = s.db.Update(func(tx *bolt.Tx) error {
				b, err := tx.Bucket(bucketCanisters).Bucket(id).CreateBucketIfNotExists(keyHeap)
				if err != nil {
					return err
				}
				for k, v := range tc.entries {
					if err := b.Put(pageKey(k), v); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			c, err := s.Load(id)
			if err == nil {
				c.Release()
				t.Fatal("loaded")
			}
			if !errors.Is(err, errCorruptPages) && tc.name != "run beyond the memory" {
				t.Fatalf("error %v, want %v", err, errCorruptPages)
			}
		})
	}
}

// pageAlloc is the bytes of store pages bbolt's transactions allocated.
func pageAlloc(s *Store) int64 {
	st := s.db.Stats()
	return st.TxStats.GetPageAlloc()
}
