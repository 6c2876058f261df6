package exec

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Concurrent queries. As the IC's query threads, the queries of one canister
// run at once inside its sandbox: the first query takes the sandbox as an
// exclusive exchange does (sb.mu) and opens a session; later queries join it.
// At most QueryThreads queries of a canister are in flight: each takes one of
// its sandbox entry's slots, in arrival order, and gives it back when it is
// answered (a query given up on keeps its slot until then). Each is sent with an id of its
// own and runs in the sandbox on its own store over a private mapping of the
// committed memory its request carries, so no query sees another's writes or
// an update's. One reader goroutine receives the answers in whatever order
// they come and hands each to its query; boundary.Inflight validates each
// against its own request, and an answer to an id not in flight, a second
// one, or anything out of sequence is a violation that kills the sandbox and
// fails every query in flight (each retried or rejected as any execution on
// a crashed sandbox). The session ends when its last query is answered: the
// sandbox goes back to its idle watch and sb.mu is released. Updates and
// every other execution stay exclusive exchanges; one waiting stops the
// session from admitting queries, so it drains and the update runs next.

// session is an open query session on a sandbox; it holds sb.mu.
type session struct {
	x      *Sandboxed
	sb     *canisterSandbox
	hash   [32]byte
	proc   Process
	conn   *boundary.Conn
	infl   *boundary.Inflight
	sendMu sync.Mutex // one request at a time on the socket

	// Under sb.smu:
	n       int // queries admitted and not yet answered
	waiters map[uint64]*waiter
	closed  bool
	err     error         // why it failed (closed, err != nil)
	expired time.Duration // the watchdog deadline that expired, if one did
	// The query that opened the session reads its answers until its own
	// has come (lead): whether it waits for the socket to become
	// readable, and whether its context ended.
	leadWaiting, leadCancelled bool
}

// waiter is a query in flight.
type waiter struct {
	ch    chan answer // buffered: the reader never blocks on it
	timer *time.Timer // the query's watchdog
	// Under sb.smu: the watchdog's deadline and what it allows in all
	// (reported when it expires), and the share of it that is compute
	// time, which every query in flight with this one waits for too.
	deadline time.Time
	allowed  time.Duration
	compute  time.Duration
}

type answer struct {
	out *sysapi.Output
	err error
}

// entry returns the canister's pool entry, if any.
func (x *Sandboxed) entry(id string) *canisterSandbox {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.pool[id]
}

// notify wakes whoever waits for a change of sb's session state (sb.smu held).
func (sb *canisterSandbox) notify() {
	if sb.changed != nil {
		close(sb.changed)
		sb.changed = nil
	}
}

// change returns a channel closed at the next notify (sb.smu held).
func (sb *canisterSandbox) change() <-chan struct{} {
	if sb.changed == nil {
		sb.changed = make(chan struct{})
	}
	return sb.changed
}

// markExclusive counts an exclusive exchange waiting for (or holding) sb.mu.
func (sb *canisterSandbox) markExclusive(d int) {
	sb.smu.Lock()
	sb.exclusive += d
	if sb.exclusive == 0 {
		sb.notify()
	}
	sb.smu.Unlock()
}

// queryOnce runs one attempt of a query in the canister's query session,
// opening one if none is open. retry as executeOnce.
func (x *Sandboxed) queryOnce(ctx context.Context, canisterID string, req *Request, m *sbModule, mayRetry bool) (*sysapi.Output, bool, error) {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return nil, false, errors.New("exec: executor closed")
	}
	sb := x.pool[canisterID]
	if sb == nil {
		sb = &canisterSandbox{id: canisterID}
		x.pool[canisterID] = sb
	}
	sb.busy++
	if sb.slots == nil {
		sb.slots = make(chan struct{}, x.cfg.QueryThreads)
	}
	x.mu.Unlock()

	// A slot first, in arrival order (blocked senders on a channel are
	// served first in, first out): a query that has just been answered
	// and sends the next cannot overtake those waiting.
	select {
	case sb.slots <- struct{}{}:
	case <-ctx.Done():
		x.release(sb, false)
		return nil, false, ctx.Err()
	}
	sb.smu.Lock()
	for {
		s := sb.sess
		if s != nil && !s.closed && sb.exclusive == 0 && s.hash == m.hash && s.n < x.cfg.QueryThreads {
			s.n++
			sb.smu.Unlock()
			x.count(func(st *SandboxStats) { st.JoinedQueries++ })
			out, err := s.do(ctx, req, m)
			x.release(sb, err == nil)
			return out, mayRetry && retryable(err), err
		}
		if s == nil && !sb.opening && sb.exclusive == 0 {
			sb.opening = true
			break
		}
		// Full, draining for an update, or being opened: wait for a change.
		ch := sb.change()
		sb.smu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			<-sb.slots
			x.release(sb, false)
			return nil, false, ctx.Err()
		}
		sb.smu.Lock()
	}
	sb.smu.Unlock()
	x.release(sb, false) // acquire counts the exchange itself
	opened := false
	defer func() {
		if !opened {
			<-sb.slots
			sb.smu.Lock()
			sb.opening = false
			sb.notify()
			sb.smu.Unlock()
		}
	}()
	sb2, reused, err := x.acquire(ctx, canisterID, m.hash)
	if err != nil {
		return nil, false, err
	}
	if sb2 != sb {
		// The entry was replaced while we waited (its sandbox failed):
		// this query runs alone; the next ones open a session there.
		return x.runExclusive(ctx, sb2, reused, req, m, mayRetry)
	}
	// The session is one execution in flight from here to its last
	// answer (deliver), or its failure (fail, cancel).
	beginExecution(sb.proc)
	if sb.loaded != m.hash {
		if err := x.load(ctx, sb, req.Module, m); err != nil {
			endExecution(sb.proc)
			x.forgetLocked(sb)
			sb.mu.Unlock()
			x.release(sb, false)
			return nil, mayRetry && reused && retryable(err), err
		}
	}
	s := &session{x: x, sb: sb, hash: m.hash, proc: sb.proc, conn: sb.conn,
		infl: boundary.NewInflight(sb.conn), waiters: map[uint64]*waiter{}}
	sb.smu.Lock()
	sb.sess, sb.opening, s.n = s, false, 1
	sb.notify()
	sb.smu.Unlock()
	opened = true
	out, err := s.lead(ctx, req, m)
	x.release(sb, err == nil)
	return out, mayRetry && reused && retryable(err), err
}

// retryable reports whether a query failed because its sandbox died under
// it (not for a forbidden system call: the canister did that).
func retryable(err error) bool {
	var se *SandboxError
	return errors.As(err, &se) && (se.Fault == FaultCrash || se.Fault == FaultNodeMemory) && (se.Exit == nil || se.Exit.SeccompSyscall == "")
}

// do sends one query (admitted: counted in s.n) and waits for its answer or
// for ctx. A query given up on stays in flight: its answer is dropped when
// it comes, and its watchdog still runs.
func (s *session) do(ctx context.Context, req *Request, m *sbModule) (*sysapi.Output, error) {
	_, w, err := s.send(req, m)
	if err != nil {
		return nil, err
	}
	select {
	case a := <-w.ch:
		return a.out, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// send registers one query (admitted: counted in s.n) and sends it; its
// answer comes on the returned waiter's channel.
func (s *session) send(req *Request, m *sbModule) (uint64, *waiter, error) {
	x, sb := s.x, s.sb
	in := req.Input
	stable, err := stableOf(in)
	if err != nil {
		<-sb.slots
		s.cancel()
		return 0, nil, err
	}
	id := x.nextID.Add(1)
	q := &boundary.ExecRequest{Module: m.hash, RunStart: req.RunStart, HasGlobals: req.Globals != nil, Globals: req.Globals, Input: in}
	deadline := x.watchdog(req, stable)
	compute := x.computeTime(req)
	w := &waiter{ch: make(chan answer, 1), compute: compute}
	sb.smu.Lock()
	if s.closed {
		err := s.err
		sb.smu.Unlock()
		<-sb.slots
		return 0, nil, err
	}
	exp := boundary.ExpectFor(id, in, req.Heap, stable, m.globalTypes)
	exp.Reserve = req.Reserve // called by the session's reader: it must not wait (Request.Reserve)
	if err := s.infl.Add(exp); err != nil {
		sb.smu.Unlock()
		<-sb.slots
		s.cancel()
		return 0, nil, fmt.Errorf("exec: %w", err)
	}
	// The queries in flight share the sandbox's CPU (its cgroup quota), so
	// each may take as long as all of their compute together: this one
	// waits for theirs, and each of them now waits for this one's too.
	// A hung sandbox answers none, so at most QueryThreads queries extend
	// each other and the deadlines stay bounded.
	for _, o := range s.waiters {
		deadline += o.compute
		o.extend(compute)
	}
	s.waiters[id] = w
	w.allowed = deadline
	w.deadline = time.Now().Add(deadline)
	w.timer = time.AfterFunc(deadline, func() { s.expire(id) })
	sb.smu.Unlock()

	sb.noteGiven(req.Heap, stable)
	s.sendMu.Lock()
	err = s.conn.SendExecute(id, q, req.Heap, stable)
	s.sendMu.Unlock()
	if err != nil {
		// It is gone or not reading: the reader fails every query, this
		// one included, once it has been killed.
		_ = s.proc.Kill()
	}
	return id, w, nil
}

// lead runs the query that opened the session: it sends it and reads the
// session's answers itself, in its own goroutine, until its own has come;
// only then, if other queries joined meanwhile, does a reader goroutine
// (read) take over. A query alone on its sandbox (one client) so waits for
// its answer on the socket directly: no reader goroutine is started and no
// answer is handed over. Every answer still goes through boundary.Inflight,
// as the reader's do. Between messages lead waits for the next packet
// (boundary.Conn.AwaitReadable, which receives that one packet and keeps it
// for the read that follows), so that its context can end the wait (a read
// deadline) with no message half read; a query given up on then hands the
// reading to a reader goroutine, which starts from any packet received, and
// returns, as do's. A message being read is read to its end (bounded by
// the watchdog, which kills a sandbox that stalls in one).
func (s *session) lead(ctx context.Context, req *Request, m *sbModule) (*sysapi.Output, error) {
	own, w, err := s.send(req, m)
	if err != nil {
		return nil, err
	}
	sb := s.sb
	stop := context.AfterFunc(ctx, func() {
		sb.smu.Lock()
		s.leadCancelled = true
		if s.leadWaiting {
			_ = s.conn.Raw().SetReadDeadline(time.Unix(1, 0))
		}
		sb.smu.Unlock()
	})
	defer stop()
	onLog := s.x.logFunc(sb.id)
	for {
		sb.smu.Lock()
		cancelled := s.leadCancelled
		s.leadWaiting = !cancelled
		sb.smu.Unlock()
		if !cancelled {
			// An error (the watchdog's deadline, a dead socket) is met
			// again by the read below, which fails the session.
			_ = s.conn.AwaitReadable()
			sb.smu.Lock()
			s.leadWaiting = false
			cancelled = s.leadCancelled
			if cancelled && s.expired == 0 {
				s.conn.ResumeIO() // the deadline the context set, if it did
			}
			sb.smu.Unlock()
		}
		if cancelled {
			go s.read()
			return nil, ctx.Err()
		}
		id, out, err := s.infl.Next(onLog)
		if refused(id, err) {
			out, err = nil, s.refusedErr(err)
		} else if id == 0 || err != nil {
			s.fail(err)
			a := <-w.ch
			return a.out, a.err
		}
		last := s.deliver(id, answer{out: out, err: err})
		if id == own {
			if !last {
				go s.read()
			}
			a := <-w.ch
			return a.out, a.err
		}
	}
}

// refused reports an answer whose pages the host refused (Request.Reserve):
// read in full and dropped, it fails its query alone, and the session
// goes on.
func refused(id uint64, err error) bool {
	var re *boundary.ReserveError
	return id != 0 && errors.As(err, &re)
}

// refusedErr is the error a refused answer's query fails with.
func (s *session) refusedErr(err error) error {
	return fmt.Errorf("exec: output of %s: %w", s.sb.id, err)
}

// cancel takes back an admitted query that was never sent.
func (s *session) cancel() {
	s.sb.smu.Lock()
	s.n--
	last := s.n == 0 && !s.closed
	if last {
		s.closeLocked()
		endExecution(s.proc)
	}
	s.sb.smu.Unlock()
	if last {
		s.end()
	}
}

// extend moves w's watchdog d later (sb.smu held). A watchdog that has
// already fired is not re-armed: its expire is under way.
func (w *waiter) extend(d time.Duration) {
	if d <= 0 || !w.timer.Stop() {
		return
	}
	w.allowed += d
	w.deadline = w.deadline.Add(d)
	w.timer.Reset(time.Until(w.deadline))
}

// expire is a query's watchdog: the reader's next read fails as a timeout,
// and the sandbox is killed with every query in flight.
func (s *session) expire(id uint64) {
	s.sb.smu.Lock()
	defer s.sb.smu.Unlock()
	w := s.waiters[id]
	if s.closed || w == nil {
		return
	}
	if s.expired == 0 {
		s.expired = w.allowed
	}
	_ = s.conn.Raw().SetReadDeadline(time.Unix(1, 0))
}

// read receives the answers until the last query is answered or the
// sandbox fails.
func (s *session) read() {
	onLog := s.x.logFunc(s.sb.id)
	for {
		id, out, err := s.infl.Next(onLog)
		if id == 0 {
			s.fail(err)
			return
		}
		if refused(id, err) {
			if s.deliver(id, answer{err: s.refusedErr(err)}) {
				return
			}
			continue
		}
		if err != nil {
			// The sandbox could not run this query (an Error answer):
			// as for an exclusive execution, it is not trusted further.
			s.fail(err)
			return
		}
		if s.deliver(id, answer{out: out}) {
			return
		}
	}
}

// deliver hands an answer to its query; true when it was the last one in
// flight and the session has ended.
func (s *session) deliver(id uint64, a answer) bool {
	sb := s.sb
	sb.smu.Lock()
	if s.n == 1 {
		// The last in flight: the sandbox is idle before its query
		// learns the answer, as after an exclusive exchange.
		endExecution(s.proc)
	}
	if w := s.waiters[id]; w != nil {
		w.timer.Stop()
		w.ch <- a
		delete(s.waiters, id)
		<-sb.slots
	}
	s.n--
	last := s.n == 0
	if last {
		s.closeLocked()
	} else {
		sb.notify() // a place in the session is free
	}
	sb.smu.Unlock()
	if last {
		s.end()
	}
	return last
}

// closeLocked stops admitting queries (sb.smu held).
func (s *session) closeLocked() {
	s.closed = true
	if s.sb.sess == s {
		s.sb.sess = nil
	}
	s.sb.notify()
}

// end returns a drained session's sandbox to its idle watch and releases it.
func (s *session) end() {
	s.conn.ResumeIO() // a watchdog that fired as the last answer came
	s.x.measure(s.sb)
	s.x.watch(s.sb)
	s.sb.mu.Unlock()
}

// fail kills the sandbox after a failed read and fails every query in
// flight with the classified error.
func (s *session) fail(err error) {
	sb := s.sb
	sb.smu.Lock()
	deadline := s.expired
	sb.smu.Unlock()
	se := s.x.fail(sb.id, "execute", s.proc, deadline, err)
	endExecution(s.proc) // killed: nothing to steer, but counted as ended
	// Gone from the pool before any query learns of it: a retry spawns
	// a fresh sandbox.
	s.x.forgetLocked(sb)
	sb.smu.Lock()
	s.err = se
	for id, w := range s.waiters {
		w.timer.Stop()
		w.ch <- answer{err: se}
		delete(s.waiters, id)
		<-sb.slots
	}
	s.closeLocked()
	sb.smu.Unlock()
	sb.mu.Unlock()
}
