package sysapi

import (
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
)

// Stable writes pay StableDirtyPageCost for each page they dirty first,
// nothing more for a page already dirty, and one that would dirty more
// pages than Limits.StableDirtyPages traps before writing anything.
func TestStableDirtyPages(t *testing.T) {
	meter := &countMeter{limit: 1 << 30}
	in := &Input{Context: CtxUpdate, Balance: cycles.New(1),
		Limits: Limits{Instructions: 1 << 30, HeapBytes: 1 << 20, StableBytes: 1 << 20, StableDirtyPages: 4},
		Stable: state.NewPageMap(state.WasmPageSize)}
	e := NewExecution(in, make(flatMemory, 3*state.PageSize), meter)
	charged := func(name string, args ...uint64) uint64 {
		t.Helper()
		before := meter.used
		if _, err := call(t, e, name, args...); err != nil {
			t.Fatalf("%s%v: %v", name, args, err)
		}
		return meter.used - before
	}
	// Bytes 4095 and 4096: two pages, each dirtied first here.
	if got, want := charged("stable64_write", state.PageSize-1, 0, 2), uint64(costStable+2+2*StableDirtyPageCost); got != want {
		t.Fatalf("first write charged %d, want %d", got, want)
	}
	if got, want := charged("stable64_write", 0, 0, 100), uint64(costStable+100); got != want {
		t.Fatalf("rewrite of a dirty page charged %d, want %d", got, want)
	}
	// Pages 2..4 would make 5 dirty pages: refused whole.
	_, err := call(t, e, "stable64_write", 2*state.PageSize, 0, 3*state.PageSize)
	if tr, ok := err.(*Trap); !ok || !strings.Contains(tr.Message, "limit of 4 modified stable memory pages") {
		t.Fatalf("write past the limit: %v", err)
	}
	if d := e.Stable().Dirty(); d != 2 {
		t.Fatalf("%d dirty pages after the refused write, want 2", d)
	}
	// Two more pages reach the limit exactly.
	if got, want := charged("stable64_write", 2*state.PageSize, 0, 2*state.PageSize), uint64(costStable+2*state.PageSize+2*StableDirtyPageCost); got != want {
		t.Fatalf("write to the limit charged %d, want %d", got, want)
	}
}

// The heap's pages, counted by the engine, are charged HeapDirtyPageCost
// each, also when there are more than Limits.HeapDirtyPages (a trap: the
// engine found them all); a charge past the instruction limit is the
// instruction limit's trap.
func TestChargeHeapPages(t *testing.T) {
	limit := uint64(30 * HeapDirtyPageCost)
	for _, tc := range []struct {
		pages, charged uint64
		err            string
	}{
		{3, 3 * HeapDirtyPageCost, ""},
		{21, 21 * HeapDirtyPageCost, "limit of 20 modified heap pages (4 KiB) in a single execution: it modified 21"},
		{31, limit, ErrInstructionLimit.Message},
	} {
		meter := &countMeter{limit: limit}
		in := &Input{Context: CtxUpdate, Limits: Limits{Instructions: limit, HeapDirtyPages: 20}}
		err := NewExecution(in, flatMemory(nil), meter).ChargeHeapPages(tc.pages)
		if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) || meter.used != tc.charged {
			t.Errorf("%d pages: %v, %d charged; want %q, %d", tc.pages, err, meter.used, tc.err, tc.charged)
		}
	}
}
