package host

import "container/heap"

// A canister's input queue is fair between the sources of its messages:
// each user (ingress), each canister that sends it requests or answers its
// calls (one lane per canister, requests and responses together, as the
// IC's input queue from a canister carries both), and each kind of its own
// system tasks (timer, heartbeat, low-memory hook). Within a source
// messages run in arrival order, so what one canister sends another runs
// in the order it was sent. Between sources they take turns, as the IC's
// scheduler round-robins a canister's input queues: a message's turn is
// one after its source's previous message, and never earlier than one
// after the message taken last, so a source that was idle joins the
// current round instead of waiting behind the others' backlogs. Messages
// run by turn, and within a turn by arrival. Without a backlog that is
// arrival order; with one, a source's first message waits for at most one
// message of every other source with messages waiting, however many those
// hold.
//
// Only the order is chosen here; what may wait is bounded where messages
// are made (queues.go: calls) and admitted (ingressq.go: ingress).

// inputQueue is a canister's queue of messages to run (guarded by the
// canister's qmu).
type inputQueue struct {
	lanes map[string]*lane // sources with messages waiting
	ready laneHeap         // the same lanes, by their first message
	turn  uint64           // the turn of the message taken last
	seq   uint64           // arrivals so far
	n     int              // messages waiting
}

// lane holds one source's waiting messages in arrival order.
type lane struct {
	source string
	msgs   []queued
	last   uint64 // the turn of its newest message
	index  int    // in inputQueue.ready
}

type queued struct {
	m    *message
	turn uint64
	seq  uint64 // arrival, which orders a turn
}

// len reports how many messages wait.
func (q *inputQueue) len() int { return q.n }

// push appends m to its source's lane.
func (q *inputQueue) push(m *message) {
	src := m.source()
	l := q.lanes[src]
	fresh := l == nil
	if fresh {
		if q.lanes == nil {
			q.lanes = map[string]*lane{}
		}
		l = &lane{source: src}
		q.lanes[src] = l
	}
	// A lane is dropped once empty, its last turn taken: a new one starts
	// after the turn taken last.
	l.last = max(l.last, q.turn) + 1
	q.seq++
	l.msgs = append(l.msgs, queued{m: m, turn: l.last, seq: q.seq})
	if fresh {
		heap.Push(&q.ready, l)
	}
	q.n++
}

// pop takes the message whose turn it is, or nil when none waits.
func (q *inputQueue) pop() *message {
	if len(q.ready) == 0 {
		return nil
	}
	l := q.ready[0]
	e := l.msgs[0]
	l.msgs[0] = queued{}
	l.msgs = l.msgs[1:]
	if len(l.msgs) == 0 {
		heap.Pop(&q.ready)
		delete(q.lanes, l.source)
	} else {
		heap.Fix(&q.ready, 0)
	}
	q.turn = e.turn
	q.n--
	return e.m
}

// source names the lane m waits in: its user for ingress, the canister
// that sent it for a request or a response, its kind for a system task.
// At most one task of a kind waits (sched.go, lowmem.go), so a task always
// joins the current round and runs before any message queued after it:
// the low-memory hook, queued before the reply of the execution that made
// it ready, runs before a message sent after that reply.
func (m *message) source() string {
	switch {
	case m.kind == kindRequest && m.ingress:
		return "u" + string(m.caller.Bytes())
	case m.kind == kindRequest:
		return "c" + string(m.caller.Bytes())
	case m.kind == kindResponse:
		return "c" + string(m.from.Bytes())
	default:
		return "s" + string(rune('0'+m.kind))
	}
}

// laneHeap orders lanes with messages by their first message's turn, then
// arrival.
type laneHeap []*lane

func (h laneHeap) Len() int { return len(h) }

func (h laneHeap) Less(i, j int) bool {
	a, b := h[i].msgs[0], h[j].msgs[0]
	if a.turn != b.turn {
		return a.turn < b.turn
	}
	return a.seq < b.seq
}

func (h laneHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}

func (h *laneHeap) Push(x any) {
	l := x.(*lane)
	l.index = len(*h)
	*h = append(*h, l)
}

func (h *laneHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	l.index = -1
	return l
}
