package boundary

import (
	"encoding/binary"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/state"
)

// FuzzNextRequestLayered: the sandbox's receiving side of a MemoryLayered
// Execute, with hostile sizes, bases, descriptor lengths and laid page
// indices (FuzzNextRequest sends no descriptors, so it never reaches the
// layered path). A request either is refused, with every descriptor
// closed, or decodes into memories that read consistently: of the declared
// sizes, every page readable, the laid pages in order inside the memory,
// zeros between the base and the size where nothing is laid.
func FuzzNextRequestLayered(f *testing.F) {
	f.Add(uint8(2), uint8(1), uint8(1), uint8(1), uint8(1), uint8(1), uint8(1), []byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(uint8(1), uint8(1), uint8(0), uint8(0), uint8(1), uint8(0), uint8(0), []byte{})
	f.Add(uint8(3), uint8(4), uint8(1), uint8(2), uint8(3), uint8(2), uint8(0), []byte{1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, heapWasm, heapBase4K, stableWasm, stableBase4K, fileWasm, nHeap, nStable uint8, idx []byte) {
		host, sb := pair(t)
		before := openFDs(t)
		heapSize := uint64(heapWasm%4) * state.WasmPageSize
		stableSize := uint64(stableWasm%4) * state.WasmPageSize
		q := &ExecRequest{Module: [32]byte{1}, HeapSource: MemoryLayered, HasHeap: heapSize > 0 || heapWasm%2 == 1, HeapSize: heapSize,
			HeapBase: uint64(heapBase4K%80) * state.PageSize, HeapPages: uint64(nHeap % 8),
			StableSize: stableSize, StableBase: uint64(stableBase4K%80) * state.PageSize, StablePages: uint64(nStable % 8), Input: testInput()}
		var files []*os.File
		for range q.Descriptors() {
			fd, err := unix.MemfdCreate("fuzz", unix.MFD_CLOEXEC)
			if err != nil {
				t.Skip("no memfd")
			}
			fl := os.NewFile(uintptr(fd), "fuzz")
			if err := fl.Truncate(int64(fileWasm%4) * state.WasmPageSize); err != nil {
				t.Fatal(err)
			}
			if _, err := fl.WriteAt([]byte{7}, 0); err != nil && fileWasm%4 != 0 {
				t.Fatal(err)
			}
			files = append(files, fl)
		}
		// Pages packets: heap then stable, one page each, indices from idx.
		var pkts [][]byte
		next := func() uint64 {
			if len(idx) < 8 {
				return uint64(len(pkts))
			}
			v := binary.LittleEndian.Uint64(idx) % 80
			idx = idx[8:]
			return v
		}
		for _, mem := range []struct {
			m Memory
			n uint64
		}{{HeapMemory, q.HeapPages}, {StableMemory, q.StablePages}} {
			for range mem.n {
				b := make([]byte, HeaderSize+5+pageEntry)
				putHeader(b, KindPages, 0, 5, uint64(len(b)-HeaderSize))
				b[HeaderSize] = byte(mem.m)
				binary.LittleEndian.PutUint32(b[HeaderSize+1:], 1)
				binary.LittleEndian.PutUint64(b[HeaderSize+5:], next())
				b[HeaderSize+5+8] = 0x55
				pkts = append(pkts, b)
			}
		}
		errc := make(chan error, 1)
		go func() {
			err := host.Send(&Msg{Kind: KindExecute, ID: 5, Body: EncodeExecute(q), Files: files})
			for _, p := range pkts {
				if err != nil {
					break
				}
				err = host.write(p, nil)
			}
			for _, fl := range files {
				fl.Close()
			}
			host.Raw().Close()
			errc <- err
		}()
		sb.Raw().SetDeadline(time.Now().Add(5 * time.Second))
		r, err := sb.NextRequest()
		<-errc
		if err == nil {
			check := func(name string, m state.Memory, size, base uint64) {
				if m == nil {
					return
				}
				if m.Size() != size {
					t.Fatalf("%s: size %d, declared %d", name, m.Size(), size)
				}
				if size == 0 {
					return
				}
				l, ok := m.(state.LayeredMemory).Layers()
				if !ok || l.Base != base || l.Size != size {
					t.Fatalf("%s: layers %v %d/%d, declared %d/%d", name, ok, l.Base, l.Size, base, size)
				}
				laid := map[uint64]bool{}
				for k, p := range l.Pages {
					if p.Index*state.PageSize >= size || (k > 0 && p.Index <= l.Pages[k-1].Index) {
						t.Fatalf("%s: laid page %d", name, p.Index)
					}
					laid[p.Index] = true
				}
				for i := range size / state.PageSize {
					p := m.Page(i)
					if p == nil {
						t.Fatalf("%s: page %d nil", name, i)
					}
					if !laid[i] && i*state.PageSize >= base && *p != (state.Page{}) {
						t.Fatalf("%s: page %d past the base reads non-zero", name, i)
					}
				}
			}
			check("heap", r.Heap, q.HeapSize, q.HeapBase)
			check("stable", r.Stable, q.StableSize, q.StableBase)
			r.Release()
		}
		sb.Raw().Close()
		if after := openFDs(t); after > before {
			t.Fatalf("%d descriptors open before, %d after (%v)", before, after, err)
		}
	})
}
