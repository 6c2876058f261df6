package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/state"
)

// storedMemory is a memory bucket's entries as stored, copied.
type storedMemory struct {
	singles map[uint64][]byte // empty: a zero page over a run
	runs    map[uint64][]byte
}

// readStored reads the memory bucket name of canister id raw.
func readStored(t *testing.T, s *Store, id, name []byte) storedMemory {
	t.Helper()
	m := storedMemory{singles: map[uint64][]byte{}, runs: map[uint64][]byte{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCanisters).Bucket(id).Bucket(name)
		if b == nil {
			return nil
		}
		err := b.ForEach(func(k, v []byte) error {
			if bytes.Equal(k, keyRuns) {
				return nil
			}
			if len(k) != 8 {
				t.Fatalf("key %x in the memory bucket", k)
			}
			m.singles[beUint64(k)] = bytes.Clone(v)
			return nil
		})
		if err != nil || b.Bucket(keyRuns) == nil {
			return err
		}
		return b.Bucket(keyRuns).ForEach(func(k, v []byte) error {
			m.runs[beUint64(k)] = bytes.Clone(v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func beUint64(k []byte) uint64 {
	var n uint64
	for _, c := range k {
		n = n<<8 | uint64(c)
	}
	return n
}

// checkLayout checks how the heap of canister id is stored against what it
// holds (want) and the chunks last written whole with non-zero pages
// (whole): those are runs without single pages; a run holds non-zero
// pages only and has at most foldAbove single pages over it; an explicit
// zero is over a run; what a chunk with a run reads is want.
func checkLayout(t *testing.T, s *Store, id []byte, want memModel, whole map[uint64]bool) {
	t.Helper()
	m := readStored(t, s, id, keyHeap)
	singles := map[uint64]int{} // per chunk
	for i, v := range m.singles {
		base := i &^ (runPages - 1)
		singles[base]++
		if len(v) == 0 && m.runs[base] == nil {
			t.Fatalf("explicit zero at page %d, chunk without a run", i)
		}
	}
	for base, run := range m.runs {
		if singles[base] > foldAbove {
			t.Fatalf("chunk %d: run with %d single pages over it", base, singles[base])
		}
		for i := range uint64(runPages) {
			if isZero(run[i*state.PageSize : (i+1)*state.PageSize]) {
				t.Fatalf("run at %d holds zero page %d", base, base+i)
			}
		}
	}
	for base := range whole {
		if m.runs[base] == nil || singles[base] != 0 {
			t.Fatalf("chunk %d written whole: run %v, %d single pages", base, m.runs[base] != nil, singles[base])
		}
	}
}

// TestPageRunsMatchModel commits random sequences of whole chunks, a few
// pages of chunks, many pages with zeros among them and zeroed chunks over
// a heap, and checks after every commit that what loads is what was
// committed and that the layout keeps its bounds, reopening the store now
// and then and at the end.
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
	const pages = 5 * runPages
	size := uint64(pages * state.PageSize)
	id := []byte{7}
	meta := Meta{ID: "runs", HeapSize: size}
	want := memModel{size: size, pages: map[uint64]*state.Page{}}
	whole := map[uint64]bool{}
	seen := map[string]bool{}
	check := func(step int) {
		t.Helper()
		c, err := s.Load(id)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		checkMem(t, "heap", c.Heap, want)
		c.Release()
		checkLayout(t, s, id, want, whole)
		m := readStored(t, s, id, keyHeap)
		for i, v := range m.singles {
			if m.runs[i&^(runPages-1)] != nil {
				seen["a single page over a run"] = true
				if len(v) == 0 {
					seen["an explicit zero"] = true
				}
			}
		}
	}
	page := func() *state.Page { return pageOf(byte(rng.Intn(255) + 1)) }
	for step := range 150 * raceScale {
		var d []state.DirtyPage
		replace := step == 0 || rng.Intn(25) == 0
		if replace {
			want.pages = map[uint64]*state.Page{}
			clear(whole)
		}
		for c := range uint64(pages / runPages) {
			base := c * runPages
			switch rng.Intn(6) {
			case 0: // untouched
				continue
			case 1: // whole, non-zero
				for i := base; i < base+runPages; i++ {
					d = append(d, state.DirtyPage{Index: i, Data: page()})
				}
				whole[base] = true
				continue
			case 2, 3: // a few pages, a zero one now and then
				for _, i := range rng.Perm(runPages)[:1+rng.Intn(4)] {
					p := page()
					if rng.Intn(5) == 0 {
						p = state.ZeroPage()
					}
					d = append(d, state.DirtyPage{Index: base + uint64(i), Data: p})
				}
			case 4: // many pages, some zero
				for i := base; i < base+runPages; i++ {
					switch rng.Intn(3) {
					case 0:
						d = append(d, state.DirtyPage{Index: i, Data: page()})
					case 1:
						d = append(d, state.DirtyPage{Index: i, Data: state.ZeroPage()})
					}
				}
			case 5: // all zero
				for i := base; i < base+runPages; i++ {
					d = append(d, state.DirtyPage{Index: i, Data: state.ZeroPage()})
				}
			}
			delete(whole, base)
		}
		sortPages(d)
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
		check(step)
		if rng.Intn(10) == 0 {
			s.Close()
			if s, err = Open(dir, time.Second); err != nil {
				t.Fatal(err)
			}
			check(step)
		}
	}
	s.Close()
	if s, err = Open(dir, time.Second); err != nil {
		t.Fatal(err)
	}
	check(-1)
	for _, what := range []string{"a single page over a run", "an explicit zero"} {
		if !seen[what] {
			t.Errorf("no commit left %s", what)
		}
	}
}

func sortPages(d []state.DirtyPage) {
	for i := 1; i < len(d); i++ {
		for j := i; j > 0 && d[j].Index < d[j-1].Index; j-- {
			d[j], d[j-1] = d[j-1], d[j]
		}
	}
}

// runsHeap opens a store with a canister whose heap of chunks pages
// chunks is stored as runs (installed whole, non-zero), and returns the
// store, the canister's id and metadata, and the heap's model.
func runsHeap(t *testing.T, dir string, chunks int) (*Store, []byte, Meta, memModel) {
	t.Helper()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	size := uint64(chunks * runPages * state.PageSize)
	id := []byte{5}
	meta := Meta{ID: "runs", HeapSize: size}
	want := memModel{size: size, pages: map[uint64]*state.Page{}}
	var d []state.DirtyPage
	for i := range uint64(chunks * runPages) {
		p := pageOf(byte(i%200 + 1))
		want.pages[i] = p
		d = append(d, state.DirtyPage{Index: i, Data: p})
	}
	if err := s.Commit(Change{ID: id, Create: true, Meta: meta, Heap: &MemoryChange{Replace: true, Delta: state.Delta{Size: size, Pages: d}}}); err != nil {
		t.Fatal(err)
	}
	if m := readStored(t, s, id, keyHeap); len(m.runs) != chunks || len(m.singles) != 0 {
		t.Fatalf("installed heap: %d runs, %d single pages; want %d runs", len(m.runs), len(m.singles), chunks)
	}
	return s, id, meta, want
}

// commitPages commits pages into the heap and applies them to want.
func commitPages(t *testing.T, s *Store, id []byte, meta Meta, want memModel, d ...state.DirtyPage) {
	t.Helper()
	if err := s.Commit(Change{ID: id, Meta: meta, Heap: &MemoryChange{Delta: state.Delta{Size: want.size, Pages: d}}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range d {
		if *p.Data == *state.ZeroPage() {
			delete(want.pages, p.Index)
		} else {
			want.pages[p.Index] = p.Data
		}
	}
}

func loadHeap(t *testing.T, s *Store, id []byte, what string, want memModel) {
	t.Helper()
	c, err := s.Load(id)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	checkMem(t, what, c.Heap, want)
	c.Release()
}

// TestOnePageIntoRunWritesOnePage commits one page into a chunk stored as
// a run: the store gains that one value, the run stays as it was, and the
// commit allocates less than the run's size (cordon-store-2 split the run
// into its 16 pages: 45 store pages).
func TestOnePageIntoRunWritesOnePage(t *testing.T) {
	s, id, meta, want := runsHeap(t, t.TempDir(), 8)
	defer s.Close()
	before := readStored(t, s, id, keyHeap)
	const page = 3*runPages + 5
	alloc := pageAlloc(s)
	commitPages(t, s, id, meta, want, state.DirtyPage{Index: page, Data: pageOf(0xee)})
	alloc = pageAlloc(s) - alloc
	after := readStored(t, s, id, keyHeap)
	if len(after.singles) != 1 || !bytes.Equal(after.singles[page], pageOf(0xee)[:]) {
		t.Fatalf("%d single pages after the commit, want page %d alone", len(after.singles), page)
	}
	if len(after.runs) != len(before.runs) {
		t.Fatalf("%d runs after the commit, want %d", len(after.runs), len(before.runs))
	}
	for base, run := range before.runs {
		if !bytes.Equal(after.runs[base], run) {
			t.Fatalf("run at %d changed", base)
		}
	}
	t.Logf("the commit allocated %d KiB", alloc/1024)
	if alloc >= runBytes {
		t.Fatalf("a one-page commit allocated %d KiB of store pages, want less than a run's %d KiB", alloc/1024, runBytes/1024)
	}
	loadHeap(t, s, id, "heap", want)
}

// TestZeroOverRunSurvivesReopen zeroes a page of a chunk stored as a run:
// it is stored as an explicit zero over the run, and reads zero after the
// store is reopened.
func TestZeroOverRunSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, id, meta, want := runsHeap(t, dir, 2)
	commitPages(t, s, id, meta, want, state.DirtyPage{Index: 17, Data: state.ZeroPage()})
	m := readStored(t, s, id, keyHeap)
	if v, ok := m.singles[17]; !ok || len(v) != 0 || m.runs[16] == nil {
		t.Fatalf("page 17 zeroed over a run: single %v (%d bytes), run %v; want an explicit zero over the run", ok, len(v), m.runs[16] != nil)
	}
	s.Close()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	loadHeap(t, s, id, "heap after reopen", want)
	c, err := s.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if c.Heap.Page(17) != nil {
		t.Fatal("page 17 is not zero after reopen")
	}
}

// TestFoldAfterManySingles writes single pages into chunks stored as runs,
// one a commit: foldAbove of them stay single over the run; one more folds
// the chunk into a run again, or into single pages if a page of it is
// zero.
func TestFoldAfterManySingles(t *testing.T) {
	s, id, meta, want := runsHeap(t, t.TempDir(), 3)
	defer s.Close()
	for i := range uint64(foldAbove) {
		commitPages(t, s, id, meta, want, state.DirtyPage{Index: runPages + 2*i, Data: pageOf(byte(0x80 + i))})
		if i == 2 { // and a zero one in chunk 2
			commitPages(t, s, id, meta, want, state.DirtyPage{Index: 2*runPages + 1, Data: state.ZeroPage()})
		}
	}
	m := readStored(t, s, id, keyHeap)
	if len(m.singles) != foldAbove+1 || len(m.runs) != 3 {
		t.Fatalf("%d single pages and %d runs, want %d and 3", len(m.singles), len(m.runs), foldAbove+1)
	}
	loadHeap(t, s, id, "heap before the fold", want)
	// The ninth single page over chunk 1's run.
	commitPages(t, s, id, meta, want, state.DirtyPage{Index: runPages + 1, Data: pageOf(0xf0)})
	m = readStored(t, s, id, keyHeap)
	for i := range m.singles {
		if i >= runPages && i < 2*runPages {
			t.Fatalf("page %d single after the fold", i)
		}
	}
	var run []byte
	for i := range uint64(runPages) {
		run = append(run, want.pages[runPages+i][:]...)
	}
	if !bytes.Equal(m.runs[runPages], run) {
		t.Fatal("the folded run is not the chunk's pages")
	}
	loadHeap(t, s, id, "heap after the fold", want)
	// Chunk 2 holds a zero page: folded, it is single pages.
	var d []state.DirtyPage
	for i := uint64(2); i < 2+foldAbove; i++ {
		d = append(d, state.DirtyPage{Index: 2*runPages + i, Data: pageOf(0x40)})
	}
	commitPages(t, s, id, meta, want, d...)
	m = readStored(t, s, id, keyHeap)
	if m.runs[2*runPages] != nil {
		t.Fatal("chunk 2 with a zero page folded into a run")
	}
	n := 0
	for i, v := range m.singles {
		if i >= 2*runPages {
			n++
			if len(v) != state.PageSize || i == 2*runPages+1 {
				t.Fatalf("page %d stored as %d bytes", i, len(v))
			}
		}
	}
	if n != runPages-1 {
		t.Fatalf("chunk 2: %d single pages, want %d", n, runPages-1)
	}
	loadHeap(t, s, id, "heap after folding into single pages", want)
}

// TestWholeRewriteRemovesSingles rewrites whole chunks holding single
// pages, over a run or not: each becomes one run and nothing else.
func TestWholeRewriteRemovesSingles(t *testing.T) {
	s, id, meta, want := runsHeap(t, t.TempDir(), 2)
	defer s.Close()
	// Chunk 0: a run with three single pages over it, one an explicit zero.
	commitPages(t, s, id, meta, want, state.DirtyPage{Index: 1, Data: pageOf(9)}, state.DirtyPage{Index: 4, Data: state.ZeroPage()}, state.DirtyPage{Index: 15, Data: pageOf(9)})
	// Chunk 1: single pages only (all zeroed, then some written).
	var d []state.DirtyPage
	for i := uint64(runPages); i < 2*runPages; i++ {
		d = append(d, state.DirtyPage{Index: i, Data: state.ZeroPage()})
	}
	commitPages(t, s, id, meta, want, d...)
	commitPages(t, s, id, meta, want, state.DirtyPage{Index: 20, Data: pageOf(3)}, state.DirtyPage{Index: 30, Data: pageOf(3)})
	if m := readStored(t, s, id, keyHeap); len(m.singles) != 5 || len(m.runs) != 1 {
		t.Fatalf("before the rewrite: %d single pages and %d runs, want 5 and 1", len(m.singles), len(m.runs))
	}
	d = d[:0]
	for i := range uint64(2 * runPages) {
		d = append(d, state.DirtyPage{Index: i, Data: pageOf(byte(0x30 + i))})
	}
	commitPages(t, s, id, meta, want, d...)
	if m := readStored(t, s, id, keyHeap); len(m.singles) != 0 || len(m.runs) != 2 {
		t.Fatalf("after the rewrite: %d single pages and %d runs, want 0 and 2", len(m.singles), len(m.runs))
	}
	loadHeap(t, s, id, "heap", want)
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

// TestCompactionKeepsOverlays compacts a store (bbolt compact, as
// README.md describes) whose heap has runs, single pages over them and an
// explicit zero: the copy loads the same memory, stored the same way.
func TestCompactionKeepsOverlays(t *testing.T) {
	dir := t.TempDir()
	s, id, meta, want := runsHeap(t, dir, 3)
	commitPages(t, s, id, meta, want, state.DirtyPage{Index: 2, Data: pageOf(0xcc)}, state.DirtyPage{Index: 20, Data: state.ZeroPage()})
	stored := readStored(t, s, id, keyHeap)
	s.Close()
	out := t.TempDir()
	src, err := bolt.Open(filepath.Join(dir, "cordon.db"), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := bolt.Open(filepath.Join(out, "cordon.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bolt.Compact(dst, src, 1<<20); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	if s, err = Open(out, time.Second); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	loadHeap(t, s, id, "compacted heap", want)
	got := readStored(t, s, id, keyHeap)
	if len(got.singles) != 2 || len(got.runs) != 3 || got.singles[20] == nil || len(got.singles[20]) != 0 {
		t.Fatalf("compacted: %d single pages, %d runs, page 20 %d bytes; want %d, %d, an explicit zero",
			len(got.singles), len(got.runs), len(got.singles[20]), len(stored.singles), len(stored.runs))
	}
}

// TestCorruptPageEntriesRefused crafts memory entries the format never
// writes: Load fails with errCorruptPages, it does not load them (nor
// panic).
func TestCorruptPageEntriesRefused(t *testing.T) {
	run := bytes.Repeat([]byte{1}, runBytes)
	type entries func(mem, runs func() *bolt.Bucket) error
	put := func(b func() *bolt.Bucket, k, v []byte) error { return b().Put(k, v) }
	for _, tc := range []struct {
		name string
		make entries
	}{
		{"short page", func(mem, _ func() *bolt.Bucket) error { return put(mem, pageKey(3), []byte{1, 2, 3}) }},
		{"page of two pages", func(mem, _ func() *bolt.Bucket) error { return put(mem, pageKey(3), run[:2*state.PageSize]) }},
		{"page beyond the memory", func(mem, _ func() *bolt.Bucket) error { return put(mem, pageKey(48), pageOf(1)[:]) }},
		{"zero page over no run", func(mem, _ func() *bolt.Bucket) error { return put(mem, pageKey(3), []byte{}) }},
		{"zero page, run in another chunk", func(mem, runs func() *bolt.Bucket) error {
			if err := put(runs, pageKey(0), run); err != nil {
				return err
			}
			return put(mem, pageKey(16), []byte{})
		}},
		{"key of 7 bytes", func(mem, _ func() *bolt.Bucket) error { return put(mem, pageKey(3)[1:], pageOf(1)[:]) }},
		{"key of 9 bytes", func(mem, _ func() *bolt.Bucket) error { return put(mem, append(pageKey(3), 'r'), run) }},
		{"bucket at a page", func(mem, _ func() *bolt.Bucket) error {
			_, err := mem().CreateBucket(pageKey(3))
			return err
		}},
		{"runs not a bucket", func(mem, _ func() *bolt.Bucket) error { return put(mem, keyRuns, run) }},
		{"cordon-store-2 run among the pages", func(mem, _ func() *bolt.Bucket) error { return put(mem, pageKey(16), run) }},
		{"run not at a chunk's start", func(_, runs func() *bolt.Bucket) error { return put(runs, pageKey(3), run) }},
		{"run of two pages", func(_, runs func() *bolt.Bucket) error { return put(runs, pageKey(16), run[:2*state.PageSize]) }},
		{"run of a page", func(_, runs func() *bolt.Bucket) error { return put(runs, pageKey(16), pageOf(1)[:]) }},
		{"run key of 9 bytes", func(_, runs func() *bolt.Bucket) error { return put(runs, append(pageKey(16), 0), run) }},
		{"run key of 4 bytes", func(_, runs func() *bolt.Bucket) error { return put(runs, []byte{0, 0, 0, 16}, run) }},
		{"run beyond the memory", func(_, runs func() *bolt.Bucket) error { return put(runs, pageKey(32), run) }},
		{"run far beyond the memory", func(_, runs func() *bolt.Bucket) error { return put(runs, pageKey(1<<60), run) }},
		{"bucket among the runs", func(_, runs func() *bolt.Bucket) error {
			_, err := runs().CreateBucket(pageKey(16))
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.TempDir(), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			id := []byte{9}
			// 40 pages: two chunks and a half.
			size := uint64(40 * state.PageSize)
			if err := s.Commit(Change{ID: id, Create: true, Meta: Meta{ID: "bad", HeapSize: size}}); err != nil {
				t.Fatal(err)
			}
			err = s.db.Update(func(tx *bolt.Tx) error {
				mem, err := tx.Bucket(bucketCanisters).Bucket(id).CreateBucketIfNotExists(keyHeap)
				if err != nil {
					return err
				}
				runs := func() *bolt.Bucket {
					b, err := mem.CreateBucketIfNotExists(keyRuns)
					if err != nil {
						t.Fatal(err)
					}
					return b
				}
				return tc.make(func() *bolt.Bucket { return mem }, runs)
			})
			if err != nil {
				t.Fatal(err)
			}
			c, err := s.Load(id)
			if err == nil {
				c.Release()
				t.Fatal("loaded")
			}
			if !errors.Is(err, errCorruptPages) {
				t.Fatalf("error %v, want %v", err, errCorruptPages)
			}
			t.Log(err)
		})
	}
}

// oldStore builds, with bbolt alone, a store as a binary of format
// cordon-store-1 or -2 left it: the format key and, per canister (id i+1),
// a heap whose entries are heaps[i] (key: page index; value: a page or,
// in cordon-store-2, a run).
func oldStore(t *testing.T, dir, format string, heaps []map[uint64][]byte, sizes []uint64) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "cordon.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		node, err := tx.CreateBucket(bucketNode)
		if err != nil {
			return err
		}
		if err := node.Put(keyFormat, []byte(format)); err != nil {
			return err
		}
		all, err := tx.CreateBucket(bucketCanisters)
		if err != nil {
			return err
		}
		for i, heap := range heaps {
			cb, err := all.CreateBucket([]byte{byte(i + 1)})
			if err != nil {
				return err
			}
			meta, _ := json.Marshal(Meta{ID: "old", HeapSize: sizes[i], StableSize: sizes[i]})
			if err := cb.Put(keyMeta, meta); err != nil {
				return err
			}
			// The stable memory holds the same entries.
			for _, name := range [][]byte{keyHeap, keyStable} {
				b, err := cb.CreateBucket(name)
				if err != nil {
					return err
				}
				for k, v := range heap {
					if err := b.Put(pageKey(k), v); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// modelOf is the memory that old entries (page or run by first page) hold.
func modelOf(size uint64, entries map[uint64][]byte) memModel {
	m := memModel{size: size, pages: map[uint64]*state.Page{}}
	for k, v := range entries {
		for j := 0; j < len(v)/state.PageSize; j++ {
			p := new(state.Page)
			copy(p[:], v[j*state.PageSize:])
			m.pages[k+uint64(j)] = p
		}
	}
	return m
}

// checkUpgraded opens the store in dir and checks its format key, the
// memories of its canisters (ids 1 to len(want)) against want, and that no
// run is left among the single pages; then that commits over it load back.
func checkUpgraded(t *testing.T, dir string, want []memModel) {
	t.Helper()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.db.View(func(tx *bolt.Tx) error {
		if f := tx.Bucket(bucketNode).Get(keyFormat); string(f) != formatVersion {
			t.Errorf("format %q after open, want %q", f, formatVersion)
		}
		return nil
	})
	for i, w := range want {
		id := []byte{byte(i + 1)}
		c, err := s.Load(id)
		if err != nil {
			t.Fatalf("canister %d: %v", i+1, err)
		}
		checkMem(t, "heap", c.Heap, w)
		checkMem(t, "stable memory", c.Stable, w)
		c.Release()
		for _, name := range [][]byte{keyHeap, keyStable} {
			for k, v := range readStored(t, s, id, name).singles {
				if len(v) != state.PageSize {
					t.Fatalf("canister %d %s: %d bytes at page key %d", i+1, name, len(v), k)
				}
			}
		}
	}
	// Whole chunks, a few pages over a run, a zero page: they load back.
	id := []byte{1}
	w := want[0]
	var meta Meta
	_ = s.Metas(func(mid []byte, m Meta) error {
		if bytes.Equal(mid, id) {
			meta = m
		}
		return nil
	})
	var d []state.DirtyPage
	for i := range uint64(runPages) {
		d = append(d, state.DirtyPage{Index: i, Data: pageOf(0xa0)})
	}
	d = append(d, state.DirtyPage{Index: 17, Data: state.ZeroPage()}, state.DirtyPage{Index: 18, Data: pageOf(0xb0)})
	commitPages(t, s, id, meta, w, d...)
	loadHeap(t, s, id, "heap after commits", w)
	checkLayout(t, s, id, w, map[uint64]bool{0: true})
}

// TestUpgradeFromStore1 opens a store of format cordon-store-1 (single
// pages only): its pages load as they are, and the format key is
// upgraded.
func TestUpgradeFromStore1(t *testing.T) {
	dir := t.TempDir()
	const pages = 3 * runPages
	heap := map[uint64][]byte{}
	for i := range uint64(pages) {
		if i != 20 {
			heap[i] = pageOf(byte(i + 1))[:]
		}
	}
	size := uint64(pages * state.PageSize)
	oldStore(t, dir, formatVersion1, []map[uint64][]byte{heap}, []uint64{size})
	checkUpgraded(t, dir, []memModel{modelOf(size, heap)})
}

// store2Heaps are memories as cordon-store-2 stored them: runs (whole
// non-zero chunks) under their first page's key, and single pages.
func store2Heaps(canisters int) ([]map[uint64][]byte, []uint64) {
	var heaps []map[uint64][]byte
	var sizes []uint64
	for c := range canisters {
		heap := map[uint64][]byte{}
		const chunks = 6
		for k := range uint64(chunks) {
			base := k * runPages
			switch (k + uint64(c)) % 3 {
			case 0: // a run
				heap[base] = bytes.Repeat([]byte{byte(c*16 + int(k) + 1)}, runBytes)
			case 1: // single pages
				for i := base; i < base+runPages; i += 3 {
					heap[i] = pageOf(byte(i + 1))[:]
				}
			} // else empty
		}
		heaps = append(heaps, heap)
		sizes = append(sizes, chunks*runPages*state.PageSize)
	}
	return heaps, sizes
}

// TestUpgradeFromStore2 opens stores of format cordon-store-2 (runs under
// their first page's key among the single pages), with the upgrade's
// transactions holding a few runs each: the runs move to their bucket, the
// memories load as they were, the format key is upgraded.
func TestUpgradeFromStore2(t *testing.T) {
	for _, batch := range []int{1, 3, 1000} {
		defer func(b int) { upgradeBatchRuns = b }(upgradeBatchRuns)
		upgradeBatchRuns = batch
		dir := t.TempDir()
		heaps, sizes := store2Heaps(4)
		oldStore(t, dir, formatVersion2, heaps, sizes)
		var want []memModel
		for i, h := range heaps {
			want = append(want, modelOf(sizes[i], h))
		}
		checkUpgraded(t, dir, want)
	}
}

// TestUpgradeFromStore2Resumes opens a cordon-store-2 store whose upgrade
// a crash interrupted: its format key says so, some runs are moved, others
// not. Open finishes the upgrade.
func TestUpgradeFromStore2Resumes(t *testing.T) {
	dir := t.TempDir()
	heaps, sizes := store2Heaps(3)
	oldStore(t, dir, formatUpgrading2, heaps, sizes)
	// The first canister's heap moved, the rest not.
	db, err := bolt.Open(filepath.Join(dir, "cordon.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCanisters).Bucket([]byte{1}).Bucket(keyHeap)
		n, _, err := moveRuns(b, nil, 1000)
		if err == nil && n == 0 {
			t.Error("nothing to move in the first heap")
		}
		return err
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	var want []memModel
	for i, h := range heaps {
		want = append(want, modelOf(sizes[i], h))
	}
	checkUpgraded(t, dir, want)
}

// TestUpgradeLeavesCorruptMemory upgrades a cordon-store-2 store where one
// heap holds an entry no format writes where its runs would go: the store
// opens and upgrades, that canister's load fails as corrupt, the others
// load.
func TestUpgradeLeavesCorruptMemory(t *testing.T) {
	dir := t.TempDir()
	heaps, sizes := store2Heaps(3)
	oldStore(t, dir, formatVersion2, heaps, sizes)
	db, err := bolt.Open(filepath.Join(dir, "cordon.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCanisters).Bucket([]byte{2}).Bucket(keyHeap).Put(keyRuns, []byte("x"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Load([]byte{2}); !errors.Is(err, errCorruptPages) {
		t.Fatalf("corrupt heap: error %v, want %v", err, errCorruptPages)
	}
	for _, i := range []int{0, 2} {
		c, err := s.Load([]byte{byte(i + 1)})
		if err != nil {
			t.Fatalf("canister %d: %v", i+1, err)
		}
		checkMem(t, "heap", c.Heap, modelOf(sizes[i], heaps[i]))
		c.Release()
	}
}

// pageAlloc is the bytes of store pages bbolt's transactions allocated.
func pageAlloc(s *Store) int64 {
	st := s.db.Stats()
	return st.TxStats.GetPageAlloc()
}
