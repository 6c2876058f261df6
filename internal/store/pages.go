package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/state"
)

// How a memory's pages are stored (format cordon-store-3).
//
// A memory is a bucket of single pages, keyed by page index (8 bytes,
// big-endian), each one 4 KiB page or, over a run, an empty value for a
// zero page; and a bucket of runs nested in it (keyRuns), each the
// runPages pages of one aligned chunk (64 KiB, a Wasm page), all non-zero
// when written, keyed by the chunk's first page. A single page overrides
// its chunk's run; a page neither holds is zero.
//
// bbolt's pages are 4 KiB too, and a leaf holds at least two values plus a
// header, so a leaf of single pages spans one store page more than it holds
// (2 pages in 3 store pages): a commit of single pages writes about 6 KiB
// per dirty 4 KiB page and pays bbolt's per-key work per page. A chunk a
// commit changes entirely is stored as one run: a leaf of two runs holds 32
// pages in 33 store pages, and the per-key work is per chunk. Pages written
// into a chunk in part are single pages over its run, which stays, so a
// commit writes what it changed, not the rest of the chunk. The runs are a
// tree of their own because bbolt rewrites a leaf whole and does not split
// a node of four entries or fewer: in one key space, a single page shares
// its leaf with one or two runs, wherever its key sorts, and writing it
// rewrites them too. A chunk whose run is overlaid by more than foldAbove
// single pages is folded back into one value, so a chunk takes at most 1.5
// times its size; the fold writes the chunk once per foldAbove+1 or more
// pages written into it, so a commit's cost stays proportional to its
// pages, amortized (RATIONALE.md "Page runs").
//
// Stores of format cordon-store-1 hold single pages only, which this format
// reads as they are; cordon-store-2 kept runs among the single pages, under
// their first page's key, and Open moves them (upgrade.go).

// runPages is the number of pages in a chunk (64 KiB, a Wasm page).
const runPages = 16

// runBytes is the size of a run.
const runBytes = runPages * state.PageSize

// keyRuns names a memory's bucket of runs. It sorts after every page key
// (a page index is below 2^52: its key's first byte is 0).
var keyRuns = []byte("runs")

// foldAbove is the most single pages a chunk holds over its run.
const foldAbove = runPages / 2

func pageKey(i uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), i) }

// explicitZero is the value of a zero page over a run: empty, not nil
// (a nil value would not tell a stored page from an absent one within the
// transaction).
var explicitZero = []byte{}

// memWriter writes pages into a memory bucket.
type memWriter struct {
	b    *bolt.Bucket
	runs *bolt.Bucket // nil until needed, when b has none
	// fresh: b holds none of the chunks written (a new bucket, or chunks
	// no earlier call wrote), so nothing stored needs looking up.
	fresh bool
	// slab holds the runs' values, which bbolt references until the
	// transaction commits: one allocation for them all.
	slab []byte
}

// putPages writes pages (sorted by index, no duplicates; a zero page
// clears it) into the memory bucket b. fresh says b holds none of their
// chunks (a new bucket, or chunks no earlier call wrote), so nothing stored
// needs looking up.
func putPages(b *bolt.Bucket, pages []state.DirtyPage, fresh bool) error {
	w := memWriter{b: b, runs: b.Bucket(keyRuns), fresh: fresh}
	if n := fullChunks(pages); n > 0 {
		w.slab = make([]byte, 0, n*runBytes)
	}
	for len(pages) > 0 {
		base := pages[0].Index &^ (runPages - 1)
		n := 1
		for n < len(pages) && pages[n].Index < base+runPages {
			n++
		}
		if err := w.putChunk(base, pages[:n]); err != nil {
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

func isZero(p []byte) bool { return [state.PageSize]byte(p) == *state.ZeroPage() }

// putRun stores the run of the chunk at base.
func (w *memWriter) putRun(base uint64, run []byte) error {
	if w.runs == nil {
		var err error
		if w.runs, err = w.b.CreateBucketIfNotExists(keyRuns); err != nil {
			return fmt.Errorf("runs: %w", err)
		}
	}
	return w.runs.Put(pageKey(base), run)
}

// putChunk writes the pages of one chunk (starting at page base).
func (w *memWriter) putChunk(base uint64, pages []state.DirtyPage) error {
	if len(pages) == runPages && !anyZero(pages) {
		// The run replaces the chunk: its single pages go, a run it has
		// is overwritten.
		if !w.fresh {
			if err := deleteSingles(w.b, base); err != nil {
				return err
			}
		}
		start := len(w.slab)
		for _, p := range pages {
			w.slab = append(w.slab, p.Data[:]...)
		}
		return w.putRun(base, w.slab[start:len(w.slab):len(w.slab)])
	}
	var run []byte
	if !w.fresh && w.runs != nil {
		run = w.runs.Get(pageKey(base))
		if run != nil && len(run) != runBytes {
			return fmt.Errorf("%w: run of %d bytes", errCorruptPages, len(run))
		}
	}
	if run == nil {
		// Single pages only: a zero page is absent.
		for _, p := range pages {
			if *p.Data == *state.ZeroPage() {
				if w.fresh {
					continue
				}
				if err := w.b.Delete(pageKey(p.Index)); err != nil {
					return err
				}
				continue
			}
			if err := w.b.Put(pageKey(p.Index), p.Data[:]); err != nil {
				return err
			}
		}
		return nil
	}
	// Over a run: every page written becomes a single page, a zero one
	// an explicit zero, unless the chunk would then hold too many.
	stored, singles, err := chunkSingles(w.b, base)
	if err != nil {
		return err
	}
	var written uint16
	for _, p := range pages {
		written |= 1 << (p.Index - base)
	}
	if bits.OnesCount16(stored|written) > foldAbove {
		return w.fold(base, run, stored, singles, pages)
	}
	for _, p := range pages {
		v := p.Data[:]
		if *p.Data == *state.ZeroPage() {
			v = explicitZero
		}
		if err := w.b.Put(pageKey(p.Index), v); err != nil {
			return err
		}
	}
	return nil
}

// chunkSingles returns which pages of the chunk at base have single
// pages in b (bit i for page base+i) and their values (valid until b is
// written).
func chunkSingles(b *bolt.Bucket, base uint64) (uint16, [runPages][]byte, error) {
	var mask uint16
	var vals [runPages][]byte
	end := pageKey(base + runPages)
	c := b.Cursor()
	for k, v := c.Seek(pageKey(base)); k != nil && bytes.Compare(k, end) < 0; k, v = c.Next() {
		if len(k) != 8 {
			return 0, vals, fmt.Errorf("%w: key %x", errCorruptPages, k)
		}
		i := binary.BigEndian.Uint64(k) - base
		mask |= 1 << i
		vals[i] = v
	}
	return mask, vals, nil
}

// deleteSingles deletes the single pages of the chunk at base.
func deleteSingles(b *bolt.Bucket, base uint64) error {
	stored, _, err := chunkSingles(b, base)
	if err != nil {
		return err
	}
	return deletePages(b, base, stored)
}

// deletePages deletes the pages of the chunk at base that stored has.
func deletePages(b *bolt.Bucket, base uint64, stored uint16) error {
	for i := range uint64(runPages) {
		if stored&(1<<i) != 0 {
			if err := b.Delete(pageKey(base + i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// fold writes the chunk at base as it is after pages are written over its
// run and single pages (stored, with their values singles): as one run,
// or, if a page of it is zero, as its non-zero pages, single.
func (w *memWriter) fold(base uint64, run []byte, stored uint16, singles [runPages][]byte, pages []state.DirtyPage) error {
	// A copy: run and singles are in bbolt's pages, which the writes
	// below replace.
	chunk := bytes.Clone(run)
	for i, v := range singles {
		if stored&(1<<i) == 0 {
			continue
		}
		switch len(v) {
		case 0:
			clear(chunk[i*state.PageSize : (i+1)*state.PageSize])
		case state.PageSize:
			copy(chunk[i*state.PageSize:], v)
		default:
			return fmt.Errorf("%w: value of %d bytes at page %d", errCorruptPages, len(v), base+uint64(i))
		}
	}
	for _, p := range pages {
		copy(chunk[(p.Index-base)*state.PageSize:], p.Data[:])
	}
	var zero uint16
	for i := range runPages {
		if isZero(chunk[i*state.PageSize : (i+1)*state.PageSize]) {
			zero |= 1 << i
		}
	}
	if zero == 0 {
		if err := deletePages(w.b, base, stored); err != nil {
			return err
		}
		return w.putRun(base, chunk)
	}
	// A run holds non-zero pages only (a zero page in one would take the
	// space an absent page does not): the chunk goes back to single pages.
	for i := range uint64(runPages) {
		var err error
		switch {
		case zero&(1<<i) == 0:
			err = w.b.Put(pageKey(base+i), chunk[i*state.PageSize:(i+1)*state.PageSize:(i+1)*state.PageSize])
		case stored&(1<<i) != 0:
			err = w.b.Delete(pageKey(base + i))
		}
		if err != nil {
			return err
		}
	}
	return w.runs.Delete(pageKey(base))
}

// errCorruptPages reports a memory bucket entry this format never writes.
var errCorruptPages = errors.New("corrupt page entry")

// storedChunks calls fn, in order, for each chunk of the memory bucket b
// that holds something, with the chunk's first page and its pages as
// stored (nil: zero; valid until the transaction ends). numPages is the
// memory's size in pages. It checks every entry: a key or value this format
// does not write, a page outside the memory or a zero page over no run is
// errCorruptPages.
func storedChunks(b *bolt.Bucket, numPages uint64, fn func(base uint64, pages *[runPages][]byte) error) error {
	e := memEntries{b: b, numPages: numPages, singles: b.Cursor()}
	if runs := b.Bucket(keyRuns); runs != nil {
		e.runs = runs.Cursor()
	} else if b.Get(keyRuns) != nil {
		return fmt.Errorf("%w: %s is not a bucket", errCorruptPages, keyRuns)
	}
	// Two cursors, merged by chunk.
	if err := e.nextSingle(true); err != nil {
		return err
	}
	if err := e.nextRun(true); err != nil {
		return err
	}
	var pages [runPages][]byte
	for e.sk != nil || e.rk != nil {
		chunk := noPage
		if e.sk != nil {
			chunk = e.page &^ (runPages - 1)
		}
		hasRun := e.rk != nil && e.base <= chunk
		if hasRun {
			chunk = e.base
		}
		for i := range pages {
			pages[i] = nil
			if hasRun {
				pages[i] = e.rv[i*state.PageSize : (i+1)*state.PageSize : (i+1)*state.PageSize]
			}
		}
		if hasRun {
			if err := e.nextRun(false); err != nil {
				return err
			}
		}
		for e.sk != nil && e.page&^(runPages-1) == chunk {
			switch {
			case len(e.sv) > 0:
				pages[e.page-chunk] = e.sv
			case hasRun:
				pages[e.page-chunk] = nil
			default:
				return fmt.Errorf("%w: zero page %d over no run", errCorruptPages, e.page)
			}
			if err := e.nextSingle(false); err != nil {
				return err
			}
		}
		if err := fn(chunk, &pages); err != nil {
			return err
		}
	}
	return nil
}

// noPage is past every page index (memories are below 2^52 pages).
const noPage = ^uint64(0)

// memEntries reads a memory bucket's single pages and its runs, each in
// order, checking each entry as it comes: sk is nil when no single page
// is left, rk when no run is.
type memEntries struct {
	b              *bolt.Bucket
	numPages       uint64
	singles, runs  *bolt.Cursor // runs nil: no runs
	sk, sv, rk, rv []byte
	page, base     uint64 // of sk, rk
}

func (e *memEntries) nextSingle(first bool) error {
	if first {
		e.sk, e.sv = e.singles.First()
	} else {
		e.sk, e.sv = e.singles.Next()
	}
	if e.sk != nil && bytes.Equal(e.sk, keyRuns) {
		// The runs' bucket (storedChunks checked), after every page.
		e.sk, e.sv = e.singles.Next()
	}
	if e.sk == nil {
		return nil
	}
	if len(e.sk) != 8 {
		return fmt.Errorf("%w: key %x", errCorruptPages, e.sk)
	}
	e.page = binary.BigEndian.Uint64(e.sk)
	if e.page >= e.numPages {
		return fmt.Errorf("%w: page %d outside memory of %d pages", errCorruptPages, e.page, e.numPages)
	}
	// A cursor gives a nested bucket's value as nil, an empty value as
	// empty.
	if e.sv == nil && e.b.Bucket(e.sk) != nil {
		return fmt.Errorf("%w: bucket at page %d", errCorruptPages, e.page)
	}
	if len(e.sv) != state.PageSize && len(e.sv) != 0 {
		return fmt.Errorf("%w: value of %d bytes at page %d", errCorruptPages, len(e.sv), e.page)
	}
	return nil
}

func (e *memEntries) nextRun(first bool) error {
	switch {
	case e.runs == nil:
		e.rk = nil
	case first:
		e.rk, e.rv = e.runs.First()
	default:
		e.rk, e.rv = e.runs.Next()
	}
	if e.rk == nil {
		return nil
	}
	if len(e.rk) != 8 {
		return fmt.Errorf("%w: run key %x", errCorruptPages, e.rk)
	}
	e.base = binary.BigEndian.Uint64(e.rk)
	switch {
	case e.base%runPages != 0:
		return fmt.Errorf("%w: run at page %d, not at a chunk's start", errCorruptPages, e.base)
	case e.base/runPages >= e.numPages/runPages:
		return fmt.Errorf("%w: run at page %d outside memory of %d pages", errCorruptPages, e.base, e.numPages)
	case len(e.rv) != runBytes:
		// A nested bucket's value is nil here: 0 bytes.
		return fmt.Errorf("%w: run of %d bytes at page %d", errCorruptPages, len(e.rv), e.base)
	}
	return nil
}
