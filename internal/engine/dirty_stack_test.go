package engine

import (
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// atDepth calls f with about n×64 bytes more of its goroutine's stack in
// use.
//
//go:noinline
func atDepth(n int, f func()) {
	var pad [64]byte
	if n <= 0 {
		f()
		return
	}
	atDepth(n-1, f)
	pad[n%len(pad)]++ // keeps the frame
	_ = pad
}

// The kernel writes a scan's regions at an address it is given as an
// integer, which the runtime does not update when it moves a goroutine's
// stack. With the buffer on the stack, a stack that grew between building
// the ioctl's argument and making it (File.Fd there is a call) made the
// kernel write into the abandoned stack while the scan read a buffer never
// written: "region 0x0-0x0", and a canister's large memory trapped as
// uncheckable (TestUpgradeKeepsLargeHeap, once the host's stack depth
// moved onto that point). Scans are made from fresh goroutines at every
// depth of a few stack sizes, so that one of them grows just there.
func TestScanSurvivesAMovingStack(t *testing.T) {
	pm := SelfPagemap()
	if pm == nil {
		t.Skip("no /proc/self/pagemap")
	}
	const pages = 64
	mem, err := unix.Mmap(-1, 0, pages*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	var want []uint64
	for i := 0; i < pages; i += 2 {
		mem[i*4096] = 1
		want = append(want, uint64(i))
	}
	for depth := 0; depth < 300; depth++ { // up to ~19 KiB: across 2, 4, 8 and 16 KiB stacks
		done := make(chan error, 1)
		go atDepth(depth, func() {
			got, err := writtenPages(pm, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)))
			if err == nil && !slices.Equal(got, want) {
				t.Errorf("depth %d: pages %v, want %v", depth, got, want)
			}
			done <- err
		})
		if err := <-done; err != nil {
			t.Fatalf("depth %d: %v", depth, err)
		}
	}
}
