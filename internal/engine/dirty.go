package engine

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/state"
)

// Finding the pages a message wrote without comparing or copying the whole
// memory (DESIGN.md §6): the committed heap is mapped over the instance's
// linear memory as a private copy-on-write view of its image file. A page
// the message writes becomes an anonymous copy; a page it only reads stays
// a page of the file. Afterwards the kernel's page tables say which pages
// were copied (the PAGEMAP_SCAN ioctl on /proc/<pid>/pagemap, Linux 6.7),
// in time proportional to what is mapped, not to the memory's size.
//
// The kernel's answer is only a candidate set: transparent huge pages in
// the grown part can report 512 pages for one write, and a page written
// back to its old bytes is still a copy. Each candidate is compared with
// the committed page, so the delta is exactly the pages that differ, the
// same set the copying fallback computes, in both isolation modes.

// Linux uapi (include/uapi/linux/fs.h).
const (
	pageIsFile    = 1 << 2
	pageIsPresent = 1 << 3
	pageIsSwapped = 1 << 4
	pageIsPFNZero = 1 << 5

	// _IOWR('f', 16, struct pm_scan_arg): 96-byte argument. The sandbox's
	// seccomp filter allows this command (confine.PagemapScan) and no other.
	pagemapScan = 3<<30 | 96<<16 | 'f'<<8 | 16
)

type pmScanArg struct {
	size, flags, start, end, walkEnd, vec, vecLen, maxPages   uint64
	categoryInverted, categoryMask, categoryAnyof, returnMask uint64
}

type pageRegion struct{ start, end, categories uint64 }

var (
	selfPagemapOnce sync.Once
	selfPagemap     *os.File
)

// SelfPagemap returns this process's /proc/self/pagemap, or nil when there
// is none (no /proc, as inside a sandbox, whose C constructor opened its
// own before entering the empty root: confine.Pagemap).
func SelfPagemap() *os.File {
	selfPagemapOnce.Do(func() {
		f, err := os.Open("/proc/self/pagemap")
		if err == nil {
			selfPagemap = f
		}
	})
	return selfPagemap
}

// scanBufs holds what a scan gives the kernel: its argument and the buffer
// the kernel writes regions into, whose address goes in the argument as an
// integer (pm_scan_arg.vec). The runtime does not update an integer when it
// moves a goroutine's stack, and a stack may move between building the
// argument and the ioctl (a call there, such as File.Fd, may grow it):
// with the buffer on the stack the kernel then wrote 6 KiB into the
// abandoned stack, memory the runtime may give another goroutine, and the
// scan read its own copy, never written (regions 0x0-0x0: a canister's
// 256 MiB memory "cannot be checked", a trap, once an unrelated change
// moved the host's stack depth to that point). The heap does not move.
type scanBuf struct {
	arg     pmScanArg
	regions [256]pageRegion
}

var scanBufs = sync.Pool{New: func() any { return new(scanBuf) }}

// scans counts successful kernel answers (tests check the path is taken).
var scans atomic.Uint64

// errNoScan means the kernel cannot answer; the caller compares instead.
var errNoScan = errors.New("pagemap scan unavailable")

// writtenPages returns the indices (relative to addr) of the 4 KiB pages in
// [addr, addr+size) that are anonymous copies: present or swapped out,
// neither a page of a file nor the shared zero page.
func writtenPages(pagemap *os.File, addr, size uintptr) ([]uint64, error) {
	return scanPages(pagemap, addr, size, pageIsFile|pageIsPFNZero, pageIsFile|pageIsPFNZero, nil)
}

// scanPages returns the indices (relative to addr) of the present or
// swapped-out 4 KiB pages in [addr, addr+size) whose categories, with
// inverted flipped, have none of mask's bits set, and for which keep (if
// not nil) returns true given the page's index and its categories
// (present, swapped, zero page). One ioctl answers for up to 256 runs of
// pages, so a caller with several ranges to classify scans once and
// sorts the pages itself (keep) rather than scanning each range.
func scanPages(pagemap *os.File, addr, size uintptr, inverted, mask uint64, keep func(i, categories uint64) bool) ([]uint64, error) {
	if pagemap == nil {
		return nil, errNoScan
	}
	fd := pagemap.Fd()
	buf := scanBufs.Get().(*scanBuf)
	defer scanBufs.Put(buf)
	regions, arg := &buf.regions, &buf.arg
	var out []uint64
	start, end := uint64(addr), uint64(addr+size)
	for start < end {
		*arg = pmScanArg{
			size:             uint64(unsafe.Sizeof(pmScanArg{})),
			start:            start,
			end:              end,
			vec:              uint64(uintptr(unsafe.Pointer(&regions[0]))),
			vecLen:           uint64(len(regions)),
			categoryInverted: inverted,
			categoryMask:     mask,
			categoryAnyof:    pageIsPresent | pageIsSwapped,
			returnMask:       pageIsPresent | pageIsSwapped | pageIsPFNZero,
		}
		n, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, pagemapScan, uintptr(unsafe.Pointer(arg)))
		if errno != 0 {
			return nil, fmt.Errorf("%w: %v", errNoScan, errno)
		}
		if n > uintptr(len(regions)) || arg.walkEnd <= start || arg.walkEnd > end {
			return nil, fmt.Errorf("%w: bad answer", errNoScan)
		}
		for _, r := range regions[:n] {
			// Anything inside the asked range is a usable candidate (each is
			// compared afterwards); pages are kept strictly increasing so a
			// region reported again after a partial walk adds nothing twice.
			if r.start < uint64(addr) || r.end > end || r.start >= r.end || r.start%state.PageSize != 0 {
				return nil, fmt.Errorf("%w: region %#x-%#x outside %#x-%#x", errNoScan, r.start, r.end, uint64(addr), end)
			}
			for p := r.start; p < r.end; p += state.PageSize {
				i := (p - uint64(addr)) / state.PageSize
				if keep != nil && !keep(i, r.categories) {
					continue
				}
				switch {
				case len(out) == 0 || i > out[len(out)-1]:
					out = append(out, i)
				case i < out[len(out)-1]:
					return nil, fmt.Errorf("%w: regions out of order", errNoScan)
				}
			}
		}
		start = arg.walkEnd
	}
	scans.Add(1)
	return out, nil
}

// mapPrivate maps the first len(dst) bytes of f over dst, copy-on-write.
func mapPrivate(dst []byte, f *os.File) error {
	if len(dst) == 0 {
		return nil
	}
	_, _, errno := unix.Syscall6(unix.SYS_MMAP, uintptr(unsafe.Pointer(&dst[0])), uintptr(len(dst)),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED, f.Fd(), 0)
	if errno != 0 {
		return fmt.Errorf("map committed memory: %w", errno)
	}
	return nil
}

// ProbeWrittenPages reports whether this kernel and process can find
// written pages through PAGEMAP_SCAN (nil) or why not: it maps a memfd
// privately, writes its second page and asks. `cordon doctor` shows it;
// without it every execution compares the whole heap.
func ProbeWrittenPages() error {
	fd, err := unix.MemfdCreate("cordon-probe", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "cordon-probe")
	defer f.Close()
	if err := f.Truncate(4 * state.PageSize); err != nil {
		return err
	}
	mem, err := unix.Mmap(-1, 0, 4*state.PageSize, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	if err := mapPrivate(mem, f); err != nil {
		return err
	}
	_ = mem[0] // read: stays a page of the file
	mem[state.PageSize+7] = 1
	got, err := writtenPages(SelfPagemap(), uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)))
	if err != nil {
		return err
	}
	if len(got) != 1 || got[0] != 1 {
		return fmt.Errorf("%w: the kernel reported pages %v written, not [1]", errNoScan, got)
	}
	return nil
}
