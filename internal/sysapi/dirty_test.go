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
// each; beyond Limits.HeapDirtyPages they trap, and a charge past the
// instruction limit is the instruction limit's trap.
func TestChargeHeapPages(t *testing.T) {
	meter := &countMeter{limit: 10 * HeapDirtyPageCost}
	in := &Input{Context: CtxUpdate, Limits: Limits{Instructions: meter.limit, HeapDirtyPages: 20}}
	e := NewExecution(in, flatMemory(nil), meter)
	if err := e.ChargeHeapPages(3); err != nil || meter.used != 3*HeapDirtyPageCost {
		t.Fatalf("3 pages: %v, %d charged", err, meter.used)
	}
	if err := e.ChargeHeapPages(21); err == nil || !strings.Contains(err.Error(), "limit of 20 modified heap pages") {
		t.Fatalf("21 pages: %v", err)
	}
	if err := e.ChargeHeapPages(8); err != ErrInstructionLimit {
		t.Fatalf("past the instruction limit: %v", err)
	}
}
