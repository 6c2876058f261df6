package sysapi

import (
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
)

// Every cost the bound counts is read from the import table (a missing
// name would count 0 and weaken the bound silently).
func TestBoundCostsFromTable(t *testing.T) {
	c := reflect.ValueOf(boundCosts())
	for i := 0; i < c.NumField(); i++ {
		if c.Field(i).Uint() == 0 {
			t.Errorf("cost %s is 0: its import is not in the table", c.Type().Field(i).Name)
		}
	}
}

// MinInstructions never exceeds what the System API really charged:
// random sequences of the imports that leave a trace in the output (many
// small appends or one, refused calls, truncated and invalid UTF-8 prints,
// stable writes across pages, traps midway, the instruction limit hit
// midway), in every context, against the meter. The meter here counts the
// System API's charges alone; an engine adds the Wasm instructions.
func TestMinInstructionsNeverAboveCharges(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	type op struct {
		name string
		args func() []uint64
	}
	small := func(n int) uint64 { return uint64(rng.IntN(n + 1)) }
	ascii := func() uint64 { return small(900) }         // [0, 1000): ASCII
	anyPtr := func() uint64 { return 1000 + small(800) } // [1000, 2000): random bytes, invalid UTF-8
	ptr := func() uint64 {
		if rng.IntN(2) == 0 {
			return ascii()
		}
		return anyPtr()
	}
	ops := []op{
		{"debug_print", func() []uint64 { return []uint64{ptr(), small(20)} }},
		{"msg_reply_data_append", func() []uint64 { return []uint64{ptr(), small(6)} }},
		{"msg_reply", func() []uint64 { return nil }},
		{"msg_reject", func() []uint64 { return []uint64{ptr(), small(6)} }},
		{"call_new", func() []uint64 {
			return []uint64{ptr(), small(3), ascii(), small(3), small(2), small(2), small(2), small(2)}
		}},
		{"call_data_append", func() []uint64 { return []uint64{ptr(), small(5)} }},
		{"call_on_cleanup", func() []uint64 { return []uint64{small(2), small(2)} }},
		{"call_with_best_effort_response", func() []uint64 { return []uint64{small(400)} }},
		{"call_cycles_add128", func() []uint64 { return []uint64{0, small(3)} }},
		{"call_cycles_add", func() []uint64 { return []uint64{small(3)} }},
		{"call_perform", func() []uint64 { return nil }},
		{"accept_message", func() []uint64 { return nil }},
		{"msg_cycles_accept128", func() []uint64 { return []uint64{0, small(100), 3000} }},
		{"msg_cycles_accept", func() []uint64 { return []uint64{small(100)} }},
		{"cycles_burn128", func() []uint64 { return []uint64{0, small(10), 3000} }},
		{"certified_data_set", func() []uint64 { return []uint64{ptr(), small(40)} }},
		{"global_timer_set", func() []uint64 { return []uint64{small(5)} }},
		{"stable64_grow", func() []uint64 { return []uint64{small(1)} }},
		{"stable_grow", func() []uint64 { return []uint64{small(1)} }},
		{"stable64_write", func() []uint64 { return []uint64{small(2 * state.WasmPageSize), ptr(), small(5000)} }},
		{"stable_write", func() []uint64 { return []uint64{small(2 * state.WasmPageSize), ptr(), small(3)} }},
	}
	trap := op{"trap", func() []uint64 { return []uint64{ptr(), small(5)} }}
	var runs, bounded int
	var tightest float64
	for ctx := Context(0); ctx < numContexts; ctx++ {
		for run := 0; run < 1500; run++ {
			mem := make(flatMemory, 65536)
			for i := range mem[:1000] {
				mem[i] = 'a' + byte(rng.IntN(26))
			}
			for i := 1000; i < 2000; i++ {
				mem[i] = byte(rng.Uint32())
			}
			limit := uint64(1 << 30)
			if rng.IntN(8) == 0 {
				limit = small(20 * CallOverhead) // the limit hit midway
			}
			meter := &countMeter{limit: limit}
			in := &Input{
				Context: ctx, CanisterID: []byte{1, 2, 3}, Balance: cycles.New(1_000_000), CyclesAvailable: cycles.New(300),
				Limits: Limits{Instructions: limit, HeapBytes: 1 << 20, StableBytes: 4 * state.WasmPageSize,
					ReplyBytes: 16, CallArgBytes: 16, MaxOutgoing: 3, DebugPrintBytes: 8, MaxLogLines: 3},
				Stable: state.NewPageMap(uint64(rng.IntN(2)) * state.WasmPageSize),
			}
			stableBefore := in.Stable.Size()
			e := NewExecution(in, mem, meter)
			var err error
			for n := rng.IntN(40); n > 0 && err == nil; n-- {
				o := ops[rng.IntN(len(ops))]
				if rng.IntN(200) == 0 {
					o = trap
				}
				s, _ := Lookup(o.name, false)
				if !s.Allowed.Has(ctx) && rng.IntN(30) != 0 {
					continue // mostly calls that may succeed; sometimes one that traps
				}
				_, err = e.Call(s, o.args())
			}
			out := e.Finish(err)
			runs++
			least := MinInstructions(out, &in.Limits, stableBefore, 0, uint64(len(out.Stable.Pages)))
			if least > meter.Used() {
				t.Fatalf("%s run %d: bound %d above the %d instructions charged (trapped %v: %v)\n%+v", ctx, run, least, meter.Used(), out.Trapped, err, out)
			}
			if least > 0 {
				bounded++
				tightest = max(tightest, float64(least)/float64(meter.Used()))
			}
		}
	}
	t.Logf("%d runs, %d with a bound above 0; the tightest bound was %.3f of the charges", runs, bounded, tightest)
	if bounded < runs/4 {
		t.Fatalf("only %d of %d runs produced anything the bound counts", bounded, runs)
	}
}

// The bound is tight: for the cheapest way to produce each item, it is
// exactly what the System API charged, so any overcount shows here.
func TestMinInstructionsTight(t *testing.T) {
	type step struct {
		name string
		args []uint64
	}
	cases := []struct {
		name  string
		ctx   Context
		steps []step
		trap  bool // then the Wasm code traps (which costs the System API nothing)
	}{
		{"empty reply", CtxUpdate, []step{{"msg_reply", nil}}, false},
		{"reply", CtxNonReplicatedQuery, []step{{"msg_reply_data_append", []uint64{100, 5}}, {"msg_reply", nil}}, false},
		{"reject", CtxCompositeReply, []step{{"msg_reject", []uint64{100, 4}}}, false},
		{"bare call", CtxCompositeQuery, []step{{"call_new", []uint64{100, 2, 110, 3, 0, 0, 0, 0}}, {"call_perform", nil}}, false},
		{"call with everything", CtxUpdate, []step{
			{"call_new", []uint64{100, 2, 110, 3, 0, 0, 0, 0}}, {"call_data_append", []uint64{120, 3}},
			{"call_on_cleanup", []uint64{1, 1}}, {"call_with_best_effort_response", []uint64{0}},
			{"call_cycles_add", []uint64{5}}, {"call_perform", nil}}, false},
		{"accept_message", CtxInspect, []step{{"accept_message", nil}}, false},
		{"cycles accepted", CtxUpdate, []step{{"msg_cycles_accept", []uint64{7}}}, false},
		{"cycles burned", CtxUpdate, []step{{"cycles_burn128", []uint64{0, 7, 200}}}, false},
		{"certified data", CtxUpdate, []step{{"certified_data_set", []uint64{100, 4}}}, false},
		{"timer", CtxSystemTask, []step{{"global_timer_set", []uint64{9}}}, false},
		{"stable grown", CtxInit, []step{{"stable64_grow", []uint64{1}}}, false},
		{"two stable pages dirtied by two bytes", CtxUpdate, []step{{"stable64_write", []uint64{state.PageSize - 1, 100, 2}}}, false},
		{"print", CtxStart, []step{{"debug_print", []uint64{100, 5}}}, false},
		{"print of one invalid byte", CtxUpdate, []step{{"debug_print", []uint64{1000, 1}}}, false},
		{"truncated print", CtxUpdate, []step{{"debug_print", []uint64{100, 20}}}, false},
		{"print then trap", CtxUpdate, []step{{"debug_print", []uint64{100, 5}}}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mem := make(flatMemory, 65536)
			copy(mem[100:], "abcdefghijklmnopqrstuvwxyz")
			mem[1000] = 0xff
			meter := &countMeter{limit: 1 << 30}
			in := &Input{
				Context: tc.ctx, Balance: cycles.New(1_000_000), CyclesAvailable: cycles.New(300),
				Limits: Limits{Instructions: 1 << 30, HeapBytes: 1 << 20, StableBytes: 4 * state.WasmPageSize,
					ReplyBytes: 16, CallArgBytes: 16, MaxOutgoing: 3, DebugPrintBytes: 8, MaxLogLines: 3},
				Stable: state.NewPageMap(state.WasmPageSize),
			}
			e := NewExecution(in, mem, meter)
			for _, s := range tc.steps {
				if _, err := call(t, e, s.name, s.args...); err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
			}
			var err error
			if tc.trap {
				err = &Trap{Message: "unreachable"}
			}
			out := e.Finish(err)
			least := MinInstructions(out, &in.Limits, state.WasmPageSize, 0, uint64(len(out.Stable.Pages)))
			if least != meter.Used() || least == 0 {
				t.Fatalf("bound %d, charged %d", least, meter.Used())
			}
		})
	}
}
