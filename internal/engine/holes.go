package engine

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/state"
)

// Holes of a heap image stay holes. The committed heap's image is a memfd
// (state.PageMap.File) holding only the pages ever written; the rest of it
// are holes. A read fault on a hole of a shared-memory file, even through a
// private mapping, allocates a zero page in the file: a free query reading
// one byte per page of a never-written 1 GiB heap made the host's image
// 1 GiB larger, until the image was released. So only the image's data
// extents (lseek SEEK_DATA/SEEK_HOLE) are mapped from the file; the holes
// are anonymous memory, where a read maps the shared zero page and a write
// makes a private page, as a write to the file's pages does. What the
// execution sees is the same bytes, and the written pages are found as
// before (writtenPages: neither file pages nor the zero page).
//
// The mappings are bounded: at most maxImageSpans data spans (extents
// closer together than the rest are merged, so some holes are mapped from
// the file after all), found with at most 2·maxExtentWalk lseeks (beyond
// them the rest of the file is one span). A heap written in a few runs, as
// real canisters' are, is mapped exactly.

// span is a page-aligned byte range [off, end) of a heap image.
type span struct{ off, end uint64 }

const (
	// maxImageSpans bounds the file mappings of one linear memory: each is
	// a VMA, and the in-process executor keeps 256 instances.
	maxImageSpans = 32
	// maxExtentWalk bounds the extents looked up per mapping.
	maxExtentWalk = 256
)

// extentLookups counts dataSpans calls (tests check a kept query makes
// none while the image is unchanged).
var extentLookups atomic.Uint64

// dataSpans returns the spans of f's first size bytes that are to be mapped
// from f, in increasing order: its data extents, merged down to
// maxImageSpans. If the file cannot say where its data is, all of it.
func dataSpans(f *os.File, size uint64) []span {
	extentLookups.Add(1)
	whole := []span{{0, size}}
	fd := int(f.Fd())
	var out []span
	for off := uint64(0); off < size; {
		d, err := unix.Seek(fd, int64(off), unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data at or after off
		}
		if err != nil || d < int64(off) {
			return whole
		}
		start := uint64(d) &^ (state.PageSize - 1)
		if start >= size {
			break
		}
		if len(out) == maxExtentWalk {
			out = append(out, span{start, size})
			break
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil || h <= d {
			return whole
		}
		end := min((uint64(h)+state.PageSize-1)&^(state.PageSize-1), size)
		out = append(out, span{start, end})
		off = end
	}
	return mergeSpans(out, maxImageSpans)
}

// mergeSpans joins the spans separated by the smallest gaps until at most
// limit remain.
func mergeSpans(s []span, limit int) []span {
	if len(s) <= limit {
		return s
	}
	gaps := make([]uint64, len(s)-1)
	for i := range gaps {
		gaps[i] = s[i+1].off - s[i].end
	}
	sorted := slices.Clone(gaps)
	slices.Sort(sorted)
	most := sorted[len(s)-limit-1] // merging every gap up to it leaves ≤ limit
	out := []span{s[0]}
	for i, g := range gaps {
		if g <= most {
			out[len(out)-1].end = s[i+1].end
		} else {
			out = append(out, s[i+1])
		}
	}
	return out
}

// mapHeapImage makes dst (a linear memory) show f's first len(dst) bytes:
// the data spans mapped from f copy-on-write, the holes anonymous zeros.
// It returns the spans mapped from f.
func mapHeapImage(dst []byte, f *os.File) ([]span, error) {
	spans := dataSpans(f, uint64(len(dst)))
	if len(spans) == 1 && spans[0] == (span{0, uint64(len(dst))}) {
		return spans, mapPrivate(dst, f)
	}
	if err := mapZeros(dst); err != nil {
		return nil, err
	}
	for _, s := range spans {
		if err := mapPrivateAt(dst[s.off:s.end], f, int64(s.off)); err != nil {
			return nil, err
		}
	}
	return spans, nil
}

// mapZeros replaces dst with fresh anonymous memory.
func mapZeros(dst []byte) error {
	if len(dst) == 0 {
		return nil
	}
	_, _, errno := unix.Syscall6(unix.SYS_MMAP, uintptr(unsafe.Pointer(&dst[0])), uintptr(len(dst)),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED|unix.MAP_NORESERVE, ^uintptr(0), 0)
	if errno != 0 {
		return fmt.Errorf("map zeros over the heap's holes: %w", errno)
	}
	return nil
}

// splitSpans calls fn for each part of [lo, hi) in order, saying whether
// the part lies in one of spans (sorted, disjoint) or in a hole.
func splitSpans(spans []span, lo, hi uint64, fn func(lo, hi uint64, inSpan bool) error) error {
	for _, s := range spans {
		if lo >= hi {
			return nil
		}
		if s.end <= lo {
			continue
		}
		if s.off >= hi {
			break
		}
		if lo < s.off {
			if err := fn(lo, s.off, false); err != nil {
				return err
			}
			lo = s.off
		}
		e := min(s.end, hi)
		if err := fn(lo, e, true); err != nil {
			return err
		}
		lo = e
	}
	if lo < hi {
		return fn(lo, hi, false)
	}
	return nil
}
