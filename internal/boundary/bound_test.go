package boundary

import (
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// An output reporting fewer instructions than its System API calls cost
// is refused, in every kind of context; one reporting exactly the bound
// passes.
func TestInstructionLowerBound(t *testing.T) {
	lim := hostLimits(40_000_000_000)
	expect := func(c sysapi.Context) *Expect {
		return &Expect{ID: 1, Context: c, Limits: lim, HeapSize: state.WasmPageSize, StableSize: state.WasmPageSize,
			Balance: cycles.New(1 << 40), CyclesAvailable: cycles.New(1000)}
	}
	calls := func(n, arg int) []sysapi.Call {
		var cs []sysapi.Call
		for i := 0; i < n; i++ {
			cs = append(cs, sysapi.Call{Callee: []byte{1}, Method: "m", Arg: make([]byte, arg)})
		}
		return cs
	}
	logs := func(n, size int) []sysapi.LogLine {
		var ls []sysapi.LogLine
		for i := 0; i < n; i++ {
			ls = append(ls, sysapi.LogLine{Text: strings.Repeat("x", size)})
		}
		return ls
	}
	cases := []struct {
		name string
		ctx  sysapi.Context
		out  *sysapi.Output
		// stablePages are announced by the header, as the pages follow it.
		stablePages uint64
		least       uint64 // the bound, derived by hand from the costs
		heapPages   uint64 // announced by the header too
		// calls and copies are the ic0 calls the output proves: each is
		// charged sysapi.CallOverhead for the host call, or
		// sysapi.HeapCallOverhead if it copies between the heap and the
		// host.
		calls, copies uint64
	}{
		{"audit: update with 2 MiB reply, 256 logs of 16 KiB, 10 calls of 1 MiB", sysapi.CtxUpdate, &sysapi.Output{
			Response: sysapi.Replied, Reply: make([]byte, 2<<20), Logs: logs(256, 16*1024), Calls: calls(10, 1<<20),
			Heap: state.Delta{Size: state.WasmPageSize}, Stable: state.Delta{Size: state.WasmPageSize},
		}, 0, 500 + 20 + 2<<20 + 256*(100+16*1024) + 10*(100+1+1+5000+20+1<<20), 0, 1 + 256 + 10*2, 1 + 10},
		{"composite query calling three times", sysapi.CtxCompositeQuery, &sysapi.Output{
			Calls: calls(3, 0), Heap: state.Delta{Size: state.WasmPageSize}, Stable: state.Delta{Size: state.WasmPageSize},
		}, 0, 3 * (100 + 1 + 1 + 5000), 0, 3 * 2, 0},
		{"composite reply callback answering", sysapi.CtxCompositeReply, &sysapi.Output{
			Response: sysapi.Replied, Reply: []byte("pong"), Heap: state.Delta{Size: state.WasmPageSize}, Stable: state.Delta{Size: state.WasmPageSize},
		}, 0, 500 + 20 + 4, 0, 1, 1},
		{"query with a 1 MiB reply", sysapi.CtxNonReplicatedQuery, &sysapi.Output{
			Response: sysapi.Replied, Reply: make([]byte, 1<<20),
		}, 0, 500 + 20 + 1<<20, 0, 1, 1},
		{"query rejecting", sysapi.CtxNonReplicatedQuery, &sysapi.Output{
			Response: sysapi.Rejected, RejectMessage: "no",
		}, 0, 500 + 2, 0, 1, 0},
		{"inspect accepting", sysapi.CtxInspect, &sysapi.Output{Accepted: true}, 0, 20, 0, 1, 0},
		{"trap after printing", sysapi.CtxUpdate, &sysapi.Output{Trapped: true, TrapMessage: "t", Logs: logs(3, 10)}, 0, 3 * 110, 0, 3, 0},
		{"printed invalid UTF-8 and a truncated line", sysapi.CtxUpdate, &sysapi.Output{
			Heap: state.Delta{Size: state.WasmPageSize}, Stable: state.Delta{Size: state.WasmPageSize},
			Logs: []sysapi.LogLine{{Text: "a\uFFFDb"}, {Text: "cut", Truncated: true}},
		}, 0, 100 + 3 + 100 + 16*1024, 0, 2, 0},
		{"stable grown and written, cycles, certified data, timer", sysapi.CtxUpdate, &sysapi.Output{
			Heap: state.Delta{Size: state.WasmPageSize}, Stable: state.Delta{Size: 2 * state.WasmPageSize},
			CyclesAccepted: cycles.New(10), CyclesBurned: cycles.New(5),
			CertifiedData: []byte("abcd"), CertifiedDataSet: true, GlobalTimer: 7, GlobalTimerSet: true,
		}, 3, 100 + 20 + 3 + 3*1000 + 100 + 116 + 104 + 20, 0, 5, 1},
		{"a call with everything", sysapi.CtxUpdate, &sysapi.Output{
			Heap: state.Delta{Size: state.WasmPageSize}, Stable: state.Delta{Size: state.WasmPageSize}, CyclesSent: cycles.New(3),
			Calls: []sysapi.Call{{Callee: []byte{1, 2}, Method: "meth", Arg: []byte("arg"), Cycles: cycles.New(3),
				OnCleanup: &sysapi.Callback{Fun: 1}, Timeout: 10}},
		}, 0, 100 + 2 + 4 + 5000 + 20 + 3 + 20 + 20 + 20, 0, 5, 1},
		// The host receives the delta, so it knows what the dirty pages
		// cost: 3 000 a heap page, 1 000 a stable page (the IC's figures).
		{"audit: an update that dirtied 1000 heap pages and 10 stable pages", sysapi.CtxUpdate, &sysapi.Output{
			Heap: state.Delta{Size: 64 * state.WasmPageSize}, Stable: state.Delta{Size: state.WasmPageSize},
		}, 10, 20 + 10 + 1000*3000 + 10*1000, 1000, 0, 1},
		{"composite reply callback that dirtied heap pages", sysapi.CtxCompositeReply, &sysapi.Output{
			Heap: state.Delta{Size: state.WasmPageSize}, Stable: state.Delta{Size: state.WasmPageSize},
		}, 0, 16 * 3000, 16, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			exp := expect(tc.ctx)
			least := tc.least + tc.calls*sysapi.CallOverhead + tc.copies*sysapi.HeapCallOverhead
			if got := sysapi.MinInstructions(tc.out, &exp.Limits, exp.StableSize, tc.heapPages, tc.stablePages); got != least {
				t.Fatalf("bound %d, derived %d", got, least)
			}
			check := func(instr uint64) error {
				o := *tc.out
				o.Instructions = instr
				return ValidateHeader(exp, &OutputHeader{Out: &o, HeapPages: tc.heapPages, StablePages: tc.stablePages})
			}
			if err := check(least); err != nil {
				t.Fatalf("at the bound: %v", err)
			}
			wantViolation(t, check(least-1), VInstructions)
			wantViolation(t, check(0), VInstructions)
		})
	}
}

// A sandbox announcing more dirty pages than an execution may change lies:
// an honest one trapped at the limit (sysapi.Limits.HeapDirtyPages,
// StableDirtyPages). At the limit, with the instructions they cost, the
// output passes.
func TestDirtyPageLimits(t *testing.T) {
	lim := hostLimits(40_000_000_000)
	lim.HeapDirtyPages, lim.StableDirtyPages = 8, 4
	exp := &Expect{ID: 1, Context: sysapi.CtxUpdate, Limits: lim, HeapSize: state.WasmPageSize, StableSize: state.WasmPageSize, Balance: cycles.New(1 << 40)}
	check := func(heap, stable uint64) error {
		o := &sysapi.Output{Heap: state.Delta{Size: state.WasmPageSize}, Stable: state.Delta{Size: state.WasmPageSize}}
		o.Instructions = sysapi.MinInstructions(o, &exp.Limits, exp.StableSize, heap, stable)
		return ValidateHeader(exp, &OutputHeader{Out: o, HeapPages: heap, StablePages: stable})
	}
	if err := check(8, 4); err != nil {
		t.Fatalf("at the limits: %v", err)
	}
	wantViolation(t, check(9, 4), VMemory)
	wantViolation(t, check(8, 5), VMemory)
}
