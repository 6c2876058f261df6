package state

import (
	"fmt"
	"sort"
	"unsafe"

	"golang.org/x/sys/unix"
)

// One host copy of committed pages.
//
// A backed page map (NewBackedPageMap; the store loads canisters' memories
// as such) keeps its non-zero pages in its memfd image alone: its entries
// point into a read-only shared mapping of the image, so a committed page
// is one page of shared memory, which executions map copy-on-write (in
// this process) or read through the read-only descriptor (in a sandbox).
// The owner of an image writes committed deltas into it in place.
//
// Other page maps may share the image (a fork being upgraded, a composite
// query's frame): their entries point into the same mapping, or, for a
// clone, are not kept at all (thin.go: a clone holds only its stale
// pages). Pages never change under a reader: before the owner overwrites a
// page, every sharer whose view it is is given a copy of the old bytes
// (copy-on-write for the reader, paid only for the pages a delta changes;
// one copy shared by all the sharers that need it), and the index goes
// into the sharer's stale set, the pages whose image bytes are not its
// own. A sharer's own changes are Go pages (also stale). A charged clone
// (CloneCharged: a frame, whose copies the host counts) is asked before it
// is given a copy, and if it refuses it is revoked rather than kept: the
// owner's write never waits or fails for a reader.
// So a sharer is its image plus its stale pages, which is how executions
// are given a clone (layers.go). When the owner is released, a sharer
// becomes the owner and writes its stale pages back (an abandoned upgrade
// restores the old memory this way). The mapping is unmapped only when
// the last page map referring to it is released: reference counts, no
// finalizer.
//
// Writers (Apply, Fork, Release of an owner) must exclude readers of every
// page map sharing the image, as Apply excludes readers of its own map: the
// host holds the canister's lock. Clone and Release of a sharer only need
// the image's mutex, and can run beside readers. A clone never becomes the
// owner, so releasing one never writes the image (drop).

// maxChunk is the largest single mapping of an image. Chunks double with
// the memory, so a small canister maps little address space and a large
// one a few mappings; a mapping never moves once made, so page pointers
// into it stay valid until it is unmapped.
const maxChunk = 1 << 30

// minChunk is the smallest chunk (a Wasm memory grows by 64 KiB steps;
// mapping each step would make thousands of mappings).
const minChunk = 1 << 20

type chunk struct {
	off uint64
	b   []byte
}

// sharing is the backed part of an image. Guarded by image.mu.
type sharing struct {
	chunks  []chunk
	mapped  uint64 // bytes covered by chunks
	owner   *PageMap
	sharers map[*PageMap]struct{}
}

// NewBackedPageMap returns an empty page map whose pages live in its image
// (see above). The caller must Release it when done with it; it must not be
// used afterwards. If no image can be made it is an ordinary page map.
func NewBackedPageMap(size uint64) *PageMap {
	m := NewPageMap(size)
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	img, err := newImage(m)
	if err != nil {
		m.imgFailed = true
		return m
	}
	img.sharing = &sharing{owner: m}
	// The pages are mapped from the read-only descriptor where there is
	// one: then not even an mprotect in this process can make them
	// writable (the mapping cannot gain VM_WRITE).
	_ = img.openReadOnly()
	if err := img.mapTo(size); err != nil {
		img.close()
		m.imgFailed = true
		return m
	}
	m.img, m.backed = img, true
	return m
}

// Backed reports whether m keeps its pages in its image.
func (m *PageMap) Backed() bool { return m != nil && m.backed }

// mapTo maps the image up to at least size bytes (mu held).
func (img *image) mapTo(size uint64) error {
	s := img.sharing
	for s.mapped < size {
		n := max(s.mapped, minChunk, size-s.mapped)
		n = min(n, maxChunk)
		n = (n + PageSize - 1) / PageSize * PageSize
		if s.mapped > 1<<62 {
			return fmt.Errorf("map memory image: %d bytes", s.mapped)
		}
		f := img.rw
		if img.ro != nil {
			f = img.ro
		}
		b, err := unix.Mmap(int(f.Fd()), int64(s.mapped), int(n), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("map memory image: %w", err)
		}
		s.chunks = append(s.chunks, chunk{off: s.mapped, b: b})
		s.mapped += n
	}
	return nil
}

// at returns the mapped page i (mu held, i*PageSize below img.size).
func (img *image) at(i uint64) *Page {
	s := img.sharing
	off := i * PageSize
	if off >= s.mapped || off >= img.size {
		return nil
	}
	k := sort.Search(len(s.chunks), func(k int) bool { return s.chunks[k].off+uint64(len(s.chunks[k].b)) > off })
	c := s.chunks[k]
	return (*Page)(unsafe.Pointer(&c.b[off-c.off]))
}

// unmap drops the mappings (no page map refers to them any more).
func (img *image) unmap() {
	if img.sharing == nil {
		return
	}
	for _, c := range img.sharing.chunks {
		_ = unix.Munmap(c.b)
	}
	img.sharing.chunks, img.sharing.mapped = nil, 0
}

// preserve gives every sharer whose page i is the image's a copy of it,
// and marks i stale for all of them: the owner is about to overwrite it.
// The sharers that need one share one copy (pages a page map does not own
// are never written in place), so the live frames of one generation cost
// one copy, not one each. A charged clone (CloneCharged) is asked first;
// one that refuses is revoked instead (revoke): the commit goes on either
// way, and the copies it would have kept are not made.
func (img *image) preserve(i uint64) {
	s := img.sharing
	if len(s.sharers) == 0 {
		return
	}
	cur := img.at(i)
	var data *Page // the image's page i, for thin sharers (thin.go)
	looked := false
	var kept *Page // the copy of the old page i, made once
	keep := func(r *PageMap, old *Page) bool {
		if r.charge != nil && !r.charge(PageSize) {
			r.revoke()
			return false
		}
		if kept == nil {
			kept = new(Page)
			*kept = *old
		}
		r.pages[i] = kept
		r.copied += PageSize
		return true
	}
	for r := range s.sharers {
		if r.revoked {
			continue
		}
		if _, st := r.stale[i]; r.thin() && !st && i < r.NumPages() {
			if !looked {
				data, looked = img.dataPage(i), true
			}
			if data != nil && *data != zeroPage && !keep(r, data) {
				continue
			}
		} else if cur != nil && r.pages[i] == cur && !keep(r, cur) {
			continue
		}
		if r.stale == nil {
			r.stale = make(map[uint64]struct{})
		}
		r.stale[i] = struct{}{}
	}
}

// writeOwned writes pages of the owner m into the image, preserving the
// sharers' views, and points m's entries at them. page(k) gives the k-th
// page by increasing index (nil: zero). With copyPages, pages m keeps as
// its own (the image could not take them) are copied: the caller reuses
// its buffers. mu held.
func (img *image) writeOwned(m *PageMap, n int, page func(k int) (uint64, *Page), copyPages bool) error {
	img.gen.Add(1)
	defer img.noteWritten(n)
	err := img.resize(max(img.size, m.size))
	if err == nil {
		err = img.mapTo(img.size)
	}
	if err == nil {
		for k := range n {
			i, _ := page(k)
			img.preserve(i)
		}
		// Zero pages are punched out of the file (its memory freed), the
		// others written in runs.
		var zeros []uint64
		var data []int
		for k := range n {
			if i, p := page(k); p == nil || *p == zeroPage {
				zeros = append(zeros, i)
			} else {
				data = append(data, k)
			}
		}
		err = writePages(img.rw, len(data), func(k int) (uint64, *Page) { return page(data[k]) })
		for _, i := range zeros {
			if err != nil {
				break
			}
			err = img.zero(i)
		}
	}
	for k := range n {
		i, p := page(k)
		if p != nil && *p == zeroPage {
			p = nil
		}
		if err != nil {
			// The image may hold part of it: the page is stale, and m
			// keeps its own copy until a later write succeeds.
			if m.stale == nil {
				m.stale = make(map[uint64]struct{})
			}
			m.stale[i] = struct{}{}
			if p == nil {
				delete(m.pages, i)
			} else {
				if copyPages {
					q := new(Page)
					*q = *p
					p = q
				}
				m.pages[i] = p
			}
			continue
		}
		delete(m.stale, i)
		if p == nil {
			delete(m.pages, i)
			continue
		}
		m.pages[i] = img.at(i)
	}
	if err != nil {
		return fmt.Errorf("write memfd: %w", err)
	}
	return nil
}

// zero makes page i of the image zeros: a hole, or written zeros where
// holes cannot be punched.
func (img *image) zero(i uint64) error {
	off := int64(i * PageSize)
	if err := unix.Fallocate(int(img.rw.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, PageSize); err == nil {
		return nil
	}
	_, err := img.rw.WriteAt(zeroPage[:], off)
	return err
}

// fold writes m's stale pages into the image m now owns (mu held).
func (img *image) fold(m *PageMap) error {
	if len(m.stale) == 0 {
		return nil
	}
	idx := make([]uint64, 0, len(m.stale))
	for i := range m.stale {
		idx = append(idx, i)
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	// Pages beyond m's size (written by a former owner that grew the
	// memory) become zeros again: m may grow over them later.
	return img.writeOwned(m, len(idx), func(k int) (uint64, *Page) {
		i := idx[k]
		if i >= m.NumPages() {
			return i, nil
		}
		return i, m.pages[i]
	}, false)
}

// share registers c as a sharer of m's image (mu held), with m's view.
func (img *image) share(m, c *PageMap) {
	s := img.sharing
	if s.sharers == nil {
		s.sharers = make(map[*PageMap]struct{})
	}
	s.sharers[c] = struct{}{}
	c.img, c.backed = img, true
	if len(m.stale) > 0 {
		c.stale = make(map[uint64]struct{}, len(m.stale))
		for i := range m.stale {
			c.stale[i] = struct{}{}
		}
	}
}

// drop removes m from the image's page maps (mu held) and reports whether
// none is left. An owner hands the image to a sharer, which writes its
// stale pages back.
func (img *image) drop(m *PageMap) (last bool) {
	s := img.sharing
	if s.owner != m {
		delete(s.sharers, m)
		return s.owner == nil && len(s.sharers) == 0
	}
	s.owner = nil
	// The next owner: a page map that was forked or is the original of a
	// fork, never a clone. A clone (a composite query's frame) is read
	// without its canister's lock between executions, so nothing may write
	// the image under it: with only clones left the image has no owner,
	// nothing writes it again, and it goes with the last of them.
	var next *PageMap
	for r := range s.sharers {
		if !r.reader {
			next = r
			break
		}
	}
	if next == nil {
		return len(s.sharers) == 0
	}
	delete(s.sharers, next)
	s.owner = next
	// If this fails, next keeps its own copies of what could not be
	// written (stale): correct, only not mappable until a write succeeds.
	_ = img.fold(next)
	return false
}

// sharedFile reports whether a backed m may hand out its image (mu held):
// it owns it, and the image holds exactly its pages.
func (img *image) sharedFile(m *PageMap) bool {
	return img.sharing.owner == m && len(m.stale) == 0
}

// Unback makes a backed page map an ordinary one: its pages are copied out
// of the image into memory of its own, and the image is unmapped and
// closed, giving its descriptors back (the host bounds how many canisters
// keep images: a cold canister holds its memory without descriptors, and
// its next File builds an image again). An ordinary page map just drops its
// image. A backed map that shares its image (a fork or a reader holds it)
// stays as it is: false. The caller holds m exclusively, as for Apply.
func (m *PageMap) Unback() bool {
	if m == nil {
		return true
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if !m.backed {
		m.releaseImage()
		return true
	}
	img := m.img
	img.mu.Lock()
	if img.sharing.owner != m || len(img.sharing.sharers) > 0 {
		img.mu.Unlock()
		return false
	}
	for i, p := range m.pages {
		own := new(Page)
		*own = *p
		m.pages[i] = own
	}
	img.sharing.owner = nil
	img.mu.Unlock()
	img.unmap()
	img.close()
	m.img, m.backed, m.stale, m.imgFailed = nil, false, nil, false
	return true
}

// Back makes an ordinary page map a backed one, the inverse of Unback: its
// pages are written into its image (the one it has, or a new one), its
// entries then point into the image's mapping and its own copies are
// dropped. The caller holds m exclusively, as for Apply. False if no image
// can be had (m stays ordinary and correct).
func (m *PageMap) Back() bool {
	if m == nil {
		return false
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if m.backed {
		return true
	}
	img := m.image() // an ordinary image holds exactly m's pages
	if img == nil {
		return false
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	img.sharing = &sharing{owner: m}
	_ = img.openReadOnly()
	if err := img.mapTo(m.size); err != nil {
		img.unmap()
		img.sharing = nil
		return false
	}
	for i := range m.pages {
		p := img.at(i)
		if p == nil {
			// Beyond the image: cannot be (it has m's size); stay
			// ordinary rather than lose the page.
			img.unmap()
			img.sharing = nil
			return false
		}
		m.pages[i] = p
	}
	m.backed = true
	return true
}
