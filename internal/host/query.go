package host

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Query executes a query; nothing it does is kept. A composite query may
// call other canisters' queries (and its own); their callbacks run on the
// composite query's working state, which is dropped at the end.
//
// A query run holds at most one canister's lock at a time, read-locked for
// one execution on that canister: it never waits for a lock while holding
// one, so no order of queries and updates can deadlock, and a composite
// query holds up a canister's updates only while one of its executions
// runs there. What outlives an execution (a call's working state, for its
// callbacks) is a snapshot taken under the lock (frame).
func (n *Node) Query(ctx context.Context, msg Message) (_ *Reply, err error) {
	defer n.observeIngress(metrics.KindQuery, time.Now(), &err)
	if rej := n.checkIngressArg(msg); rej != nil {
		return nil, rej
	}
	if msg.Canister.IsManagement() {
		if msg.Method == "fetch_canister_logs" {
			return n.queryManagement(ctx, msg) // canlog.go
		}
		return n.managementIngress(ctx, msg, true)
	}
	q := &queryRun{n: n, ctx: ctx, budget: n.cfg.QueryInstructions, pages: n.pages.queryHold(n.queryGraphBytes())}
	defer q.pages.close()
	return q.call(msg.Canister, msg.Method, msg.Arg, msg.Caller, 0, true)
}

// queryGraphBytes bounds the changed memory a query's call graph holds at
// once (execmem.go): what one query execution may change, its heap's and
// its stable memory's caps; 0 (no bound) when either has none. A composite
// query is one query to its caller: whatever its shape, its frames keep no
// more than one of its executions could have changed.
func (n *Node) queryGraphBytes() uint64 {
	h, s := n.cfg.HeapDirty.pages(sysapi.CtxCompositeQuery), n.cfg.StableDirty.pages(sysapi.CtxCompositeQuery)
	if h == 0 || s == 0 {
		return 0
	}
	if p := satAdd(h, s); p <= math.MaxUint64/state.PageSize {
		return p * state.PageSize
	}
	return math.MaxUint64
}

// maxQueryDepth bounds the call graph of a composite query (IC: 6 levels).
const maxQueryDepth = 6

// queryCallInstructions is what every call a composite query's graph makes
// costs on top of the callee's execution, charged against the graph's
// instruction budget (the IC's INSTRUCTION_OVERHEAD_PER_QUERY_CALL: at most
// 100 calls with the default 5 B). Callbacks make their calls at their
// caller's depth, so the depth limit does not bound the graph: this does.
const queryCallInstructions = 50_000_000

// The IC's messages (error codes IC0526 and IC0528, reject code
// CANISTER_ERROR) for a call graph that ran out of budget or time.
const (
	queryGraphInstructionsMsg = "Composite query calls exceeded the instruction limit."
	queryGraphTimeMsg         = "Composite query call exceeded the time limit."
)

// frame is the working state of one query call: a snapshot of its
// canister's committed state taken under the canister's read lock, and
// what the call's executions wrote since (the callbacks see what earlier
// executions of the same call wrote). Another call, even to the same
// canister, gets its own frame, as on the IC.
//
// Until the call's first execution ends the frame reads the committed
// memories (the lock is held); when the call goes on (it made calls, so
// its callbacks run later, without the lock in between) its memories
// become copy-on-write clones (state.PageMap.CloneCharged): a commit
// meanwhile gives them copies of the pages it overwrites, so they keep the
// snapshot.
// A clone shares the committed pages it did not change and is read under
// the canister's read lock, as the committed memories are (each later
// execution takes it again); it is released with the frame. It holds only
// the pages in which it differs from the committed image, and its
// executions get it as that image plus those pages (state.Layers), so a
// callback costs the pages its frame changed, not the memories' size.
// The copies commits give it are charged to the graph (execmem.go:
// keepCopy) until the frame ends; one that does not fit revokes the clone
// and ends the graph, never holds up the commit.
type frame struct {
	c       *canister
	module  *exec.Module
	base    sysapi.Input // the canister's system state at the snapshot
	heap    *state.PageMap
	stable  *state.PageMap
	globals []state.Global
	cloned  bool // heap and stable are the frame's clones, to release
	trapped bool // the execution run last returned from trapped (run)
	// kept is what the pages the frame's executions wrote hold of the
	// graph's execution memory (q.pages), until the call ends: counted as
	// each output was received, a page written twice twice.
	kept uint64
	// heapCopies and stableCopies are what the copies commits gave its
	// clones of each memory hold of the graph's execution memory
	// (keepCopy), until the call ends or the clone is revoked. Changed by
	// the committing goroutine (under the image's mutex, which the clones'
	// Release takes before the call reads them).
	heapCopies, stableCopies atomic.Uint64
}

type queryRun struct {
	n   *Node
	ctx context.Context
	// deadline ends the whole query (Config.QueryWalltime; zero: none),
	// counted from the snapshot of its target, once that is loaded (a
	// restart's first query compiles the module and reads the memories:
	// the node's work, not the query's). As on the IC it is checked
	// between executions: one execution is bounded by its instructions
	// (and a sandbox's watchdog).
	deadline time.Time
	budget   uint64 // instructions left for the whole composite query
	// pages holds the graph's share of the node's execution memory: its
	// frames' kept pages and the output being received (execmem.go).
	pages *pageHold
	// stop is why the whole graph fails, if an execution found it out of
	// memory (its own bound, or the node's): as out of budget or time,
	// whatever the callbacks would answer.
	stop *Reject
}

// check reports why the run may not go on: its context is done, its
// deadline passed (the IC's time limit), its budget is spent or its memory
// could not be held (stop).
func (q *queryRun) check() error {
	if err := q.ctx.Err(); err != nil {
		return err
	}
	if q.stop != nil {
		return q.stop
	}
	if r := q.pages.stopped(); r != nil {
		return r // a commit could not keep a frame's snapshot (keepCopy)
	}
	if !q.deadline.IsZero() && !time.Now().Before(q.deadline) {
		return rejectf(CanisterError, "%s", queryGraphTimeMsg)
	}
	if q.budget == 0 {
		return rejectf(CanisterError, "%s", queryGraphInstructionsMsg)
	}
	return nil
}

// waitingErr is the error of a query that gave up waiting for c's lock:
// its context's, as when it ends at any other point of the query.
func waitingErr(c *canister, err error) error {
	return fmt.Errorf("query of canister %s: waiting for the canister: %w", c.id, err)
}

// rlock read-locks c for one execution of the run, waiting no longer than
// the run may go on (its context, its deadline). The graph may hold pages
// of the node's execution memory meanwhile, and the writer it waits for
// may wait for those very pages (execmem.go): the deadline ends that.
func (q *queryRun) rlock(c *canister) error {
	return q.waitFor(c, func(ctx context.Context) error { return c.mu.acquire(ctx, false) })
}

// waitFor runs wait (taking one of c's locks) with the run's context and
// deadline, and names what ended it.
func (q *queryRun) waitFor(c *canister, wait func(context.Context) error) error {
	ctx := q.ctx
	if !q.deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, q.deadline)
		defer cancel()
	}
	if err := wait(ctx); err != nil {
		if err := q.ctx.Err(); err != nil {
			return waitingErr(c, err)
		}
		return rejectf(CanisterError, "%s", queryGraphTimeMsg)
	}
	return nil
}

// call runs one query method and, for a composite query, its calls.
func (q *queryRun) call(id principal.Principal, method string, arg []byte, caller principal.Principal, depth int, top bool) (*Reply, error) {
	if err := q.check(); err != nil {
		return nil, err
	}
	c, err := q.n.get(q.ctx, id)
	if err != nil {
		return nil, err
	}
	// An update may hold the canister up to its watchdog: a query whose
	// caller went away (or whose deadline passed) stops waiting for it.
	if err := q.rlock(c); err != nil {
		return nil, err
	}
	if coldFrames(c, method) {
		c.mu.RUnlock()
		if err := q.waitFor(c, func(ctx context.Context) error { return q.n.backMemories(ctx, c) }); err != nil {
			return nil, err
		}
		if err := q.rlock(c); err != nil {
			return nil, err
		}
	}
	fr, in, err := q.open(c, method, arg, caller, depth, top)
	if err != nil {
		c.mu.RUnlock()
		return nil, err
	}
	defer func() {
		fr.release() // no commit gives it copies after this
		q.pages.release(fr.kept + fr.heapCopies.Load() + fr.stableCopies.Load())
	}()
	if d := q.n.cfg.QueryWalltime; top && d > 0 {
		q.deadline = time.Now().Add(d)
	}
	r, err := q.run(fr, in, depth, true) // releases c.mu
	resp := 0
	if r != nil {
		resp = len(r.Data)
	}
	c.qstats.add(0, len(arg), resp) // the instructions are counted by execute
	if r == nil && err == nil {
		return nil, rejectf(CanisterError, "Canister %s did not reply to the call", id)
	}
	return r, err
}

// coldFrames reports whether a call of method would take frames of c's
// memories while they are ordinary page maps (c.mu read-locked): their
// images were given back while c was cold (images.go), and no update, which
// takes them back (execute), has run since. A frame is a clone, which
// shares a backed memory's image and holds only the pages it changes; a
// clone of an ordinary page map has no image, so every execution on it
// would copy the memories whole. Only a composite query makes frames.
func coldFrames(c *canister, method string) bool {
	return !c.deleted && c.module != nil && c.module.Info.Methods[method] == engine.CompositeQueryMethod &&
		(!c.heap.Backed() || !c.stable.Backed())
}

// backMemories makes c's memories backed again (one pass over their pages,
// as the next update's would be), taking c's lock exclusively: the caller
// holds no canister's lock, so waiting for it cannot deadlock. A memory
// that cannot have an image stays as it is: its frames copy it.
func (n *Node) backMemories(ctx context.Context, c *canister) error {
	if err := c.mu.LockContext(ctx); err != nil {
		return err
	}
	c.heap.Back()
	c.stable.Back()
	n.images.used(c)
	n.unlock(c)
	return nil
}

// open takes the snapshot of c a call starts from and the input of its
// first execution (c.mu read-locked).
func (q *queryRun) open(c *canister, method string, arg []byte, caller principal.Principal, depth int, top bool) (*frame, *sysapi.Input, error) {
	if c.deleted {
		return nil, nil, rejectf(DestinationInvalid, "Canister %s not found", c.id)
	}
	if err := q.n.checkRunnable(c); err != nil {
		return nil, nil, err
	}
	var kind sysapi.Context
	var entry string
	switch c.module.Info.Methods[method] {
	case engine.QueryMethod:
		kind, entry = sysapi.CtxNonReplicatedQuery, "canister_query "+method
	case engine.CompositeQueryMethod:
		if !top && depth == 0 {
			return nil, nil, rejectf(CanisterError, "Canister %s: composite query %s cannot be called from a query", c.id, EchoedName(method))
		}
		kind, entry = sysapi.CtxCompositeQuery, "canister_composite_query "+method
	default:
		return nil, nil, rejectf(DestinationInvalid, "Canister %s has no query method '%s'", c.id, EchoedName(method))
	}
	fr := &frame{c: c, module: c.module, heap: c.heap, stable: c.stable, globals: c.globals}
	fr.base = *q.n.input(c, c.module, kind, "", 0)
	in := fr.input(kind, entry)
	in.Caller, in.Arg = caller.Bytes(), arg
	if top {
		// Only the query call's target gets a certificate, not the
		// queries a composite query calls, nor its callbacks (the spec).
		var err error
		if in.DataCertificate, err = q.n.dataCertificate(c); err != nil {
			return nil, nil, err
		}
	}
	return fr, in, nil
}

// input returns the input of an execution on the frame: the snapshot's
// system state, its memories and the graph's budget are filled in by
// execute.
func (fr *frame) input(kind sysapi.Context, entry string) *sysapi.Input {
	in := fr.base
	in.Context, in.Entry = kind, entry
	return &in
}

// run executes in on the frame and follows its calls (composite only). With
// locked, the caller holds the canister's read lock (call's snapshot); it
// is released once the execution ends, before any call is followed.
// It returns the first response any of those executions gave, else the trap
// of the first callback that trapped, or neither a reply nor an error when
// none responded.
func (q *queryRun) run(s *frame, in *sysapi.Input, depth int, locked bool) (*Reply, error) {
	c := s.c
	out, err := q.execute(s, in, locked)
	if err != nil {
		return nil, err
	}
	if out.Trapped {
		return nil, rejectf(CanisterError, "Error from Canister %s: %s", c.id, out.TrapMessage)
	}
	defer func() { s.trapped = false }() // whatever the callbacks below did
	var reply *Reply
	var rej *Reject
	var trap error // of the first callback that trapped
	switch out.Response {
	case sysapi.Replied:
		reply = &Reply{Data: out.Reply, Instructions: out.Instructions}
	case sysapi.Rejected:
		rej = &Reject{Code: CanisterReject, Message: out.RejectMessage}
	}
	for _, call := range out.Calls {
		if depth+1 > maxQueryDepth {
			return nil, rejectf(CanisterError, "Canister %s: composite query call depth exceeds %d", c.id, maxQueryDepth)
		}
		// The call is paid before it runs: a graph whose budget cannot
		// pay for one more call ends here (the IC ends it after the
		// call that overdrew it).
		if q.budget < queryCallInstructions {
			return nil, rejectf(CanisterError, "%s", queryGraphInstructionsMsg)
		}
		q.budget -= queryCallInstructions
		callee, perr := principal.FromBytes(call.Callee)
		var r *Reply
		var cerr error
		if perr != nil {
			cerr = rejectf(DestinationInvalid, "Invalid destination: %v", perr)
		} else {
			r, cerr = q.call(callee, call.Method, call.Arg, c.id, depth+1, false)
		}
		if err := q.check(); err != nil {
			// Out of time or budget: the whole graph fails (the IC's
			// limits), whatever the callee answered.
			return nil, err
		}
		cin := s.input(sysapi.CtxCompositeReply, "")
		target := call.OnReply
		cin.Caller = in.Caller
		cin.Responded = in.Responded || reply != nil || rej != nil // a second answer traps
		if cerr != nil {
			r2, ok := cerr.(*Reject)
			if !ok {
				// Not the callee's answer nor its sandbox's failure (those
				// are rejects by now): the node's own, which the calling
				// canister reads only by its id.
				r2 = q.n.internalReject(CanisterError, "Canister "+callee.String(), cerr)
			}
			cin.Context, target = sysapi.CtxCompositeReject, call.OnReject
			cin.RejectCode, cin.RejectMessage = uint32(r2.Code), r2.Message
		} else {
			cin.Arg = r.Data
		}
		cin.Callback = target
		cr, cerr2 := q.run(s, cin, depth, false)
		if q.stop != nil {
			return nil, q.stop
		}
		if cerr2 != nil && s.trapped {
			// As in replicated mode: the cleanup runs, and the trap
			// answers the call only if no later callback does.
			if call.OnCleanup != nil {
				if err := q.cleanup(s, *call.OnCleanup, cin); err != nil {
					return nil, err
				}
			}
			if trap == nil {
				trap = cerr2
			}
			continue
		}
		if reply == nil && rej == nil {
			if cerr2 != nil {
				if rr, ok := cerr2.(*Reject); ok {
					rej = rr
				} else {
					return nil, cerr2
				}
			} else if cr != nil {
				reply = cr
			}
		}
	}
	if reply != nil {
		return reply, nil
	}
	if rej != nil {
		return nil, rej
	}
	return nil, trap
}

// execute runs one execution on the frame with its canister read-locked:
// locked, by the caller (the call's snapshot), else taken here. The lock is
// released when it returns. An execution after the call's first runs only
// on the snapshot it was taken from: if the canister was deleted or its
// code changed since, it fails. What the execution wrote is kept for the
// frame's later executions (advance) when there will be some: it made
// calls, or it is a callback or cleanup that changed the state.
func (q *queryRun) execute(s *frame, in *sysapi.Input, locked bool) (*sysapi.Output, error) {
	c := s.c
	s.trapped = false
	if err := q.check(); err != nil {
		if locked {
			c.mu.RUnlock()
		}
		return nil, err
	}
	if !locked {
		if err := q.rlock(c); err != nil {
			return nil, err
		}
	}
	defer c.mu.RUnlock()
	if !locked && (c.deleted || c.module != s.module) {
		return nil, rejectf(CanisterError, "Canister %s: its code changed while the composite query ran", c.id)
	}
	if r := q.pages.stopped(); r != nil {
		// A commit while the lock was awaited revoked one of the graph's
		// frames, perhaps this one: it must not be read.
		q.stop = r
		return nil, r
	}
	in.Stable, in.Limits.Instructions = s.stable, q.budget
	req := &exec.Request{Module: s.module, Heap: s.heap, Globals: s.globals, Input: in}
	ep := q.pages.execution(req)
	out, err := q.n.execOf(c).Execute(q.ctx, c.id.String(), req)
	held := ep.end() // what the output's pages hold of q.pages
	q.n.images.used(c)
	if err != nil {
		q.pages.release(held)
		if sandboxFault(err) {
			// Its sandbox hung, crashed or lied: nothing it sent proves
			// it ran less than it was given, so the canister's query
			// stats count it at that, as an update is charged (sched.go
			// sandboxFault); queries stay free.
			c.qstats.count(in.Limits.Instructions)
		}
		var rej *Reject
		if errors.As(err, &rej) {
			// The graph's memory limit, or the node's (execmem.go): the
			// whole query fails.
			q.stop = rej
			return nil, rej
		}
		return nil, asReject(c.id, "execute query on", err)
	}
	q.budget -= min(q.budget, out.Instructions)
	c.qstats.count(out.Instructions)
	s.trapped = out.Trapped
	if out.Trapped {
		q.pages.release(held)
		return out, nil
	}
	first := in.Context == sysapi.CtxNonReplicatedQuery || in.Context == sysapi.CtxCompositeQuery
	if len(out.Calls) > 0 || !first && changed(s, out) {
		// Later callbacks see what earlier ones wrote (their own and those
		// of the other calls' callbacks): keep a working copy.
		if err := q.advance(s, out); err != nil {
			q.pages.release(held)
			return nil, err
		}
		s.kept += held
		return out, nil
	}
	q.pages.release(held)
	return out, nil
}

// cleanup runs the cleanup callback of a call whose reply or reject callback
// (cb, as run) trapped, as the IC does in composite queries too: on the
// working state the trapped callback left untouched, and what it writes is
// seen by the callbacks that follow. A trap in it changes nothing more.
func (q *queryRun) cleanup(s *frame, target sysapi.Callback, cb *sysapi.Input) error {
	in := s.input(sysapi.CtxCompositeCleanup, "")
	in.Callback, in.Caller, in.RejectCode = target, cb.Caller, cb.RejectCode
	_, err := q.execute(s, in, false)
	s.trapped = false
	return err
}

// changed reports whether out changes the frame's state.
func changed(s *frame, out *sysapi.Output) bool {
	return len(out.Heap.Pages) > 0 || out.Heap.Size != s.heap.Size() ||
		len(out.Stable.Pages) > 0 || out.Stable.Size != s.stable.Size() || !slices.Equal(out.Globals, s.globals)
}

// advance applies an execution's changes to the frame's working copy: new
// clones of its memories (c.mu read-locked: a clone of the committed
// memories is the frame's snapshot), whose copies the graph pays for.
func (q *queryRun) advance(s *frame, out *sysapi.Output) error {
	heap := s.heap.CloneCharged(q.copyCharge(s, &s.heapCopies))
	if err := heap.Apply(out.Heap); err != nil {
		heap.Release()
		return fmt.Errorf("composite query on %s: %w", s.c.id, err)
	}
	stable := s.stable.CloneCharged(q.copyCharge(s, &s.stableCopies))
	if err := stable.Apply(out.Stable); err != nil {
		heap.Release()
		stable.Release()
		return fmt.Errorf("composite query on %s: %w", s.c.id, err)
	}
	s.release()
	s.heap, s.stable, s.globals, s.cloned = heap, stable, out.Globals, true
	return nil
}

// copyCharge charges the graph for the copies a commit gives one of s's
// clones of a memory (state.PageMap.CloneCharged), counted in held (the
// frame's for that memory: a clone made by advance holds the copies of
// the one it replaces).
func (q *queryRun) copyCharge(s *frame, held *atomic.Uint64) func(uint64) bool {
	id := s.c.id.String()
	return func(n uint64) bool {
		if !q.pages.keepCopy(n, id) {
			// The clone is revoked and drops its copies now: their bytes
			// are free at once, not when the graph gets to end.
			q.pages.release(held.Swap(0))
			return false
		}
		held.Add(n)
		return true
	}
}

// release releases the frame's clones, if it has any (releasing a clone
// needs no canister lock: it never writes the memory it shares).
func (s *frame) release() {
	if s.cloned {
		s.heap.Release()
		s.stable.Release()
		s.cloned = false
	}
}
