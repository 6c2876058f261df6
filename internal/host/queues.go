package host

import (
	"slices"
	"strings"
	"sync"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Limits on calls between canisters (the IC's): a call awaiting its
// response holds a slot of its canister pair's queue (QueueCapacity, which
// also reserves the slot its response comes back in), one of its canister's
// outstanding calls (CallbackQuota, beyond it while the node is under
// CallbackSoftLimit), and message memory, its request plus a whole
// response (ReplyBytes), per canister and per node. call_perform refuses a
// call beyond any of them with SYS_TRANSIENT, so no message a canister
// sends can grow the host without bound. A call also pays its fee and has
// the most its response can cost reserved from the balance (together what
// ic0.cost_call reports): the transmission of a ReplyBytes reply and the
// execution of its callback. When the response arrives, the transmission
// of its real size is burned and the rest of the reservation comes back;
// the callback pays its own execution.
//
// The counts live in memory like the queues; the reservation is in the
// canister's metadata (store.Meta.CyclesReserved), so a restart, which
// drops calls in flight, gives it back.

// outCalls is what a canister's calls awaiting responses hold (guarded by
// the canister's mu).
type outCalls struct {
	per   map[string]int // callee id bytes → calls awaiting responses
	bytes uint64         // message memory
}

// nodeCalls is what all canisters' calls hold.
type nodeCalls struct {
	mu    sync.Mutex
	calls int
	bytes uint64
}

// callLimits are the call limits of an execution of c that must leave keep
// of the balance (c.mu held exclusively).
func (n *Node) callLimits(c *canister, keep cycles.Amount) *sysapi.CallLimits {
	lim := n.cfg.Messages
	n.calls.mu.Lock()
	nodeLeft := lim.CallbackSoftLimit - n.calls.calls
	nodeBytes := satSub(lim.NodeBytes, n.calls.bytes)
	n.calls.mu.Unlock()
	// The quota is guaranteed; beyond it a canister takes from the node's.
	left := max(lim.CallbackQuota-len(c.callbacks), nodeLeft, 0)
	l := &sysapi.CallLimits{
		Fee: n.cfg.Fees.Call, ByteFee: n.cfg.Fees.CallPerByte,
		Reservation:   n.callReservation(),
		Keep:          keep.SaturatingAdd(n.freezingLimit(c.meta.Settings, usageOf(c))),
		Outstanding:   left,
		MemoryBytes:   min(satSub(lim.CanisterBytes, c.calls.bytes), nodeBytes),
		ResponseBytes: n.cfg.ReplyBytes,
		QueueCapacity: lim.QueueCapacity,
	}
	for k, used := range c.calls.per {
		l.Queues = append(l.Queues, sysapi.QueueUse{Callee: []byte(k), Used: used})
	}
	// Sorted: the same state gives the same input, in both isolation modes.
	slices.SortFunc(l.Queues, func(a, b sysapi.QueueUse) int { return strings.Compare(string(a.Callee), string(b.Callee)) })
	return l
}

// callReservation is what is reserved per call for its response: the
// transmission of the largest reply and the most a callback can cost (the
// IC reserves the same).
func (n *Node) callReservation() cycles.Amount {
	return sysapi.ResponseReservation(n.cfg.Fees.CallPerByte, n.cfg.ReplyBytes, n.executionFee(n.cfg.UpdateInstructions))
}

// responseTransmission is the fee of transmitting a response of size bytes
// (reply data or reject message), paid out of its call's reservation.
func (n *Node) responseTransmission(size int) cycles.Amount {
	return cycles.New(min(uint64(size), n.cfg.ReplyBytes)).MulSat(n.cfg.Fees.CallPerByte)
}

// callMemory is the message memory a call holds: its method name and
// argument, and a whole response reserved.
func (n *Node) callMemory(c *sysapi.Call) uint64 {
	return (&sysapi.CallLimits{ResponseBytes: n.cfg.ReplyBytes}).Memory(c)
}

// callCharges is what an execution's calls took from the balance: their
// fees (burned) and their reservations (held until the responses run).
// Exactly what call_perform charged, with the same limits.
func (n *Node) callCharges(calls []sysapi.Call) (fees, reserved cycles.Amount, err error) {
	res := n.callReservation()
	for i := range calls {
		c := &calls[i]
		if fees, err = fees.Add(sysapi.CallCost(n.cfg.Fees.Call, n.cfg.Fees.CallPerByte, uint64(len(c.Method)), uint64(len(c.Arg)))); err != nil {
			return
		}
		if reserved, err = reserved.Add(res); err != nil {
			return
		}
	}
	return
}

// holdCall counts a call c sent as awaiting its response and reports
// whether it is within the limits. A call beyond them, possible only when
// executions of several canisters raced for the node's share, is answered
// at once with SYS_TRANSIENT; it is counted either way and released with
// its response. c.mu held exclusively; cb is already in c.callbacks.
func (n *Node) holdCall(c *canister, cb *callback) bool {
	lim := n.cfg.Messages
	if c.calls.per == nil {
		c.calls.per = map[string]int{}
	}
	c.calls.per[cb.callee]++
	c.calls.bytes = satAdd(c.calls.bytes, cb.memory)
	n.calls.mu.Lock()
	n.calls.calls++
	n.calls.bytes = satAdd(n.calls.bytes, cb.memory)
	nodeCallsOK := n.calls.calls <= lim.CallbackSoftLimit
	nodeBytesOK := n.calls.bytes <= lim.NodeBytes
	n.calls.mu.Unlock()
	return (lim.QueueCapacity <= 0 || c.calls.per[cb.callee] <= lim.QueueCapacity) &&
		(len(c.callbacks) <= lim.CallbackQuota || nodeCallsOK) &&
		c.calls.bytes <= lim.CanisterBytes && nodeBytesOK
}

// releaseCall ends a call's hold when its response of size bytes arrives:
// the counts, and its reservation, of which the response's transmission is
// burned and the rest goes back to the balance. In memory: it becomes
// durable with the canister's next commit; a crash before that gives the
// whole reservation back at load (node.go get). c.mu held exclusively.
func (n *Node) releaseCall(c *canister, cb *callback, size int) {
	if c.calls.per[cb.callee] <= 1 {
		delete(c.calls.per, cb.callee)
	} else {
		c.calls.per[cb.callee]--
	}
	c.calls.bytes = satSub(c.calls.bytes, cb.memory)
	n.calls.mu.Lock()
	n.calls.calls--
	n.calls.bytes = satSub(n.calls.bytes, cb.memory)
	n.calls.mu.Unlock()
	held := cycles.Min(cb.reserved, c.meta.CyclesReserved)
	c.meta.CyclesReserved = c.meta.CyclesReserved.SaturatingSub(held)
	fee := cycles.Min(n.responseTransmission(size), held)
	var over cycles.Amount // what would take the balance past 2^128-1
	c.meta.Balance, over = c.meta.Balance.AddCapped(held.SaturatingSub(fee))
	c.meta.CyclesBurned = c.meta.CyclesBurned.SaturatingAdd(fee).SaturatingAdd(over)
}

// dropCalls releases the node's counts of a deleted canister's calls; their
// responses will find nobody.
func (n *Node) dropCalls(c *canister) {
	for id, cb := range c.callbacks {
		n.releaseCall(c, cb, 0)
		delete(c.callbacks, id)
	}
}
