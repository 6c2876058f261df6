package host

import (
	"sync"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// The calls one canister makes to the management canister take effect in
// the order it made them, as the IC's ordering guarantee for requests from
// one canister to one callee promises (RATIONALE.md, "Management calls
// from a canister take effect in order"): update_settings(controllers)
// before the install_code sent after it, stop before upgrade before start.
// Each calling canister has a FIFO queue to aaaaa-aa, drained by one
// goroutine that exists while the queue is not empty (counted in n.busy,
// so Close waits for it, and a closing node answers what is left at once).
//
// A call that takes effect and then waits — stop_canister, until the
// canister's call contexts close — hands the wait to a goroutine of its
// own: the calls queued behind it start, as the IC answers a stop later
// while it goes on executing management calls. What waits for a lock
// (an install, a status change) waits in the queue: locks are held by
// executions and other management calls, none of which waits for this
// queue, so the wait ends.
//
// Bounded without a bound of its own: a queued call is a call awaiting its
// response, which holds a slot of its canister's queue to aaaaa-aa
// (Messages.QueueCapacity), one of its outstanding calls and its bytes of
// message memory, all taken at call_perform (queues.go).

// mgmtQueues are the canisters' queues to the management canister.
type mgmtQueues struct {
	mu  sync.Mutex
	per map[principal.Principal][]*message // by caller; present while its drainer runs
}

// routeManagement queues a request from a canister to aaaaa-aa. It never
// waits: the caller may hold its canister's lock.
func (n *Node) routeManagement(m *message) {
	q := &n.mgmtQueue
	q.mu.Lock()
	queued, draining := q.per[m.caller]
	if q.per == nil {
		q.per = map[principal.Principal][]*message{}
	}
	q.per[m.caller] = append(queued, m)
	q.mu.Unlock()
	if draining {
		return
	}
	n.busy.Add(1)
	go n.drainManagement(m.caller)
}

// drainManagement runs the calls of caller's queue one after the other,
// and ends when it is empty.
func (n *Node) drainManagement(caller principal.Principal) {
	defer n.busy.Done()
	q := &n.mgmtQueue
	for {
		q.mu.Lock()
		queued := q.per[caller]
		if len(queued) == 0 {
			delete(q.per, caller)
			q.mu.Unlock()
			return
		}
		m := queued[0]
		queued[0] = nil
		q.per[caller] = queued[1:]
		q.mu.Unlock()
		if rest := n.management(m); rest != nil {
			n.busy.Add(1)
			go func() {
				defer n.busy.Done()
				rest()
			}()
		}
	}
}
