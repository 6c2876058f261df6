package boundary

import (
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// hostLimits are the host's default limits (host.DefaultConfig).
func hostLimits(instr uint64) sysapi.Limits {
	return sysapi.Limits{Instructions: instr, HeapBytes: 4 << 30, StableBytes: 1 << 30, ReplyBytes: 2 << 20,
		CallArgBytes: 2 << 20, MaxOutgoing: 500, DebugPrintBytes: 16 * 1024, MaxLogLines: 256}
}

// Audit: a lying sandbox answering a plain query with 48 calls of 2 MiB
// each (calls a query cannot make) was received in full, ~100 MiB grown by
// append, before validation refused it. Its body is now above the
// largest valid answer to a query and refused from its first packet.
func TestAuditQueryOutputCap(t *testing.T) {
	e := &Expect{ID: 1, Context: sysapi.CtxNonReplicatedQuery, Limits: hostLimits(5_000_000_000)}
	host, sb := pair(t)
	o := &sysapi.Output{Instructions: 1, Response: sysapi.Replied, Reply: []byte{}}
	for i := 0; i < 48; i++ {
		o.Calls = append(o.Calls, sysapi.Call{Callee: []byte{1}, Method: "m", Arg: make([]byte, 2<<20)})
	}
	body := EncodeOutput(o)
	go sb.Send(&Msg{Kind: KindOutput, ID: 1, Body: body})
	_, err := host.AwaitOutput(e, nil)
	wantViolation(t, err, VSize)
}

// largestOutput is the largest output valid for exp: every field its
// context allows at its limit.
func largestOutput(exp *Expect) *sysapi.Output {
	l := &exp.Limits
	o := &sysapi.Output{Instructions: l.Instructions}
	allows := func(name string) bool { return allowed(name, exp.Context) }
	if allows("msg_reply") {
		o.Response, o.Reply = sysapi.Replied, make([]byte, l.ReplyBytes)
	}
	if allows("call_perform") {
		for i := 0; i < l.MaxOutgoing; i++ {
			cl := sysapi.Callback{Fun: 1, Env: 2}
			o.Calls = append(o.Calls, sysapi.Call{Callee: make([]byte, MaxPrincipalBytes), Method: strings.Repeat("m", MaxMethodNameBytes),
				Arg: make([]byte, l.CallArgBytes), OnCleanup: &cl, Timeout: MaxCallTimeout})
		}
	}
	if !exp.Context.IsQuery() && allows("certified_data_set") {
		o.CertifiedData, o.CertifiedDataSet = make([]byte, MaxCertifiedData), true
	}
	if !exp.Context.IsQuery() && allows("global_timer_set") {
		o.GlobalTimer, o.GlobalTimerSet = 1<<63, true
	}
	if ReportsMemory(exp.Context) {
		o.Heap.Size, o.Stable.Size = exp.HeapSize, exp.StableSize
		for _, g := range exp.GlobalTypes {
			o.Globals = append(o.Globals, state.Global{Type: g})
		}
	}
	for i := 0; i < l.MaxLogLines; i++ {
		// U+FFFD: 3 bytes of text per byte printed, the most a line grows.
		o.Logs = append(o.Logs, sysapi.LogLine{Text: strings.Repeat("\uFFFD", l.DebugPrintBytes), Truncated: true})
	}
	return o
}

// The cap is the largest valid output of the request's context: every
// context's largest valid output (and largest trap) fits under it, and a
// context that cannot call or reply is not given room for calls or a
// reply.
func TestOutputCapFollowsContext(t *testing.T) {
	small := sysapi.Limits{Instructions: 1 << 40, HeapBytes: 1 << 30, StableBytes: 1 << 30, ReplyBytes: 3000,
		CallArgBytes: 5000, MaxOutgoing: 3, DebugPrintBytes: 100, MaxLogLines: 4}
	for c := sysapi.CtxInit; c.Valid(); c++ {
		exp := &Expect{ID: 1, Context: c, Limits: small, HeapSize: state.WasmPageSize, StableSize: state.WasmPageSize,
			Balance: cycles.New(1 << 40), GlobalTypes: []state.GlobalType{state.GlobalI32, state.GlobalF64}}
		o := largestOutput(exp)
		if err := ValidateOutput(exp, o); err != nil {
			t.Fatalf("%s: the largest output is not valid: %v", c, err)
		}
		capBytes := OutputCap(exp)
		if n := uint64(len(EncodeOutput(o))); n > capBytes {
			t.Errorf("%s: largest valid output %d bytes, cap %d", c, n, capBytes)
		}
		tr := &sysapi.Output{Instructions: small.Instructions, Trapped: true, TrapMessage: strings.Repeat("x", MaxTrapMessage), Logs: o.Logs}
		if err := ValidateOutput(exp, tr); err != nil {
			t.Fatalf("%s: the largest trap is not valid: %v", c, err)
		}
		if n := uint64(len(EncodeOutput(tr))); n > capBytes {
			t.Errorf("%s: largest valid trap %d bytes, cap %d", c, n, capBytes)
		}
		// No room for what the context cannot produce: the cap does not
		// grow with the limits of calls or replies where there are none.
		more := *exp
		more.Limits.MaxOutgoing, more.Limits.CallArgBytes = 500, 2<<20
		if grows := OutputCap(&more) > capBytes; grows != allowed("call_perform", c) {
			t.Errorf("%s: cap grows with the call limits: %v, may call: %v", c, grows, allowed("call_perform", c))
		}
		more = *exp
		more.Limits.ReplyBytes = 2 << 20
		if grows := OutputCap(&more) > capBytes; grows != allowed("msg_reply", c) {
			t.Errorf("%s: cap grows with the reply limit: %v, may reply: %v", c, grows, allowed("msg_reply", c))
		}
	}
	// With the host's limits, a plain query's answer is bounded by its
	// reply and logs (~15 MiB), not by 500 calls of 2 MiB (~1 GiB).
	q := OutputCap(&Expect{Context: sysapi.CtxNonReplicatedQuery, Limits: hostLimits(5e9)})
	u := OutputCap(&Expect{Context: sysapi.CtxUpdate, Limits: hostLimits(5e9)})
	t.Logf("cap of a query %d bytes, of an update %d bytes", q, u)
	if q > 16<<20 || u < 500*(2<<20) {
		t.Fatalf("query cap %d, update cap %d", q, u)
	}
}

// With several executions in flight, each answer is held to its own
// request's cap: a query's, while an update could be larger.
func TestInflightQueryOutputCap(t *testing.T) {
	host, sb := pair(t)
	f := NewInflight(host)
	q := testExpect(1)
	q.Context = sysapi.CtxNonReplicatedQuery
	if err := f.Add(q); err != nil {
		t.Fatal(err)
	}
	if err := f.Add(testExpect(2)); err != nil {
		t.Fatal(err)
	}
	if OutputCap(q)+1 >= OutputCap(testExpect(2)) {
		t.Fatalf("query cap %d, update cap %d", OutputCap(q), OutputCap(testExpect(2)))
	}
	b := make([]byte, HeaderSize+3)
	putHeader(b, KindOutput, 0, 1, OutputCap(q)+1)
	go sb.c.WriteMsgUnix(b, nil, nil)
	_, _, err := f.Next(nil)
	wantViolation(t, err, VSize)
}
