package host

import (
	"github.com/cordon-dev/cordon/internal/cycles"
)

// Ingress waiting in the queues is bounded in count per canister and in
// bytes per canister and per node: a user who sends large arguments to a
// slow canister and leaves at once frees its HTTP request slot while the
// message stays queued, so what waits must be bounded here, not by the
// server's request limit. A message's argument counts from the moment it
// is queued until it is taken to run or dropped.

// DefaultIngressArgBytes is the IC's limit on an ingress message's argument
// (max_ingress_bytes_per_message of an application subnet).
const DefaultIngressArgBytes = 2 << 20

// IngressTooLarge is in the message of the reject of an ingress argument
// beyond Messages.IngressArgBytes.
const IngressTooLarge = "exceeds the ingress message limit"

// checkIngressArg refuses an ingress argument beyond
// Messages.IngressArgBytes, whatever route it came by.
func (n *Node) checkIngressArg(msg Message) *Reject {
	if limit := n.cfg.Messages.IngressArgBytes; limit > 0 && uint64(len(msg.Arg)) > limit {
		return rejectf(SysFatal, "Canister %s: the argument of %s (%d bytes) %s of %d bytes",
			msg.Canister, msg.Method, len(msg.Arg), IngressTooLarge, limit)
	}
	return nil
}

// admitIngress counts an ingress message into c's queue, or refuses it
// (c.qmu held). Messages from canisters and the system are not counted.
func (n *Node) admitIngress(c *canister, m *message) *Reject {
	if !m.ingress {
		return nil
	}
	lim := n.cfg.Messages
	size := uint64(len(m.arg))
	if (lim.IngressQueue > 0 && c.ingress >= lim.IngressQueue) ||
		(lim.IngressQueueBytes > 0 && size > lim.IngressQueueBytes-min(c.ingressBytes, lim.IngressQueueBytes)) {
		return rejectf(SysTransient, "Canister %s ingress queue is full", c.id)
	}
	for {
		held := n.ingressBytes.Load()
		if lim.NodeIngressBytes > 0 && size > lim.NodeIngressBytes-min(held, lim.NodeIngressBytes) {
			return rejectf(SysTransient, "Canister %s: the node's ingress queues are full", c.id)
		}
		if n.ingressBytes.CompareAndSwap(held, held+size) {
			break
		}
	}
	c.ingress++
	c.ingressBytes += size
	return nil
}

// dequeued releases what a message taken from c's queue held there
// (c.qmu held).
func (n *Node) dequeued(c *canister, m *message) {
	if !m.ingress {
		return
	}
	size := uint64(len(m.arg))
	c.ingress--
	c.ingressBytes -= size
	n.ingressBytes.Add(^(size - 1)) // subtract size
}

// closing reports whether Close has begun.
func (n *Node) closing() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// abandon answers a message that was still queued when the node began to
// close, without running anything of the canister: a request is rejected
// (SYS_TRANSIENT, its cycles refunded to the caller), a response releases
// what its call held and credits its refund, a system task is left for the
// next start. Nothing is half-done: each is what a restart would find.
func (n *Node) abandon(c *canister, m *message) {
	gone := rejectf(SysTransient, "Canister %s: the node is shutting down", c.id)
	if m.kind == kindRequest {
		n.respondTo(m.origin, nil, gone, m.cycles)
		return
	}
	c.mu.Lock()
	defer n.unlock(c)
	if c.deleted {
		return
	}
	switch m.kind {
	case kindResponse:
		n.abandonResponse(c, m, gone)
	case kindTimer:
		// scheduleTimer took the timer in memory only (the store keeps it
		// armed until the task commits): given back, it fires at the next
		// start.
		c.timerQueued, c.timerTaken = false, false
	case kindHeartbeat:
		c.heartbeatQueued = false
	case kindLowMemory:
		c.lowMemoryQueued = false
	}
}

// abandonResponse is handleResponse without the callback: what the call
// held is released, its refund credited, and its call context, if this
// was its last outstanding call and it was not answered, is answered with
// rej (c.mu held).
func (n *Node) abandonResponse(c *canister, m *message, rej *Reject) {
	cb, ok := c.callbacks[m.callbackID]
	if !ok {
		return
	}
	delete(c.callbacks, m.callbackID)
	size := len(m.reply)
	if m.reject != nil {
		size = len(m.reject.Message)
	}
	n.releaseCall(c, cb, size)
	// The refund is credited and its record in flight removed in one
	// commit (inflight.go): else the next open would return it again.
	if err := n.chargeRefund(c, 0, nil, m.refund, m.callbackID); err != nil {
		n.log.Error("refund at shutdown", "canister", c.id.String(), "err", err)
	}
	cc := c.contexts[cb.ctxID]
	if cc == nil {
		return
	}
	cc.outstanding--
	if !cc.responded && cc.outstanding == 0 {
		cc.responded = true
		n.respondTo(cc.origin, nil, rej, cc.available)
		cc.available = cycles.Amount{}
	}
	n.closeIfDone(c, cb.ctxID, cc)
}
