package store

import (
	"errors"
	"fmt"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Group commit.
//
// Every Commit call is a request to one writer goroutine. The writer takes
// every request waiting when it becomes free and applies them, in arrival
// order, in one bbolt transaction: one write of the dirty B+tree pages and
// one sync (bbolt's two fdatasyncs, data then meta page) for all of them.
// While that sync runs, new requests queue up and form the next group. A
// lone committer therefore pays no added delay (the writer starts at once,
// unlike bbolt's DB.Batch, which waits MaxBatchDelay for company), and
// under load the number of syncs per commit falls towards 1/committers.
//
// Each request succeeds or fails as a unit and alone. If applying request i
// fails, the transaction is rolled back and the group is redone as: the
// requests before i together (they applied before, and apply the same way
// again, since they see the same state), then i alone (its error is its
// own), then the rest. The result is exactly that of committing every
// request in its own transaction in arrival order, minus the syncs.

// Group limits: one transaction holds all of its dirty pages in memory
// until it commits, so a group is closed once it holds this much.
const (
	maxGroupRequests = 1024
	maxGroupBytes    = 64 << 20
)

// ErrClosed is returned by Commit after Close.
var ErrClosed = errors.New("store is closed")

// request is one Commit call waiting for the writer.
type request struct {
	changes []Change
	bytes   int64
	done    chan error // buffered: the writer never blocks on a caller
}

// committer is the queue and the state of the writer goroutine.
type committer struct {
	mu      sync.Mutex
	cond    sync.Cond // signalled when queue grows or closed is set
	queue   []*request
	queued  uint64 // requests ever queued (tests wait on it)
	closed  bool
	stopped chan struct{} // closed when the writer has returned

	syncs   atomic.Uint64 // write transactions committed (or attempted) by the store
	commits atomic.Uint64 // Commit calls answered
}

// panicked carries a panic from applying a request back to its caller,
// which panics again in its own goroutine, as it would have without the
// writer.
type panicked struct {
	value any
	stack []byte
}

func (p *panicked) Error() string { return fmt.Sprintf("panic in commit: %v\n%s", p.value, p.stack) }

func (s *Store) startCommitter() {
	s.gc.cond.L = &s.gc.mu
	s.gc.stopped = make(chan struct{})
	go s.writer()
}

// submit queues changes for the writer and waits until they are durable or
// have failed.
func (s *Store) submit(changes []Change) error {
	r := &request{changes: changes, bytes: payloadBytes(changes), done: make(chan error, 1)}
	g := &s.gc
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return ErrClosed
	}
	g.queue = append(g.queue, r)
	g.queued++
	g.cond.Signal()
	g.mu.Unlock()
	err := <-r.done
	var p *panicked
	if errors.As(err, &p) {
		panic(p.value)
	}
	return err
}

// stopCommitter lets the writer finish every queued request, then stops it.
func (s *Store) stopCommitter() {
	g := &s.gc
	g.mu.Lock()
	g.closed = true
	g.cond.Broadcast()
	g.mu.Unlock()
	<-g.stopped
}

func (s *Store) writer() {
	g := &s.gc
	defer close(g.stopped)
	for {
		g.mu.Lock()
		for len(g.queue) == 0 && !g.closed {
			g.cond.Wait()
		}
		if len(g.queue) == 0 {
			g.mu.Unlock()
			return
		}
		// Take the longest prefix within the limits, at least one request.
		n, bytes := 0, int64(0)
		for n < len(g.queue) && n < maxGroupRequests && (n == 0 || bytes+g.queue[n].bytes <= maxGroupBytes) {
			bytes += g.queue[n].bytes
			n++
		}
		group := g.queue[:n:n]
		g.queue = append([]*request(nil), g.queue[n:]...)
		g.mu.Unlock()
		s.commitGroup(group)
	}
}

// commitGroup commits the requests in one transaction, isolating any that
// fails (see the comment at the top of this file).
func (s *Store) commitGroup(group []*request) {
	for len(group) > 0 {
		failed := -1
		var failErr error
		start := time.Now()
		err := s.writeTx(func(tx *bolt.Tx) error {
			for i, r := range group {
				if err := applyRequest(tx, r.changes); err != nil {
					failed, failErr = i, err
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			// Durable, or the write or sync itself failed: then none of
			// them happened, and they all learn why.
			s.gc.syncs.Add(1)
			s.observeSync(start, group, err)
			s.returnMemory(group)
			for _, r := range group {
				s.gc.commits.Add(1)
				r.done <- err
			}
			return
		}
		if len(group) == 1 {
			s.gc.commits.Add(1)
			group[0].done <- failErr
			return
		}
		s.commitGroup(group[:failed])
		s.commitGroup(group[failed : failed+1])
		group = group[failed+1:]
	}
}

// returnAfterBytes is the payload from which a transaction's garbage is
// handed back to the OS before its callers continue (and a load's mapped
// pages are released, store.go).
const returnAfterBytes = 64 << 20

// returnMemory collects and returns to the OS the garbage of a transaction
// that wrote a large memory (an install, a heap grown by a message), and
// unmaps the store file's pages bbolt read meanwhile (mapped.go). bbolt
// copies every page it writes into buffers of its own, about 1.5 times the
// payload (a leaf spans three bbolt pages for two 4 KiB values), and the
// message's pages came through buffers too; left to the pacer, a commit of
// 1 GiB kept the process 2.7 GiB larger than its live data until the next
// collection, and the scavenger returns memory slowly after that. A forced
// collection costs time in proportion to the live objects (about 0.1 s per
// GiB of pages held, each page one pointer-free object), so it is forced
// only when the transaction wrote at least an eighth of the live heap: its
// cost stays below that of the commit itself.
func (s *Store) returnMemory(group []*request) {
	var n int64
	for _, r := range group {
		n += r.bytes
	}
	if n < returnAfterBytes || uint64(n) < liveHeap()/8 {
		return
	}
	debug.FreeOSMemory()
	// Best effort: if it fails, the pages only stay resident until the
	// kernel reclaims them.
	_ = s.releaseMapped()
}

// liveHeap is the heap the last collection found live (0 if unknown).
func liveHeap() uint64 {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return sample[0].Value.Uint64()
}

// applyRequest applies one Commit's changes inside tx. It has no effect
// outside tx, so it can be applied again in a later transaction after a
// rollback.
func applyRequest(tx *bolt.Tx, changes []Change) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &panicked{value: v, stack: debug.Stack()}
		}
	}()
	for i := range changes {
		if err := commitOne(tx, &changes[i]); err != nil {
			return fmt.Errorf("commit canister %s: %w", changes[i].Meta.ID, err)
		}
	}
	return nil
}

// update runs fn in a write transaction of its own (rare operations that
// return a value: canister numbers, module GC), counted with the syncs.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	err := s.writeTx(fn)
	if err == nil {
		s.gc.syncs.Add(1)
	}
	return err
}

// ErrFailed is returned by every write once a transaction's commit failed
// with its outcome unknown (writeTx), until the store is opened again.
// The write whose commit failed so also wraps ErrOutcomeUnknown; the later
// ones were refused before they did anything.
var ErrFailed = errors.New("store failed: a commit's outcome is unknown; restart to open the store again")

// ErrOutcomeUnknown marks the error of a write whose commit failed the
// store (ErrFailed): it may or may not be durable, and the next Open
// tells.
var ErrOutcomeUnknown = errors.New("this write may or may not be durable")

// Failed is closed when a commit fails the store (ErrFailed): from then
// on it refuses every write until it is opened again.
func (s *Store) Failed() <-chan struct{} { return s.failedCh }

// writeTx runs fn in a write transaction; every write of the store goes
// through it. bbolt commits by writing the transaction's pages, syncing,
// writing its meta page and syncing again. If that last sync fails,
// Commit returns the error, yet the meta page is in the page cache, which
// bbolt reads its state from: the transaction is what the process sees
// from then on, and it may or may not be durable (a failed fsync is how a
// disk reports a lost write). Its callers are told it failed and keep
// their state in memory without it, so nothing may be committed over it:
// the store fails every later write, and the next Open reads what the
// disk holds. A commit that failed before its meta page (a full disk) is
// not seen, and the store goes on.
func (s *Store) writeTx(fn func(*bolt.Tx) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.failed != nil {
		return fmt.Errorf("%w: %w", ErrFailed, s.failed)
	}
	id, applied := 0, false
	err := s.db.Update(func(tx *bolt.Tx) error {
		id = tx.ID()
		if err := fn(tx); err != nil {
			return err
		}
		applied = true
		return nil
	})
	if err == nil || !applied {
		return err
	}
	// The commit failed: is the transaction what bbolt now reads? (No
	// other write can come between: they all hold wmu.)
	seen := -1
	if verr := s.db.View(func(tx *bolt.Tx) error { seen = tx.ID(); return nil }); verr != nil || seen >= id {
		s.failed = err
		close(s.failedCh)
		return fmt.Errorf("%w (%w): %w", ErrFailed, ErrOutcomeUnknown, err)
	}
	return err
}
