package state

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pages others allocated in an image are given back.
//
// An image is a memfd holding only the pages the host wrote; the rest are
// holes. A read fault on a hole, even through a private read-only mapping,
// allocates a page of zeros in the file (shmem), charged to the faulting
// process's memory cgroup, and the page stays in the file when that
// process dies: its charge moves up to the node's sandbox group (or, in
// this process, stays with the host). The engine maps only an image's data
// extents (engine/holes.go), but it merges extents beyond a bound, so a
// canister that writes its heap in many runs far apart has the holes
// between them mapped from the file, and one query reading a byte a page
// filled them: a 256 MiB heap's image went from 1 MiB to 256 MiB, charged
// to the node group after the sandbox was gone, for as long as the image
// lived. A compromised sandbox can map and read the descriptors it is given
// at will. TrimImage, called after each execution, punches such pages out
// again.

// allocated returns the bytes the file system holds for the image.
func (img *image) allocated() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(img.rw.Fd()), &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// noteFresh records what a new image holds: all of it the host's.
func (img *image) noteFresh() {
	if a, err := img.allocated(); err == nil {
		img.written.Store(a)
	}
}

// noteWritten records what the image holds after the host wrote pages
// pages into it (the image's writer holds its locks): TrimImage looks for
// pages others allocated only when the file holds more. What the file
// holds now counts for at most what it held before plus those pages: a
// reader may have allocated pages in its holes since the last trim (a
// compromised sandbox reads while its update is committed), and counted
// as the host's they would stay, no trim looking at them again until the
// file grew further.
func (img *image) noteWritten(pages int) {
	img.noteAtMost(img.written.Load() + int64(pages)*PageSize)
}

// noteAtMost records what the image holds now, or bound if that is less.
func (img *image) noteAtMost(bound int64) {
	if a, err := img.allocated(); err == nil {
		img.written.Store(min(a, max(bound, 0)))
	}
}

// TrimImage punches out of m's image the pages of zeros that readers
// allocated in its holes, and returns how many it punched. It looks only
// when the file holds more than after the host's last write to it (one
// fstat); then it reads, in the file's data extents, the pages the host
// did not write, and punches those that are zeros: the file's bytes stay
// the same, whoever reads them. Safe beside executions on m (they hold the
// canister's lock as m's writers need it exclusively).
//
// A pass costs in proportion to the span of the image's data (mincore,
// below), however little the reads allocated, and a free query that reads
// one hole asks for one: an image's passes are a gap apart (TrimMinGap,
// below). Asked within it, TrimImage schedules the pass for then (in the
// background, once) and returns 0: what was read stays in the file until
// that pass, at most the gap after its ask.
func (m *PageMap) TrimImage() int {
	if m == nil {
		return 0
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	img := m.img
	if img == nil {
		return 0
	}
	var written func(i uint64) bool
	if m.backed {
		img.mu.Lock()
		defer img.mu.Unlock()
		owner := img.sharing.owner
		written = func(i uint64) bool {
			if owner == nil {
				return false
			}
			if _, stale := owner.stale[i]; stale {
				return false
			}
			p := owner.pages[i]
			return p != nil && p == img.at(i)
		}
	} else {
		written = func(i uint64) bool { return m.pages[i] != nil }
	}
	now, err := img.allocated()
	if err != nil || now <= img.written.Load() {
		return 0
	}
	if wait := img.nextPass.Load() - trimNow(); wait > 0 {
		if img.deferred.CompareAndSwap(false, true) {
			backed := m.backed
			trimLater(time.Duration(wait), func() {
				img.deferred.Store(false)
				// Through the image's owner now, if it is backed: m may be
				// a clone released meanwhile, the image living on.
				by := m
				if backed {
					img.mu.Lock()
					if img.sharing != nil && img.sharing.owner != nil {
						by = img.sharing.owner
					}
					img.mu.Unlock()
				}
				by.TrimImage()
			})
		}
		return 0
	}
	start := trimNow()
	n := img.trim(now, written)
	end := trimNow()
	img.passes.Add(1)
	img.nextPass.Store(end + int64(max(TrimMinGap, trimGapFactor*time.Duration(end-start))))
	return n
}

// An image's trim passes are apart by at least TrimMinGap, and by
// trimGapFactor times the last one's duration: a stream of asks, however
// fast, has the host spend at most 1/(trimGapFactor+1) of a core on one
// image's passes, and all images' passes together at most one pass over
// each per TrimMinGap (their data spans add up to no more than the
// memories' sizes, which limits.memory_capacity bounds). What readers
// allocated stays the gap at most: 1 s, or 20 times a pass (a pass over
// 800 MiB of data here is ~40 ms: 1 s).
const (
	TrimMinGap    = time.Second
	trimGapFactor = 20
)

// trimNow is the clock of the gaps between passes (monotonic nanoseconds);
// trimLater runs f after d. Tests replace both.
var (
	trimEpoch = time.Now()
	trimNow   = func() int64 { return int64(time.Since(trimEpoch)) }
	trimLater = func(d time.Duration, f func()) { time.AfterFunc(d, f) }
)

// TrimPasses returns how many passes TrimImage made over m's image (tests,
// diagnostics).
func (m *PageMap) TrimPasses() uint64 {
	if m == nil {
		return 0
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if m.img == nil {
		return 0
	}
	return m.img.passes.Load()
}

// trim punches the zero pages in img's data extents that written does not
// claim (its writer's locks held), the file holding now bytes.
func (img *image) trim(now int64, written func(i uint64) bool) int {
	fd := int(img.rw.Fd())
	end := (img.size + PageSize - 1) / PageSize
	buf := make([]byte, runPages*PageSize)
	punched := 0
	punch := func(first, n uint64) {
		trimSyscalls.Add(1)
		if unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(first*PageSize), int64(n*PageSize)) == nil {
			punched += int(n)
		}
	}
	// check reads the n pages from first (none written by the host) and
	// punches the runs of zeros among them.
	check := func(first, n uint64) {
		b := buf[:n*PageSize]
		trimSyscalls.Add(1)
		if got, err := unix.Pread(fd, b, int64(first*PageSize)); err != nil || got != len(b) {
			return
		}
		run := uint64(0)
		for k := uint64(0); k < n; k++ {
			if isZero(b[k*PageSize : (k+1)*PageSize]) {
				run++
				continue
			}
			if run > 0 {
				punch(first+k-run, run)
			}
			run = 0
		}
		if run > 0 {
			punch(first+n-run, run)
		}
	}
	// Where the file holds pages is found a window at a time: one lseek
	// to the next data, then one mincore over a read-only mapping of the
	// window from there (a memfd's pages are in memory: the group allows
	// no swap). Seeking from extent to extent cost two system calls each,
	// and a canister can lay out its heap as tens of thousands of extents
	// for a free query that reads one hole to make every trim walk them.
	vec := make([]byte, min(end, trimWindow))
	incomplete := false
	for i := uint64(0); i < end; {
		trimSyscalls.Add(1)
		d, err := unix.Seek(fd, int64(i*PageSize), unix.SEEK_DATA)
		if err != nil || d < int64(i*PageSize) {
			break // ENXIO: no data left; anything else: leave it
		}
		first := uint64(d) / PageSize
		if first >= end {
			break
		}
		n := min(trimWindow, end-first)
		if !inMemory(fd, first, vec[:n]) {
			incomplete = true // looked at again next time
			break
		}
		for j := uint64(0); j < n; {
			if vec[j]&1 == 0 || written(first+j) {
				j++
				continue
			}
			k := uint64(1)
			for j+k < n && k < runPages && vec[j+k]&1 != 0 && !written(first+j+k) {
				k++
			}
			check(first+j, k)
			j += k
		}
		i = first + n
	}
	if punched > 0 {
		img.gen.Add(1) // the holes changed
	}
	if !incomplete {
		// Pages read meanwhile behind the pass are not the host's either.
		img.noteAtMost(now - int64(punched)*PageSize)
	}
	return punched
}

// trimWindow is how many pages one mincore of a trim's pass looks at
// (64 MiB; its vector is 16 KiB).
const trimWindow = 16384

// inMemory sets bit 0 of vec[k] if page first+k of the file fd is in
// memory (mincore over a read-only shared mapping of those pages, which
// faults none of them); false if it cannot tell.
func inMemory(fd int, first uint64, vec []byte) bool {
	b, err := unix.Mmap(fd, int64(first*PageSize), len(vec)*PageSize, unix.PROT_READ, unix.MAP_SHARED)
	trimSyscalls.Add(2) // and its munmap
	if err != nil {
		return false
	}
	defer unix.Munmap(b)
	trimSyscalls.Add(1)
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	return e == 0
}

// trimSyscalls counts the system calls trims' passes made (tests).
var trimSyscalls atomic.Int64

// isZero reports whether b is all zeros.
func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
