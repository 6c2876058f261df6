package store

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/state"
)

// benchHeapPages is the heap the commit benchmarks change pages of: 256 MiB,
// every page holding data.
const benchHeapPages = 65536

// BenchmarkCommitDirtyPages commits D changed pages of a full 256 MiB heap,
// over and over, and reports per dirty page what the commit cost: bytes
// the process wrote to storage (/proc/self/io write_bytes), store pages
// bbolt allocated, store file growth, and CPU time (user + system, all
// threads). "run" changes D consecutive pages, "every2nd" every other page
// of 2D (runs of one page), the same pages each time. "every4thfresh"
// changes every fourth page of 4D, the next 4D at each commit, so pages no
// commit changed since the heap was written whole (cordon bench's
// memory-heavy update over a Motoko heap its copying collector rewrote;
// for D of 4 or more no chunk is changed twice): when the heap has no such
// pages left, it is written whole again, unmeasured.
func BenchmarkCommitDirtyPages(b *testing.B) {
	for _, c := range []struct {
		layout string
		dirty  []int
	}{
		{"run", []int{1, 64, 4096, 32768}},
		{"every2nd", []int{1, 64, 4096, 32768}},
		{"every4thfresh", []int{1, 64, 256, 4096}},
	} {
		for _, d := range c.dirty {
			b.Run(fmt.Sprintf("%s/pages=%d", c.layout, d), func(b *testing.B) {
				benchCommitDirty(b, d, c.layout)
			})
		}
	}
}

func benchCommitDirty(b *testing.B, dirty int, layout string) {
	s, err := Open(b.TempDir(), time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	id := []byte{1}
	size := uint64(benchHeapPages * state.PageSize)
	meta := Meta{ID: "bench", HeapSize: size}
	pages := make([]state.Page, benchHeapPages)
	all := make([]state.DirtyPage, benchHeapPages)
	for i := range pages {
		for j := 0; j < state.PageSize; j += 8 {
			pages[i][j] = byte(i*31 + j)
		}
		pages[i][0] = 1
		all[i] = state.DirtyPage{Index: uint64(i), Data: &pages[i]}
	}
	if err := s.Commit(Change{ID: id, Create: true, Meta: meta, Heap: &MemoryChange{Replace: true, Delta: state.Delta{Size: size, Pages: all}}}); err != nil {
		b.Fatal(err)
	}
	step := map[string]int{"run": 1, "every2nd": 2, "every4thfresh": 4}[layout]
	first := (benchHeapPages - dirty*step) / 2
	delta := make([]state.DirtyPage, dirty)
	pick := func() {
		for i := range delta {
			delta[i] = all[first+i*step]
		}
	}
	pick()
	commitPages := func(pages []state.DirtyPage) {
		for _, p := range pages {
			p.Data[16]++
		}
		meta.Version++
		if err := s.Commit(Change{ID: id, Meta: meta, Heap: &MemoryChange{Delta: state.Delta{Size: size, Pages: pages}}}); err != nil {
			b.Fatal(err)
		}
	}
	// next moves to chunks not changed since the heap was written whole.
	next := func() {}
	if layout == "every4thfresh" {
		first = 0
		pick()
		next = func() {
			if first += dirty * step; first+dirty*step > benchHeapPages {
				for _, p := range all {
					p.Data[16]++
				}
				meta.Version++
				if err := s.Commit(Change{ID: id, Meta: meta, Heap: &MemoryChange{Replace: true, Delta: state.Delta{Size: size, Pages: all}}}); err != nil {
					b.Fatal(err)
				}
				first = 0
			}
			pick()
		}
	}
	// Two commits first: the file reaches the size that holds the pages
	// written and those they replace.
	commitPages(delta)
	next()
	commitPages(delta)
	next()
	var wbytes, growth, alloc, cpu int64
	b.ResetTimer()
	for range b.N {
		size0, io0, cpu0, alloc0 := fileSize(b, s.Path()), writeBytes(b), cpuTime(), pageAlloc(s)
		commitPages(delta)
		wbytes += writeBytes(b) - io0
		growth += fileSize(b, s.Path()) - size0
		alloc += pageAlloc(s) - alloc0
		cpu += int64(cpuTime() - cpu0)
		b.StopTimer()
		next()
		b.StartTimer()
	}
	b.StopTimer()
	n := float64(b.N) * float64(dirty)
	b.ReportMetric(float64(wbytes)/n, "wbytes/page")
	b.ReportMetric(float64(growth)/n, "growth/page")
	b.ReportMetric(float64(alloc)/n, "allocbytes/page")
	b.ReportMetric(float64(cpu)/float64(time.Microsecond)/n, "cpuµs/page")
	b.ReportMetric(0, "ns/op")
}

func fileSize(b *testing.B, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

// writeBytes is what this process has caused to be written to storage.
func writeBytes(b *testing.B) int64 {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		b.Skip("no /proc/self/io:", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "write_bytes: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Skip("no write_bytes in /proc/self/io")
	return 0
}

// cpuTime is the process's user and system time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
