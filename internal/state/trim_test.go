package state

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fileBytes returns the bytes f's file system holds for it.
func fileBytes(t *testing.T, m *PageMap) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(m.File().Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// readAllThrough maps the read-only descriptor a sandbox is given, as a
// compromised sandbox (or the engine, where it merges an image's extents)
// may, privately and read-only, and reads a byte of every page: each read
// of a hole allocates a page of zeros in the file.
func readAllThrough(t *testing.T, m *PageMap) {
	t.Helper()
	b, err := unix.Mmap(int(m.ReadOnlyFile().Fd()), 0, int(m.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(b)
	for i := 0; i < len(b); i += PageSize {
		readSink += int(b[i])
	}
}

var readSink int

// Pages a reader allocated in an image's holes are punched out again by
// TrimImage, the host's pages kept, the memory's bytes unchanged, for an
// ordinary page map with an image, a backed one, and through a clone (a
// composite query's frame) of a backed one.
func TestTrimImageGivesBackReadHoles(t *testing.T) {
	const size = 16 << 20 // 4,096 pages
	data := func(b byte) *Page { p := new(Page); p[7] = b; return p }
	written := map[uint64]byte{0: 1, 1: 2, 1000: 3, 4095: 4}
	for _, tc := range []struct {
		name  string
		make  func() *PageMap
		trim  func(m *PageMap) *PageMap // the map TrimImage is called on
		slack int64
	}{
		{"plain", func() *PageMap { return NewPageMap(size) }, func(m *PageMap) *PageMap { return m }, 0},
		{"backed", func() *PageMap { return NewBackedPageMap(size) }, func(m *PageMap) *PageMap { return m }, 0},
		{"clone of backed", func() *PageMap { return NewBackedPageMap(size) }, func(m *PageMap) *PageMap { return m.Clone() }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.make()
			defer m.Release()
			var d Delta
			d.Size = size
			for _, i := range []uint64{0, 1, 1000, 4095} {
				d.Pages = append(d.Pages, DirtyPage{Index: i, Data: data(written[i])})
			}
			if err := m.Apply(d); err != nil {
				t.Fatal(err)
			}
			if m.File() == nil {
				t.Fatal("no image")
			}
			before := fileBytes(t, m)
			gen, _ := m.ImageGeneration()
			if n := m.TrimImage(); n != 0 {
				t.Fatalf("trimmed %d pages of an image nobody read", n)
			}
			readAllThrough(t, m)
			if grew := fileBytes(t, m) - before; grew < size/2 {
				t.Fatalf("reading the holes allocated %d bytes: the attack did not take", grew)
			}
			by := tc.trim(m)
			if n := by.TrimImage(); n < 4096-4 {
				t.Fatalf("trimmed %d pages, want the %d holes read", n, 4096-4)
			}
			if after := fileBytes(t, m); after > before {
				t.Fatalf("the image holds %d bytes after the trim, %d before the reads", after, before)
			}
			for i := uint64(0); i < size/PageSize; i++ {
				p := m.Page(i)
				if b, ok := written[i]; ok {
					if p == nil || p[7] != b {
						t.Fatalf("page %d lost its bytes", i)
					}
				} else if p != nil && *p != zeroPage {
					t.Fatalf("page %d is not zeros", i)
				}
			}
			if g, _ := m.ImageGeneration(); g == gen {
				t.Error("the image's generation did not change with its holes")
			}
			if by != m {
				by.Release()
			}
		})
	}
}

// imageKinds are the page maps whose image a trim works on: an ordinary
// one and a backed one (the store's).
var imageKinds = []struct {
	name string
	make func(size uint64) *PageMap
}{
	{"plain", NewPageMap},
	{"backed", NewBackedPageMap},
}

// writeSpread writes a page holding 1 at every step-th page of m, a map of
// size bytes, and checks that m then has an image.
func writeSpread(t *testing.T, m *PageMap, size, step uint64) {
	t.Helper()
	d := Delta{Size: size}
	for i := uint64(0); i < size/PageSize; i += step {
		p := new(Page)
		p[0] = 1
		d.Pages = append(d.Pages, DirtyPage{Index: i, Data: p})
	}
	if err := m.Apply(d); err != nil {
		t.Fatal(err)
	}
	if m.File() == nil {
		t.Fatal("no image")
	}
}

// What TrimImage looks for was measured after the host's last write: pages
// a reader allocated in the holes before that write (a compromised sandbox
// reading while its update is committed, or one whose query its caller
// gave up on) were counted as the host's, and no trim looked at them again
// unless the file grew further: a reader that stopped there kept them in
// the image for good. A write counts for at most the pages it wrote.
func TestTrimImageSeesReadsBeforeAWrite(t *testing.T) {
	const size = 16 << 20 // 4,096 pages
	for _, tc := range imageKinds {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.make(size)
			defer m.Release()
			page := func(i uint64, b byte) Delta {
				p := new(Page)
				p[7] = b
				return Delta{Size: size, Pages: []DirtyPage{{Index: i, Data: p}}}
			}
			for _, i := range []uint64{0, 1000, 4095} {
				if err := m.Apply(page(i, byte(i))); err != nil {
					t.Fatal(err)
				}
			}
			if m.File() == nil {
				t.Fatal("no image")
			}
			before := fileBytes(t, m)
			readAllThrough(t, m)
			// The host writes one page (its commit) after the reads.
			if err := m.Apply(page(2000, 9)); err != nil {
				t.Fatal(err)
			}
			if n := m.TrimImage(); n < 4096-4 {
				t.Fatalf("trimmed %d pages, want the %d holes read before the host's write", n, 4096-4)
			}
			if after := fileBytes(t, m); after > before+PageSize {
				t.Fatalf("the image holds %d bytes after the trim, %d before the reads and one page written", after, before)
			}
			if p := m.Page(2000); p == nil || p[7] != 9 {
				t.Fatal("the host's page was lost")
			}
			if n := m.TrimImage(); n != 0 {
				t.Fatalf("a second trim punched %d pages", n)
			}
		})
	}
}

// A trim's pass cost two lseeks per data extent of the image: a canister
// whose heap holds 10,000 pages written apart (40 MiB) and a free query
// reading one hole made the host make 20,000 system calls, ~50 ms of its
// CPU (1.4 s for 100,000 pages), against a page fault in the sandbox. The
// pass now finds what is allocated a window at a time (one lseek, one
// mincore): its system calls grow with the image's size, not its extents.
func TestTrimImageCostDoesNotGrowWithExtents(t *testing.T) {
	const n = 10000
	const size = 2 * n * PageSize
	for _, tc := range imageKinds {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.make(size)
			defer m.Release()
			writeSpread(t, m, size, 2)
			b, err := unix.Mmap(int(m.ReadOnlyFile().Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Munmap(b)
			readSink += int(b[(2*n-1)*PageSize]) // the last hole
			calls := trimSyscalls.Load()
			if k := m.TrimImage(); k != 1 {
				t.Fatalf("punched %d pages, want the one read", k)
			}
			if made := trimSyscalls.Load() - calls; made > 64 {
				t.Fatalf("a trim of one read hole among %d extents made %d system calls", n, made)
			}
			for i := uint64(0); i < size/PageSize; i++ {
				if p := m.Page(i); (i%2 == 0) != (p != nil && p[0] == 1) {
					t.Fatalf("page %d changed", i)
				}
			}
		})
	}
}

// fakeTrimClock replaces the clock of the gaps between trim passes with
// one the test moves, and trimLater with a list of what it would run,
// until the test ends.
func fakeTrimClock(t *testing.T) (now *int64, later *[]func()) {
	t.Helper()
	oldNow, oldLater := trimNow, trimLater
	t.Cleanup(func() { trimNow, trimLater = oldNow, oldLater })
	now, later = new(int64), new([]func())
	trimNow = func() int64 { return *now }
	trimLater = func(_ time.Duration, f func()) { *later = append(*later, f) }
	return now, later
}

// A pass costs in proportion to the span of the image's data, however
// little was read: a canister whose heap is spread out and a stream of
// free queries each reading one hole made the host pass over the whole
// image after every query (~8 ms of host CPU a query for 1 GiB here, under
// the canister's read lock). An image now has at most one pass per gap;
// an ask within it schedules one for its end (once), which punches
// everything read meanwhile.
func TestTrimImagePassesAreRateLimited(t *testing.T) {
	const size = 256 << 20 // a byte written at every MiB
	const asks = 1000      // a millisecond apart
	for _, tc := range imageKinds {
		t.Run(tc.name, func(t *testing.T) {
			now, later := fakeTrimClock(t)
			m := tc.make(size)
			defer m.Release()
			writeSpread(t, m, size, 256)
			before := fileBytes(t, m)
			b, err := unix.Mmap(int(m.ReadOnlyFile().Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Munmap(b)
			calls := trimSyscalls.Load()
			punched := 0
			for k := 0; k < asks; k++ {
				readSink += int(b[(uint64(k%256)*256+1+uint64(k/256))*PageSize]) // a hole: a page of zeros in the file
				punched += m.TrimImage()
				*now += int64(time.Millisecond)
			}
			// One pass at the first ask; the asks of the next second wait
			// for the one scheduled at its end.
			if p := m.TrimPasses(); p != 1 || len(*later) != 1 {
				t.Fatalf("%d asks a millisecond apart made %d passes and scheduled %d, want 1 and 1", asks, p, len(*later))
			}
			if made := trimSyscalls.Load() - calls; made > 64 {
				t.Fatalf("%d asks made %d system calls in passes", asks, made)
			}
			if punched != 1 {
				t.Fatalf("the asks punched %d pages, want the first one's", punched)
			}
			if grew := fileBytes(t, m) - before; grew < (asks-1)*PageSize {
				t.Fatalf("the image grew by %d bytes: the reads did not take", grew)
			}
			// The scheduled pass punches what was read meanwhile.
			*now += int64(TrimMinGap)
			(*later)[0]()
			if p := m.TrimPasses(); p != 2 {
				t.Fatalf("the scheduled pass did not run: %d passes", p)
			}
			if after := fileBytes(t, m); after > before {
				t.Fatalf("the image holds %d bytes after the scheduled pass, %d before the reads", after, before)
			}
			for i := uint64(0); i < size/PageSize; i++ {
				if p := m.Page(i); (i%256 == 0) != (p != nil && p[0] == 1) {
					t.Fatalf("page %d changed", i)
				}
			}
			// An ask after the gap, with nothing read since, costs an fstat.
			*now += int64(TrimMinGap)
			if n := m.TrimImage(); n != 0 || m.TrimPasses() != 2 || len(*later) != 1 {
				t.Fatalf("an ask with nothing read punched %d pages, passes %d, scheduled %d", n, m.TrimPasses(), len(*later))
			}
		})
	}
}
