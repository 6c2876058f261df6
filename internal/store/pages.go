package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/state"
)

// How a memory's pages are stored.
//
// A memory is a bucket of values keyed by page index (8 bytes, big-endian).
// A value is either one 4 KiB page, or a run: the runPages pages of one
// aligned chunk (its key the chunk's first page), all non-zero. Absent pages
// are zero.
//
// bbolt's pages are 4 KiB too, and a leaf holds at least two values plus a
// header, so a leaf of single pages spans one store page more than it holds
// (2 pages in 3 store pages, 4 in 5): a commit wrote about 6 KiB per dirty
// 4 KiB page, and paid bbolt's per-key work (seek, node, split) per page. A
// chunk a commit changes entirely is stored as one run, so a leaf of two
// runs holds 32 pages in 33 store pages, and the per-key work is per chunk.
// A chunk changed in part is stored as single pages, as before: a run is
// then split into its pages (once), so that sparse writes go on rewriting
// small leaves, not runs (BENCHMARKS.md "Store commit: bytes and CPU per
// dirty page").
//
// Stores of format cordon-store-1 hold single pages only, which this format
// reads as they are (Open upgrades the format key).

// runPages is the number of pages in a chunk (64 KiB, a Wasm page).
const runPages = 16

func pageKey(i uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), i) }

// putPages writes pages (sorted by index, no duplicates; a zero page
// deletes) into the memory bucket b. fresh says b holds none of their
// chunks (a new bucket, or chunks no earlier call wrote), so nothing stored
// needs looking up.
func putPages(b *bolt.Bucket, pages []state.DirtyPage, fresh bool) error {
	// The runs' values, which bbolt references until the transaction
	// commits: one allocation for them all.
	var slab []byte
	if n := fullChunks(pages); n > 0 {
		slab = make([]byte, 0, n*runPages*state.PageSize)
	}
	for len(pages) > 0 {
		base := pages[0].Index &^ (runPages - 1)
		n := 1
		for n < len(pages) && pages[n].Index < base+runPages {
			n++
		}
		var err error
		if slab, err = putChunk(b, base, pages[:n], fresh, slab); err != nil {
			return fmt.Errorf("pages %d to %d: %w", base, base+runPages-1, err)
		}
		pages = pages[n:]
	}
	return nil
}

// fullChunks counts the chunks pages (sorted, no duplicates) change
// entirely, with non-zero pages.
func fullChunks(pages []state.DirtyPage) int {
	n := 0
	for i := 0; i+runPages <= len(pages); {
		base := pages[i].Index
		if base%runPages == 0 && pages[i+runPages-1].Index == base+runPages-1 && !anyZero(pages[i:i+runPages]) {
			n++
			i += runPages
			continue
		}
		i++
	}
	return n
}

func anyZero(pages []state.DirtyPage) bool {
	for _, p := range pages {
		if *p.Data == *state.ZeroPage() {
			return true
		}
	}
	return false
}

// putChunk writes the pages of one chunk (starting at page base) and
// returns slab with the run it appended, if any.
func putChunk(b *bolt.Bucket, base uint64, pages []state.DirtyPage, fresh bool, slab []byte) ([]byte, error) {
	full := len(pages) == runPages && !anyZero(pages)
	if !fresh {
		if err := unstoreChunk(b, base, pages, full); err != nil {
			return slab, err
		}
	}
	if full {
		start := len(slab)
		for _, p := range pages {
			slab = append(slab, p.Data[:]...)
		}
		return slab, b.Put(pageKey(base), slab[start:len(slab):len(slab)])
	}
	for _, p := range pages {
		if *p.Data == *state.ZeroPage() {
			if fresh {
				continue
			}
			if err := b.Delete(pageKey(p.Index)); err != nil {
				return slab, err
			}
			continue
		}
		if err := b.Put(pageKey(p.Index), p.Data[:]); err != nil {
			return slab, err
		}
	}
	return slab, nil
}

// unstoreChunk prepares a stored chunk for pages to be written into it:
// before a run replaces it, its single pages go; before single pages are
// written into a run, the run is split into single pages.
func unstoreChunk(b *bolt.Bucket, base uint64, pages []state.DirtyPage, full bool) error {
	v := b.Get(pageKey(base))
	if len(v) > state.PageSize {
		if full {
			return nil // the new run overwrites it
		}
		if len(v) != runPages*state.PageSize {
			return fmt.Errorf("corrupt run of %d bytes", len(v))
		}
		// Copied: v is in bbolt's mapping, which a Put may move.
		run := bytes.Clone(v)
		dirty := make(map[uint64]bool, len(pages))
		for _, p := range pages {
			dirty[p.Index] = true
		}
		for k := range uint64(runPages) {
			if dirty[base+k] {
				continue
			}
			if err := b.Put(pageKey(base+k), run[k*state.PageSize:(k+1)*state.PageSize]); err != nil {
				return err
			}
		}
		return nil
	}
	if !full {
		return nil
	}
	// The run's Put overwrites the chunk's first page; the others go.
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(pageKey(base + 1)); k != nil && binary.BigEndian.Uint64(k) < base+runPages; k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// errCorruptPages reports a memory bucket entry this format never writes.
var errCorruptPages = errors.New("corrupt page entry")

// storedPages returns the pages a memory bucket entry holds: its first
// page index and page count. next is the first index the entry may hold
// (entries do not overlap), numPages the memory's size in pages.
func storedPages(k, v []byte, next, numPages uint64) (first, n uint64, err error) {
	if len(k) != 8 {
		return 0, 0, fmt.Errorf("%w: key of %d bytes", errCorruptPages, len(k))
	}
	first = binary.BigEndian.Uint64(k)
	switch len(v) {
	case state.PageSize:
		n = 1
	case runPages * state.PageSize:
		if first%runPages != 0 {
			return 0, 0, fmt.Errorf("%w: run at page %d, not at a chunk's start", errCorruptPages, first)
		}
		n = runPages
	default:
		return 0, 0, fmt.Errorf("%w: value of %d bytes at page %d", errCorruptPages, len(v), first)
	}
	if first < next {
		return 0, 0, fmt.Errorf("%w: page %d stored twice", errCorruptPages, first)
	}
	if first >= numPages || n > numPages-first {
		return 0, 0, fmt.Errorf("page %d outside memory of %d pages", first+n-1, numPages)
	}
	return first, n, nil
}
