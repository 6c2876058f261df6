package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/state"
)

// fakeDisk is a file system whose free space the test sets, and which
// counts the times it was measured.
type fakeDisk struct {
	free     uint64
	err      error
	measures int
}

func (d *fakeDisk) statfs(string) (uint64, uint64, error) {
	d.measures++
	return d.free, 100 << 30, d.err
}

// fakeRoom is a margin of 100 MiB over a fake disk, on a clock the test
// moves.
func fakeRoom(free uint64) (*room, *fakeDisk, *time.Time) {
	d := &fakeDisk{free: free}
	now := time.Unix(1_000_000, 0)
	r := &room{dir: "/x", measure: d.statfs, now: func() time.Time { return now }, margin: 100 << 20}
	return r, d, &now
}

// The margin's arithmetic: what fits, what is refused and why, what is in
// flight, when free space is measured again.
func TestDiskMarginLogic(t *testing.T) {
	const mb = 1 << 20
	t.Run("fits and refuses", func(t *testing.T) {
		r, _, _ := fakeRoom(150 * mb)
		if err := r.check(50*mb, false); err != nil {
			t.Fatalf("50 MiB with exactly 50 MiB above the margin: %v", err)
		}
		err := r.check(50*mb+1, false)
		var nr *NoRoomError
		if !errors.As(err, &nr) || !errors.Is(err, ErrNoRoom) {
			t.Fatalf("one byte more than fits: %v, want a NoRoomError", err)
		}
		if nr.Free != 150*mb || nr.Need != 50*mb+1 || nr.Margin != 100*mb {
			t.Fatalf("refusal says %+v", nr)
		}
		if err := r.check(0, false); err != nil {
			t.Fatalf("admission above the margin: %v", err)
		}
	})
	t.Run("below the margin", func(t *testing.T) {
		r, _, _ := fakeRoom(99 * mb)
		if err := r.check(0, false); !errors.Is(err, ErrNoRoom) {
			t.Fatalf("admission 1 MiB below the margin: %v, want ErrNoRoom", err)
		}
		if err := r.check(4096, true); !errors.Is(err, ErrNoRoom) {
			t.Fatalf("a page below the margin: %v, want ErrNoRoom", err)
		}
	})
	t.Run("in flight", func(t *testing.T) {
		// Two writes that each fit but not together: the second is
		// refused while the first is in flight (the disk does not show
		// it yet), and judged on the disk again once it ended.
		r, d, _ := fakeRoom(160 * mb)
		if err := r.check(40*mb, true); err != nil {
			t.Fatal(err)
		}
		if err := r.check(40*mb, true); !errors.Is(err, ErrNoRoom) {
			t.Fatalf("a second 40 MiB with 60 MiB above the margin and 40 in flight: %v, want ErrNoRoom", err)
		}
		d.free = 140 * mb // the first took 20 MiB, not 40
		r.end(40 * mb)
		if err := r.check(40*mb, true); err != nil {
			t.Fatalf("after the first ended, 40 MiB above the margin: %v", err)
		}
		if err := r.check(1, false); !errors.Is(err, ErrNoRoom) {
			t.Fatalf("one byte with the last 40 MiB in flight: %v, want ErrNoRoom", err)
		}
	})
	t.Run("cached", func(t *testing.T) {
		r, d, now := fakeRoom(1 << 40)
		for range 100 {
			if err := r.check(mb, true); err != nil {
				t.Fatal(err)
			}
			r.end(mb)
		}
		// Measured at the first check and after each 64 MiB ended.
		if d.measures != 2 {
			t.Fatalf("100 commits of 1 MiB measured the disk %d times, want 2", d.measures)
		}
		*now = now.Add(roomMeasureEvery)
		if err := r.check(mb, false); err != nil {
			t.Fatal(err)
		}
		if d.measures != 3 {
			t.Fatalf("a check %v after the last measure measured %d times in all, want 3", roomMeasureEvery, d.measures)
		}
	})
	t.Run("refusal measures again", func(t *testing.T) {
		// Room made by deleting a file shows at the next check, not
		// after the cache's interval.
		r, d, _ := fakeRoom(105 * mb)
		if err := r.check(10*mb, false); !errors.Is(err, ErrNoRoom) {
			t.Fatalf("10 MiB with 5 above the margin: %v, want ErrNoRoom", err)
		}
		d.free = 200 * mb // a file deleted
		before := d.measures
		if err := r.check(10*mb, false); err != nil {
			t.Fatalf("after room was made: %v", err)
		}
		if d.measures == before {
			t.Fatal("a check that would have refused on the cached measure did not measure again")
		}
	})
	t.Run("no margin, no measure", func(t *testing.T) {
		r, d, _ := fakeRoom(0)
		r.margin = 0
		if err := r.check(1<<40, true); err != nil || d.measures != 0 {
			t.Fatalf("with no margin: %v after %d measures", err, d.measures)
		}
	})
	t.Run("statfs fails", func(t *testing.T) {
		// Unknown free space is not refused: ENOSPC still is.
		r, d, _ := fakeRoom(0)
		d.err = errors.New("statfs: stale file handle")
		if err := r.check(mb, true); err != nil {
			t.Fatalf("with statfs failing: %v", err)
		}
	})
}

func TestDefaultDiskMargin(t *testing.T) {
	const gib = 1 << 30
	for _, c := range []struct{ total, want uint64 }{
		{64 << 20, 16 << 20},         // tiny: a quarter
		{2 * gib, gib / 2},           // small: a quarter, not 1 GiB
		{8 * gib, gib},               // 1 GiB
		{20 * gib, gib},              // 1% is less than 1 GiB
		{252 * gib, 252 * gib / 100}, // 1%
		{1000 * gib, 10 * gib},       // 1%
		{0, 0},                       // unknown
	} {
		if got := DefaultDiskMargin(c.total); got != c.want {
			t.Errorf("DefaultDiskMargin(%d) = %d, want %d", c.total, got, c.want)
		}
	}
}

// roomNeeded counts canister data only: a metadata, log or deletion
// commit is never refused by the margin (it is their reserve).
func TestRoomNeeded(t *testing.T) {
	page := state.DirtyPage{Index: 1, Data: new(state.Page)}
	for _, c := range []struct {
		name string
		c    Change
		want uint64
	}{
		{"metadata", Change{ID: []byte{1}}, 0},
		{"logs", Change{ID: []byte{1}, Logs: []LogEntry{{Text: "hello"}}}, 0},
		{"ingress", Change{Ingress: []IngressRecord{{Key: []byte("k"), Value: make([]byte, 1000)}}}, 0},
		{"delete", Change{ID: []byte{1}, Delete: true, Heap: &MemoryChange{Delta: state.Delta{Pages: []state.DirtyPage{page}}}}, 0},
		{"heap page", Change{ID: []byte{1}, Heap: &MemoryChange{Delta: state.Delta{Pages: []state.DirtyPage{page}}}}, 2 * state.PageSize},
		{"stable page and module", Change{ID: []byte{1}, Stable: &MemoryChange{Delta: state.Delta{Pages: []state.DirtyPage{page}}}, Module: make([]byte, 100)}, 2 * (state.PageSize + 100)},
		{"chunk", Change{ID: []byte{1}, Chunks: [][]byte{make([]byte, 1000)}}, 2000},
		{"an execution's ingress", Change{ID: []byte{1}, Ingress: []IngressRecord{{Key: []byte("k"), Value: make([]byte, 999)}}, IngressIsData: true}, 2000},
	} {
		if got := roomNeeded([]Change{c.c}); got != c.want {
			t.Errorf("%s: roomNeeded = %d, want %d", c.name, got, c.want)
		}
	}
}

// On a real file system: a commit of canister data that would leave less
// than the margin is refused before it writes anything, the store stays
// open and intact (no ErrFailed), metadata still commits, and the commit
// succeeds once a file was deleted.
func TestCommitRefusedByDiskMargin(t *testing.T) {
	dir := durTmpfs(t, 64<<20)
	s, err := Open(filepath.Join(dir, "store"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetDiskMargin(16 << 20)
	id := []byte{9, 1, 1}
	meta := Meta{ID: "c", Status: "running"}
	if err := s.Commit(Change{ID: id, Create: true, Meta: meta}); err != nil {
		t.Fatal(err)
	}
	// 4 MiB above the margin.
	release := fillDisk(t, dir, 20<<20)
	pages := func(n int, v byte) *MemoryChange {
		d := state.Delta{Size: uint64(n) * state.PageSize}
		for i := range n {
			p := new(state.Page)
			p[0] = v
			d.Pages = append(d.Pages, state.DirtyPage{Index: uint64(i), Data: p})
		}
		return &MemoryChange{Delta: d}
	}
	// 1 MiB fits (2 MiB estimated), 4 MiB does not.
	meta.HeapSize = 256 * state.PageSize
	if err := s.Commit(Change{ID: id, Meta: meta, Heap: pages(256, 1)}); err != nil {
		t.Fatalf("1 MiB with 4 MiB above the margin: %v", err)
	}
	meta2 := meta
	meta2.HeapSize = 1024 * state.PageSize
	err = s.Commit(Change{ID: id, Meta: meta2, Heap: pages(1024, 2)})
	if !errors.Is(err, ErrNoRoom) {
		t.Fatalf("4 MiB with about 3 MiB above the margin: %v, want ErrNoRoom", err)
	}
	select {
	case <-s.Failed():
		t.Fatal("a refusal failed the store")
	default:
	}
	meta.Messages = 7
	if err := s.Commit(Change{ID: id, Meta: meta, Logs: []LogEntry{{Seq: 1, Text: "still here"}}, KeepLogs: 10}); err != nil {
		t.Fatalf("metadata and a log line within the margin: %v", err)
	}
	c, err := s.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	if c.Meta.HeapSize != 256*state.PageSize || c.Meta.Messages != 7 {
		t.Fatalf("after the refusal the store holds heap %d, messages %d", c.Meta.HeapSize, c.Meta.Messages)
	}
	if p := c.Heap.Page(255); p == nil || p[0] != 1 {
		t.Fatal("page 255 lost the committed 1")
	}
	c.Release()
	release()
	if err := s.Commit(Change{ID: id, Meta: meta2, Heap: pages(1024, 2)}); err != nil {
		t.Fatalf("after the ballast was deleted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "store", "cordon.db")); err != nil {
		t.Fatal(err)
	}
}
