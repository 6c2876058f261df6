package state

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Memory is read access to a committed memory: the PageMap the host keeps,
// or a Mapping of its image inside a sandbox.
type Memory interface {
	// Size is the memory size in bytes.
	Size() uint64
	// Page returns page i, or nil if it is all zeros (a Mapping never
	// returns nil). Callers must not modify it.
	Page(i uint64) *Page
	// File returns a descriptor whose first Size bytes are the memory, or
	// nil if there is none. Executions in this process map it privately
	// (copy-on-write, never writing it) instead of copying the memory.
	File() *os.File
}

// image is a memfd holding the same bytes as a PageMap, kept in step with
// it by Apply, so that an execution can map the committed memory instead
// of copying it (DESIGN.md §6). The host writes it through rw; ro, made on
// first demand, is the descriptor other processes (sandboxes) get,
// reopened read-only so that holding it cannot change committed state.
type image struct {
	rw, ro *os.File
	size   uint64
	// gen counts the changes to the file's bytes, size or holes (each
	// write, resize and punched page): a mapping of it checks the file's
	// layout again only when gen moved (ImageGeneration).
	gen atomic.Uint64
	// written is what the file held after the host's last write to it,
	// counting for that write no more than the pages it wrote (trim.go):
	// more means a reader allocated pages in its holes.
	written atomic.Int64
	// Of its trims' passes (trim.go): nextPass is the earliest the next
	// may start (trimNow's clock), deferred is set while one is scheduled
	// for then, passes counts them.
	nextPass atomic.Int64
	deferred atomic.Bool
	passes   atomic.Uint64

	// mu guards sharing, and the entries and stale sets of the page maps
	// that share the image while the owner writes (backing.go).
	mu      sync.Mutex
	sharing *sharing // nil unless the image backs page maps
}

// openImages counts the descriptors images hold (tests subtract them when
// they look for leaked descriptors).
var openImages atomic.Int64

// ImageDescriptors returns how many descriptors memory images hold now.
func ImageDescriptors() int64 { return openImages.Load() }

// File returns the descriptor of the memory's image, creating the image on
// first use (one pass over the stored pages). It is for mapping in this
// process; hand other processes ReadOnlyFile. It returns nil if no image
// can be made (no memfd); executions then copy.
func (m *PageMap) File() *os.File {
	if m == nil {
		return nil
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if img := m.image(); img != nil {
		return img.rw
	}
	return nil
}

// backedImage returns a backed m's image if m may hand it out (imgMu held).
func (m *PageMap) backedImage() *image {
	img := m.img
	if img == nil {
		return nil
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if !img.sharedFile(m) {
		return nil
	}
	return img
}

// ReadOnlyFile is File reopened read-only (through /proc/self/fd), for a
// sandbox: it can map and read the committed memory, not change it. Nil if
// there is no image or no /proc.
func (m *PageMap) ReadOnlyFile() *os.File {
	if m == nil {
		return nil
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	img := m.image()
	if img == nil {
		return nil
	}
	// img.mu: the clones sharing a backed image open it too (Layers).
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.openReadOnly() != nil {
		return nil
	}
	return img.ro
}

// openReadOnly opens img.ro if it is not open yet (img.mu held, or img
// not shared yet).
func (img *image) openReadOnly() error {
	if img.ro != nil {
		return nil
	}
	ro, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", img.rw.Fd()), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	img.ro = ro
	openImages.Add(1)
	return nil
}

// image returns the image, making it if needed (imgMu held). A backed map
// hands out its image only while it owns it and the image holds its pages;
// otherwise executions copy (backing.go).
func (m *PageMap) image() *image {
	if m.backed {
		return m.backedImage()
	}
	if m.img == nil && !m.imgFailed {
		img, err := newImage(m)
		if err != nil {
			// Not fatal: executions fall back to copying. Remember so
			// that every execution does not retry.
			m.imgFailed = true
			return nil
		}
		m.img = img
	}
	return m.img
}

// releaseImage drops the image (after a failed update: it no longer
// matches the page map; the next File call rebuilds it).
func (m *PageMap) releaseImage() {
	if m.img != nil && !m.backed {
		m.img.close()
		m.img = nil
	}
}

// Fork returns a copy that shares the (immutable) pages and takes over m's
// image, so that the copy's executions map the memory and its Apply updates
// the image a page at a time: O(pages) pointers copied, no byte of the
// memory. m keeps its pages but loses the image; its next File builds a
// new one (one pass over its pages). This is for a copy that will replace
// m (an upgrade's heap and stable memory): if the replacement is abandoned
// m stays correct and only pays that rebuild. The caller must hold m
// exclusively: nothing may be executing on m's image.
//
// A backed m's fork takes over the image as its owner, and m becomes a
// sharer: it keeps its view (the fork's writes give it copies of the pages
// they overwrite), so if the fork is released unused, m owns the image
// again and writes those pages back (backing.go). m can be released once
// the fork replaces it.
func (m *PageMap) Fork() *PageMap {
	c := NewPageMap(m.Size())
	if m == nil {
		return c
	}
	if m.thin() {
		for _, i := range m.thinStored() {
			c.pages[i] = m.thinPage(i)
		}
	} else {
		for i, p := range m.pages {
			c.pages[i] = p
		}
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if m.backed {
		img := m.img
		img.mu.Lock()
		defer img.mu.Unlock()
		img.share(m, c)
		if img.sharing.owner == m {
			delete(img.sharing.sharers, c)
			img.sharing.owner = c
			img.sharing.sharers[m] = struct{}{}
		}
		return c
	}
	c.img, m.img = m.img, nil
	return c
}

// Release closes the memory's image, if any. An ordinary page map stays
// usable; a backed one becomes empty (its pages were the image's), and the
// image is closed when no other page map shares it.
func (m *PageMap) Release() {
	if m == nil {
		return
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if !m.backed {
		m.releaseImage()
		return
	}
	img := m.img
	img.mu.Lock()
	last := img.drop(m)
	img.mu.Unlock()
	if last {
		img.unmap()
		img.close()
	}
	m.img, m.backed, m.imgFailed = nil, false, true
	m.size, m.pages, m.stale = 0, make(map[uint64]*Page), nil
	m.charge, m.revoked, m.copied = nil, false, 0
}

func newImage(m *PageMap) (*image, error) {
	fd, err := unix.MemfdCreate("cordon-memory", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	rw := os.NewFile(uintptr(fd), "cordon-memory")
	img := &image{rw: rw}
	if err := img.resize(m.size); err != nil {
		rw.Close()
		return nil, err
	}
	// Nobody may shrink it: a mapping past the end would fault.
	if _, err := unix.FcntlInt(rw.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
		rw.Close()
		return nil, fmt.Errorf("seal memfd: %w", err)
	}
	idx := m.StoredPages()
	if err := writePages(rw, len(idx), func(k int) (uint64, *Page) { return idx[k], m.pages[idx[k]] }); err != nil {
		rw.Close()
		return nil, fmt.Errorf("fill memfd: %w", err)
	}
	img.noteFresh()
	openImages.Add(1)
	return img, nil
}

func (img *image) resize(size uint64) error {
	if size == img.size {
		return nil
	}
	img.gen.Add(1)
	if size > 1<<62 {
		return fmt.Errorf("memory of %d bytes", size)
	}
	// The file holds whole pages: the last page is written whole, and a
	// file that a write had extended could not be truncated back (sealed).
	if pages := (size + PageSize - 1) / PageSize; pages > (img.size+PageSize-1)/PageSize {
		if err := img.rw.Truncate(int64(pages * PageSize)); err != nil {
			return fmt.Errorf("size memfd: %w", err)
		}
	}
	img.size = size
	return nil
}

// apply writes a validated delta into the image.
func (img *image) apply(d Delta) error {
	if err := img.resize(d.Size); err != nil {
		return err
	}
	img.gen.Add(1)
	defer img.noteWritten(len(d.Pages))
	if err := writePages(img.rw, len(d.Pages), func(k int) (uint64, *Page) { return d.Pages[k].Index, d.Pages[k].Data }); err != nil {
		return fmt.Errorf("write memfd: %w", err)
	}
	return nil
}

// runPages is the most consecutive pages written by one pwrite (1 MiB).
const runPages = 256

// writePages writes n pages, given by increasing index, at their offsets
// in f: each run of consecutive pages (up to runPages) gathered into one
// buffer and written by one pwrite, so filling the image of a 1 GiB heap
// takes thousands of system calls, not a quarter of a million. (pwritev
// would save the copy, but a sandbox builds images too, and its seccomp
// allowlist has pwrite64 only.)
func writePages(f *os.File, n int, page func(k int) (uint64, *Page)) error {
	var buf []byte
	for k := 0; k < n; {
		first, p := page(k)
		k++
		run := 1
		for k+run-1 < n && run < runPages {
			if i, _ := page(k + run - 1); i != first+uint64(run) {
				break
			}
			run++
		}
		data := p[:]
		if run > 1 {
			if buf == nil {
				buf = make([]byte, runPages*PageSize)
			}
			data = buf[:run*PageSize]
			copy(data, p[:])
			for j := 1; j < run; j++ {
				_, q := page(k + j - 1)
				copy(data[j*PageSize:], q[:])
			}
			k += run - 1
		}
		if first > 1<<50 {
			return fmt.Errorf("page %d", first)
		}
		if _, err := f.WriteAt(data, int64(first*PageSize)); err != nil {
			return err
		}
	}
	return nil
}

func (img *image) close() {
	img.rw.Close()
	openImages.Add(-1)
	if img.ro != nil {
		img.ro.Close()
		openImages.Add(-1)
	}
}

// FileMemory is a committed memory as a sandbox sees it: the image
// descriptor the host passed, read a page at a time with pread as the
// execution touches it (a stable memory can be far larger than the
// sandbox's address-space limit, so it is not mapped whole). Pages read are
// kept until Close.
type FileMemory struct {
	f     *os.File
	size  uint64
	pages map[uint64]*Page
	// A layered memory (OpenLayeredMemory) is f's first base bytes, zeros
	// up to size, and the pages laid over both (laid, and in order).
	layered bool
	base    uint64
	laid    map[uint64]*Page
	order   []DirtyPage
	// gen is the host's ImageGeneration of the image f is, if genOK.
	gen   uint64
	genOK bool
	// dev and ino are f's identity, from the stat OpenFileMemory makes
	// anyway (FileIdentity), if idOK.
	dev, ino uint64
	idOK     bool
}

// OpenFileMemory reads a memory of size bytes from f, which must be at
// least that long (the host seals its images against shrinking). It takes
// ownership of f.
func OpenFileMemory(f *os.File, size uint64) (*FileMemory, error) {
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat memory file: %w", err)
	}
	if st.Size() < 0 || uint64(st.Size()) < size {
		f.Close()
		return nil, fmt.Errorf("memory file of %d bytes for a memory of %d", st.Size(), size)
	}
	if size%PageSize != 0 || size > 1<<62 {
		f.Close()
		return nil, fmt.Errorf("memory size %d is not a whole number of pages", size)
	}
	m := &FileMemory{f: f, size: size, base: size, pages: make(map[uint64]*Page)}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		m.dev, m.ino, m.idOK = uint64(sys.Dev), sys.Ino, true
	}
	return m, nil
}

// FileIdentity returns the device and inode of the memory's file, as it
// was when the memory was opened: a sandbox's engine knows the image it
// already runs on by them (engine/keep.go) without another fstat per
// execution.
func (m *FileMemory) FileIdentity() (dev, ino uint64, ok bool) {
	return m.dev, m.ino, m.idOK
}

// Size implements Memory.
func (m *FileMemory) Size() uint64 { return m.size }

// Page implements Memory. A page that cannot be read (impossible for a
// sealed image of the declared size) reads as zeros.
func (m *FileMemory) Page(i uint64) *Page {
	if i >= m.size/PageSize {
		return nil
	}
	if p, ok := m.laid[i]; ok {
		return p
	}
	if i >= m.base/PageSize {
		return &zeroPage
	}
	if p, ok := m.pages[i]; ok {
		return p
	}
	p := new(Page)
	if _, err := m.f.ReadAt(p[:], int64(i*PageSize)); err != nil {
		p = &zeroPage
	}
	m.pages[i] = p
	return p
}

// File implements Memory: nil for a layered memory, which is not its
// file's bytes alone (Layers).
func (m *FileMemory) File() *os.File {
	if m.layered {
		return nil
	}
	return m.f
}

// SetImageGeneration records the generation the host's page map gave for
// the image (PageMap.ImageGeneration), which ImageGeneration then returns.
func (m *FileMemory) SetImageGeneration(gen uint64) { m.gen, m.genOK = gen, true }

// ImageGeneration is PageMap.ImageGeneration for the host's image, if the
// host said it (SetImageGeneration).
func (m *FileMemory) ImageGeneration() (uint64, bool) { return m.gen, m.genOK }

// Close closes the memory's file.
func (m *FileMemory) Close() error {
	m.pages, m.laid, m.order = nil, nil, nil
	return m.f.Close()
}

// imageState is embedded in PageMap.
type imageState struct {
	imgMu     sync.Mutex
	img       *image
	imgFailed bool
	// backed: the pages live in img, shared with other page maps
	// (backing.go); stale are the pages whose image bytes are not this
	// map's (guarded by img.mu).
	backed bool
	stale  map[uint64]struct{}
	reader bool // a Clone: backed, it is thin (thin.go)
	// Of a clone sharing an image (guarded by img.mu): charge is asked
	// before a commit gives it a copy of a page (CloneCharged); revoked,
	// it refused one and holds nothing any more (revoke); copied counts
	// the bytes of the copies commits gave it (CopiedBytes).
	charge  func(bytes uint64) bool
	revoked bool
	copied  uint64
}

// ImageGeneration returns a number that changes whenever the memory's
// image file is written, resized or has pages punched out, and false if the
// memory has no image now. An execution that mapped the image's data
// extents (engine, holes.go) looks them up again only when it changed: a
// kept query instance would otherwise pay lseeks per query to learn that
// nothing was written.
func (m *PageMap) ImageGeneration() (uint64, bool) {
	if m == nil {
		return 0, false
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	if m.img == nil {
		return 0, false
	}
	return m.img.gen.Load(), true
}

// HasImage reports whether the memory holds an image now.
func (m *PageMap) HasImage() bool {
	if m == nil {
		return false
	}
	m.imgMu.Lock()
	defer m.imgMu.Unlock()
	return m.img != nil
}
