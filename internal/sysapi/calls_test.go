package sysapi

import (
	"encoding/binary"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
)

// perform builds and performs one call to callee with an argument of n
// bytes (callee at 200, method "m" at 300) and returns call_perform's code.
func perform(t *testing.T, e *Execution, mem flatMemory, callee []byte, n uint64, attach uint64) uint64 {
	t.Helper()
	copy(mem[200:], callee)
	copy(mem[300:], "m")
	if _, err := call(t, e, "call_new", 200, uint64(len(callee)), 300, 1, 0, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if n > 0 {
		if _, err := call(t, e, "call_data_append", 1000, n); err != nil {
			t.Fatal(err)
		}
	}
	if attach > 0 {
		if _, err := call(t, e, "call_cycles_add", attach); err != nil {
			t.Fatal(err)
		}
	}
	r, err := call(t, e, "call_perform")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCallPerformLimitsAndCharges(t *testing.T) {
	limits := func() *CallLimits {
		return &CallLimits{Fee: 100, ByteFee: 10, Reservation: cycles.New(50), Keep: cycles.New(30),
			Outstanding: 100, MemoryBytes: 1 << 30, ResponseBytes: 1000, QueueCapacity: 3,
			Queues: []QueueUse{{Callee: []byte{7}, Used: 2}}}
	}
	setup := func(l *CallLimits, balance uint64) (*Execution, flatMemory) {
		e, mem, _ := newExec(CtxUpdate)
		e.in.Limits.MaxOutgoing, e.in.Limits.CallArgBytes = 100, 1000
		e.in.Limits.Calls = l
		e.in.Balance, e.balance = cycles.New(balance), cycles.New(balance)
		return e, mem
	}
	// cost_call reports the host's fees and the response's reservation,
	// and call_perform charges exactly that.
	e, mem := setup(limits(), 100_000)
	if _, err := call(t, e, "cost_call", 1, 4, 500); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(mem[500:]); got != 100+10*5+50 {
		t.Fatalf("cost_call = %d, want 200", got)
	}
	if r := perform(t, e, mem, []byte{8}, 4, 0); r != 0 {
		t.Fatalf("call_perform = %d", r)
	}
	if want := cycles.New(100_000 - 150 - 50); e.balance != want {
		t.Fatalf("balance %s after one call, want %s", e.balance, want)
	}
	// The pair to callee 7 has one slot of 3 left: one call, then 2.
	if r := perform(t, e, mem, []byte{7}, 0, 0); r != 0 {
		t.Fatalf("last slot to 7: %d", r)
	}
	before := e.balance
	if r := perform(t, e, mem, []byte{7}, 0, 40); r != 2 {
		t.Fatalf("queue to 7 full: call_perform = %d, want 2", r)
	}
	if e.balance != before || len(e.out.Calls) != 2 || e.out.CyclesSent != (cycles.Amount{}) {
		t.Fatalf("a refused call charged or kept something: balance %s (was %s), %d calls, sent %s", e.balance, before, len(e.out.Calls), e.out.CyclesSent)
	}
	// Another callee still has its own queue.
	if r := perform(t, e, mem, []byte{9}, 0, 0); r != 0 {
		t.Fatalf("other pair: %d", r)
	}

	// Outstanding calls.
	l := limits()
	l.Outstanding = 2
	e, mem = setup(l, 100_000)
	for i, want := range []uint64{0, 0, 2} {
		if r := perform(t, e, mem, []byte{byte(20 + i)}, 0, 0); r != want {
			t.Fatalf("outstanding call %d: %d, want %d", i, r, want)
		}
	}
	// Message memory: each call takes its method, argument and ResponseBytes.
	l = limits()
	l.MemoryBytes = 2*(1+10+1000) + 5
	e, mem = setup(l, 100_000)
	for i, want := range []uint64{0, 0, 2} {
		if r := perform(t, e, mem, []byte{byte(30 + i)}, 10, 0); r != want {
			t.Fatalf("memory call %d: %d, want %d", i, r, want)
		}
	}
	// Cycles: the charge must leave Keep.
	e, mem = setup(limits(), 30+2*(100+10*2+50))
	for i, want := range []uint64{0, 0, 2} {
		if r := perform(t, e, mem, []byte{byte(40 + i)}, 1, 0); r != want {
			t.Fatalf("cycles call %d: %d, want %d", i, r, want)
		}
	}
	if e.balance != cycles.New(30) {
		t.Fatalf("balance %s, want the 30 kept", e.balance)
	}
	// Without limits (queries, tests) nothing is charged.
	e, mem = setup(nil, 1000)
	if r := perform(t, e, mem, []byte{8}, 4, 0); r != 0 || e.balance != cycles.New(1000) {
		t.Fatalf("no limits: %d, balance %s", r, e.balance)
	}
	// cost_call then reports the IC's prices: 260 000 + 1 000 per byte of
	// the request, 1 000 per byte of a 2 MiB reply and a callback of 40 B
	// instructions (5 M + 1 per instruction).
	if _, err := call(t, e, "cost_call", 1, 4, 500); err != nil {
		t.Fatal(err)
	}
	if got, want := binary.LittleEndian.Uint64(mem[500:]), uint64(260_000+1_000*5+1_000*(2<<20)+5_000_000+40_000_000_000); got != want {
		t.Fatalf("cost_call without limits = %d, want %d", got, want)
	}
}

func TestCallTallyReplay(t *testing.T) {
	l := &CallLimits{Outstanding: 10, MemoryBytes: 1 << 20, ResponseBytes: 100, QueueCapacity: 2,
		Queues: []QueueUse{{Callee: []byte{1}, Used: 1}}}
	tl := NewCallTally(l)
	calls := []Call{{Callee: []byte{1}}, {Callee: []byte{1}}, {Callee: []byte{2}}, {Callee: []byte{2}}, {Callee: []byte{2}}}
	var got []bool
	for i := range calls {
		got = append(got, tl.Admit(&calls[i]))
	}
	want := []bool{true, false, true, true, false}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("admit %v, want %v", got, want)
		}
	}
	if got := CallCost(1, 1<<63, 1, 1); got != (cycles.Amount{Hi: 1, Lo: 1}) {
		t.Fatalf("CallCost beyond 64 bits: %s", got)
	}
	if CallCost(0, 1, ^uint64(0), 1) != cycles.Max {
		t.Fatal("byte count overflow not saturated")
	}
	if m := (&CallLimits{ResponseBytes: ^uint64(0)}).Memory(&Call{Method: "m"}); m != ^uint64(0) {
		t.Fatalf("memory overflow: %d", m)
	}
}

// cycles_burn128 burns at most the liquid balance: what the execution must
// keep (its own fee, the freezing limit) stays, so it can never burn what
// pays for it; without call limits (install, tests) all of it is liquid.
func TestCyclesBurnKeepsWhatPaysTheExecution(t *testing.T) {
	for _, tc := range []struct {
		name           string
		keep           *uint64
		balance, burnt uint64
	}{
		{"keeps Keep", ptr(uint64(300)), 1000, 700},
		{"below Keep burns nothing", ptr(uint64(300)), 200, 0},
		{"no limits", nil, 1000, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, mem, _ := newExec(CtxUpdate)
			if tc.keep != nil {
				e.in.Limits.Calls = &CallLimits{Keep: cycles.New(*tc.keep)}
			}
			e.in.Balance, e.balance = cycles.New(tc.balance), cycles.New(tc.balance)
			if _, err := call(t, e, "cycles_burn128", ^uint64(0), ^uint64(0), 500); err != nil {
				t.Fatal(err)
			}
			if got := binary.LittleEndian.Uint64(mem[500:]); got != tc.burnt || e.out.CyclesBurned != cycles.New(tc.burnt) ||
				e.balance != cycles.New(tc.balance-tc.burnt) {
				t.Fatalf("burned %d (output %s), balance %s; want %d burned", got, e.out.CyclesBurned, e.balance, tc.burnt)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
