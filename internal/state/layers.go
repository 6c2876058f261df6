package state

import (
	"fmt"
	"os"
	"slices"
)

// Layers is a memory given as an image file and the pages laid over it, so
// that an execution maps the file and writes only those pages instead of
// copying the memory: the memory's bytes are the file's first Base bytes,
// then zeros up to Size, with Pages (whole pages, by increasing index, zero
// pages included) in place of what is beneath them.
//
// A clone of a backed page map (a composite query's frame) is such a
// memory: the image it shares with the committed memory, plus its stale
// pages (backing.go), those in which it differs from the image: its own
// writes and the pages commits overwrote since it was taken. So executing a
// frame costs the pages the frame changed, not the heap's size.
type Layers struct {
	File  *os.File
	Base  uint64
	Size  uint64
	Pages []DirtyPage
}

// LayeredMemory is a Memory that can be given as Layers, when it has no
// File of its own.
type LayeredMemory interface {
	Memory
	// Layers returns the memory as layers, false if it cannot. The file
	// and pages stay valid while the memory is read (the host holds its
	// canister's lock).
	Layers() (Layers, bool)
}

// Layers returns a backed page map as its image (File: for mapping in this
// process) and the pages laid over it; false for an ordinary page map.
// Only a backed page map shares an image with others that may change it,
// and only it knows which of its pages the image does not hold.
func (m *PageMap) Layers() (Layers, bool) { return m.layers(false) }

// ReadOnlyLayers is Layers with the image's read-only descriptor, for a
// sandbox (ReadOnlyFile).
func (m *PageMap) ReadOnlyLayers() (Layers, bool) { return m.layers(true) }

// LaidPages returns how many pages Layers would lay over the image, false
// if it would not give layers; without listing them.
func (m *PageMap) LaidPages() (uint64, bool) {
	if m == nil {
		return 0, false
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if !m.backed {
		return 0, false
	}
	m.img.mu.Lock()
	defer m.img.mu.Unlock()
	if m.revoked {
		return 0, false
	}
	if _, ok := m.layersBase(); !ok {
		return 0, false
	}
	n, pages := uint64(0), m.NumPages()
	for i := range m.stale {
		if i < pages {
			n++
		}
	}
	return n, true
}

func (m *PageMap) layers(readOnly bool) (Layers, bool) {
	if m == nil {
		return Layers{}, false
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if !m.backed {
		return Layers{}, false
	}
	img := m.img
	img.mu.Lock()
	defer img.mu.Unlock()
	if m.revoked {
		return Layers{}, false // its view is gone: never to be executed
	}
	f := img.rw
	if readOnly {
		if img.openReadOnly() != nil {
			return Layers{}, false
		}
		f = img.ro
	}
	base, ok := m.layersBase()
	if !ok {
		return Layers{}, false
	}
	// The image holds m's view of every page that is not stale (backing.go:
	// whoever changes a page of the image first marks it stale for every
	// sharer, beyond their sizes too), and no page of m at or beyond its
	// own size. So m is the image up to base, zeros beyond, with its stale
	// pages laid over both.
	pages := m.NumPages()
	idx := make([]uint64, 0, len(m.stale))
	for i := range m.stale {
		if i < pages {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	l := Layers{File: f, Base: base, Size: m.size, Pages: make([]DirtyPage, len(idx))}
	for k, i := range idx {
		l.Pages[k] = DirtyPage{Index: i, Data: pageOrZero(m.pages[i])}
	}
	return l, true
}

// layersBase returns how many bytes of m's image are m's base (imgMu and
// img.mu held): the image's size or m's, the smaller. False when that is
// not whole pages (Wasm sizes always are).
func (m *PageMap) layersBase() (uint64, bool) {
	base := min(m.img.size, m.size)
	return base, base%PageSize == 0
}

// OpenLayeredMemory is OpenFileMemory for a memory given as layers: the
// first base bytes of f, zeros up to size, and the pages laid over them
// with Lay. It takes ownership of f.
func OpenLayeredMemory(f *os.File, base, size uint64) (*FileMemory, error) {
	if base > size || size%PageSize != 0 || size > 1<<62 {
		f.Close()
		return nil, fmt.Errorf("layered memory of %d bytes over %d bytes of its image", size, base)
	}
	m, err := OpenFileMemory(f, base)
	if err != nil {
		return nil, err
	}
	m.size, m.layered = size, true
	m.laid = make(map[uint64]*Page)
	return m, nil
}

// Lay lays page p over a layered memory: indices must increase, inside the
// memory.
func (m *FileMemory) Lay(p DirtyPage) error {
	if !m.layered {
		return fmt.Errorf("page %d laid over a memory that is not layered", p.Index)
	}
	if p.Data == nil || p.Index >= m.size/PageSize {
		return fmt.Errorf("page %d laid over a memory of %d pages", p.Index, m.size/PageSize)
	}
	if n := len(m.order); n > 0 && m.order[n-1].Index >= p.Index {
		return fmt.Errorf("page %d laid after page %d", p.Index, m.order[n-1].Index)
	}
	m.laid[p.Index] = p.Data
	m.order = append(m.order, p)
	return nil
}

// Layers implements LayeredMemory: a layered memory is its file and the
// pages laid over it; another has a File instead.
func (m *FileMemory) Layers() (Layers, bool) {
	if !m.layered {
		return Layers{}, false
	}
	return Layers{File: m.f, Base: m.base, Size: m.size, Pages: m.order}, true
}
