package host

import (
	"container/heap"
	"math"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/internal/store"
)

// The timer loop's deadlines. Every loaded canister with timer-loop work
// ahead (a storage charge, a global timer, a heartbeat, a low-memory hook)
// is in a min-heap by the node time that work is due. A canister's
// deadline is recomputed whenever its exclusive lock is released
// (Node.unlock), the only moment its timer-relevant state can have changed,
// so a change costs O(log n) and a tick of the loop costs only what is due:
// the loop used to visit every loaded canister 50 times a second.
//
// Storage charges are due on a grid of storageGrid, so canisters charged
// around the same time are charged together: the loop charges every due
// canister it can lock at once, and commits them in batches of at most
// storageBatch changes (one transaction and one sync each) instead of one
// commit per canister.

const (
	// timerTick is how often the loop looks at the earliest deadline. It
	// polls rather than sleeping until the deadline because the node's
	// clock may be a test's, which jumps.
	timerTick = 20 * time.Millisecond
	// storageGrid rounds a canister's next storage charge up to a whole
	// multiple, so that the charges of canisters fall due together.
	storageGrid = uint64(time.Second)
)

// storageBatch bounds the canisters charged in one store commit (a
// variable for tests only).
var storageBatch = 512

// noDeadline: the canister has no timer-loop work ahead.
const noDeadline = math.MaxUint64

// timerEntry is a canister's place in the deadline heap.
type timerEntry struct {
	c   *canister
	due uint64 // node time, ns
}

// timerHeap is a min-heap of canisters by deadline. Each canister records
// its index (canister.timerIdx: -1 when it is not in the heap).
type timerHeap []timerEntry

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].c.timerIdx = i
	h[j].c.timerIdx = j
}
func (h *timerHeap) Push(x any) {
	e := x.(timerEntry)
	e.c.timerIdx = len(*h)
	*h = append(*h, e)
}
func (h *timerHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = timerEntry{}
	*h = old[:len(old)-1]
	e.c.timerIdx = -1
	return e
}

// timerQueue is the node's deadline heap.
type timerQueue struct {
	mu sync.Mutex
	h  timerHeap
}

// set puts c in the heap at due, moves it, or removes it (noDeadline).
func (q *timerQueue) set(c *canister, due uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case c.timerIdx < 0 && due == noDeadline:
	case c.timerIdx < 0:
		heap.Push(&q.h, timerEntry{c: c, due: due})
	case due == noDeadline:
		heap.Remove(&q.h, c.timerIdx)
	case q.h[c.timerIdx].due != due:
		q.h[c.timerIdx].due = due
		heap.Fix(&q.h, c.timerIdx)
	}
}

// popDue removes and returns the canisters due at now, earliest first.
func (q *timerQueue) popDue(now uint64) []*canister {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []*canister
	for len(q.h) > 0 && q.h[0].due <= now {
		out = append(out, heap.Pop(&q.h).(timerEntry).c)
	}
	return out
}

// len is the number of canisters with a deadline (tests).
func (q *timerQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.h)
}

// unlock releases c's exclusive lock after recomputing its deadline: every
// path that may change what the timer loop has to do for c (a message, a
// lifecycle or settings change, the loop itself) holds the lock
// exclusively, so this keeps the heap up to date.
func (n *Node) unlock(c *canister) {
	n.timers.set(c, n.nextDue(c))
	c.mu.Unlock()
}

// nextDue is the node time at which c next has timer-loop work (c.mu held):
// the conditions of conditions timerWorkDo acts on, as a time.
func (n *Node) nextDue(c *canister) uint64 {
	if c.deleted {
		return noDeadline
	}
	due := uint64(noDeadline)
	if iv := n.cfg.StorageChargeInterval; iv > 0 {
		at := c.meta.StoragePaidUntil + uint64(iv)
		if at < c.meta.StoragePaidUntil { // overflow
			at = noDeadline - 1
		}
		due = min(due, gridUp(at))
	}
	timer, owed := c.meta.GlobalTimer != 0 && !c.timerQueued && timerRunnable(c), timerOwed(c)
	if (owed || timer && c.meta.GlobalTimer <= uint64(n.clock().UnixNano())) && n.timerFrozen(c) {
		// A frozen canister's due timer is not a deadline until a
		// top-up, whose unlock comes back here (sched.go scheduleTimer).
		// One not yet due is: the balance is looked at when it is.
		timer, owed = false, false
	}
	if timer {
		due = min(due, c.meta.GlobalTimer)
	}
	if lowMemoryDue(c) || owed {
		return 0
	}
	if heartbeatWanted(c) {
		due = min(due, c.nextBeat)
	}
	return due
}

// gridUp rounds t up to the storage grid.
func gridUp(t uint64) uint64 {
	if r := t % storageGrid; r != 0 {
		if t > noDeadline-storageGrid {
			return noDeadline - 1
		}
		return t - r + storageGrid
	}
	return t
}

// timerRunnable: c's global timer can run (scheduleTimer's conditions but
// the time and the balance). A timer set on a stopped canister waits for
// its start, whose unlock puts the canister back in the heap.
func timerRunnable(c *canister) bool {
	return !c.deleted && c.module != nil && c.module.Info.HasGlobalTimer && c.meta.Status == "running"
}

// heartbeatWanted: c runs heartbeats and none waits in its queue.
func heartbeatWanted(c *canister) bool {
	return c.module != nil && c.module.Info.HasHeartbeat && c.meta.Status == "running" && !c.heartbeatQueued
}

// storageDue: c's storage fee is due at now (c.mu held).
func (n *Node) storageDue(c *canister, now uint64) bool {
	iv := n.cfg.StorageChargeInterval
	return iv > 0 && !c.deleted && now >= c.meta.StoragePaidUntil && now-c.meta.StoragePaidUntil >= uint64(iv)
}

// timerTick takes the canisters due at the node's time now and does their
// work. Those it can lock at once have their storage fees charged together
// (chargeStorageBatch) and their other work done in place; a busy one (a
// message executing, or queries holding it shared) gets a goroutine that
// waits for its lock, as it must not hold back the others.
func (n *Node) timerTick() {
	now := uint64(n.clock().UnixNano())
	due := n.timers.popDue(now)
	if len(due) == 0 {
		return
	}
	var locked []*canister
	for _, c := range due {
		if c.mu.TryLock() {
			locked = append(locked, c)
			continue
		}
		n.timerWorkLater(c)
	}
	for len(locked) > 0 {
		k := min(len(locked), storageBatch)
		n.chargeStorageBatch(locked[:k], now)
		for _, c := range locked[:k] {
			n.timerWorkDo(c, uint64(n.clock().UnixNano()))
			n.unlock(c)
		}
		locked = locked[k:]
	}
}

// timerWorkLater does c's timer work in a goroutine of its own once c's
// lock is free; at most one such goroutine per canister exists (one still
// at it will recompute c's deadline when it unlocks).
func (n *Node) timerWorkLater(c *canister) {
	if !c.timerWork.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer c.timerWork.Store(false)
		c.mu.Lock()
		defer n.unlock(c)
		select {
		case <-n.done:
			return
		default:
		}
		n.timerWorkDo(c, uint64(n.clock().UnixNano()))
	}()
}

// chargeStorageBatch charges the storage fee of the due canisters among cs
// (each locked exclusively by the caller) and commits their metadata in one
// store commit; if it fails, none is charged (their fees stay owed, as if
// the tick had not come).
func (n *Node) chargeStorageBatch(cs []*canister, now uint64) {
	var (
		changes []store.Change
		charged []*canister
		before  []store.Meta
	)
	for _, c := range cs {
		if !n.storageDue(c, now) {
			continue
		}
		old := c.meta
		n.chargeStorage(c, n.now())
		if c.meta.Balance == old.Balance && c.meta.StorageFeeRemainder == old.StorageFeeRemainder {
			continue // nothing owed: the time paid up to advances with the next commit
		}
		changes = append(changes, store.Change{ID: c.id.Bytes(), Meta: c.meta})
		charged = append(charged, c)
		before = append(before, old)
	}
	if len(changes) == 0 {
		return
	}
	if err := n.commit(changes...); err != nil {
		for i, c := range charged {
			c.meta = before[i]
		}
		n.log.Error("storage fee", "canisters", len(charged), "err", err)
	}
}
