package state

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// backed returns a backed page map of n pages holding numbered(i, tag) at
// the given indices.
func backed(t *testing.T, n uint64, tag byte, idx ...uint64) *PageMap {
	t.Helper()
	m := NewBackedPageMap(n * PageSize)
	if !m.Backed() {
		t.Fatal("no backed page map (memfd or mmap unavailable)")
	}
	d := Delta{Size: n * PageSize}
	for _, i := range idx {
		d.Pages = append(d.Pages, DirtyPage{Index: i, Data: numbered(i, tag)})
	}
	if err := m.Apply(d); err != nil {
		t.Fatal(err)
	}
	return m
}

// imageMappings counts this process's mappings of memory images.
func imageMappings(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "memfd:cordon-memory")
}

// A backed page map holds no copy of its pages: what it reads is the image.
// Writing the image behind its back (as nothing but this test can: the
// mapping is read-only, the descriptor the host's) shows in its pages, and
// the delta's pages are not kept.
func TestBackedPagesAreTheImage(t *testing.T) {
	m := backed(t, 16, 1, 0, 3, 4, 5, 15)
	defer m.Release()
	if !bytes.Equal(imageBytes(t, m), mapBytes(t, m)) {
		t.Fatal("image differs from the page map")
	}
	d := Delta{Size: 16 * PageSize, Pages: []DirtyPage{{Index: 4, Data: numbered(4, 2)}}}
	if err := m.Apply(d); err != nil {
		t.Fatal(err)
	}
	if m.Page(4) == d.Pages[0].Data {
		t.Fatal("the page map kept the delta's page")
	}
	if _, err := m.File().WriteAt(numbered(3, 9)[:], 3*PageSize); err != nil {
		t.Fatal(err)
	}
	if *m.Page(3) != *numbered(3, 9) || *m.Page(4) != *numbered(4, 2) {
		t.Fatal("the page map does not read through its image")
	}
	if got := m.StoredPages(); len(got) != 5 {
		t.Fatalf("stored pages %v", got)
	}
	// A page that becomes zero leaves the map and the image.
	if err := m.Apply(Delta{Size: 16 * PageSize, Pages: []DirtyPage{{Index: 5, Data: new(Page)}}}); err != nil {
		t.Fatal(err)
	}
	if m.Page(5) != nil || !bytes.Equal(imageBytes(t, m)[5*PageSize:6*PageSize], new(Page)[:]) {
		t.Fatal("page 5 is not zero")
	}
}

// Readers of a backed page map (a clone, as a composite query's frame; the
// original after a fork, as the canister's heap during an upgrade) keep
// seeing the old bytes while the fork writes its image in place; the fork's
// executions map its image. Released unused, the fork hands the image back
// and the original's image is its pages again, with the pages the fork grew
// into zero.
func TestBackedForkReadersSeeOldBytes(t *testing.T) {
	descs, maps := ImageDescriptors(), imageMappings(t)
	m := backed(t, 8, 1, 0, 1, 2, 6)
	old := mapBytes(t, m)
	reader := m.Clone()
	f := m.Fork()
	if f.File() == nil || m.File() != nil {
		t.Fatal("the fork did not take the image over")
	}
	d := Delta{Size: 12 * PageSize, Pages: []DirtyPage{
		{Index: 0, Data: new(Page)}, {Index: 1, Data: numbered(1, 7)}, {Index: 3, Data: numbered(3, 7)}, {Index: 10, Data: numbered(10, 7)},
	}}
	if err := f.Apply(d); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(imageBytes(t, f), mapBytes(t, f)) {
		t.Fatal("the fork's image differs from its pages")
	}
	if got := mapBytes(t, f); !bytes.Equal(got[PageSize:2*PageSize], numbered(1, 7)[:]) || !bytes.Equal(got[:PageSize], new(Page)[:]) {
		t.Fatal("the fork's pages do not show its delta")
	}
	if !bytes.Equal(mapBytes(t, m), old) || !bytes.Equal(mapBytes(t, reader), old) {
		t.Fatal("the fork's delta changed what a reader sees")
	}
	// The reader's own changes are its own.
	if err := reader.Apply(Delta{Size: 8 * PageSize, Pages: []DirtyPage{{Index: 2, Data: numbered(2, 5)}}}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mapBytes(t, m), old) || *f.Page(2) != *numbered(2, 1) {
		t.Fatal("a reader's change reached the others")
	}
	reader.Release()
	f.Release()
	if m.File() == nil {
		t.Fatal("the original did not get its image back")
	}
	if !bytes.Equal(mapBytes(t, m), old) || !bytes.Equal(imageBytes(t, m), old) {
		t.Fatal("the original's image is not its pages after the fork was released")
	}
	// Growing over what the fork wrote beyond the original's size: zeros.
	if err := m.Apply(Delta{Size: 12 * PageSize, Pages: []DirtyPage{{Index: 11, Data: numbered(11, 3)}}}); err != nil {
		t.Fatal(err)
	}
	img := imageBytes(t, m)
	if !bytes.Equal(img, mapBytes(t, m)) || !bytes.Equal(img[10*PageSize:11*PageSize], new(Page)[:]) {
		t.Fatal("the image shows what the released fork wrote")
	}
	m.Release()
	if m.Size() != 0 || m.NumStored() != 0 {
		t.Fatal("a released backed page map still has pages")
	}
	if ImageDescriptors() != descs || imageMappings(t) != maps {
		t.Fatalf("descriptors %d → %d, mappings %d → %d after releasing everything", descs, ImageDescriptors(), maps, imageMappings(t))
	}
}

// A fork that replaces the original (an upgrade that commits): the
// original is released, the fork keeps the image, and its pages, including
// those the original had a copy of, are right.
func TestBackedForkReplaces(t *testing.T) {
	descs := ImageDescriptors()
	m := backed(t, 4, 1, 0, 1, 2, 3)
	f := m.Fork()
	if err := f.Apply(Delta{Size: 4 * PageSize, Pages: []DirtyPage{{Index: 2, Data: numbered(2, 8)}}}); err != nil {
		t.Fatal(err)
	}
	m.Release()
	if f.File() == nil {
		t.Fatal("the fork lost its image")
	}
	want := append(append(append(append([]byte{}, numbered(0, 1)[:]...), numbered(1, 1)[:]...), numbered(2, 8)[:]...), numbered(3, 1)[:]...)
	if !bytes.Equal(mapBytes(t, f), want) || !bytes.Equal(imageBytes(t, f), want) {
		t.Fatal("the fork's pages or image are wrong after the original was released")
	}
	f.Release()
	if ImageDescriptors() != descs {
		t.Fatalf("descriptors %d → %d", descs, ImageDescriptors())
	}
}

// Load copies: a loader reuses its buffer, and the map's pages are still
// what was loaded; for a backed map they are the image's.
func TestBackedLoadCopies(t *testing.T) {
	for _, backedMap := range []bool{false, true} {
		m := NewPageMap(4 * PageSize)
		if backedMap {
			m = NewBackedPageMap(4 * PageSize)
		}
		buf := new(Page)
		for i := uint64(0); i < 4; i++ {
			*buf = *numbered(i, 4)
			if err := m.Load(Delta{Size: 4 * PageSize, Pages: []DirtyPage{{Index: i, Data: buf}}}); err != nil {
				t.Fatal(err)
			}
		}
		for i := uint64(0); i < 4; i++ {
			if *m.Page(i) != *numbered(i, 4) {
				t.Fatalf("backed %v: page %d is not what was loaded", backedMap, i)
			}
		}
		m.Release()
	}
}

// When the image cannot take a write (here: sealed against growing, and
// the delta grows the memory), the backed page map stays correct with its
// own copies of those pages and hands out no image, which would not match
// it.
func TestBackedWriteFailureKeepsPages(t *testing.T) {
	m := backed(t, 4, 1, 0, 1)
	defer m.Release()
	if _, err := unix.FcntlInt(m.img.rw.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_GROW); err != nil {
		t.Fatalf("seal the image against growing: %v", err)
	}
	d := Delta{Size: 6 * PageSize, Pages: []DirtyPage{{Index: 1, Data: numbered(1, 2)}, {Index: 5, Data: numbered(5, 2)}}}
	if err := m.Apply(d); err != nil {
		t.Fatal(err)
	}
	if *m.Page(0) != *numbered(0, 1) || *m.Page(1) != *numbered(1, 2) || *m.Page(5) != *numbered(5, 2) || m.Size() != 6*PageSize {
		t.Fatal("the page map lost a write the image refused")
	}
	if m.File() != nil || m.ReadOnlyFile() != nil {
		t.Fatal("an image that does not match the page map was handed out")
	}
}

// The mapping a backed page map reads through is read-only for good: it is
// made from the read-only descriptor, so not even mprotect in this process
// makes a committed page writable.
func TestBackedMappingCannotBecomeWritable(t *testing.T) {
	m := backed(t, 4, 1, 0)
	defer m.Release()
	p := m.Page(0)
	page := unsafe.Slice((*byte)(unsafe.Pointer(p)), PageSize)
	if err := unix.Mprotect(page, unix.PROT_READ|unix.PROT_WRITE); err == nil {
		t.Fatal("a committed page's mapping was made writable")
	}
	if *m.Page(0) != *numbered(0, 1) {
		t.Fatal("page 0 changed")
	}
}

// Unback keeps every byte while giving the image and its descriptors back;
// a backed map whose image a fork shares stays backed.
func TestUnbackKeepsPages(t *testing.T) {
	m := backed(t, 16, 1, 0, 3, 15)
	defer m.Release()
	want := mapBytes(t, m)
	before := ImageDescriptors()
	f := m.Fork() // the fork owns the image now, m shares it
	if m.Unback() || !m.Backed() {
		t.Fatal("a map sharing its image was unbacked")
	}
	f.Release() // m owns it again
	if !m.Unback() {
		t.Fatal("the sole owner could not be unbacked")
	}
	if m.Backed() || m.HasImage() {
		t.Fatal("still backed, or still holding an image")
	}
	if got := ImageDescriptors(); got >= before {
		t.Fatalf("image descriptors %d, was %d: none given back", got, before)
	}
	if !bytes.Equal(mapBytes(t, m), want) {
		t.Fatal("unbacking changed the memory")
	}
	// Its next File builds an image again, holding the same bytes, and
	// the page map keeps working.
	if m.File() == nil || !bytes.Equal(imageBytes(t, m), want) {
		t.Fatal("no image, or a different one, after unbacking")
	}
	if err := m.Apply(Delta{Size: 16 * PageSize, Pages: []DirtyPage{{Index: 2, Data: numbered(2, 7)}}}); err != nil {
		t.Fatal(err)
	}
	if *m.Page(2) != *numbered(2, 7) || *m.Page(3) != *(*Page)(want[3*PageSize : 4*PageSize]) {
		t.Fatal("the unbacked map does not apply deltas")
	}
}

// A clone outlives the map it was taken from (a composite query's frame
// when its canister's memory is replaced): it never becomes the image's
// owner, so nothing writes the image under the other clones, which are
// read without their canister's lock between executions, and what one
// clone applies stays its own.
func TestBackedClonesNeverOwn(t *testing.T) {
	descs := ImageDescriptors()
	m := backed(t, 4, 1, 0, 1)
	a, b := m.Clone(), m.Clone()
	old := mapBytes(t, b)
	m.Release()
	if a.File() != nil || b.File() != nil {
		t.Fatal("a clone became the owner of the image (its file is handed out)")
	}
	reads := make(chan struct{})
	go func() {
		defer close(reads)
		for range 1000 {
			_ = b.Page(1)
			_ = b.StoredPages()
		}
	}()
	if err := a.Apply(Delta{Size: 4 * PageSize, Pages: []DirtyPage{{Index: 1, Data: numbered(1, 9)}}}); err != nil {
		t.Fatal(err)
	}
	a.Release()
	<-reads
	if !bytes.Equal(mapBytes(t, b), old) {
		t.Fatal("another clone's change reached this one")
	}
	b.Release()
	if got := ImageDescriptors(); got != descs {
		t.Fatalf("image descriptors %d → %d", descs, got)
	}
}
