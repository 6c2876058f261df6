package store

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The disk margin.
//
// A commit that finds the file system full before bbolt wrote its meta
// page changes nothing (ENOSPC, the node goes on), but one whose last sync
// fails has an unknown outcome and stops the store (writeTx), and a file
// system may report a lack of room only at that sync (delayed allocation,
// copy-on-write file systems such as btrfs, thin provisioning). So the
// store keeps a margin of free space on its file system: a commit that
// writes canister data (memory pages, a module, Wasm chunks, an
// execution's ingress statuses with its reply: IngressIsData) is refused
// before it writes anything, ErrNoRoom, when what it may take would leave
// less free than the margin. What it may take is estimated from its
// payload (roomNeeded). Writes that bring no such data (metadata, logs,
// which are bounded per canister, other ingress statuses, deletions, the node's
// own bookkeeping) are not refused: the margin is also their reserve, so a
// node below it still charges, answers, trims and deletes.
//
// Free space is the file system's (statfs: what an unprivileged writer
// may use), measured at most every roomMeasureEvery, or after
// roomMeasureBytes were committed since the last measure, and again before
// any refusal, so that a refusal is always judged on a fresh measure and
// room made by deleting a file is seen by the next commit. Between
// measures the commits admitted are subtracted from it, those in flight
// included, so that concurrent commits cannot all take the last room.

// ErrNoRoom marks a commit refused because it would take the free space
// of the store's file system below the disk margin: nothing of it was
// written. Its error is a *NoRoomError.
var ErrNoRoom = errors.New("the disk is nearly full")

// NoRoomError is a write refused by the disk margin.
type NoRoomError struct {
	Free   uint64 // bytes free on the store's file system, less commits admitted since measured
	Need   uint64 // what the refused write may take (0: an admission check)
	Margin uint64 // the free space the store keeps
}

func (e *NoRoomError) Error() string {
	if e.Need == 0 {
		return fmt.Sprintf("%v: %s free on the store's file system, below the disk margin of %s", ErrNoRoom, mib(e.Free), mib(e.Margin))
	}
	return fmt.Sprintf("%v: %s free on the store's file system, and a write that may take %s would leave less than the disk margin of %s",
		ErrNoRoom, mib(e.Free), mib(e.Need), mib(e.Margin))
}

// Is makes errors.Is(err, ErrNoRoom) true.
func (e *NoRoomError) Is(target error) bool { return target == ErrNoRoom }

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// How often free space is measured (see above).
const (
	roomMeasureEvery = 250 * time.Millisecond
	roomMeasureBytes = 64 << 20
)

// roomOverhead is what a commit may take per byte of payload: bbolt
// writes a page's value into leaves that span about 1.5 bbolt pages each
// (group.go, returnMemory), and the pages a transaction replaces are
// freed only after it commits, so a memory rewritten in place needs its
// new copy beside the old one until then.
const roomOverhead = 2

// roomNeeded is what changes may take on disk, for the margin: their
// canister data (memory pages, module, chunks, and an execution's
// ingress statuses: Change.IngressIsData) times roomOverhead; 0 for
// changes that bring none (see the comment at the top of this file).
func roomNeeded(changes []Change) uint64 {
	var n uint64
	for i := range changes {
		c := &changes[i]
		if c.Delete {
			continue
		}
		for _, m := range []*MemoryChange{c.Heap, c.Stable} {
			if m != nil {
				for _, p := range m.Delta.Pages {
					n += uint64(len(p.Data))
				}
			}
		}
		n += uint64(len(c.Module))
		for _, ch := range c.Chunks {
			n += uint64(len(ch))
		}
		if c.IngressIsData {
			for _, r := range c.Ingress {
				n += uint64(len(r.Key) + len(r.Value))
			}
		}
	}
	return n * roomOverhead
}

// DiskSpace returns the bytes free for an unprivileged writer (statfs
// f_bavail) and the size of the file system that holds dir.
func DiskSpace(dir string) (free, total uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Bsize <= 0 {
		return 0, 0, fmt.Errorf("statfs %s: block size %d", dir, st.Bsize)
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}

// The default disk margin: a hundredth of the file system, at least
// 1 GiB, but never more than a quarter of it (RATIONALE.md).
const (
	defaultMarginShare = 100
	minDefaultMargin   = 1 << 30
	maxMarginShare     = 4
)

// DefaultDiskMargin is the margin kept on a file system of total bytes
// when none is configured.
func DefaultDiskMargin(total uint64) uint64 {
	return min(max(total/defaultMarginShare, minDefaultMargin), total/maxMarginShare)
}

// room is the disk margin's state (see the comment at the top of this file).
type room struct {
	dir     string
	measure func(dir string) (free, total uint64, err error)
	now     func() time.Time

	mu       sync.Mutex
	margin   uint64 // 0: none
	free     uint64 // at the last measure
	measured time.Time
	ok       bool   // the last measure succeeded
	since    uint64 // bytes of the commits that ended since the last measure
	inFlight uint64 // bytes of the commits admitted and not yet ended
}

func newRoom(dir string) *room {
	return &room{dir: dir, measure: DiskSpace, now: time.Now}
}

// SetDiskMargin has the store keep margin bytes free on its file system
// (0: none, the default): commits that write canister data and would leave
// less are refused with ErrNoRoom.
func (s *Store) SetDiskMargin(margin uint64) {
	r := s.room
	r.mu.Lock()
	defer r.mu.Unlock()
	r.margin = margin
	r.measured = time.Time{} // measure at the next check
}

// Room reports whether a write of need bytes (estimated: 0 when unknown)
// leaves the disk margin free: nil, or a *NoRoomError (ErrNoRoom). Nothing
// is reserved: the write's commit is checked again.
func (s *Store) Room(need uint64) error {
	return s.room.check(need, false)
}

// check checks need bytes against the margin and, when they fit and
// reserve is set, counts them as in flight until end(need) is called.
func (r *room) check(need uint64, reserve bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.margin == 0 {
		return nil
	}
	now := r.now()
	if !r.ok || now.Sub(r.measured) >= roomMeasureEvery || r.since >= roomMeasureBytes {
		r.remeasure(now)
	}
	if !r.fits(need) {
		// Never refused on a stale measure: the room may have been made.
		r.remeasure(now)
		if !r.fits(need) {
			return &NoRoomError{Free: r.left(), Need: need, Margin: r.margin}
		}
	}
	if reserve {
		r.inFlight += need
	}
	return nil
}

// end records that a write admitted with need bytes ended.
func (r *room) end(need uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inFlight -= min(need, r.inFlight)
	r.since += need
}

// remeasure measures free space again. If statfs fails, the margin is not
// enforced until it works again: the store cannot tell, and a full file
// system still fails commits (ENOSPC) as it did before the margin.
func (r *room) remeasure(now time.Time) {
	free, _, err := r.measure(r.dir)
	r.ok, r.free, r.measured, r.since = err == nil, free, now, 0
}

// left is the free space less what was admitted since the last measure.
func (r *room) left() uint64 {
	return satSub(r.free, r.since+r.inFlight)
}

// fits reports whether need more bytes leave the margin free.
func (r *room) fits(need uint64) bool {
	if !r.ok {
		return true
	}
	return r.left() >= r.margin && r.left()-r.margin >= need
}

func satSub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}
