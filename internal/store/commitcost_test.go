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
// over and over (the same pages each time), and reports per dirty page what
// the commit cost: bytes the process wrote to storage (/proc/self/io
// write_bytes), store file growth, and CPU time (user + system, all
// threads). "run" changes D consecutive pages, "every2nd" every other page
// of 2D (runs of one page).
func BenchmarkCommitDirtyPages(b *testing.B) {
	for _, layout := range []string{"run", "every2nd"} {
		for _, d := range []int{1, 64, 4096, 32768} {
			if layout == "every2nd" && d > benchHeapPages/2 {
				continue
			}
			b.Run(fmt.Sprintf("%s/pages=%d", layout, d), func(b *testing.B) {
				benchCommitDirty(b, d, layout == "every2nd")
			})
		}
	}
}

func benchCommitDirty(b *testing.B, dirty int, strided bool) {
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
	step := 1
	if strided {
		step = 2
	}
	first := (benchHeapPages - dirty*step) / 2
	delta := make([]state.DirtyPage, dirty)
	for i := range delta {
		delta[i] = all[first+i*step]
	}
	commit := func() {
		for _, p := range delta {
			p.Data[16]++
		}
		meta.Version++
		if err := s.Commit(Change{ID: id, Meta: meta, Heap: &MemoryChange{Delta: state.Delta{Size: size, Pages: delta}}}); err != nil {
			b.Fatal(err)
		}
	}
	// Two commits first: the file reaches the size that holds the pages
	// written and those they replace.
	commit()
	commit()
	size0, io0, cpu0, alloc0 := fileSize(b, s.Path()), writeBytes(b), cpuTime(), pageAlloc(s)
	b.ResetTimer()
	for range b.N {
		commit()
	}
	b.StopTimer()
	n := float64(b.N) * float64(dirty)
	b.ReportMetric(float64(writeBytes(b)-io0)/n, "wbytes/page")
	b.ReportMetric(float64(fileSize(b, s.Path())-size0)/n, "growth/page")
	b.ReportMetric(float64(pageAlloc(s)-alloc0)/n, "allocbytes/page")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/n, "cpuµs/page")
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
