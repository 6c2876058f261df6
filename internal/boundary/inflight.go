package boundary

import (
	"errors"
	"sync"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// MaxInFlight bounds the executions a host may have in flight on one
// connection (concurrent queries of one canister), and so the executions a
// canister sandbox runs at once.
const MaxInFlight = 16

// Inflight is the host side of a connection with several executions in
// flight: the sandbox answers them in any order, each answer (its Output and
// Pages, or an Error) as one uninterrupted sequence, Log lines of any
// execution in flight between answers. Each answer is validated on its own,
// against its own request; an answer to an id that is not in flight (never
// asked, already answered) is a VID violation, anything out of sequence a
// violation as for a single exchange. After a violation or a socket error
// the connection is unusable: every execution still in flight failed.
//
// Add may be called concurrently with Next; Next is called by one goroutine
// at a time (the connection's reader).
type Inflight struct {
	c *Conn

	mu      sync.Mutex
	pending map[uint64]*inflightExec
	anon    int // Log lines with id 0 since the last answer
}

type inflightExec struct {
	exp  *Expect
	logs int
}

// NewInflight returns the in-flight table of c. c's receiving side belongs
// to the table's reader from then on; sending stays the caller's (one
// message at a time).
func NewInflight(c *Conn) *Inflight {
	return &Inflight{c: c, pending: map[uint64]*inflightExec{}}
}

// ErrInFlightFull is Add's answer when MaxInFlight executions are pending.
var ErrInFlightFull = errors.New("boundary: too many executions in flight")

// Add registers execution exp.ID before its request is sent, so its answer
// is accepted whenever it arrives.
func (f *Inflight) Add(exp *Expect) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pending) >= MaxInFlight {
		return ErrInFlightFull
	}
	if _, dup := f.pending[exp.ID]; dup || exp.ID == 0 {
		return errors.New("boundary: execution id reused")
	}
	f.pending[exp.ID] = &inflightExec{exp: exp}
	return nil
}

// Len returns the number of executions in flight.
func (f *Inflight) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pending)
}

func (f *Inflight) lookup(id uint64) *inflightExec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pending[id]
}

// Next receives the next answer. With err nil, out is execution id's
// validated output; a *RemoteError answers execution id alone (the sandbox
// could not run it; the connection is still usable), and so does a
// *ReserveError (the host refused the answer's pages). Any other error (a
// *Violation, ErrClosed, a deadline) ends the connection: id is then 0.
// The answered execution is no longer in flight.
func (f *Inflight) Next(onLog LogFunc) (id uint64, out *sysapi.Output, err error) {
	for {
		m, err := f.c.recvWith(f.limit)
		if err != nil {
			return 0, nil, err
		}
		if m.Kind == KindLog {
			l, err := DecodeLog(m.Body)
			if err != nil {
				return 0, nil, err
			}
			if err := f.countLog(m.ID); err != nil {
				return 0, nil, err
			}
			if onLog != nil {
				onLog(l)
			}
			continue
		}
		// limit admitted only Output and Error answering an id in flight.
		e := f.lookup(m.ID)
		f.mu.Lock()
		delete(f.pending, m.ID)
		f.anon = 0
		f.mu.Unlock()
		if m.Kind == KindError {
			re, err := DecodeError(m.Body)
			if err != nil {
				return 0, nil, err
			}
			return m.ID, nil, re
		}
		out, err := f.c.outputOf(e.exp, m)
		var refused *ReserveError
		if errors.As(err, &refused) {
			return m.ID, nil, err // read in full: the connection is in step
		}
		if err != nil {
			return 0, nil, err
		}
		return m.ID, out, nil
	}
}

// limit decides what a message may be from its kind and id.
func (f *Inflight) limit(k Kind, id uint64) (Limit, error) {
	switch k {
	case KindLog:
		return logLimit, nil
	case KindOutput, KindError:
	default:
		return Limit{}, violation(VUnexpected, "%s message while executions are in flight", k)
	}
	e := f.lookup(id)
	if e == nil {
		return Limit{}, violation(VID, "%s for request %d, which is not in flight", k, id)
	}
	if k == KindError {
		return errorLimit, nil
	}
	return Limit{MaxBody: OutputCap(e.exp)}, nil
}

// countLog charges a Log line to its execution (id 0: to the connection
// until the next answer); each may send MaxLogsPerExec.
func (f *Inflight) countLog(id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := &f.anon
	if id != 0 {
		e := f.pending[id]
		if e == nil {
			return violation(VID, "log line for request %d, which is not in flight", id)
		}
		n = &e.logs
	}
	if *n++; *n > MaxLogsPerExec {
		return violation(VLogs, "more than %d log messages for one request", MaxLogsPerExec)
	}
	return nil
}
