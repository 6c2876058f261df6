package sysapi

import (
	"math"
	"strings"
	"sync"
	"unicode/utf8"
)

// MinInstructions is a lower bound on the instructions that any execution
// producing out was charged: the System API charges the output itself
// proves were paid. A sandbox reporting fewer lies (the host would charge
// it too little, and a composite query's shared budget would never run
// out). stableBefore is the size of the stable memory the execution
// started with; heapPages and stablePages the numbers of dirty heap and
// stable pages it reports (the header's counts: the pages themselves
// arrive later).
//
// The bound must never exceed what an honest execution is charged, in any
// context and whichever way it produced the output. Execution.Call
// charges an import's fixed Spec.Cost before its implementation runs, and
// Execution.read charges one instruction per byte it copies out of the
// heap; the output then holds those bytes. So, item by item, an output
// that has
//
//   - a reply: ic0.msg_reply once, and the reply's bytes, which only
//     msg_reply_data_append adds (each byte read, so charged, once; at
//     least one append if there are any: a reply may be built from many
//     appends, so only one append's fixed cost is certain);
//   - a reject: ic0.msg_reject and its message's bytes (read whole, and it
//     must be UTF-8, so the message is exactly the bytes charged);
//   - a call: its own call_new (call_perform takes the call under
//     construction, and call_new starts a new one), which reads the callee
//     and the method name; call_perform; the argument's bytes through
//     call_data_append (one at least if there are any); call_on_cleanup if
//     it has a cleanup callback; call_with_best_effort_response if it has a
//     timeout (its argument 0 becomes 1 s, so a timeout is never 0 once
//     set); call_cycles_add or _add128 if it carries cycles. Calls that
//     call_perform refused paid as much and are not in the output;
//   - accept_message: that call;
//   - cycles accepted: one msg_cycles_accept or _accept128 at least;
//   - cycles burned: cycles_burn128, which writes the 16-byte amount it
//     burned back to the heap (charged as it is copied);
//   - certified data set: certified_data_set, which reads the data it sets
//     (the last one set is in the output);
//   - the global timer set: global_timer_set;
//   - stable memory larger than it started: one stable_grow or
//     stable64_grow at least;
//   - k dirty stable pages: a stable write at least, and k bytes: only
//     stable_write and stable64_write change stable memory (Overlay.WriteAt),
//     which dirty exactly the pages their bytes land on, each charged; and
//     StableDirtyPageCost for each page, charged by the write that first
//     dirtied it;
//   - h dirty heap pages: HeapDirtyPageCost for each, charged by the engine
//     for exactly the pages of the delta it returns (ChargeHeapPages);
//   - a debug_print line: ic0.debug_print and the bytes it read: the line
//     is those bytes with each run of invalid UTF-8 replaced by U+FFFD
//     (3 bytes for at least one), so at least len − 2 per U+FFFD of them,
//     and exactly DebugPrintBytes if the line was truncated. A trapped
//     execution keeps its lines, so they count for it too; calls beyond
//     MaxLogLines paid and left no line.
//
// Where two imports can produce the same item, the cheaper one counts.
// Left out, because some honest path skips them: the trap message (Wasm
// traps and the engine's own cost nothing), the bytes of heap pages and
// heap growth beyond the page charge (data segments are written at
// instantiation, and bulk memory instructions are metered by the
// instrumentation, not here), globals, reads the output does not show
// (msg_arg_data_copy and the like), and the
// Wasm instructions themselves. Every addition saturates.
func MinInstructions(out *Output, lim *Limits, stableBefore, heapPages, stablePages uint64) uint64 {
	c := boundCosts()
	var n uint64
	add := func(v uint64) {
		if n += v; n < v {
			n = math.MaxUint64
		}
	}
	for _, l := range out.Logs {
		add(c.debugPrint)
		src := uint64(len(l.Text) - 2*strings.Count(l.Text, string(utf8.RuneError)))
		if l.Truncated && lim.DebugPrintBytes > 0 {
			src = max(src, uint64(lim.DebugPrintBytes))
		}
		add(src)
	}
	if out.Trapped {
		return n // a trap keeps only its logs
	}
	switch out.Response {
	case Replied:
		add(c.reply)
		if len(out.Reply) > 0 {
			add(c.replyAppend)
			add(uint64(len(out.Reply)))
		}
	case Rejected:
		add(c.reject)
		add(uint64(len(out.RejectMessage)))
	}
	for i := range out.Calls {
		call := &out.Calls[i]
		add(c.callNew)
		add(uint64(len(call.Callee)))
		add(uint64(len(call.Method)))
		add(c.callPerform)
		if len(call.Arg) > 0 {
			add(c.callAppend)
			add(uint64(len(call.Arg)))
		}
		if call.OnCleanup != nil {
			add(c.callCleanup)
		}
		if call.Timeout != 0 {
			add(c.callBestEffort)
		}
		if !call.Cycles.IsZero() {
			add(c.callCycles)
		}
	}
	if out.Accepted {
		add(c.acceptMessage)
	}
	if !out.CyclesAccepted.IsZero() {
		add(c.cyclesAccept)
	}
	if !out.CyclesBurned.IsZero() {
		add(c.cyclesBurn)
		add(16)
	}
	if out.CertifiedDataSet {
		add(c.certifiedData)
		add(uint64(len(out.CertifiedData)))
	}
	if out.GlobalTimerSet {
		add(c.timer)
	}
	if out.Stable.Size > stableBefore {
		add(c.stableGrow)
	}
	if stablePages > 0 {
		add(c.stableWrite)
		add(stablePages)
	}
	add(DirtyPageInstructions(heapPages, stablePages))
	return n
}

// costs are the fixed charges MinInstructions counts, read from Imports
// (so the bound follows the table); where several imports produce the same
// item, the cheapest. A name missing from the table counts 0 (the bound
// only gets weaker; a test checks every name is there).
type costs struct {
	debugPrint, reply, replyAppend, reject                        uint64
	callNew, callPerform, callAppend, callCleanup, callBestEffort uint64
	callCycles, acceptMessage, cyclesAccept, cyclesBurn           uint64
	certifiedData, timer, stableGrow, stableWrite                 uint64
}

var boundCosts = sync.OnceValue(func() costs {
	cost := func(names ...string) uint64 {
		least := uint64(math.MaxUint64)
		for _, name := range names {
			s, ok := Lookup(name, false)
			if !ok {
				return 0
			}
			least = min(least, s.Cost)
		}
		return least
	}
	return costs{
		debugPrint:     cost("debug_print"),
		reply:          cost("msg_reply"),
		replyAppend:    cost("msg_reply_data_append"),
		reject:         cost("msg_reject"),
		callNew:        cost("call_new"),
		callPerform:    cost("call_perform"),
		callAppend:     cost("call_data_append"),
		callCleanup:    cost("call_on_cleanup"),
		callBestEffort: cost("call_with_best_effort_response"),
		callCycles:     cost("call_cycles_add", "call_cycles_add128"),
		acceptMessage:  cost("accept_message"),
		cyclesAccept:   cost("msg_cycles_accept", "msg_cycles_accept128"),
		cyclesBurn:     cost("cycles_burn128"),
		certifiedData:  cost("certified_data_set"),
		timer:          cost("global_timer_set"),
		stableGrow:     cost("stable_grow", "stable64_grow"),
		stableWrite:    cost("stable_write", "stable64_write"),
	}
})
