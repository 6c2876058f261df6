package store

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/state"
)

func openTest(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// onePage is a change of canister id writing page idx with byte b.
func onePage(id []byte, version uint64, idx uint64, b byte) Change {
	size := (idx + 1) * state.PageSize
	return Change{ID: id, Meta: Meta{ID: fmt.Sprintf("%x", id), Version: version, HeapSize: size},
		Heap: &MemoryChange{Delta: state.Delta{Size: size, Pages: []state.DirtyPage{{Index: idx, Data: pageOf(b)}}}}}
}

// queued is how many requests wait for the writer, and how many were
// ever queued.
func (s *Store) queued() (waiting int, total uint64) {
	s.gc.mu.Lock()
	defer s.gc.mu.Unlock()
	return len(s.gc.queue), s.gc.queued
}

// Concurrent committers share syncs, and every commit is durable.
func TestGroupCommitConcurrent(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	const committers, each = 16, 40
	var wg sync.WaitGroup
	for g := range committers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := []byte{byte(g + 1)}
			for i := range each {
				if err := s.Commit(onePage(id, uint64(i+1), uint64(i%8), byte(i+1))); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := s.SyncStats()
	t.Logf("%d commits in %d syncs", st.Commits, st.Syncs)
	if st.Commits != committers*each {
		t.Fatalf("commits counted %d, want %d", st.Commits, committers*each)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir)
	defer s.Close()
	for g := range committers {
		c, err := s.Load([]byte{byte(g + 1)})
		if err != nil {
			t.Fatal(err)
		}
		if c.Meta.Version != each {
			t.Fatalf("canister %d at version %d, want %d", g+1, c.Meta.Version, each)
		}
		for p := range uint64(8) {
			// The last write to page p was the largest i with i%8 == p.
			last := each - 1 - (each-1-int(p))%8
			if got := c.Heap.Page(p); got == nil || got[0] != byte(last+1) {
				t.Fatalf("canister %d page %d: got %v, want %d", g+1, p, got, last+1)
			}
		}
	}
}

// holdWriter blocks the writer behind a write transaction of the test's
// own until the returned function is called.
func holdWriter(t *testing.T, s *Store) (release func()) {
	t.Helper()
	tx, err := s.db.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := tx.Rollback(); err != nil {
			t.Error(err)
		}
	}
}

// submitAsync starts a Commit and waits until it is queued.
func submitAsync(t *testing.T, s *Store, changes ...Change) <-chan error {
	t.Helper()
	_, total := s.queued()
	ch := make(chan error, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				ch <- fmt.Errorf("panicked: %v", v)
			}
		}()
		ch <- s.Commit(changes...)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for _, n := s.queued(); n == total; _, n = s.queued() {
		if time.Now().After(deadline) {
			t.Fatal("request not queued")
		}
		time.Sleep(time.Millisecond)
	}
	return ch
}

// waitTaken waits until the writer has taken every queued request.
func waitTaken(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for n, _ := s.queued(); n > 0; n, _ = s.queued() {
		if time.Now().After(deadline) {
			t.Fatal("the writer does not take requests")
		}
		time.Sleep(time.Millisecond)
	}
}

// A failing commit in a group fails alone; the others in its group are
// committed in order, and a failing commit of several changes leaves none.
func TestGroupCommitIsolatesFailure(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	a, b, c := []byte{1}, []byte{2}, []byte{3}
	if err := s.Commit(onePage(a, 1, 0, 1), onePage(b, 1, 0, 1), onePage(c, 1, 0, 1)); err != nil {
		t.Fatal(err)
	}
	release := holdWriter(t, s)
	// The first request is taken by the writer, which then waits for the
	// transaction; the next ones queue up and form one group.
	first := submitAsync(t, s, onePage(a, 2, 0, 2))
	waitTaken(t, s)
	before := s.SyncStats()
	r1 := submitAsync(t, s, onePage(a, 3, 1, 3))
	// A change of b, then one that cannot be stored (no canister id): the
	// request fails as a whole, b's change included.
	bad := onePage(nil, 9, 0, 9)
	r2 := submitAsync(t, s, onePage(b, 9, 0, 9), bad)
	// A request that panics (a page without data) is reported to its
	// caller as a panic and harms nobody else.
	boom := onePage(c, 9, 0, 9)
	boom.Heap.Delta.Pages[0].Data = nil
	r3 := submitAsync(t, s, boom)
	r4 := submitAsync(t, s, onePage(c, 4, 1, 4))
	r5 := submitAsync(t, s, onePage(b, 5, 2, 5))
	release()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for i, ch := range []<-chan error{r1, r4, r5} {
		if err := <-ch; err != nil {
			t.Fatalf("good request %d failed: %v", i, err)
		}
	}
	if err := <-r2; err == nil {
		t.Fatal("request with a bad change succeeded")
	}
	if err := <-r3; err == nil {
		t.Fatal("panicking request succeeded")
	}
	// first alone; then r1; r2 fails alone; r3 panics alone (no syncs);
	// r4 and r5 together.
	if got := s.SyncStats().Syncs - before.Syncs; got != 3 {
		t.Errorf("%d syncs for the group, want 3 (first, r1, r4+r5)", got)
	}
	s.Close()
	s = openTest(t, dir)
	defer s.Close()
	want := map[byte]struct {
		version uint64
		pages   map[uint64]byte
	}{
		1: {3, map[uint64]byte{0: 2, 1: 3}},
		2: {5, map[uint64]byte{0: 1, 2: 5}},
		3: {4, map[uint64]byte{0: 1, 1: 4}},
	}
	for id, w := range want {
		got, err := s.Load([]byte{id})
		if err != nil {
			t.Fatal(err)
		}
		if got.Meta.Version != w.version {
			t.Errorf("canister %d: version %d, want %d", id, got.Meta.Version, w.version)
		}
		if n := len(got.Heap.StoredPages()); n != len(w.pages) {
			t.Errorf("canister %d: %d pages, want %d", id, n, len(w.pages))
		}
		for p, v := range w.pages {
			if pg := got.Heap.Page(p); pg == nil || pg[0] != v {
				t.Errorf("canister %d page %d: %v, want %d", id, p, pg, v)
			}
		}
	}
}

func TestCommitAfterClose(t *testing.T) {
	s := openTest(t, t.TempDir())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := s.Commit(onePage([]byte{1}, 1, 0, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("commit after close: %v", err)
	}
}

// Close lets the commits already submitted finish.
func TestCloseDrainsQueue(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	release := holdWriter(t, s)
	first := submitAsync(t, s, onePage([]byte{1}, 1, 0, 1))
	waitTaken(t, s)
	second := submitAsync(t, s, onePage([]byte{2}, 1, 0, 2))
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	time.Sleep(20 * time.Millisecond)
	release()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir)
	defer s.Close()
	for _, id := range []byte{1, 2} {
		if _, err := s.Load([]byte{id}); err != nil {
			t.Fatalf("canister %d: %v", id, err)
		}
	}
}

// The sync observer sees every commit exactly once.
func TestSyncObserver(t *testing.T) {
	s := openTest(t, t.TempDir())
	defer s.Close()
	var commits, syncs atomic.Int64
	s.SetSyncObserver(func(i SyncInfo) {
		commits.Add(int64(i.Commits))
		syncs.Add(1)
		if i.Err != nil || i.Bytes <= 0 {
			t.Errorf("sync %+v", i)
		}
	})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				if err := s.Commit(onePage([]byte{byte(g)}, uint64(i), 0, byte(i))); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if commits.Load() != 160 {
		t.Fatalf("observer saw %d commits in %d syncs, want 160", commits.Load(), syncs.Load())
	}
}

// BenchmarkGroupCommit measures durable commits of one dirty page each by 1
// and by 16 goroutines (one canister each), and the syncs per commit; the
// ungrouped case is the store before group commit (one transaction and sync
// per Commit), for comparison:
//
//	go test -run '^$' -bench GroupCommit -benchtime 2s ./internal/store/
func BenchmarkGroupCommit(b *testing.B) {
	var single float64 // commits/s of one committer
	for _, bc := range []struct {
		committers int
		grouped    bool
	}{{1, true}, {16, true}, {16, false}} {
		name := fmt.Sprintf("committers=%d", bc.committers)
		if !bc.grouped {
			name = "ungrouped/" + name
		}
		b.Run(name, func(b *testing.B) {
			s := openTest(b, b.TempDir())
			defer s.Close()
			commit := s.Commit
			if !bc.grouped {
				commit = func(changes ...Change) error {
					return s.update(func(tx *bolt.Tx) error { return applyRequest(tx, changes) })
				}
			}
			// Warm up: every canister exists, with some pages.
			for g := range bc.committers {
				for p := range uint64(16) {
					if err := s.Commit(onePage([]byte{byte(g)}, 0, p, 1)); err != nil {
						b.Fatal(err)
					}
				}
			}
			before := s.SyncStats()
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for g := range bc.committers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					id := []byte{byte(g)}
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						if err := commit(onePage(id, uint64(i), uint64(i%16), byte(i))); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			after := s.SyncStats()
			rate := float64(b.N) / elapsed.Seconds()
			b.ReportMetric(rate, "commits/s")
			b.ReportMetric(float64(after.Syncs-before.Syncs)/float64(b.N), "syncs/commit")
			if bc.committers == 1 {
				single = rate
			} else if single > 0 {
				b.ReportMetric(rate/single, "x-one-committer")
			}
		})
	}
}
