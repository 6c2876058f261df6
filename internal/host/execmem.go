package host

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/sandbox"
)

// The node's execution memory: the memory pages executions hand the host.
//
// The capacity ledger (capacity.go) bounds what canisters keep. What an
// execution changes is held besides, while it is in flight: the pages of its
// output (a sandbox's answer is read into the host's memory; an in-process
// one is copied out of the instance) until its message's commit has written
// them, and a composite query's working state (query.go: each call's frame
// keeps what its executions wrote, for its callbacks) until the query ends.
// Each execution may change up to its dirty-page caps (2 GiB of heap and
// 2 GiB of stable memory for an update), so without a node-wide bound N
// executions at once held N times that, and one composite query's frames
// kept the sum of all its executions'.
//
// Every such page is reserved here before the host holds it, for exactly
// the bytes the output carries: a sandbox's answer announces its pages in
// its header, which the host validates and reserves before it receives one
// (boundary.Expect.Reserve); an in-process output is reserved as the engine
// returns it. Reserving what is announced rather than each execution's
// worst case keeps ordinary messages (a few pages each) from ever waiting,
// while what any number of executions make the host hold stays within the
// budget (RATIONALE.md).
//
// The budget has two halves: messages (updates, callbacks, system tasks,
// installs) hold at most one, query graphs at most the other, so neither
// can keep the other out. Messages wait for their bytes, in arrival order,
// bounded by their context: a waiting message holds nothing of the budget
// (the pages of an output that trapped are given back at once, before a
// callback's cleanup runs), and those that hold it need nothing more to
// finish, so they do finish. The one message that keeps the pages of an
// execution while another runs, an upgrade (pre_upgrade's pages while
// post_upgrade runs), takes more only if they fit at once or it is the
// only message holding any, and fails with SYS_TRANSIENT if not.
//
// Query graphs never wait for memory: one holds its frames' pages while
// its next execution would wait, so graphs waiting for each other could
// only be ended by their deadlines; a query that cannot reserve fails at
// once (SYS_TRANSIENT), as queries may be retried. A query takes room of
// the queries' half whether or not messages wait: a message that waits
// (perhaps for a compromised sandbox's slow pages) must not fail every
// query of the node. Messages do not wait behind queries either: queries
// never hold more than their half, so a message that fits in the
// messages' half waits only for other messages; one larger than that half
// needs room of the queries', which queries stop taking while it is first
// in line. What a message holds is held no longer than its pages take to
// come (a sandbox sends them within their own deadline once its header
// came: exec.Sandboxed.pagesTime) and its commit. A graph does wait for a canister's lock, whose writer may be a
// message waiting for the graph's pages: that wait ends at the query's
// deadline (queryRun.rlock).
//
// One request larger than its half is admitted when no other of its kind
// holds any and it fits beside what the other kind holds (or nothing at
// all is held), so a node whose budget is smaller than one execution's
// caps still runs it, alone. A query graph so admitted borrows room of the
// messages' half only while no message waits.
//
// A frame also keeps the old bytes of the pages commits overwrite while it
// lives: its clone shares the committed image, and a commit gives it a
// copy of each page it overwrites (state.PageMap.CloneCharged). Those
// copies are charged to the frame's graph as the commit makes them, and
// given back when the frame ends (keepCopy). A commit never waits or fails
// for a query: if the copy does not fit, the frame is not given it but
// revoked (it drops what it held), and its graph fails with SYS_TRANSIENT
// at its next step.

// defaultExecutionMemoryShare is the part of the machine's memory the
// execution budget is by default: a quarter. The capacity's default takes
// half for what canisters keep; of the other half, a page held for an
// execution may cost up to twice while it commits (the store's transaction
// copies it), which leaves the rest for sandboxes and the page cache.
const defaultExecutionMemoryShare = 4

// executionMemory is the configured execution budget, or the default.
func executionMemory(configured uint64) uint64 {
	if configured > 0 {
		return configured
	}
	if m := sandbox.MachineMemory(); m > 0 {
		return m / defaultExecutionMemoryShare
	}
	return 1 << 40 // unknown machine: no practical bound
}

// pageBudget is the node's execution memory. The zero value is not usable:
// see newPageBudget.
type pageBudget struct {
	total uint64

	mu      sync.Mutex
	used    uint64        // bytes held
	queries uint64        // of used, by query graphs
	waiting []*pageWaiter // messages waiting, first come first served
	// For tests: the most held at once, the requests that had to wait,
	// and a hook called as one starts waiting (mu held).
	peak, waits uint64
	onWait      func()
}

type pageWaiter struct {
	n       uint64
	granted bool
	ready   chan struct{} // closed when granted
}

func newPageBudget(total uint64) *pageBudget {
	return &pageBudget{total: total}
}

// queryHalf is what query graphs together may hold (but see tryQuery);
// the rest is the messages'.
func (b *pageBudget) queryHalf() uint64 { return b.total / 2 }

// messageHalf is what messages together may hold (but see fitsMessage).
func (b *pageBudget) messageHalf() uint64 { return b.total - b.queryHalf() }

// fitsMessage reports whether a message that holds own bytes (of those
// held) may take n more now (mu held): within the messages' half, or, if
// no other message holds any, beside what queries hold (or alone).
func (b *pageBudget) fitsMessage(n, own uint64) bool {
	messages := b.used - b.queries
	total := satAdd(b.used, n) <= b.total || b.used == own
	return total && (satAdd(messages, n) <= b.messageHalf() || messages == own)
}

// take records n bytes held (mu held).
func (b *pageBudget) take(n uint64, query bool) {
	b.used += n
	if query {
		b.queries += n
	}
	b.peak = max(b.peak, b.used)
}

// acquire reserves n bytes for a message, waiting behind those that came
// first until they fit or ctx ends.
func (b *pageBudget) acquire(ctx context.Context, n uint64) error {
	if n == 0 {
		return nil
	}
	b.mu.Lock()
	if len(b.waiting) == 0 && b.fitsMessage(n, 0) {
		b.take(n, false)
		b.mu.Unlock()
		return nil
	}
	w := &pageWaiter{n: n, ready: make(chan struct{})}
	b.waiting = append(b.waiting, w)
	b.waits++
	if b.onWait != nil {
		b.onWait()
	}
	b.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if w.granted {
		return nil // granted as ctx ended: the caller holds it, and gives it back
	}
	for i, o := range b.waiting {
		if o == w {
			b.waiting = append(b.waiting[:i], b.waiting[i+1:]...)
			break
		}
	}
	b.grant() // those behind it may fit
	return fmt.Errorf("waiting for %d bytes of execution memory: %w", n, ctx.Err())
}

// tryMore reserves n more bytes for a message that holds own bytes already,
// if they fit at once or it is the only message holding any.
func (b *pageBudget) tryMore(n, own uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.fitsMessage(n, own) {
		return false
	}
	b.take(n, false)
	return true
}

// tryQuery reserves n bytes for a query graph if they fit at once: within
// the queries' half of the budget, whether or not messages wait (a waiting
// message that fits the messages' half waits only for other messages).
// While the first message in line is larger than the messages' half, the
// queries' half shrinks by what it needs beyond, so queries that end give
// it room and no new one takes it: it does not wait behind a stream of
// queries. A graph larger than the queries' half is admitted if no other
// graph holds any, no message waits, and it fits beside what messages hold.
func (b *pageBudget) tryQuery(n uint64) bool {
	if n == 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	half := b.queryHalf()
	if len(b.waiting) > 0 && b.waiting[0].n > b.messageHalf() {
		half = satSub(b.total, b.waiting[0].n)
	}
	fits := satAdd(b.used, n) <= b.total || b.used == 0
	within := satAdd(b.queries, n) <= half
	alone := b.queries == 0 && len(b.waiting) == 0
	if !fits || !(within || alone) {
		return false
	}
	b.take(n, true)
	return true
}

// release gives back n bytes reserved by acquire (query false) or tryQuery.
func (b *pageBudget) release(n uint64, query bool) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used = satSub(b.used, n)
	if query {
		b.queries = satSub(b.queries, n)
	}
	b.grant()
}

// grant admits the waiting messages that fit, in order (mu held).
func (b *pageBudget) grant() {
	for len(b.waiting) > 0 && b.fitsMessage(b.waiting[0].n, 0) {
		w := b.waiting[0]
		b.waiting = b.waiting[1:]
		b.take(w.n, false)
		w.granted = true
		close(w.ready)
	}
}

// inUse returns the bytes held (for queries among them) and the budget.
func (b *pageBudget) inUse() (used, queries, total uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used, b.queries, b.total
}

// pageHold is what one holder reserves of the budget: a message's
// executions until the message is done (process, Install), or a query's
// whole call graph until it ends (queryRun). Its executions reserve
// through it (execPages); it gives everything back at the end (close).
type pageHold struct {
	b     *pageBudget
	ctx   context.Context // bounds a message's wait
	query bool
	// limit bounds what a query graph holds at once (0: only the budget):
	// beyond it the query fails (errQueryGraphMemory).
	limit uint64

	mu     sync.Mutex
	held   uint64
	closed bool
	// stop is why a query graph must end: a copy for one of its frames
	// did not fit (keepCopy). Read by queryRun.check.
	stop *Reject
}

// messageHold starts the hold of a message's executions.
func (b *pageBudget) messageHold(ctx context.Context) *pageHold {
	return &pageHold{b: b, ctx: ctx}
}

// queryHold starts the hold of a query's call graph, which may hold at
// most limit bytes (0: no bound of its own).
func (b *pageBudget) queryHold(limit uint64) *pageHold {
	return &pageHold{b: b, query: true, limit: limit}
}

// errHoldClosed refuses a reservation that comes after its holder ended (a
// query given up on: its sandbox still answers).
var errHoldClosed = errors.New("the execution is over")

// reserve reserves n more bytes for the holder.
func (h *pageHold) reserve(n uint64) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return errHoldClosed
	}
	if h.query {
		// Checked and taken under h.mu: a graph's executions run one at a
		// time, so this only orders a late answer against close.
		defer h.mu.Unlock()
		if h.limit > 0 && satAdd(h.held, n) > h.limit {
			return rejectf(CanisterError, "Composite query exceeded its memory limit: its call graph would hold %d bytes of changed memory, at most %d (limits.heap_dirty_bytes_query + limits.stable_dirty_bytes_query).",
				satAdd(h.held, n), h.limit)
		}
		if !h.b.tryQuery(n) {
			used, _, total := h.b.inUse()
			return rejectf(SysTransient, "The node's execution memory of %d bytes (limits.execution_memory) has %d bytes in use; try the query again later.", total, used)
		}
		h.held += n
		return nil
	}
	if h.held > 0 {
		// A message that holds pages never waits for more: two waiting
		// for each other's pages would wait for ever. Only an upgrade
		// keeps the pages of one execution (pre_upgrade's) while another
		// runs (post_upgrade); it fails instead, and may be tried again.
		defer h.mu.Unlock()
		if !h.b.tryMore(n, h.held) {
			used, _, total := h.b.inUse()
			return rejectf(SysTransient, "The node's execution memory of %d bytes (limits.execution_memory) has %d bytes in use; try again later.", total, used)
		}
		h.held += n
		return nil
	}
	h.mu.Unlock()
	if err := h.b.acquire(h.ctx, n); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		h.b.release(n, false)
		return errHoldClosed
	}
	h.held += n
	return nil
}

// keepCopy charges a query graph n bytes of a page copy that a commit of
// canister id gives one of its frames (state.PageMap.CloneCharged). It
// runs inside the commit, under the image's mutex, so it never waits: if
// the bytes do not fit (the graph's own bound, the queries' half of the
// budget, a message waiting for room) or the graph already failed, it
// refuses, and the graph fails with SYS_TRANSIENT (stopped): the frame is
// revoked instead of kept, and its other frames refuse their next copies.
// The copies are the commit's doing, not the query's, so even its own
// bound answers SYS_TRANSIENT: the query may be tried again.
func (h *pageHold) keepCopy(n uint64, id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || h.stop != nil {
		return false
	}
	switch {
	case h.limit > 0 && satAdd(h.held, n) > h.limit:
		h.stop = rejectf(SysTransient, "Composite query ended: canister %s changed while it ran, and its call graph would hold more than its memory limit of %d bytes (limits.heap_dirty_bytes_query + limits.stable_dirty_bytes_query) to keep its snapshot; try the query again later.", id, h.limit)
		return false
	case !h.b.tryQuery(n):
		used, _, total := h.b.inUse()
		h.stop = rejectf(SysTransient, "Composite query ended: canister %s changed while it ran, and the node's execution memory of %d bytes (limits.execution_memory) has %d bytes in use, no room to keep its snapshot; try the query again later.", id, total, used)
		return false
	}
	h.held += n
	return true
}

// stopped returns why the query graph must end (keepCopy), nil if it may
// go on.
func (h *pageHold) stopped() *Reject {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stop
}

// release gives back n of the holder's bytes.
func (h *pageHold) release(n uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n = min(n, h.held)
	h.held -= n
	h.b.release(n, h.query)
}

// close gives back everything the holder holds and refuses what comes
// later.
func (h *pageHold) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	h.b.release(h.held, h.query)
	h.held = 0
}

// execPages is what one execution reserved through its holder, so the
// holder knows what its output holds; reserve is its exec.Request.Reserve.
type execPages struct {
	h    *pageHold
	mu   sync.Mutex
	n    uint64
	done bool
}

// execution starts the reservations of the execution req asks for.
func (h *pageHold) execution(req *exec.Request) *execPages {
	e := &execPages{h: h}
	req.Reserve = e.reserve
	return e
}

// reserve reserves the n bytes of the execution's output. An ask replaces
// the one before (exec.Request.Reserve): the executor asks again only for
// a retry on a fresh sandbox, after the dead attempt's pages, announced
// but never handed over, were given up; kept, they would add up with the
// retry's, and a message that holds pages takes no more unless they fit
// at once (pageHold.reserve).
func (e *execPages) reserve(n uint64) error {
	e.mu.Lock()
	done, dead := e.done, e.n
	e.n = 0
	e.mu.Unlock()
	if done {
		return errHoldClosed
	}
	e.h.release(dead)
	if err := e.h.reserve(n); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.done {
		e.h.release(n) // its Execute returned meanwhile: nobody holds these
		return errHoldClosed
	}
	e.n += n
	return nil
}

// end returns what the execution reserved, which its holder now holds for
// its output, and refuses later reservations (a dropped answer's).
func (e *execPages) end() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.done = true
	return e.n
}
