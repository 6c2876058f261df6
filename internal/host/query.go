package host

import (
	"context"
	"fmt"
	"slices"
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
	q := &queryRun{n: n, ctx: ctx, locked: map[principal.Principal]*snapshot{}, budget: n.cfg.QueryInstructions}
	defer q.unlockAll()
	return q.call(msg.Canister, msg.Method, msg.Arg, msg.Caller, 0, true)
}

// maxQueryDepth bounds the call graph of a composite query (IC: 6 levels).
const maxQueryDepth = 6

// snapshot is one canister's committed state as a query run sees it:
// read-locked once per run, so a canister calling itself never takes its
// lock twice.
type snapshot struct {
	c *canister
}

// frame is the working state of one query call: it starts from the
// committed state, and the call's callbacks see what earlier executions of
// the same call wrote. Another call, even to the same canister, gets its own
// frame, as on the IC.
type frame struct {
	c       *canister
	heap    *state.PageMap
	stable  *state.PageMap
	globals []state.Global
	trapped bool // the execution run last returned from trapped (run)
}

type queryRun struct {
	n      *Node
	ctx    context.Context
	locked map[principal.Principal]*snapshot
	order  []*canister
	budget uint64 // instructions left for the whole composite query
}

func (q *queryRun) unlockAll() {
	for _, c := range q.order {
		c.mu.RUnlock()
	}
}

func (q *queryRun) snapshot(id principal.Principal) (*snapshot, error) {
	if s, ok := q.locked[id]; ok {
		return s, nil
	}
	c, err := q.n.get(q.ctx, id)
	if err != nil {
		return nil, err
	}
	c.mu.RLock()
	q.order = append(q.order, c)
	if c.deleted {
		return nil, rejectf(DestinationInvalid, "Canister %s not found", id)
	}
	s := &snapshot{c: c}
	q.locked[id] = s
	return s, nil
}

// call runs one query method and, for a composite query, its calls.
func (q *queryRun) call(id principal.Principal, method string, arg []byte, caller principal.Principal, depth int, top bool) (*Reply, error) {
	s, err := q.snapshot(id)
	if err != nil {
		return nil, err
	}
	c := s.c
	if err := q.n.checkRunnable(c); err != nil {
		return nil, err
	}
	var kind sysapi.Context
	var entry string
	switch c.module.Info.Methods[method] {
	case engine.QueryMethod:
		kind, entry = sysapi.CtxNonReplicatedQuery, "canister_query "+method
	case engine.CompositeQueryMethod:
		if !top && depth == 0 {
			return nil, rejectf(CanisterError, "Canister %s: composite query %s cannot be called from a query", id, method)
		}
		kind, entry = sysapi.CtxCompositeQuery, "canister_composite_query "+method
	default:
		return nil, rejectf(DestinationInvalid, "Canister %s has no query method '%s'", id, method)
	}
	in := q.n.input(c, c.module, kind, entry, q.budget)
	fr := &frame{c: c, heap: c.heap, stable: c.stable, globals: c.globals}
	defer fr.release()
	in.Caller, in.Arg, in.Stable = caller.Bytes(), arg, fr.stable
	if top {
		// Only the query call's target gets a certificate, not the
		// queries a composite query calls, nor its callbacks (the spec).
		if in.DataCertificate, err = q.n.dataCertificate(c); err != nil {
			return nil, err
		}
	}
	r, err := q.run(fr, in, depth)
	resp := 0
	if r != nil {
		resp = len(r.Data)
	}
	c.qstats.add(0, len(arg), resp) // the instructions are counted by run
	if r == nil && err == nil {
		return nil, rejectf(CanisterError, "Canister %s did not reply to the call", id)
	}
	return r, err
}

// run executes in on the snapshot and follows its calls (composite only).
// It returns the first response any of those executions gave, else the trap
// of the first callback that trapped, or neither a reply nor an error when
// none responded.
func (q *queryRun) run(s *frame, in *sysapi.Input, depth int) (*Reply, error) {
	c := s.c
	s.trapped = false
	out, err := q.n.execOf(c).Execute(q.ctx, c.id.String(), &exec.Request{Module: c.module, Heap: s.heap, Globals: s.globals, Input: in})
	q.n.images.used(c)
	if err != nil {
		return nil, asReject(c.id, "execute query on", err)
	}
	q.budget -= min(q.budget, out.Instructions)
	c.qstats.count(out.Instructions)
	s.trapped = out.Trapped
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
	callback := in.Context == sysapi.CtxCompositeReply || in.Context == sysapi.CtxCompositeReject
	if len(out.Calls) > 0 || callback && changed(s, out) {
		// Later callbacks see what earlier ones wrote (their own and those
		// of the other calls' callbacks): keep a working copy.
		if err := q.advance(s, out); err != nil {
			return nil, err
		}
	}
	for _, call := range out.Calls {
		if depth+1 > maxQueryDepth {
			return nil, rejectf(CanisterError, "Canister %s: composite query call depth exceeds %d", c.id, maxQueryDepth)
		}
		callee, perr := principal.FromBytes(call.Callee)
		var r *Reply
		var cerr error
		if perr != nil {
			cerr = rejectf(DestinationInvalid, "Invalid destination: %v", perr)
		} else {
			r, cerr = q.call(callee, call.Method, call.Arg, c.id, depth+1, false)
		}
		kind, target := sysapi.CtxCompositeReply, call.OnReply
		cin := q.n.input(c, c.module, kind, "", q.budget)
		cin.Caller, cin.Stable = in.Caller, s.stable
		cin.Responded = in.Responded || reply != nil || rej != nil // a second answer traps
		if cerr != nil {
			r2, ok := cerr.(*Reject)
			if !ok {
				r2 = rejectf(CanisterError, "%v", cerr)
			}
			cin.Context, target = sysapi.CtxCompositeReject, call.OnReject
			cin.RejectCode, cin.RejectMessage = uint32(r2.Code), r2.Message
		} else {
			cin.Arg = r.Data
		}
		cin.Callback = target
		cr, cerr2 := q.run(s, cin, depth)
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

// cleanup runs the cleanup callback of a call whose reply or reject callback
// (cb, as run) trapped, as the IC does in composite queries too: on the
// working state the trapped callback left untouched, and what it writes is
// seen by the callbacks that follow. A trap in it changes nothing more.
func (q *queryRun) cleanup(s *frame, target sysapi.Callback, cb *sysapi.Input) error {
	c := s.c
	in := q.n.input(c, c.module, sysapi.CtxCompositeCleanup, "", q.budget)
	in.Callback, in.Caller, in.Stable, in.RejectCode = target, cb.Caller, s.stable, cb.RejectCode
	out, err := q.n.execOf(c).Execute(q.ctx, c.id.String(), &exec.Request{Module: c.module, Heap: s.heap, Globals: s.globals, Input: in})
	if err != nil {
		return asReject(c.id, "execute cleanup callback on", err)
	}
	q.budget -= min(q.budget, out.Instructions)
	c.qstats.count(out.Instructions)
	if out.Trapped {
		return nil
	}
	return q.advance(s, out)
}

// changed reports whether out changes the frame's state.
func changed(s *frame, out *sysapi.Output) bool {
	return len(out.Heap.Pages) > 0 || out.Heap.Size != s.heap.Size() ||
		len(out.Stable.Pages) > 0 || out.Stable.Size != s.stable.Size() || !slices.Equal(out.Globals, s.globals)
}

// advance applies an execution's changes to the snapshot's working copy.
func (q *queryRun) advance(s *frame, out *sysapi.Output) error {
	heap := s.heap.Clone()
	if err := heap.Apply(out.Heap); err != nil {
		return fmt.Errorf("composite query on %s: %w", s.c.id, err)
	}
	stable := s.stable.Clone()
	if err := stable.Apply(out.Stable); err != nil {
		heap.Release()
		stable.Release()
		return fmt.Errorf("composite query on %s: %w", s.c.id, err)
	}
	s.release()
	s.heap, s.stable, s.globals = heap, stable, out.Globals
	return nil
}

// release releases the frame's working copies (clones of the committed
// memories read through their images).
func (s *frame) release() {
	if s.heap != s.c.heap {
		s.heap.Release()
	}
	if s.stable != s.c.stable {
		s.stable.Release()
	}
}
