package state_test

// Property tests of the page map against a plain byte slice: random writes
// through an Overlay, its Delta applied to the committed PageMap (or dropped,
// as a trap does), deltas committed to the store and the memory reloaded
// from it, as a restart does. The seed is logged; rerun one with
// -pagemap.seed.

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/store"
)

var propSeed = flag.Int64("pagemap.seed", 0, "seed of the page map property tests (0: from the clock)")

func seedRNG(t *testing.T) *rand.Rand {
	seed := *propSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("seed %d (rerun with -pagemap.seed %d)", seed, seed)
	return rand.New(rand.NewSource(seed))
}

const maxPages = 32 // small memories, so writes collide and span pages

// randomRange picks an offset and length inside size, biased towards page
// boundaries and short lengths, sometimes long ones.
func randomRange(rng *rand.Rand, size uint64) (off, n uint64) {
	if size == 0 {
		return 0, 0
	}
	switch rng.Intn(4) {
	case 0: // around a page boundary
		page := uint64(rng.Int63n(int64((size + state.PageSize - 1) / state.PageSize)))
		off = page*state.PageSize + uint64(rng.Intn(16))
		if off >= 16 && rng.Intn(2) == 0 {
			off -= 16
		}
	default:
		off = uint64(rng.Int63n(int64(size)))
	}
	off = min(off, size-1)
	switch rng.Intn(5) {
	case 0:
		n = uint64(rng.Int63n(int64(3*state.PageSize))) + 1 // spans pages
	case 1:
		n = state.PageSize // a whole page, maybe misaligned
	default:
		n = uint64(rng.Intn(64)) + 1
	}
	return off, min(n, size-off)
}

// randomBytes is random data, or zeros (which make pages zero again).
func randomBytes(rng *rand.Rand, n uint64) []byte {
	b := make([]byte, n)
	if rng.Intn(4) != 0 {
		rng.Read(b)
	}
	return b
}

// checkMemory compares a committed page map with the model.
func checkMemory(t *testing.T, what string, m *state.PageMap, model []byte) {
	t.Helper()
	checkMemoryImage(t, what, m, model, false)
}

// checkMemoryImage also compares the memory's image (the memfd executions
// map, kept in step by Apply) with the model, creating it on first use.
func checkMemoryImage(t *testing.T, what string, m *state.PageMap, model []byte, image bool) {
	t.Helper()
	if m.Size() != uint64(len(model)) {
		t.Fatalf("%s: size %d, model %d", what, m.Size(), len(model))
	}
	if want := (uint64(len(model)) + state.PageSize - 1) / state.PageSize; m.NumPages() != want {
		t.Fatalf("%s: %d pages, want %d", what, m.NumPages(), want)
	}
	got := make([]byte, len(model))
	if err := m.ReadAt(got, 0); err != nil {
		t.Fatalf("%s: read: %v", what, err)
	}
	if !bytes.Equal(got, model) {
		t.Fatalf("%s: contents differ from the model at byte %d", what, firstDiff(got, model))
	}
	// Stored pages are exactly the non-zero ones, sorted.
	var want []uint64
	for i := uint64(0); i*state.PageSize < uint64(len(model)); i++ {
		end := min((i+1)*state.PageSize, uint64(len(model)))
		if !allZero(model[i*state.PageSize : end]) {
			want = append(want, i)
		}
	}
	stored := m.StoredPages()
	if fmt.Sprint(stored) != fmt.Sprint(want) && !(len(stored) == 0 && len(want) == 0) {
		t.Fatalf("%s: stored pages %v, non-zero pages %v", what, stored, want)
	}
	for i := range m.NumPages() {
		p := m.Page(i)
		nonZero := len(want) > 0 && contains(want, i)
		if (p != nil) != nonZero {
			t.Fatalf("%s: page %d stored %v, non-zero %v", what, i, p != nil, nonZero)
		}
	}
	if !image {
		return
	}
	if f := m.File(); f != nil && len(model) > 0 {
		img := make([]byte, len(model))
		if _, err := f.ReadAt(img, 0); err != nil && err != io.EOF {
			t.Fatalf("%s: read image: %v", what, err)
		}
		if !bytes.Equal(img, model) {
			t.Fatalf("%s: image differs from the model at byte %d", what, firstDiff(img, model))
		}
	}
}

func contains(s []uint64, v uint64) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func allZero(b []byte) bool { return bytes.Equal(b, state.ZeroPage()[:len(b)]) }

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func hashOf(m *state.PageMap) [32]byte {
	h := state.NewHasher()
	h.Memory("m", m)
	return h.Sum()
}

// fromModel builds a page map from the model page by page, the way no
// execution does: the reference for the hash.
func fromModel(t *testing.T, model []byte) *state.PageMap {
	m := state.NewPageMap(uint64(len(model)))
	for i := uint64(0); i*state.PageSize < uint64(len(model)); i++ {
		p := new(state.Page)
		copy(p[:], model[i*state.PageSize:])
		if err := m.SetPage(i, p); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// message runs one random execution on an overlay of committed, checking
// every read against the model plus the message's own writes. It returns
// the overlay and the memory the model says it holds.
func message(t *testing.T, rng *rand.Rand, committed *state.PageMap, model []byte) (*state.Overlay, []byte) {
	t.Helper()
	o := state.NewOverlay(committed)
	pending := bytes.Clone(model)
	for range 1 + rng.Intn(12) {
		switch op := rng.Intn(10); {
		case op == 0: // grow, by whole Wasm pages or not
			grow := uint64(rng.Intn(3)) * state.WasmPageSize / 4
			if rng.Intn(2) == 0 {
				grow = uint64(rng.Intn(3 * state.PageSize))
			}
			if uint64(len(pending))+grow <= maxPages*state.PageSize {
				o.Grow(uint64(len(pending)) + grow)
				pending = append(pending, make([]byte, grow)...)
			}
			o.Grow(uint64(len(pending)) / 2) // never shrinks
		case op < 6:
			off, n := randomRange(rng, uint64(len(pending)))
			b := randomBytes(rng, n)
			if err := o.WriteAt(b, off); err != nil {
				t.Fatalf("write [%d, +%d) of %d: %v", off, n, len(pending), err)
			}
			copy(pending[off:], b)
		case op < 8:
			off, n := randomRange(rng, uint64(len(pending)))
			got := make([]byte, n)
			if err := o.ReadAt(got, off); err != nil {
				t.Fatalf("read [%d, +%d) of %d: %v", off, n, len(pending), err)
			}
			if !bytes.Equal(got, pending[off:off+n]) {
				t.Fatalf("overlay read [%d, +%d) differs from the model", off, n)
			}
		default: // out of range: refused, no effect
			size := uint64(len(pending))
			off := size - min(size, uint64(rng.Intn(8)))
			n := uint64(rng.Intn(16)) + 9
			if o.WriteAt(make([]byte, n), off) == nil || o.ReadAt(make([]byte, n), off) == nil {
				t.Fatalf("access [%d, +%d) beyond %d bytes accepted", off, n, size)
			}
			if o.WriteAt([]byte{1}, ^uint64(0)) == nil {
				t.Fatal("write at the last address accepted (offset overflow)")
			}
		}
		if o.Size() != uint64(len(pending)) {
			t.Fatalf("overlay size %d, model %d", o.Size(), len(pending))
		}
	}
	return o, pending
}

// checkDelta checks a delta's invariants: valid, sorted, no page the
// message did not write, and every changed page present.
func checkDelta(t *testing.T, d state.Delta, before, after []byte) {
	t.Helper()
	if err := d.Validate(maxPages * state.PageSize); err != nil {
		t.Fatal(err)
	}
	if d.Size != uint64(len(after)) {
		t.Fatalf("delta size %d, model %d", d.Size, len(after))
	}
	in := map[uint64]bool{}
	for _, p := range d.Pages {
		in[p.Index] = true
		end := min((p.Index+1)*state.PageSize, uint64(len(after)))
		if !bytes.Equal(p.Data[:end-p.Index*state.PageSize], after[p.Index*state.PageSize:end]) {
			t.Fatalf("delta page %d differs from the model", p.Index)
		}
	}
	for i := uint64(0); i*state.PageSize < uint64(len(before)); i++ {
		end := min((i+1)*state.PageSize, uint64(len(before)))
		if !bytes.Equal(before[i*state.PageSize:end], after[i*state.PageSize:end]) && !in[i] {
			t.Fatalf("page %d changed but is not in the delta", i)
		}
	}
}

// In memory: many short histories of messages, each committed or dropped.
func TestPageMapMatchesModel(t *testing.T) {
	rng := seedRNG(t)
	for run := range 200 / propScale {
		size := uint64(rng.Intn(8)) * state.PageSize / 2
		committed, model := state.NewPageMap(size), make([]byte, size)
		for msg := range 30 {
			snapshot, snapModel := committed.Clone(), bytes.Clone(model)
			o, after := message(t, rng, committed, model)
			if rng.Intn(5) == 0 {
				// A trap: the overlay is dropped, nothing changes.
				checkMemory(t, fmt.Sprintf("run %d message %d (dropped)", run, msg), committed, model)
				continue
			}
			d := o.Delta()
			checkDelta(t, d, model, after)
			if err := committed.Apply(d); err != nil {
				t.Fatalf("run %d message %d: apply: %v", run, msg, err)
			}
			model = after
			checkMemoryImage(t, fmt.Sprintf("run %d message %d", run, msg), committed, model, true)
			// A snapshot taken before (what a query in flight reads) is
			// untouched: pages are never modified in place.
			checkMemory(t, fmt.Sprintf("run %d message %d snapshot", run, msg), snapshot, snapModel)
			// A delta for a smaller memory is refused, and changes nothing.
			if model := len(model); model > 0 {
				if err := committed.Apply(state.Delta{Size: uint64(model) - 1}); err == nil {
					t.Fatal("a delta shrinking the memory was applied")
				}
			}
		}
		if hashOf(committed) != hashOf(fromModel(t, model)) {
			t.Fatalf("run %d: hash of the committed map differs from the hash of the model", run)
		}
	}
}

// Through the store: deltas committed (several messages per commit, as
// separate changes folded in order), the memory reloaded after reopening,
// sometimes replaced entirely (reinstall), and compared with the model.
func TestPageMapStoreRoundTrip(t *testing.T) {
	rng := seedRNG(t)
	dir := t.TempDir()
	s, err := store.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	id := []byte{7}
	meta := func(heap, stable uint64) store.Meta {
		return store.Meta{ID: "p", HeapSize: heap, StableSize: stable}
	}
	heap, heapModel := state.NewPageMap(0), []byte{}
	stable, stableModel := state.NewPageMap(0), []byte{}
	if err := s.Commit(store.Change{ID: id, Meta: meta(0, 0), Heap: &store.MemoryChange{Replace: true}, Stable: &store.MemoryChange{Replace: true}}); err != nil {
		t.Fatal(err)
	}
	for round := range 60 {
		// A few messages, committed together.
		var changes []store.Change
		for range 1 + rng.Intn(4) {
			oh, afterHeap := message(t, rng, heap, heapModel)
			ost, afterStable := message(t, rng, stable, stableModel)
			if rng.Intn(6) == 0 {
				continue // trapped
			}
			dh, ds := oh.Delta(), ost.Delta()
			if err := heap.Apply(dh); err != nil {
				t.Fatal(err)
			}
			if err := stable.Apply(ds); err != nil {
				t.Fatal(err)
			}
			heapModel, stableModel = afterHeap, afterStable
			changes = append(changes, store.Change{ID: id, Meta: meta(dh.Size, ds.Size),
				Heap: &store.MemoryChange{Delta: dh}, Stable: &store.MemoryChange{Delta: ds}})
		}
		if rng.Intn(15) == 0 {
			// Reinstall: both memories replaced by fresh ones.
			size := uint64(rng.Intn(6)) * state.PageSize
			o := state.NewOverlay(state.NewPageMap(size))
			m := make([]byte, size)
			off, n := randomRange(rng, size)
			b := randomBytes(rng, n)
			if n > 0 {
				if err := o.WriteAt(b, off); err != nil {
					t.Fatal(err)
				}
				copy(m[off:], b)
			}
			d := o.Delta()
			heap, heapModel = state.NewPageMap(0), m
			if err := heap.Apply(d); err != nil {
				t.Fatal(err)
			}
			stable, stableModel = state.NewPageMap(0), []byte{}
			changes = append(changes, store.Change{ID: id, Meta: meta(d.Size, 0),
				Heap: &store.MemoryChange{Replace: true, Delta: d}, Stable: &store.MemoryChange{Replace: true}})
		}
		if len(changes) > 0 {
			if err := s.Commit(changes...); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		checkMemoryImage(t, fmt.Sprintf("round %d heap", round), heap, heapModel, true)
		checkMemoryImage(t, fmt.Sprintf("round %d stable", round), stable, stableModel, true)
		if rng.Intn(4) != 0 {
			continue
		}
		// Restart: reopen the store and continue from what it loads.
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if s, err = store.Open(dir, time.Second); err != nil {
			t.Fatal(err)
		}
		c, err := s.Load(id)
		if err != nil {
			t.Fatal(err)
		}
		checkMemory(t, fmt.Sprintf("round %d heap reloaded", round), c.Heap, heapModel)
		checkMemory(t, fmt.Sprintf("round %d stable reloaded", round), c.Stable, stableModel)
		if hashOf(c.Heap) != hashOf(heap) || hashOf(c.Stable) != hashOf(stable) {
			t.Fatalf("round %d: hash changed across the reload", round)
		}
		heap, stable = c.Heap, c.Stable
	}
}
