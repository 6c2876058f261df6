package sysapi

import (
	"math/bits"

	"github.com/cordon-dev/cordon/internal/cycles"
)

// CallLimits bound and price the inter-canister calls of one execution.
// call_perform returns SYS_TRANSIENT (2), without enqueuing the call,
// when a call would exceed one of them or the balance cannot pay for it.
// The host fills them from the canister's queues and the node's totals;
// nil (queries, tests) means no limits and no charges.
type CallLimits struct {
	// Fee and ByteFee price a call: Fee plus ByteFee per byte of method
	// name and argument, burned at call_perform.
	Fee, ByteFee uint64
	// Reservation is also taken from the balance with every call: the most
	// its response can cost, the transmission of a ResponseBytes reply
	// (ByteFee per byte) and the execution of its callback. When the
	// response arrives the host burns the transmission of its real size and
	// gives the rest back; the callback pays its own execution fee.
	// ic0.cost_call reports Fee, the request's bytes and Reservation.
	Reservation cycles.Amount
	// Keep is what the charges, and cycles_burn128, must leave of the
	// balance: this execution's own maximum fee and the canister's freezing
	// limit.
	Keep cycles.Amount
	// Outstanding is how many more calls the canister may have awaiting
	// responses.
	Outstanding int
	// MemoryBytes is the message memory the canister may still take; a
	// call takes its method name and argument plus ResponseBytes reserved
	// for its response.
	MemoryBytes   uint64
	ResponseBytes uint64
	// QueueCapacity bounds the calls awaiting responses per callee (the
	// IC's queue capacity per canister pair); Queues lists the callees that
	// have some already. 0: no bound.
	QueueCapacity int
	Queues        []QueueUse
}

// QueueUse is how many calls to one callee await their responses.
type QueueUse struct {
	Callee []byte
	Used   int
}

// CallCost is the fee of sending a call: the fixed fee plus the per-byte
// fee of its method name and argument; saturating. (ic0.cost_call adds the
// response's reservation: CallLimits.Cost.)
func CallCost(fee, byteFee uint64, methodLen, argLen uint64) cycles.Amount {
	n, carry := bits.Add64(methodLen, argLen, 0)
	if carry != 0 {
		return cycles.Max
	}
	perByte, err := cycles.New(n).MulUint64(byteFee)
	if err != nil {
		return cycles.Max
	}
	return perByte.SaturatingAdd(cycles.New(fee))
}

// Cost is what ic0.cost_call reports for a call with a method name and an
// argument of these sizes: what call_perform takes from the balance, the
// call's fee and its response's reservation (interface specification,
// "Cycle cost calculation"); saturating.
func (l *CallLimits) Cost(methodLen, argLen uint64) cycles.Amount {
	return CallCost(l.Fee, l.ByteFee, methodLen, argLen).SaturatingAdd(l.Reservation)
}

// Charge is what performing c takes from the balance (Cost).
func (l *CallLimits) Charge(c *Call) cycles.Amount {
	return l.Cost(uint64(len(c.Method)), uint64(len(c.Arg)))
}

// ResponseReservation is the reservation of a call's response: the
// transmission of a reply of responseBytes at byteFee per byte, plus
// execution, the most its callback can cost; saturating.
func ResponseReservation(byteFee, responseBytes uint64, execution cycles.Amount) cycles.Amount {
	return cycles.New(responseBytes).MulSat(byteFee).SaturatingAdd(execution)
}

// Memory is the message memory c holds until its response has run.
func (l *CallLimits) Memory(c *Call) uint64 {
	n, carry := bits.Add64(uint64(len(c.Method)), uint64(len(c.Arg)), 0)
	n, carry2 := bits.Add64(n, l.ResponseBytes, carry)
	if carry2 != 0 {
		return ^uint64(0)
	}
	return n
}

// CallTally admits calls one by one against CallLimits (cycles aside).
// The System API uses it at call_perform and the trust boundary replays it
// over a sandbox's calls.
type CallTally struct {
	l      *CallLimits
	n      int
	memory uint64
	per    map[string]int // callee → calls, Queues plus those admitted
}

// NewCallTally starts counting against l (not nil).
func NewCallTally(l *CallLimits) *CallTally {
	t := &CallTally{l: l, per: make(map[string]int, len(l.Queues))}
	for _, q := range l.Queues {
		t.per[string(q.Callee)] += q.Used
	}
	return t
}

// Admit reports whether c fits the limits and, if so, counts it.
func (t *CallTally) Admit(c *Call) bool {
	if t.n >= t.l.Outstanding {
		return false
	}
	k := string(c.Callee)
	if t.l.QueueCapacity > 0 && t.per[k] >= t.l.QueueCapacity {
		return false
	}
	mem, carry := bits.Add64(t.memory, t.l.Memory(c), 0)
	if carry != 0 || mem > t.l.MemoryBytes {
		return false
	}
	t.n, t.memory = t.n+1, mem
	t.per[k]++
	return true
}
