package state

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"golang.org/x/sys/unix"
)

// imageBytes reads a memory's whole image.
func imageBytes(t *testing.T, m *PageMap) []byte {
	t.Helper()
	f := m.File()
	if f == nil {
		t.Fatal("no image")
	}
	b := make([]byte, m.Size())
	if _, err := f.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

// mapBytes reads a memory from its pages.
func mapBytes(t *testing.T, m *PageMap) []byte {
	t.Helper()
	b := make([]byte, m.Size())
	if err := m.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// numbered is a page holding its index and a tag in every word.
func numbered(i uint64, tag byte) *Page {
	p := new(Page)
	for off := 0; off < PageSize; off += 8 {
		binary.LittleEndian.PutUint64(p[off:], i<<8|uint64(tag))
	}
	return p
}

// The image is written in runs of consecutive pages, up to runPages per
// system call: runs longer than that, gaps, single pages and the last page
// all land where they belong.
func TestImageRuns(t *testing.T) {
	const n = 3*runPages + 17
	m := NewPageMap(n * PageSize)
	for i := uint64(0); i < n; i++ {
		if i%97 == 5 || (i > 300 && i < 340) {
			continue // gaps: zeros
		}
		if err := m.SetPage(i, numbered(i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(imageBytes(t, m), mapBytes(t, m)) {
		t.Fatal("image differs from the page map")
	}
	// A delta with a long run, gaps and zero pages, growing the memory.
	d := Delta{Size: (n + 2*runPages) * PageSize}
	for i := uint64(200); i < d.Size/PageSize; i++ {
		switch {
		case i > 600 && i < 604:
			continue
		case i%7 == 0:
			d.Pages = append(d.Pages, DirtyPage{Index: i, Data: new(Page)})
		default:
			d.Pages = append(d.Pages, DirtyPage{Index: i, Data: numbered(i, 2)})
		}
	}
	if err := m.Apply(d); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(imageBytes(t, m), mapBytes(t, m)) {
		t.Fatal("image differs from the page map after a delta")
	}
	m.Release()
}

// Fork hands the image to the copy: the copy's changes reach its image,
// the original keeps its pages and builds a fresh image of them.
func TestForkTakesImage(t *testing.T) {
	m := NewPageMap(8 * PageSize)
	for i := uint64(0); i < 8; i += 2 {
		if err := m.SetPage(i, numbered(i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	old := mapBytes(t, m)
	img := m.File()
	f := m.Fork()
	if f.File() != img {
		t.Fatal("the fork did not take the image over")
	}
	d := Delta{Size: 10 * PageSize, Pages: []DirtyPage{{Index: 0, Data: new(Page)}, {Index: 3, Data: numbered(3, 9)}, {Index: 9, Data: numbered(9, 9)}}}
	if err := f.Apply(d); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(imageBytes(t, f), mapBytes(t, f)) {
		t.Fatal("the fork's image differs from its pages")
	}
	if got := mapBytes(t, f); !bytes.Equal(got[3*PageSize:4*PageSize], numbered(3, 9)[:]) || !bytes.Equal(got[:PageSize], new(Page)[:]) {
		t.Fatal("the fork's pages do not show the delta")
	}
	if !bytes.Equal(mapBytes(t, m), old) || m.Size() != 8*PageSize {
		t.Fatal("the fork's delta changed the original")
	}
	if m.File() == img || !bytes.Equal(imageBytes(t, m), old) {
		t.Fatal("the original's new image differs from its pages")
	}
	m.Release()
	f.Release()
}

// A memory opened from a descriptor (a sandbox's) knows its file's identity
// from the stat it makes when opened, so that a sandbox's engine finds the
// instance it kept for that image without a system call per execution.
func TestFileMemoryIdentity(t *testing.T) {
	m := NewPageMap(0)
	if err := m.Apply(Delta{Size: 2 * PageSize, Pages: []DirtyPage{{Index: 1, Data: page(7)}}}); err != nil {
		t.Fatal(err)
	}
	f := m.ReadOnlyFile()
	if f == nil {
		t.Skip("no memfd images")
	}
	var want unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &want); err != nil {
		t.Fatal(err)
	}
	fm, err := OpenFileMemory(f, m.Size())
	if err != nil {
		t.Fatal(err)
	}
	defer fm.Close()
	dev, ino, ok := fm.FileIdentity()
	if !ok || dev != uint64(want.Dev) || ino != want.Ino {
		t.Fatalf("identity %d/%d (%v), the file is %d/%d", dev, ino, ok, want.Dev, want.Ino)
	}
	if p := fm.Page(1); p == nil || p[0] != 7 {
		t.Fatal("memory does not read its file")
	}
}
