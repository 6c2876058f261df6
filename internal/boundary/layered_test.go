package boundary

import (
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/state"
)

// backedMap returns a backed page map of size bytes holding page(i) at
// each of idx.
func backedMap(t *testing.T, size uint64, idx ...uint64) *state.PageMap {
	t.Helper()
	m := state.NewBackedPageMap(size)
	if !m.Backed() {
		t.Skip("no backed page maps (memfd or mmap unavailable)")
	}
	t.Cleanup(m.Release)
	d := state.Delta{Size: size}
	for _, i := range idx {
		d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: page(byte(i))})
	}
	if err := m.Apply(d); err != nil {
		t.Fatal(err)
	}
	return m
}

// A composite query's frame (clones of backed page maps, changed since)
// travels as the committed images plus the pages it differs in
// (MemoryLayered): its own writes, its growth past the image, and the
// pages a commit overwrote after it was taken, whatever the memories'
// size. The sandbox sees exactly the frame's memories, through read-only
// descriptors; it cannot map them as a whole file (File is nil).
func TestExecuteLayeredRoundTrip(t *testing.T) {
	host, sb := pair(t)
	heap := backedMap(t, 4*state.WasmPageSize, 0, 1, 2, 3, 7, 20, 40, 63)
	stable := backedMap(t, state.WasmPageSize, 3, 15)
	hc, sc := heap.Clone(), stable.Clone()
	defer hc.Release()
	defer sc.Release()
	// The frame writes two pages, zeroes one and grows past the image.
	if err := hc.Apply(state.Delta{Size: 5 * state.WasmPageSize, Pages: []state.DirtyPage{
		{Index: 2, Data: new(state.Page)}, {Index: 5, Data: page(55)}, {Index: 70, Data: page(70)},
	}}); err != nil {
		t.Fatal(err)
	}
	// A commit overwrites pages of the committed memories after the frame
	// was taken.
	if err := heap.Apply(state.Delta{Size: 4 * state.WasmPageSize, Pages: []state.DirtyPage{{Index: 7, Data: page(99)}}}); err != nil {
		t.Fatal(err)
	}
	if err := stable.Apply(state.Delta{Size: state.WasmPageSize, Pages: []state.DirtyPage{{Index: 15, Data: page(98)}}}); err != nil {
		t.Fatal(err)
	}
	hm, sm := fromModel(hc), fromModel(sc)
	if PagesSent(hc, sc) != 5 {
		t.Fatalf("PagesSent says %d pages, want 5 (heap 2, 5, 7, 70; stable 15)", PagesSent(hc, sc))
	}
	sent := SentMemoryPages()
	errc := make(chan error, 1)
	q := &ExecRequest{Module: [32]byte{1}, Input: testInput()}
	go func() { errc <- host.SendExecute(9, q, hc, sc) }()
	r, err := sb.NextRequest()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	x := r.Exec
	if x.HeapSource != MemoryLayered || x.HeapBase != 4*state.WasmPageSize || x.HeapSize != 5*state.WasmPageSize ||
		x.HeapPages != 4 || x.StableBase != state.WasmPageSize || x.StablePages != 1 || x.HasHeapImageGen {
		t.Fatalf("header %+v", x)
	}
	if got := SentMemoryPages() - sent; got != 5 {
		t.Fatalf("%d pages sent, want the 5 the frame differs in", got)
	}
	for name, tc := range map[string]struct{ got, want state.Memory }{"heap": {r.Heap, hm}, "stable": {r.Stable, sm}} {
		if !sameMemory(tc.got, tc.want) {
			t.Fatalf("%s differs from the frame's", name)
		}
		if tc.got.File() != nil {
			t.Fatalf("%s: a layered memory hands out its image as the whole memory", name)
		}
		l, ok := tc.got.(state.LayeredMemory).Layers()
		if !ok {
			t.Fatalf("%s is not layered", name)
		}
		fl, err := unix.FcntlInt(l.File.Fd(), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_ACCMODE != unix.O_RDONLY {
			t.Fatalf("%s: image descriptor flags %#x, %v: want read-only", name, fl, err)
		}
	}
	if r.Exec.Input.Stable != r.Stable {
		t.Fatal("the input's stable memory is not the request's")
	}
}

// fromModel copies m into an ordinary page map (what the frame must look
// like to the sandbox).
func fromModel(m *state.PageMap) *state.PageMap {
	c := state.NewPageMap(m.Size())
	for _, i := range m.StoredPages() {
		p := *m.Page(i)
		_ = c.SetPage(i, &p)
	}
	return c
}

// The layered form is decoded as strictly as the others: image bases only
// with layered memories, within their memories and in whole pages; pages
// within the memories; exactly the declared descriptors, each long enough
// for its base; laid pages in the memory and in order. Every descriptor
// received is closed when a request is refused.
func TestExecuteLayeredRefused(t *testing.T) {
	const size = state.WasmPageSize
	for name, q := range map[string]*ExecRequest{
		"inline with a base":        {HeapSource: HeapInline, HasHeap: true, HeapSize: size, HeapBase: size},
		"mapped with a stable base": {HeapSource: MemoryMapped, StableSize: size, StableBase: size},
		"base past the heap":        {HeapSource: MemoryLayered, HasHeap: true, HeapSize: size, HeapBase: 2 * size},
		"base past the stable":      {HeapSource: MemoryLayered, StableSize: size, StableBase: size + state.PageSize},
		"base in a page":            {HeapSource: MemoryLayered, HasHeap: true, HeapSize: size, HeapBase: 100},
		"base without a heap":       {HeapSource: MemoryLayered, HeapBase: state.PageSize},
		"more pages than the heap":  {HeapSource: MemoryLayered, HasHeap: true, HeapSize: size, HeapPages: size/state.PageSize + 1},
		"unknown source":            {HeapSource: MemoryLayered + 1},
	} {
		q.Input = testInput()
		if _, err := DecodeExecute(EncodeExecute(q)); err == nil {
			t.Errorf("%s: decoded", name)
		} else {
			var v *Violation
			if !errors.As(err, &v) || v.Kind != VDecode {
				t.Errorf("%s: %v, want a decode violation", name, err)
			}
		}
	}

	host, sb := pair(t)
	heap := backedMap(t, size, 1)
	ro := heap.ReadOnlyFile()
	if ro == nil {
		t.Skip("no read-only images")
	}
	pagesPacket := func(id uint64, mem Memory, idx ...uint64) []byte {
		b := make([]byte, HeaderSize+5+len(idx)*pageEntry)
		putHeader(b, KindPages, 0, id, uint64(len(b)-HeaderSize))
		b[HeaderSize] = byte(mem)
		binary.LittleEndian.PutUint32(b[HeaderSize+1:], uint32(len(idx)))
		for k, i := range idx {
			binary.LittleEndian.PutUint64(b[HeaderSize+5+k*pageEntry:], i)
		}
		return b
	}
	layered := func(heapBase uint64, heapPages uint64) *ExecRequest {
		return &ExecRequest{Module: [32]byte{1}, HeapSource: MemoryLayered, HasHeap: true, HeapSize: 2 * size, HeapBase: heapBase,
			HeapPages: heapPages, StableSize: size, StableBase: size, Input: testInput()}
	}
	before := openFDs(t)
	for _, tc := range []struct {
		name  string
		q     *ExecRequest
		files []*os.File
		pages [][]byte // Pages packets after the request
		want  string
	}{
		{"one descriptor for two memories", layered(size, 0), []*os.File{ro}, nil, "declares 2"},
		{"a base longer than its file", layered(2*size, 0), []*os.File{ro, ro}, nil, "memory file of"},
		{"a laid page outside the heap", layered(size, 1), []*os.File{ro, ro}, [][]byte{pagesPacket(7, HeapMemory, 2*size/state.PageSize)}, "outside"},
		{"laid pages out of order", layered(size, 2), []*os.File{ro, ro}, [][]byte{pagesPacket(7, HeapMemory, 5, 3)}, "out of order"},
		{"stable pages where heap pages are due", layered(size, 1), []*os.File{ro, ro}, [][]byte{pagesPacket(7, StableMemory, 1)}, "stable memory pages where heap pages"},
	} {
		if err := host.Send(&Msg{Kind: KindExecute, ID: 7, Body: EncodeExecute(tc.q), Files: tc.files}); err != nil {
			t.Fatal(err)
		}
		for _, p := range tc.pages {
			if err := host.write(p, nil); err != nil {
				t.Fatal(err)
			}
		}
		r, err := sb.NextRequest()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: %+v, %v", tc.name, r, err)
		}
		// A refused request leaves nothing in the connection that would
		// be taken for the next one: here each test sends only what the
		// decoder reads before it refuses.
	}
	if after := openFDs(t); after != before {
		t.Fatalf("%d descriptors open before, %d after", before, after)
	}
}
