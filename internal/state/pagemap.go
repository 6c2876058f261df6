// Package state holds a canister's state: its memories as page maps, its
// globals and its metadata, and the deterministic hash over all of them.
package state

import (
	"errors"
	"fmt"
	"slices"
	"sort"
)

// PageSize is the granularity of state tracking: 4 KiB, the OS page size.
const PageSize = 4096

// WasmPageSize is the unit of Wasm and stable memory sizes: 64 KiB.
const WasmPageSize = 65536

// Page is one page of memory.
type Page [PageSize]byte

var zeroPage Page

// ZeroPage returns a read-only all-zero page; callers must not modify it.
func ZeroPage() *Page { return &zeroPage }

// PageMap is a memory of Size bytes stored sparsely as 4 KiB pages: a page
// that is absent is all zeros. An ordinary page map never modifies a stored
// page in place, so a *Page read from it stays valid after later updates.
// A backed one (NewBackedPageMap) keeps its pages in its image, written in
// place by Apply: a *Page read from it is valid until the next Apply or
// Release of a page map sharing the image (backing.go), which the caller
// excludes as it excludes readers from Apply.
//
// A PageMap may also keep an image of itself in a memfd (File), updated by
// Apply, which executions map instead of copying the memory.
type PageMap struct {
	size  uint64
	pages map[uint64]*Page
	imageState
}

// NewPageMap returns an empty page map of the given size in bytes.
func NewPageMap(size uint64) *PageMap {
	return &PageMap{size: size, pages: make(map[uint64]*Page)}
}

// Size returns the memory size in bytes.
func (m *PageMap) Size() uint64 {
	if m == nil {
		return 0
	}
	return m.size
}

// NumPages returns the number of 4 KiB pages the size spans.
func (m *PageMap) NumPages() uint64 { return (m.Size() + PageSize - 1) / PageSize }

// Page returns page i, or nil if it is all zeros.
func (m *PageMap) Page(i uint64) *Page {
	if m == nil {
		return nil
	}
	if m.thin() {
		return m.thinPage(i)
	}
	return m.pages[i]
}

// NumStored returns how many pages are stored (non-zero).
func (m *PageMap) NumStored() int {
	if m == nil {
		return 0
	}
	if m.thin() {
		return len(m.thinStored())
	}
	return len(m.pages)
}

// StoredPages returns the indices of the pages that are stored (non-zero), sorted.
func (m *PageMap) StoredPages() []uint64 {
	if m == nil {
		return nil
	}
	if m.thin() {
		return m.thinStored()
	}
	idx := make([]uint64, 0, len(m.pages))
	for i := range m.pages {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	return idx
}

// ReadAt copies len(dst) bytes starting at off into dst.
func (m *PageMap) ReadAt(dst []byte, off uint64) error {
	end := off + uint64(len(dst))
	if end < off || end > m.Size() {
		return fmt.Errorf("read [%d, +%d) outside memory of %d bytes", off, len(dst), m.Size())
	}
	for len(dst) > 0 {
		idx, in := off/PageSize, off%PageSize
		n := copy(dst, pageOrZero(m.Page(idx))[in:])
		dst, off = dst[n:], off+uint64(n)
	}
	return nil
}

func pageOrZero(p *Page) *Page {
	if p == nil {
		return &zeroPage
	}
	return p
}

// Clone returns a copy that shares the (immutable) pages, without an image
// of its own. The clone of a backed map reads through its image and must be
// released (Release) when done; its changes are its own (backing.go). It
// holds only the pages in which it differs from the image (its stale
// pages), so taking it, and giving it to an execution as the image and
// those pages (Layers), costs the pages changed since the image was the
// memory, not the memory's size; a clone of an ordinary map copies the
// page index.
func (m *PageMap) Clone() *PageMap { return m.CloneCharged(nil) }

// CloneCharged is Clone for a clone whose keeping is paid for: before a
// commit gives it a copy of a page it overwrites (backing.go: preserve),
// charge is asked for the page's bytes, under the image's mutex (it must
// not use the page map); the copies are the clone's until it is released,
// and what charge took is the caller's to give back then. If charge
// refuses, the commit goes on without giving the clone anything: the clone
// is revoked (Revoked), drops the pages it holds, and may no longer be
// read, only released. A commit never waits or fails because of a clone.
// A clone of a charged clone is charged only if given its own charge.
func (m *PageMap) CloneCharged(charge func(bytes uint64) bool) *PageMap {
	c := NewPageMap(m.Size())
	// A clone is a short-lived view (a composite query's frame): building
	// an image of it would cost more than copying it.
	c.imgFailed, c.reader = true, true
	if m == nil {
		return c
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if !m.backed {
		for i, p := range m.pages {
			c.pages[i] = p
		}
		return c
	}
	m.img.mu.Lock()
	defer m.img.mu.Unlock()
	for i := range m.stale {
		if p := m.pages[i]; p != nil {
			c.pages[i] = p
		}
	}
	m.img.share(m, c)
	// It holds the copies m holds (shared, counted for each holder) and,
	// of a revoked m, nothing to read.
	c.charge, c.revoked, c.copied = charge, m.revoked, m.copied
	return c
}

// DirtyPage is one page written by a message.
type DirtyPage struct {
	Index uint64
	Data  *Page
}

// Delta is what one message changed in one memory: its new size and the
// pages it wrote. Pages are sorted by index without duplicates.
type Delta struct {
	Size  uint64
	Pages []DirtyPage
}

// ErrInvalidDelta reports a delta that violates the page-map invariants.
var ErrInvalidDelta = errors.New("invalid memory delta")

// Validate checks the delta's invariants against a maximum size: size within
// the maximum, indices inside the new size, strictly increasing.
func (d *Delta) Validate(maxSize uint64) error {
	if d.Size > maxSize {
		return fmt.Errorf("%w: size %d exceeds limit %d", ErrInvalidDelta, d.Size, maxSize)
	}
	pages := (d.Size + PageSize - 1) / PageSize
	for i, p := range d.Pages {
		if p.Data == nil {
			return fmt.Errorf("%w: page %d has no data", ErrInvalidDelta, p.Index)
		}
		if p.Index >= pages {
			return fmt.Errorf("%w: page %d outside memory of %d pages", ErrInvalidDelta, p.Index, pages)
		}
		if i > 0 && p.Index <= d.Pages[i-1].Index {
			return fmt.Errorf("%w: page %d out of order or duplicated", ErrInvalidDelta, p.Index)
		}
	}
	return nil
}

// Apply applies a validated delta in place. Shrinking is not possible in
// Wasm, so a smaller size is an error; pages past the size are dropped.
// A backed map that owns its image writes the pages into it and keeps
// none of the delta's; others keep the delta's pages (backing.go).
func (m *PageMap) Apply(d Delta) error {
	return m.apply(d, false)
}

// Load applies a validated delta like Apply, but never keeps the delta's
// pages: they are copied (into the image, for a backed map), so a loader
// can reuse one buffer for every batch of pages it reads.
func (m *PageMap) Load(d Delta) error {
	return m.apply(d, true)
}

func (m *PageMap) apply(d Delta, copyPages bool) error {
	if d.Size < m.size {
		return fmt.Errorf("%w: memory cannot shrink from %d to %d bytes", ErrInvalidDelta, m.size, d.Size)
	}
	if err := d.Validate(d.Size); err != nil {
		return err
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if m.backed {
		return m.applyBacked(d, copyPages)
	}
	m.size = d.Size
	for _, p := range d.Pages {
		if *p.Data == zeroPage {
			delete(m.pages, p.Index)
			continue
		}
		data := p.Data
		if copyPages {
			data = new(Page)
			*data = *p.Data
		}
		m.pages[p.Index] = data
	}
	if m.img != nil {
		if err := m.img.apply(d); err != nil {
			// The image no longer matches; the next File rebuilds it.
			m.releaseImage()
		}
	}
	return nil
}

// applyBacked applies d to a backed map (imgMu held): into the image if m
// owns it, else as pages of its own, stale against the image.
func (m *PageMap) applyBacked(d Delta, copyPages bool) error {
	img := m.img
	img.mu.Lock()
	defer img.mu.Unlock()
	m.size = d.Size
	if img.sharing.owner == m {
		// A failed write leaves m correct (it keeps what the image could
		// not take, as stale pages), only not mappable until a later write
		// succeeds; stale pages are retried first.
		_ = img.fold(m)
		_ = img.writeOwned(m, len(d.Pages), func(k int) (uint64, *Page) { return d.Pages[k].Index, d.Pages[k].Data }, copyPages)
		return nil
	}
	if m.stale == nil {
		m.stale = make(map[uint64]struct{})
	}
	for _, p := range d.Pages {
		m.stale[p.Index] = struct{}{}
		if *p.Data == zeroPage {
			delete(m.pages, p.Index)
			continue
		}
		data := p.Data
		if copyPages {
			data = new(Page)
			*data = *p.Data
		}
		m.pages[p.Index] = data
	}
	return nil
}

// SetPage stores a page directly (used when loading from the store).
func (m *PageMap) SetPage(i uint64, p *Page) error {
	if i >= m.NumPages() {
		return fmt.Errorf("page %d outside memory of %d pages", i, m.NumPages())
	}
	if p == nil {
		p = &zeroPage
	}
	if m.Backed() {
		return m.Load(Delta{Size: m.size, Pages: []DirtyPage{{Index: i, Data: p}}})
	}
	m.imgMu.Lock()
	m.releaseImage() // SetPage is for loading; the image is built after
	m.imgMu.Unlock()
	if *p == zeroPage {
		delete(m.pages, i)
		return nil
	}
	m.pages[i] = p
	return nil
}

// Overlay is a copy-on-write view of a PageMap for one execution: reads see
// the base plus what was written, writes touch only the overlay, and the
// written pages come out as a Delta. Dropping the overlay rolls back.
type Overlay struct {
	base  Memory
	size  uint64
	dirty map[uint64]*Page
}

// NewOverlay starts a copy-on-write view of base (which may be nil: empty).
func NewOverlay(base Memory) *Overlay {
	if base == nil {
		base = (*PageMap)(nil)
	}
	return &Overlay{base: base, size: base.Size(), dirty: make(map[uint64]*Page)}
}

// Size returns the current size in bytes.
func (o *Overlay) Size() uint64 { return o.size }

// Grow sets a larger size.
func (o *Overlay) Grow(newSize uint64) {
	if newSize > o.size {
		o.size = newSize
	}
}

func (o *Overlay) page(i uint64) *Page {
	if p, ok := o.dirty[i]; ok {
		return p
	}
	return pageOrZero(o.base.Page(i))
}

// ReadAt copies len(dst) bytes at off into dst.
func (o *Overlay) ReadAt(dst []byte, off uint64) error {
	end := off + uint64(len(dst))
	if end < off || end > o.size {
		return fmt.Errorf("read [%d, +%d) outside memory of %d bytes", off, len(dst), o.size)
	}
	for len(dst) > 0 {
		idx, in := off/PageSize, off%PageSize
		n := copy(dst, o.page(idx)[in:])
		dst, off = dst[n:], off+uint64(n)
	}
	return nil
}

// WriteAt copies src to off.
func (o *Overlay) WriteAt(src []byte, off uint64) error {
	end := off + uint64(len(src))
	if end < off || end > o.size {
		return fmt.Errorf("write [%d, +%d) outside memory of %d bytes", off, len(src), o.size)
	}
	for len(src) > 0 {
		idx, in := off/PageSize, off%PageSize
		p, ok := o.dirty[idx]
		if !ok {
			p = new(Page)
			*p = *o.page(idx)
			o.dirty[idx] = p
		}
		n := copy(p[in:], src)
		src, off = src[n:], off+uint64(n)
	}
	return nil
}

// Dirty is the number of pages written so far.
func (o *Overlay) Dirty() uint64 { return uint64(len(o.dirty)) }

// Clean counts the pages of [off, off+n) not yet written: those a write
// there would add to the delta. n must be > 0 and the range inside the
// memory (WriteAt's bounds).
func (o *Overlay) Clean(off, n uint64) uint64 {
	var c uint64
	for i, last := off/PageSize, (off+n-1)/PageSize; i <= last; i++ {
		if _, ok := o.dirty[i]; !ok {
			c++
		}
	}
	return c
}

// Delta returns the size and written pages, sorted.
func (o *Overlay) Delta() Delta {
	d := Delta{Size: o.size, Pages: make([]DirtyPage, 0, len(o.dirty))}
	for i, p := range o.dirty {
		d.Pages = append(d.Pages, DirtyPage{Index: i, Data: p})
	}
	sort.Slice(d.Pages, func(a, b int) bool { return d.Pages[a].Index < d.Pages[b].Index })
	return d
}
