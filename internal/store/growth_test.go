package store

import (
	"flag"
	"fmt"
	"math/rand"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/state"
)

var growthCommits = flag.Int("growth-commits", 4500, "commits per pattern in TestDiskGrowthBounded")

// highWater is the end of the last page bbolt has ever used: the size of
// the data in the file, free pages included. The file itself is this
// rounded up to bbolt's growth step.
func (s *Store) highWater() int64 {
	var n int64
	_ = s.db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
	return n
}

// growthModel tracks the live data of a growth pattern: pages stored per
// canister (non-zero pages only) and log lines kept.
type growthModel struct {
	mu      sync.Mutex
	pages   map[byte]map[uint64]bool
	logs    map[byte]uint64 // next log sequence number
	written int64           // page bytes committed
}

func newGrowthModel() *growthModel {
	return &growthModel{pages: map[byte]map[uint64]bool{}, logs: map[byte]uint64{}}
}

// mark is the store's state at one point of a run.
type mark struct{ hwm, file, peak, written int64 }

func (m *growthModel) mark(s *Store, peak int64) mark {
	m.mu.Lock()
	defer m.mu.Unlock()
	return mark{hwm: s.highWater(), file: s.Size(), peak: peak, written: m.written}
}

func (m *growthModel) liveBytes(keep int) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for id, ps := range m.pages {
		n += int64(len(ps)) * state.PageSize
		n += int64(min(m.logs[id], uint64(keep))) * 64
	}
	return n
}

// randomDelta writes n distinct random pages of a heap of size pages, a
// quarter of them zero (deleted), and records them in the model.
func (m *growthModel) randomDelta(rng *rand.Rand, id byte, size uint64, n int, replace bool) *MemoryChange {
	idx := rng.Perm(int(size))[:n]
	sort.Ints(idx)
	mc := &MemoryChange{Replace: replace, Delta: state.Delta{Size: size * state.PageSize}}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pages[id] == nil || replace {
		m.pages[id] = map[uint64]bool{}
	}
	m.written += int64(n) * state.PageSize
	for _, i := range idx {
		p := state.ZeroPage()
		if rng.Intn(4) != 0 {
			p = pageOf(byte(1 + rng.Intn(255)))
			m.pages[id][uint64(i)] = true
		} else {
			delete(m.pages[id], uint64(i))
		}
		mc.Delta.Pages = append(mc.Delta.Pages, state.DirtyPage{Index: uint64(i), Data: p})
	}
	return mc
}

func (m *growthModel) logLines(rng *rand.Rand, id byte) []LogEntry {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []LogEntry
	for range rng.Intn(3) {
		out = append(out, LogEntry{Seq: m.logs[id], Time: time.Unix(0, 0), Text: "a line of debug output"})
		m.logs[id]++
	}
	return out
}

func (m *growthModel) drop(id byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pages, id)
	delete(m.logs, id)
}

// The store holds the folded state, each commit rewriting pages in place:
// under any steady pattern of commits the file stops growing. bbolt reuses
// the pages a transaction frees once no reader can see them (the store
// keeps no long read transactions), so the high-water mark settles at the
// live data plus the pages of about one commit in flight.
func TestDiskGrowthBounded(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	const keepLogs = 100
	type pattern struct {
		name string
		step func(s *Store, m *growthModel, rng *rand.Rand, i int) error
	}
	meta := func(id byte, size uint64) Meta {
		return Meta{ID: fmt.Sprint(id), HeapSize: size * state.PageSize, StableSize: 16 * state.PageSize}
	}
	patterns := []pattern{
		{"one hot page", func(s *Store, m *growthModel, rng *rand.Rand, i int) error {
			return s.Commit(Change{ID: []byte{1}, Meta: meta(1, 1), Heap: m.randomDelta(rng, 1, 1, 1, false)})
		}},
		{"random pages, zeroing, logs", func(s *Store, m *growthModel, rng *rand.Rand, i int) error {
			return s.Commit(Change{ID: []byte{1}, Meta: meta(1, 256), Heap: m.randomDelta(rng, 1, 256, 1+rng.Intn(32), false),
				Logs: m.logLines(rng, 1), KeepLogs: keepLogs})
		}},
		{"reinstall and upgrade", func(s *Store, m *growthModel, rng *rand.Rand, i int) error {
			size := uint64(256)
			if i%50 == 0 {
				// Replace both memories, at a random size.
				size = uint64(32 + rng.Intn(224))
				return s.Commit(Change{ID: []byte{1}, Meta: meta(1, size),
					Heap:   m.randomDelta(rng, 1, size, int(size)*3/4, true),
					Stable: m.randomDelta(rng, 2, 16, 16, true)})
			}
			m.mu.Lock()
			for p := range m.pages[1] {
				size = max(size, p+1)
			}
			m.mu.Unlock()
			return s.Commit(Change{ID: []byte{1}, Meta: meta(1, size), Heap: m.randomDelta(rng, 1, 32, 1+rng.Intn(8), false)})
		}},
		{"delete and create canisters", func(s *Store, m *growthModel, rng *rand.Rand, i int) error {
			id := byte(1 + rng.Intn(4))
			if rng.Intn(20) == 0 {
				m.drop(id)
				if err := s.Commit(Change{ID: []byte{id}, Delete: true}); err != nil {
					return err
				}
				return s.Commit(Change{ID: []byte{id}, Meta: meta(id, 64), Heap: m.randomDelta(rng, id, 64, 64, true)})
			}
			return s.Commit(Change{ID: []byte{id}, Meta: meta(id, 64), Heap: m.randomDelta(rng, id, 64, 1+rng.Intn(4), false),
				Logs: m.logLines(rng, id), KeepLogs: keepLogs})
		}},
	}
	total := *growthCommits / raceScale
	warm := total / 3
	for pi, p := range patterns {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			s := openTest(t, t.TempDir())
			defer s.Close()
			s.db.NoSync = true // allocation is the same; the test is faster
			m := newGrowthModel()
			rng := rand.New(rand.NewSource(seed + int64(pi)))
			var peak int64
			var atWarm mark
			for i := range total {
				if err := p.step(s, m, rng, i); err != nil {
					t.Fatal(err)
				}
				peak = max(peak, m.liveBytes(keepLogs))
				if i == warm {
					atWarm = m.mark(s, peak)
				}
			}
			checkGrowth(t, atWarm, m.mark(s, peak))
		})
	}
	// Concurrent committers, grouped into shared transactions.
	t.Run("grouped committers", func(t *testing.T) {
		t.Parallel()
		s := openTest(t, t.TempDir())
		defer s.Close()
		s.db.NoSync = true
		m := newGrowthModel()
		var peak int64
		var mu sync.Mutex
		run := func(rounds int, salt int64) {
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewSource(seed + salt + int64(g)))
					id := byte(g + 1)
					for range rounds {
						err := s.Commit(Change{ID: []byte{id}, Meta: meta(id, 128), Heap: m.randomDelta(rng, id, 128, 1+rng.Intn(8), false),
							Logs: m.logLines(rng, id), KeepLogs: keepLogs})
						if err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						peak = max(peak, m.liveBytes(keepLogs))
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
		}
		run(warm/8, 100)
		atWarm := m.mark(s, peak)
		run((total-warm)/8, 200)
		checkGrowth(t, atWarm, m.mark(s, peak))
	})
}

// checkGrowth checks that the store stopped growing after the warm-up: the
// high-water mark is bounded by the peak of live data, and what it gained
// after the warm-up is explained by a higher peak, not by the bytes written
// (a leak would grow with them; 2% leaves room for the free-page layout to
// settle after a short warm-up).
func checkGrowth(t *testing.T, warm, end mark) {
	t.Helper()
	t.Logf("peak live %d KiB; high water %d KiB after warm-up, %d KiB at the end; file %d KiB, then %d KiB; %d MiB written after warm-up",
		end.peak>>10, warm.hwm>>10, end.hwm>>10, warm.file>>10, end.file>>10, (end.written-warm.written)>>20)
	// Each 4 KiB page takes 6 KiB in bbolt (leaves hold two values and
	// span three pages), plus branches, metadata and the freed pages of
	// recent commits.
	if bound := 3*end.peak + 1<<20; end.hwm > bound {
		t.Errorf("high-water mark %d beyond 3 x peak live data %d + 1 MiB", end.hwm, end.peak)
	}
	if allowed := warm.hwm + 3*(end.peak-warm.peak) + (end.written-warm.written)/50 + 64<<10; end.hwm > allowed {
		t.Errorf("high-water mark still growing: %d after warm-up, %d at the end (peak live %d then %d)", warm.hwm, end.hwm, warm.peak, end.peak)
	}
	if end.file > warm.file && end.file > 2*end.hwm+16<<20 {
		t.Errorf("file grew from %d to %d with %d in use", warm.file, end.file, end.hwm)
	}
}

// The file never shrinks: the pages of a deleted canister are reused by
// later commits, not returned. Offline compaction (bbolt's Compact, which
// the bbolt command runs as `bbolt compact -o new.db cordon.db`) rewrites
// the store with the live data only; the result is a valid store.
func TestOfflineCompaction(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	big := Change{ID: []byte{1}, Meta: Meta{ID: "big", HeapSize: 2048 * state.PageSize},
		Heap: &MemoryChange{Replace: true, Delta: state.Delta{Size: 2048 * state.PageSize}}}
	for i := range uint64(2048) {
		big.Heap.Delta.Pages = append(big.Heap.Delta.Pages, state.DirtyPage{Index: i, Data: pageOf(byte(i))})
	}
	if err := s.Commit(big, onePage([]byte{2}, 7, 3, 42)); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(Change{ID: []byte{1}, Delete: true}); err != nil {
		t.Fatal(err)
	}
	before := s.highWater()
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
	if err := bolt.Compact(dst, src, 64<<20); err != nil {
		t.Fatal(err)
	}
	dst.Close()

	s = openTest(t, out)
	defer s.Close()
	after := s.highWater()
	t.Logf("high-water mark %d KiB before compaction, %d KiB after", before>>10, after>>10)
	if after*4 > before {
		t.Errorf("compaction kept %d of %d bytes", after, before)
	}
	c, err := s.Load([]byte{2})
	if err != nil {
		t.Fatal(err)
	}
	if c.Meta.Version != 7 || c.Heap.Page(3)[0] != 42 {
		t.Fatalf("canister after compaction: %+v", c.Meta)
	}
	if _, err := s.Load([]byte{1}); err != ErrNotFound {
		t.Fatalf("deleted canister after compaction: %v", err)
	}
	if err := s.Commit(onePage([]byte{2}, 8, 4, 43)); err != nil {
		t.Fatal(err)
	}
}
