package sysapi

import "math"

// Each 4 KiB page an execution changes is written to the store by its
// commit, whatever the Wasm code did to change it; the instruction count
// pays for that work too. The figures are the IC's: 3 000 per heap page
// (DIRTY_PAGE_COPY_OVERHEAD, its charge for copying a dirty heap page) and
// 1 000 per stable page (DEFAULT_DIRTY_PAGE_OVERHEAD of an application
// subnet, charged when a stable write first dirties the page).
const (
	HeapDirtyPageCost   = 3000
	StableDirtyPageCost = 1000
)

// DirtyPageInstructions is what an execution that changed heapPages heap
// pages and stablePages stable pages was charged for them (saturating).
func DirtyPageInstructions(heapPages, stablePages uint64) uint64 {
	h, s := satMul(heapPages, HeapDirtyPageCost), satMul(stablePages, StableDirtyPageCost)
	if h+s < h {
		return math.MaxUint64
	}
	return h + s
}

func satMul(a, b uint64) uint64 {
	if a != 0 && b > math.MaxUint64/a {
		return math.MaxUint64
	}
	return a * b
}

// ChargeHeapPages charges the heap pages an execution changed, counted by
// the engine once the Wasm code returned (they are known only then, and
// finding them was work done for every one). A charge past the instruction
// limit is the instruction-limit trap; more pages than
// Limits.HeapDirtyPages trap too. Either way the state is dropped.
func (e *Execution) ChargeHeapPages(n uint64) error {
	if err := e.meter.Charge(satMul(n, HeapDirtyPageCost)); err != nil {
		return err
	}
	if lim := e.in.Limits.HeapDirtyPages; lim != 0 && n > lim {
		return trapf("Canister exceeded the limit of %d modified heap pages (4 KiB) in a single execution: it modified %d", lim, n)
	}
	return nil
}

// chargeStablePages charges the stable pages of [off, off+size) that a
// write there dirties for the first time, after checking they stay within
// Limits.StableDirtyPages.
func (e *Execution) chargeStablePages(off, size uint64) error {
	if size == 0 {
		return nil
	}
	n := e.stable.Clean(off, size)
	if lim := e.in.Limits.StableDirtyPages; lim != 0 && e.stable.Dirty()+n > lim {
		return trapf("Canister exceeded the limit of %d modified stable memory pages (4 KiB) in a single execution", lim)
	}
	return e.meter.Charge(satMul(n, StableDirtyPageCost))
}
