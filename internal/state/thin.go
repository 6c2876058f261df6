package state

import (
	"errors"
	"slices"

	"golang.org/x/sys/unix"
)

// Thin clones. A clone of a backed page map (a composite query's frame)
// keeps in its own index only its stale pages, those in which it differs
// from the image it shares (backing.go); every other page of it is the
// image's. Copying the whole index instead made every frame, and every
// callback that advanced it, cost a pass over the heap's stored pages: a
// 256 MiB heap is 65,536 of them.
//
// A page that is not stale is the image's page, or zeros where the image
// has a hole or ends. Whether the image holds data there is asked of the
// file (lseek SEEK_DATA, as the engine maps only an image's data: a read of
// a hole through the host's shared mapping would allocate a page in the
// file). Writers keep the invariant: before the owner changes a page of the
// image, every sharer whose view it is gets a copy of the old bytes and
// the page goes into its stale set (preserve).

// thin reports whether m is a thin clone: a clone (reader) sharing an
// image (backed).
func (m *PageMap) thin() bool { return m.reader && m.backed }

// thinPage is Page of a thin clone.
func (m *PageMap) thinPage(i uint64) *Page {
	img := m.img
	img.mu.Lock()
	defer img.mu.Unlock()
	if _, ok := m.stale[i]; ok {
		return m.pages[i]
	}
	if i >= m.NumPages() {
		return nil
	}
	return img.dataPage(i)
}

// thinStored is StoredPages of a thin clone: its own non-zero stale pages
// and the image's non-zero data pages it does not hold stale, up to its
// size. This walks the image (not a path any execution takes: they use
// Layers).
func (m *PageMap) thinStored() []uint64 {
	img := m.img
	img.mu.Lock()
	defer img.mu.Unlock()
	pages := m.NumPages()
	var idx []uint64
	for i := range m.stale {
		if i < pages && m.pages[i] != nil {
			idx = append(idx, i)
		}
	}
	end := min(pages, (img.size+PageSize-1)/PageSize)
	img.eachData(end, func(i uint64) {
		if _, ok := m.stale[i]; ok {
			return
		}
		if p := img.at(i); p != nil && *p != zeroPage {
			idx = append(idx, i)
		}
	})
	slices.Sort(idx)
	return idx
}

// dataPage returns the image's page i if the file holds data there, nil
// for a hole or beyond the image (mu held). A file that cannot say where
// its data is reads as all data: the bytes are right, only a hole read may
// be filled.
func (img *image) dataPage(i uint64) *Page {
	if i >= (img.size+PageSize-1)/PageSize {
		return nil
	}
	off := int64(i * PageSize)
	d, err := unix.Seek(int(img.rw.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) || err == nil && d >= off+PageSize {
		return nil
	}
	return img.at(i)
}

// eachData calls fn for every page below end that lies in one of the
// image's data extents, in increasing order (mu held); for all of them if
// the file cannot say where its data is.
func (img *image) eachData(end uint64, fn func(i uint64)) {
	fd := int(img.rw.Fd())
	for i := uint64(0); i < end; {
		d, err := unix.Seek(fd, int64(i*PageSize), unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return
		}
		if err != nil || d < int64(i*PageSize) {
			for ; i < end; i++ {
				fn(i)
			}
			return
		}
		first := uint64(d) / PageSize
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		last := end
		if err == nil && h > d {
			last = min(end, (uint64(h)+PageSize-1)/PageSize)
		}
		for i = first; i < last; i++ {
			fn(i)
		}
	}
}

// revoke ends a clone that refused a copy (CloneCharged; img.mu held): its
// view of the page about to be overwritten would be lost, so the view is
// given up whole. It drops what it holds at once (its copies and its own
// writes) and is skipped by later commits; it stays a sharer until its
// Release, as every clone does.
func (m *PageMap) revoke() {
	m.revoked = true
	clear(m.pages)
	m.stale, m.copied = nil, 0
}

// Revoked reports whether m is a clone that refused a copy
// (CloneCharged): it no longer holds its snapshot, and reading it is a
// bug; it is to be released.
func (m *PageMap) Revoked() bool {
	if m == nil {
		return false
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if !m.backed {
		return false
	}
	m.img.mu.Lock()
	defer m.img.mu.Unlock()
	return m.revoked
}

// CopiedBytes returns the bytes of the copies that commits to m gave the
// clones sharing its image and that they still hold (counted for each
// holder: a copy shared by several clones counts for each; one the clone
// has since overwritten, until it is released). The host bounds them by
// charging each clone (CloneCharged); this is what it bounds.
func (m *PageMap) CopiedBytes() uint64 {
	if m == nil {
		return 0
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if !m.backed {
		return 0
	}
	m.img.mu.Lock()
	defer m.img.mu.Unlock()
	var n uint64
	for r := range m.img.sharing.sharers {
		n += r.copied
	}
	return n
}
