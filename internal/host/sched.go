package host

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// The scheduler: every canister has an input queue drained by one goroutine
// at a time, so a canister's messages run one by one, each source's in
// arrival order and the sources taking turns (inputq.go), while different
// canisters run in parallel. Requests open call contexts;
// responses run the callbacks the calls registered. Every request gets
// exactly one response: from the callee's code, or from the system when the
// callee cannot be reached, traps, or finishes without replying.

type msgKind uint8

const (
	kindRequest msgKind = iota
	kindResponse
	kindTimer
	kindHeartbeat
	kindLowMemory // canister_on_low_wasm_memory (lowmem.go)
)

// message is an entry of a canister's input queue.
type message struct {
	kind msgKind
	// Requests.
	ingress bool
	caller  principal.Principal
	method  string
	arg     []byte
	cycles  cycles.Amount // attached
	origin  origin
	// Responses.
	from       principal.Principal // the canister answering (its lane: inputq.go)
	callbackID uint64
	reply      []byte
	reject     *Reject
	refund     cycles.Amount
	// Timer tasks: the canister's codeEpoch when the task was queued.
	codeEpoch uint64
}

// origin is where the response to a request goes.
type origin struct {
	ingress    chan<- result       // a user waiting for the reply
	canister   principal.Principal // a calling canister…
	callbackID uint64              // …and the callback that awaits it
	callee     principal.Principal // the canister called, which the response comes from
	system     bool                // a timer: nobody waits
	status     *IngressStatus      // the user's call's durable status, if any
}

type result struct {
	reply *Reply
	err   error
}

// callContext is an incoming call being processed by a canister.
type callContext struct {
	origin       origin
	caller       principal.Principal
	responded    bool
	outstanding  int           // calls made and not yet answered
	available    cycles.Amount // attached cycles not yet accepted
	instructions uint64
	// deleted: the code that opened it was uninstalled (dropContexts).
	// It stays until its outstanding calls are answered, but their
	// callbacks never run.
	deleted bool
}

// callback is a call a canister made, awaiting its response.
type callback struct {
	ctxID             uint64
	onReply, onReject sysapi.Callback
	onCleanup         *sysapi.Callback
	// What the call holds until its response has run (queues.go).
	callee   string // id bytes
	memory   uint64
	reserved cycles.Amount
}

// Update sends an ingress update call and waits for its response. Its
// effects, and those of every message it causes, are committed durably as
// they happen.
func (n *Node) Update(ctx context.Context, msg Message) (_ *Reply, err error) {
	defer n.observeIngress(metrics.KindUpdate, time.Now(), &err)
	// Refusals before the message is queued have no execution to commit
	// with; answers through the queue are recorded already.
	status := msg.Status
	defer func() {
		var rj *Reject
		if status != nil && errors.As(err, &rj) {
			n.recordAnswer(status, nil, rj)
		}
	}()
	if rej := n.refuseWrites(); rej != nil {
		return nil, rej // storefail.go
	}
	if msg.Canister.IsManagement() {
		if msg.Method == "fetch_canister_logs" {
			return nil, errLogsReplicated // canlog.go
		}
		if rej := n.checkIngressArg(msg); rej != nil {
			return nil, rej
		}
		return n.managementIngress(ctx, msg, false)
	}
	// An update may write canister data: not once the disk margin is gone
	// (diskmargin.go). Management calls go on: deleting a canister makes
	// room, an install is checked on its own.
	if rej := n.refuseNoRoom(0); rej != nil {
		return nil, rej
	}
	c, err := n.get(ctx, msg.Canister)
	if err != nil {
		return nil, err
	}
	if rej := n.checkIngressArg(msg); rej != nil {
		return nil, rej
	}
	ch := make(chan result, 1)
	if rej := n.enqueue(c, &message{kind: kindRequest, ingress: true, caller: msg.Caller, method: msg.Method, arg: msg.Arg,
		origin: origin{ingress: ch, status: msg.Status}}); rej != nil {
		return nil, rej
	}
	// The reply may take long (the calls the message makes): the argument
	// is the queue's until the message runs, and nobody's after it.
	msg.Arg = nil
	select {
	case r := <-ch:
		return r.reply, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the reply of %s.%s: %w (the call may still complete)", msg.Canister, msg.Method, ctx.Err())
	}
}

// enqueue adds to a canister's queue (inputq.go) and makes sure it is
// being drained.
// An ingress message beyond the queue's bounds (ingressq.go) is not queued
// (a SYS_TRANSIENT reject): users are refused at once instead of piling up
// behind a slow canister. Messages from canisters and the system are
// bounded where they are made (queues.go) and always queued.
func (n *Node) enqueue(c *canister, m *message) *Reject {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if rej := n.admitIngress(c, m); rej != nil {
		return rej
	}
	c.queue.push(m)
	if !c.draining {
		c.draining = true
		n.busy.Add(1)
		go n.drain(c)
	}
	return nil
}

func (n *Node) drain(c *canister) {
	defer n.busy.Done()
	for {
		c.qmu.Lock()
		m := c.queue.pop()
		if m == nil {
			c.draining = false
			c.qmu.Unlock()
			return
		}
		n.dequeued(c, m)
		c.qmu.Unlock()
		if n.closing() {
			n.abandon(c, m) // what has not started does not start (ingressq.go)
			continue
		}
		n.process(c, m)
	}
}

func (n *Node) process(c *canister, m *message) {
	c.mu.Lock()
	defer n.unlock(c)
	// The pages the message's executions hand the host are held until
	// it is done: committed, or dropped (execmem.go).
	c.pages = n.pages.messageHold(n.stopping)
	defer func() {
		c.pages.close()
		c.pages = nil
	}()
	if c.deleted {
		switch m.kind {
		case kindRequest:
			n.respondTo(m.origin, nil, rejectf(DestinationInvalid, "Canister %s not found", c.id), m.cycles)
		case kindResponse:
			n.dropResponse(c.id, m)
		}
		return
	}
	// Memory held since the last charge is paid before anything runs, at
	// a node time no later than the ic0.time the message sees.
	n.chargeStorage(c, n.now())
	switch m.kind {
	case kindRequest:
		n.handleRequest(c, m)
	case kindResponse:
		n.handleResponse(c, m)
	case kindTimer:
		n.handleTimer(c, m)
	case kindHeartbeat:
		c.heartbeatQueued = false
		n.handleSystemTask(c, "canister_heartbeat")
	case kindLowMemory:
		n.handleLowMemory(c)
	}
	n.scheduleTimer(c)
	n.scheduleLowMemory(c)
}

// route delivers a message to a canister or to the management canister.
func (n *Node) route(target principal.Principal, m *message) {
	if target.IsManagement() && m.kind == kindRequest {
		n.routeManagement(m) // in order (mgmtorder.go)
		return
	}
	// The load may compile the callee: it ends when the node gives its
	// executions up, as the execution that made the call does.
	tc, err := n.get(n.stopping, target)
	if err != nil {
		switch m.kind {
		case kindRequest:
			// Only a canister that does not exist is not found (get's
			// reject); one the node could not load (its store, its
			// module's compilation) exists, and the caller may try again.
			rej, ok := err.(*Reject)
			if !ok {
				rej = n.internalReject(SysTransient, "Canister "+target.String(), err)
			}
			n.respondTo(m.origin, nil, rej, m.cycles)
		case kindResponse:
			// The caller made the call, so it is loaded (only deletion
			// unloads a canister): get fails only when it is gone.
			n.dropResponse(target, m)
		}
		return
	}
	n.enqueue(tc, m)
}

// dropResponse drops a response to canister id, which is gone: the refund
// it brings has nobody to go to and is burned, in a commit that removes
// its call's record in flight from the deleted caller's tombstone
// (store/deleted.go). Without the commit the record would stay in flight
// until the node restarts.
func (n *Node) dropResponse(id principal.Principal, m *message) {
	if m.refund.IsZero() {
		return // its record, if any, was removed with the delivery
	}
	err := n.store.BurnDropped(store.CallCycles{Caller: id.Bytes(), Call: m.callbackID})
	_ = n.backgroundWrite(err, "burning the refund of a response to a deleted canister", "canister", id.String(), "call", m.callbackID)
}

// respondTo answers a request: to the waiting user, or as a response message
// to the calling canister.
func (n *Node) respondTo(o origin, reply []byte, rej *Reject, refund cycles.Amount) {
	n.respondInstr(o, reply, rej, refund, 0)
}

// respondInstr is respondTo that tells a waiting user how many instructions
// the call context used.
func (n *Node) respondInstr(o origin, reply []byte, rej *Reject, refund cycles.Amount, instructions uint64) {
	n.observeResponse(o, rej)
	switch {
	case o.ingress != nil:
		n.recordAnswer(o.status, reply, rej)
		if rej != nil {
			o.ingress <- result{err: rej}
		} else {
			o.ingress <- result{reply: &Reply{Data: reply, Instructions: instructions}}
		}
	case o.system:
	default:
		n.route(o.canister, &message{kind: kindResponse, from: o.callee, callbackID: o.callbackID, reply: reply, reject: rej, refund: refund})
	}
}

func (n *Node) newID(c *canister) uint64 {
	c.nextID++
	return c.nextID
}

// handleRequest starts a call context for an incoming call.
func (n *Node) handleRequest(c *canister, m *message) {
	refuse := func(r *Reject) { n.respondTo(m.origin, nil, r, m.cycles) }
	if err := n.checkRunnable(c); err != nil {
		refuse(err.(*Reject))
		return
	}
	var kind sysapi.Context
	var entry string
	switch c.module.Info.Methods[m.method] {
	case engine.UpdateMethod:
		kind, entry = sysapi.CtxUpdate, "canister_update "+m.method
	case engine.QueryMethod:
		kind, entry = sysapi.CtxReplicatedQuery, "canister_query "+m.method
	case engine.CompositeQueryMethod:
		refuse(rejectf(CanisterError, "Canister %s: composite query method '%s' cannot be called in replicated mode", c.id, EchoedName(m.method)))
		return
	default:
		refuse(rejectf(DestinationInvalid, "Canister %s has no update method '%s'", c.id, EchoedName(m.method)))
		return
	}
	if kind == sysapi.CtxUpdate {
		// Below the disk margin an update's commit may be refused after
		// it ran, uncharged (diskmargin.go): refused before it runs, as
		// Update refuses ingress at the door, for calls from canisters
		// and ingress queued before the disk filled. The caller's cycles
		// go back with the reject.
		if rej := n.refuseNoRoom(0); rej != nil {
			refuse(rej)
			return
		}
	}
	var fee cycles.Amount
	if m.ingress {
		fee = cycles.New(n.cfg.Fees.IngressReception).SaturatingAdd(cycles.New(n.cfg.Fees.IngressPerByte).MulSat(uint64(len(m.arg))))
	}
	// A frozen canister refuses calls before running anything of its own.
	limit := n.cfg.UpdateInstructions
	if err := n.outOfCycles(c, "an update", n.executionFee(limit).SaturatingAdd(fee)); err != nil {
		refuse(err.(*Reject))
		return
	}
	if m.ingress {
		if err := n.inspect(context.Background(), c, Message{Canister: c.id, Method: m.method, Arg: m.arg, Caller: m.caller}); err != nil {
			refuse(n.executionReject(c.id, err))
			return
		}
	}
	cc := &callContext{origin: m.origin, caller: m.caller, available: m.cycles}
	id := n.newID(c)
	c.contexts[id] = cc
	in := n.input(c, c.module, kind, entry, limit)
	in.Caller, in.Arg, in.CyclesAvailable = m.caller.Bytes(), m.arg, m.cycles
	if kind == sysapi.CtxUpdate {
		in.Limits.Calls = n.callLimits(c, n.executionFee(limit).SaturatingAdd(fee))
	}
	out, err := n.execute(c, in, false)
	if err != nil {
		delete(c.contexts, id)
		rej := n.executionReject(c.id, err)
		if sandboxFault(err) {
			// Charged as a trap at its whole limit, its answer with it.
			var ingress []store.IngressRecord
			if m.origin.ingress != nil {
				ingress = m.origin.status.record(Outcome{Reject: rej})
			}
			if err := n.chargeOnly(c, in.Limits.Instructions, nil, fee, cycles.Amount{}, ingress...); err != nil {
				refuse(n.internalReject(CanisterError, "Canister "+c.id.String(), err))
				return
			}
			if ingress != nil {
				m.origin.status.final.Store(true)
			}
		}
		refuse(rej)
		return
	}
	if out.Trapped || kind == sysapi.CtxReplicatedQuery {
		delete(c.contexts, id)
		// The answer is known before the charge commits: its status
		// commits with it (ingress.go).
		var ans Outcome
		switch {
		case out.Trapped:
			ans.Reject = rejectf(CanisterError, "Error from Canister %s: %s", c.id, out.TrapMessage)
		case out.Response == sysapi.Replied:
			ans.Replied, ans.Reply = true, out.Reply
		case out.Response == sysapi.Rejected:
			ans.Reject = &Reject{Code: CanisterReject, Message: out.RejectMessage}
		default:
			ans.Reject = rejectf(CanisterError, "Canister %s did not reply to the call", c.id)
		}
		var ingress []store.IngressRecord
		if m.origin.ingress != nil {
			ingress = m.origin.status.record(ans)
		}
		if err := n.chargeOnly(c, out.Instructions, logsOf(out), fee, cycles.Amount{}, ingress...); err != nil {
			var rej *Reject
			if !errors.As(err, &rej) {
				rej = n.internalReject(CanisterError, "Canister "+c.id.String(), err)
			}
			refuse(rej)
			return
		}
		if ingress != nil {
			m.origin.status.final.Store(true)
		}
		if ans.Replied {
			n.respondInstr(m.origin, out.Reply, nil, m.cycles, out.Instructions)
		} else {
			refuse(ans.Reject)
		}
		n.stopIfIdle(c)
		return
	}
	n.finish(c, id, cc, out, fee, cycles.Amount{}, nil, nil)
}

// execute runs one execution of c from its committed state. One that ends
// beyond c's memory limits comes back as a trap (memory.go).
func (n *Node) execute(c *canister, in *sysapi.Input, _ bool) (out *sysapi.Output, err error) {
	// A memory unbacked while the canister was cold (images.go) returns to
	// one host copy before it runs again (c.mu is held exclusively).
	c.heap.Back()
	c.stable.Back()
	req := &exec.Request{Module: c.module, Heap: c.heap, Globals: c.globals, Input: in}
	if c.pages != nil && !in.Context.IsQuery() {
		// c.pages holds what the output reserves until the message is
		// done, unless nothing of it will be committed: then it is given
		// back at once (before a cleanup callback runs, which waits for
		// room with nothing held). A replicated query's changes are
		// dropped as it returns: a sandbox reports none.
		ep := c.pages.execution(req)
		defer func() {
			if held := ep.end(); err != nil || out.Trapped {
				c.pages.release(held)
			}
		}()
	}
	out, err = n.execOf(c).Execute(n.stopping, c.id.String(), req)
	n.images.used(c)
	if err == nil {
		checkMemory(c.meta.Settings, in.Context, c.moduleBytes, chunkStoreBytes(c.meta), out)
		if !out.Trapped && !in.Context.IsQuery() {
			n.checkGrowthPaid(c, in, out)
		}
		if !out.Trapped && !in.Context.IsQuery() {
			if ok, msg := n.reserveMemory(c.id, out.Heap.Size, out.Stable.Size); !ok {
				out.Trapped, out.TrapMessage = true, msg
			}
		}
	}
	return out, err
}

// checkInstallGrowthPaid is checkGrowthPaid for an install's last
// execution, whose state has a module of moduleBytes, and whose charge
// will be fee. As on the IC, which checks the freezing limit of the new
// memory when install_code ends, after its fee: the install may have
// burned what would have paid it (it has no Keep), and then the check
// fails whenever the new memory has a freezing limit at all.
func (n *Node) checkInstallGrowthPaid(c *canister, in *sysapi.Input, out *sysapi.Output, moduleBytes uint64, fee cycles.Amount) {
	if out.Trapped {
		return
	}
	old := usageOf(c)
	grown := memUsage{heap: out.Heap.Size, stable: out.Stable.Size, module: moduleBytes, globals: globalsBytes(out.Globals), chunks: old.chunks}
	if msg := n.growthUnpaid(c.meta.Settings, old, grown, in.Balance.SaturatingSub(out.CyclesBurned), fee); msg != "" {
		out.Trapped, out.TrapMessage = true, msg
	}
}

// checkGrowthPaid turns an execution of c that grew its memory beyond
// what its balance can keep for the freezing limit into a trap
// (growthUnpaid). The IC traps at the grow; here the sandbox cannot know
// the fee's terms, so the host checks what the execution ends with, as for
// the other memory limits (checkMemory): the state is discarded alike, and
// the execution is charged what it ran. Every context that commits state
// and has call limits is checked: updates and system tasks as on the IC,
// and callbacks and cleanups too, which the IC leaves unchecked; a
// canister here is frozen, never uninstalled, at a zero balance, so an
// unchecked callback could hold unpaid memory for good.
func (n *Node) checkGrowthPaid(c *canister, in *sysapi.Input, out *sysapi.Output) {
	l := in.Limits.Calls
	if l == nil {
		return
	}
	old := usageOf(c)
	grown := old
	grown.heap, grown.stable = out.Heap.Size, out.Stable.Size
	// The balance the execution leaves (commitExecution), and the most its
	// charge may take: what it keeps beyond the freezing limit it started
	// with (callLimits), as the IC holds the prepaid fee back during the
	// execution.
	fees, reserved, _ := n.callCharges(out.Calls)
	bal := in.Balance.SaturatingAdd(out.CyclesAccepted).SaturatingSub(out.CyclesSent).SaturatingSub(out.CyclesBurned).
		SaturatingSub(fees).SaturatingSub(reserved)
	fee := l.Keep.SaturatingSub(n.freezingLimit(c.meta.Settings, old))
	if msg := n.growthUnpaid(c.meta.Settings, old, grown, bal, fee); msg != "" {
		out.Trapped, out.TrapMessage = true, msg
	}
}

// sandboxFault reports whether an execution failed because its sandbox
// did: the watchdog killed it, it crashed (once more after a retry on a
// fresh sandbox, which Execute returns as one failure) or it broke the
// protocol. The sandbox runs the canister's code, and under the threat
// model may run whatever native code the canister brings, so such an
// execution is charged as a trap at its whole instruction limit: nothing
// it sends proves it ran less. A failure of the host's own (the node
// closing, a caller giving up, a sandbox that could not start or load) is
// not the canister's doing and is not charged; nor is a sandbox the kernel
// OOM-killed within its own memory limit because the node's sandboxes
// together reached theirs (exec.FaultNodeMemory, SYS_TRANSIENT).
func sandboxFault(err error) bool {
	var se *exec.SandboxError
	if !errors.As(err, &se) || se.Op != "execute" {
		return false
	}
	switch se.Fault {
	case exec.FaultTimeout, exec.FaultCrash, exec.FaultViolation:
		return true
	}
	return false
}

// finish commits a successful execution in call context id and acts on it:
// sends its calls, delivers its response, closes the context when done.
// credit is a refund a response brought, left the records in flight its
// commit removes with it (inflight.go). It reports whether the execution
// was committed. If the disk margin refused the commit and refused is
// set, finish calls it and does nothing more: the caller fails the
// execution (a callback, whose cleanup runs then).
func (n *Node) finish(c *canister, id uint64, cc *callContext, out *sysapi.Output, fee, credit cycles.Amount, left []store.CallCycles, refused func()) bool {
	// A user's call is answered by this execution, or still open: its
	// status commits with it (ingress.go).
	var ingress []store.IngressRecord
	final := false
	if st := cc.origin.status; st != nil && !cc.responded {
		switch out.Response {
		case sysapi.Replied:
			ingress, final = st.record(Outcome{Replied: true, Reply: out.Reply}), true
		case sysapi.Rejected:
			ingress, final = st.record(Outcome{Reject: &Reject{Code: CanisterReject, Message: out.RejectMessage}}), true
		default:
			if len(out.Calls) > 0 || cc.outstanding > 0 {
				ingress = st.record(Outcome{})
			} else {
				// closeIfDone will answer this one: as it will.
				ingress, final = st.record(Outcome{Reject: rejectf(CanisterError, "Canister %s did not reply to the call", c.id)}), true
			}
		}
	}
	// The calls' ids are taken now: their cycles are recorded under them
	// by the commit that sends them; so is what this execution accepted
	// of the cycles its call context came with.
	cbIDs := make([]uint64, len(out.Calls))
	flight := &callFlight{left: left}
	for i := range out.Calls {
		cbIDs[i] = n.newID(c)
		if cyc := out.Calls[i].Cycles; !cyc.IsZero() {
			flight.sent = append(flight.sent, store.CallCycles{Caller: c.id.Bytes(), Call: cbIDs[i], Amount: cyc})
		}
	}
	if !out.CyclesAccepted.IsZero() {
		if r, ok := cc.origin.inFlight(cc.available.SaturatingSub(out.CyclesAccepted)); ok {
			flight.left = append(flight.left, r)
		}
	}
	if err := n.commitExecution(c, out, fee, credit, flight, ingress); err != nil {
		noRoom := errors.Is(err, ErrDiskNearlyFull)
		if !noRoom {
			// A refusal by the disk margin was logged, paced, as it was
			// refused (noRoomReject): a canister decides how often.
			n.log.Error("commit failed", "canister", c.id.String(), "err", err)
		}
		switch {
		case noRoom && refused != nil:
			refused()
			return false
		case noRoom:
			// Charged as a trap, the refund credited with it: the
			// margin refuses what the execution changed, and the
			// canister chooses how much (up to gigabytes), so it could
			// otherwise run every message for nothing on any node with
			// less free than twice that above the margin (diskmargin.go).
			if err := n.charge(c, out.Instructions, logsOf(out), fee, credit, left, nil); err != nil {
				n.log.Error("charge of an execution the disk margin refused failed", "canister", c.id.String(), "err", err)
			}
		case !credit.IsZero():
			// The refund a response brought is the caller's all the same
			// (what its record in flight holds: none without a refund).
			if err := n.charge(c, 0, nil, cycles.Amount{}, credit, left, nil); err != nil {
				n.log.Error("credit of a refund failed", "canister", c.id.String(), "err", err)
			}
		}
		if !cc.responded {
			cc.responded = true
			var rej *Reject
			if !errors.As(err, &rej) {
				rej = n.internalReject(CanisterError, "Canister "+c.id.String(), err)
			}
			n.respondTo(cc.origin, nil, rej, cc.available)
			cc.available = cycles.Amount{}
		}
		n.closeIfDone(c, id, cc)
		return false
	}
	if final {
		cc.origin.status.final.Store(true)
	}
	cc.available = cc.available.SaturatingSub(out.CyclesAccepted)
	cc.instructions += out.Instructions
	res := n.callReservation()
	for i := range out.Calls {
		call := &out.Calls[i]
		callee, err := principal.FromBytes(call.Callee)
		cbID := cbIDs[i]
		cb := &callback{ctxID: id, onReply: call.OnReply, onReject: call.OnReject, onCleanup: call.OnCleanup,
			callee: string(call.Callee), memory: n.callMemory(call), reserved: res}
		c.callbacks[cbID] = cb
		cc.outstanding++
		held := n.holdCall(c, cb)
		req := &message{kind: kindRequest, caller: c.id, method: call.Method, arg: call.Arg, cycles: call.Cycles,
			origin: origin{canister: c.id, callbackID: cbID, callee: callee}}
		switch {
		case !held:
			n.respondTo(req.origin, nil, rejectf(SysTransient, "Canister %s: the call to %s could not be enqueued: the node's message limits are reached", c.id, callee), call.Cycles)
		case err != nil:
			n.respondTo(req.origin, nil, rejectf(DestinationInvalid, "Invalid destination: %v", err), call.Cycles)
		default:
			n.route(callee, req)
		}
	}
	if out.Response != sysapi.NoResponse && !cc.responded {
		cc.responded = true
		if out.Response == sysapi.Replied {
			n.respondInstr(cc.origin, out.Reply, nil, cc.available, cc.instructions)
		} else {
			n.respondTo(cc.origin, nil, &Reject{Code: CanisterReject, Message: out.RejectMessage}, cc.available)
		}
		cc.available = cycles.Amount{}
	}
	n.closeIfDone(c, id, cc)
	return true
}

// closeIfDone ends a call context with no outstanding calls; one that was
// never answered gets the system's reject.
func (n *Node) closeIfDone(c *canister, id uint64, cc *callContext) {
	if cc.outstanding > 0 {
		return
	}
	if !cc.responded {
		cc.responded = true
		n.respondTo(cc.origin, nil, rejectf(CanisterError, "Canister %s did not reply to the call", c.id), cc.available)
		cc.available = cycles.Amount{}
	}
	delete(c.contexts, id)
	n.stopIfIdle(c)
}

// dropContexts deletes c's call contexts as uninstall_code does (c.mu held
// exclusively). The IC rejects every call the canister has not answered,
// with the cycles it did not accept, and processes none of the responses
// still to come, even once code is installed again (interface
// specification, uninstall_code): their contexts stay, marked deleted,
// only so that each response releases what its call holds and credits its
// refund (handleResponse). dropContexts changes nothing itself: it returns
// the ingress statuses of the users' calls it rejects, for the uninstall's
// commit, and deliver, to call once that commit succeeded. Contexts are
// memory only: a restart drops them, and their calls, anyway.
func (n *Node) dropContexts(c *canister) (ingress []store.IngressRecord, deliver func()) {
	rej := &Reject{Code: CanisterReject, Message: "Canister has been uninstalled."}
	ids := slices.Sorted(maps.Keys(c.contexts))
	var stored []*IngressStatus
	for _, id := range ids {
		cc := c.contexts[id]
		if st := cc.origin.status; !cc.responded && cc.origin.ingress != nil && st != nil && !st.final.Load() {
			if recs := st.record(Outcome{Reject: rej}); recs != nil {
				ingress = append(ingress, recs...)
				stored = append(stored, st)
			}
		}
	}
	return ingress, func() {
		for _, st := range stored {
			st.final.Store(true)
		}
		for _, id := range ids {
			cc := c.contexts[id]
			cc.deleted = true
			if !cc.responded {
				cc.responded = true
				n.respondTo(cc.origin, nil, rej, cc.available)
				cc.available = cycles.Amount{}
			}
			if cc.outstanding == 0 {
				delete(c.contexts, id)
			}
		}
		n.stopIfIdle(c)
	}
}

// handleResponse runs the callback a response is for.
func (n *Node) handleResponse(c *canister, m *message) {
	cb, ok := c.callbacks[m.callbackID]
	if !ok {
		n.log.Warn("response for an unknown callback dropped", "canister", c.id.String(), "callback", m.callbackID)
		return
	}
	delete(c.callbacks, m.callbackID)
	size := len(m.reply)
	if m.reject != nil {
		size = len(m.reject.Message)
	}
	n.releaseCall(c, cb, size) // what its response did not cost is in the balance again
	cc := c.contexts[cb.ctxID]
	if cc == nil {
		if !m.refund.IsZero() {
			_ = n.chargeRefund(c, 0, nil, m.refund, m.callbackID)
		}
		return
	}
	cc.outstanding--
	if cc.deleted || c.module == nil {
		// Its code was uninstalled while the call was out: the refund is
		// credited, nothing runs, not even in code installed since.
		_ = n.chargeRefund(c, 0, nil, m.refund, m.callbackID)
		n.closeIfDone(c, cb.ctxID, cc)
		return
	}
	kind, target := sysapi.CtxReply, cb.onReply
	if m.reject != nil {
		kind, target = sysapi.CtxReject, cb.onReject
	}
	// The callback and, if it fails, its cleanup are one message: together
	// within one instruction limit, which the call's reservation prepaid
	// (callReservation), charged once. The callback runs without the
	// cleanup's share, which the cleanup gets with what the callback left.
	limit := n.cfg.UpdateInstructions
	in := n.input(c, c.module, kind, "", limit-cleanupReserve(limit))
	in.Limits.Calls = n.callLimits(c, n.executionFee(limit))
	in.Callback, in.Caller = target, cc.caller.Bytes()
	in.Balance = in.Balance.SaturatingAdd(m.refund)
	in.CyclesRefunded, in.CyclesAvailable = m.refund, cc.available
	if m.reject != nil {
		in.RejectCode, in.RejectMessage = uint32(m.reject.Code), m.reject.Message
	} else {
		in.Arg = m.reply
	}
	in.CallContextInstr = cc.instructions
	in.Responded = cc.responded // a second answer traps (sysapi), as on the IC
	out, err := n.execute(c, in, false)
	if err == nil && !out.Trapped {
		refused := false
		if n.finish(c, cb.ctxID, cc, out, cycles.Amount{}, m.refund, refunded(c, m.callbackID), func() { refused = true }) || !refused {
			return
		}
		// The disk margin refused its commit: it failed as a trap does,
		// so its cleanup runs (and commits, if what it changes fits),
		// as the canister relies on when a callback fails: a lock it
		// holds across the call is released there.
		out.Trapped, out.TrapMessage = true, ErrDiskNearlyFull.Error()
	}
	// What the failed callback is charged: what it ran, or its whole
	// limit when its sandbox failed it; nothing when the host did.
	var used uint64
	var logs []sysapi.LogLine
	trap := ""
	switch {
	case err == nil:
		used, logs, trap = out.Instructions, logsOf(out), out.TrapMessage
	case sandboxFault(err):
		used, trap = in.Limits.Instructions, err.Error()
	default:
		trap = err.Error()
	}
	n.failResponse(c, cb, cc, m, limit, used, logs)
	if !cc.responded && cc.outstanding == 0 {
		cc.responded = true
		n.respondTo(cc.origin, nil, rejectf(CanisterError, "Error from Canister %s: %s", c.id, trap), cc.available)
		cc.available = cycles.Amount{}
	}
	n.closeIfDone(c, cb.ctxID, cc)
}

// cleanupReservePercent is the share of a response's instruction limit held
// back from its reply or reject callback for its cleanup callback (IC:
// RESERVED_CLEANUP_INSTRUCTIONS_IN_PERCENT, execution/response.rs).
const cleanupReservePercent = 5

// cleanupReserve is the cleanup's share of a response's limit.
func cleanupReserve(limit uint64) uint64 {
	if limit > math.MaxUint64/cleanupReservePercent {
		return limit / 100 * cleanupReservePercent
	}
	return limit * cleanupReservePercent / 100
}

// failResponse charges a response whose reply or reject callback failed,
// used instructions and logs, and runs the call's cleanup callback first if
// it has one, with what the callback left of the response's limit (the
// cleanup's reserve included). The two are one message, charged once with
// one base fee: a cleanup that succeeds commits its state with the
// callback's instructions and logs; one that fails adds its own (its whole
// limit when its sandbox failed it) to the callback's charge. Either commit
// credits the refund m brought.
func (n *Node) failResponse(c *canister, cb *callback, cc *callContext, m *message, limit, used uint64, logs []sysapi.LogLine) {
	if cb.onCleanup != nil {
		cin := n.input(c, c.module, sysapi.CtxCleanup, "", limit-min(used, limit))
		cin.Callback, cin.Caller = *cb.onCleanup, cc.caller.Bytes()
		cin.Balance = cin.Balance.SaturatingAdd(m.refund)
		// No calls from a cleanup; the limits give what it must keep.
		cin.Limits.Calls = n.callLimits(c, n.executionFee(limit))
		if m.reject != nil {
			cin.RejectCode = uint32(m.reject.Code)
		}
		cout, err := n.execute(c, cin, false)
		switch {
		case err == nil && !cout.Trapped:
			own, ownLogs := cout.Instructions, cout.Logs
			cout.Instructions = satAdd(used, own)
			cout.Logs = append(slices.Clip(logs), ownLogs...)
			err := n.commitExecution(c, cout, cycles.Amount{}, m.refund, &callFlight{left: refunded(c, m.callbackID)}, nil)
			if err == nil {
				return
			}
			n.log.Error("commit of cleanup failed", "canister", c.id.String(), "err", err)
			used, logs = satAdd(used, own), append(slices.Clip(logs), ownLogs...)
		case err == nil:
			used, logs = satAdd(used, cout.Instructions), append(slices.Clip(logs), logsOf(cout)...)
		case sandboxFault(err):
			used = satAdd(used, cin.Limits.Instructions)
		}
	}
	_ = n.chargeRefund(c, used, logs, m.refund, m.callbackID)
}

// scheduleTimer queues canister_global_timer when the global timer is due
// (c.mu held exclusively). The IC deactivates the timer before running
// it; here the task takes it in memory only: executions see it
// deactivated (globalTimer), every commit meanwhile keeps it armed, and
// the task's own commit deactivates it (handleTimer). A crash before that
// leaves it armed, and it fires after the restart: at least once, as a
// message whose execution was not committed never happened. One task at a
// time, so without a crash it fires once.
//
// The armed value is the store's only record of the run the task owes, so
// an execution that replaces it while it is taken (a message queued
// before the task sets the timer again) records the run on its own:
// Meta.TimerPending (setGlobalTimer), which the task's commit clears. A
// restart finds it and queues the run, and the new deadline stays armed
// for a run of its own.
//
// A frozen canister's timer is not taken: it stays armed and runs once
// the canister is topped up, as on the IC, whose timer task cannot be
// prepaid then and leaves the timer as it was (timerFrozen).
func (n *Node) scheduleTimer(c *canister) {
	switch {
	case timerOwed(c):
		if n.timerFrozen(c) {
			return
		}
		c.timerQueued = true // it takes nothing: the armed value is another run's
	case !timerRunnable(c) || c.timerQueued || c.meta.GlobalTimer == 0:
		return
	case uint64(n.clock().UnixNano()) < c.meta.GlobalTimer:
		return
	case n.timerFrozen(c):
		return
	default:
		c.timerQueued, c.timerTaken = true, true
	}
	n.enqueue(c, &message{kind: kindTimer, codeEpoch: c.codeEpoch})
}

// timerOwed: c owes a run recorded in Meta.TimerPending alone and no task
// for it waits (c.mu held). A module without the export runs it as
// nothing, which clears it.
func timerOwed(c *canister) bool {
	return c.meta.TimerPending && !c.timerQueued && !c.deleted && c.module != nil && c.meta.Status == "running"
}

// timerFrozen: c's balance cannot pay for a run of canister_global_timer
// above its freezing limit (c.mu held): the run handleSystemTask would
// skip. Only a commit under c's lock raises the balance or lowers the
// limit, and its unlock reschedules c (timers.go nextDue).
func (n *Node) timerFrozen(c *canister) bool {
	return !n.affords(c, n.executionFee(n.cfg.UpdateInstructions))
}

// setGlobalTimer sets the global timer in meta, the copy of c.meta an
// execution's commit is about to store, to v (c.mu held exclusively). A
// value a queued task took is replaced: the run it owes goes into the
// same commit on its own. The caller clears c.timerTaken once the commit
// is durable. A change of module does not use it: that deactivates the
// timer and drops the run owed (deactivateTimer).
func setGlobalTimer(c *canister, meta *store.Meta, v uint64) {
	if c.timerTaken {
		meta.TimerPending = true
	}
	meta.GlobalTimer = v
}

// deactivateTimer is the global timer of meta, the copy of c.meta an
// install or uninstall is about to store: the interface specification
// deactivates it on every change of the module, so a run the old module
// owed is not owed to the new one, which has only the timer its
// canister_init or canister_post_upgrade set (v, 0 if none). Once the
// commit is durable the caller calls c.moduleChanged.
func deactivateTimer(meta *store.Meta, v uint64) {
	meta.GlobalTimer, meta.TimerPending = v, false
}

// moduleChanged records that c's new module (or none) is committed: a
// timer task queued before runs nothing (handleTimer), and the value it
// took is gone with the old module.
func (c *canister) moduleChanged() {
	c.timerTaken = false
	c.codeEpoch++
}

// globalTimer is c's global timer as executions and status see it: 0 once
// a queued task has taken it (c.mu held).
func (c *canister) globalTimer() uint64 {
	if c.timerTaken {
		return 0
	}
	return c.meta.GlobalTimer
}

// handleTimer runs the global timer's task. A timer it took is deactivated
// with the task's commit, and a run it owed is cleared with it: the
// execution's, its trap's charge, or one of its own when the task commits
// nothing (a module without the export, or an execution that could not
// run). A timer set again since the task was queued by a message before
// it was not taken: it stays, and the task runs all the same, as it would
// on the IC.
//
// Two things make the task run nothing. The module it was queued for was
// replaced or removed: that change deactivated the timer and dropped the
// run (deactivateTimer), so the new module never runs the old one's
// timer. Or the canister cannot run it now (stopped or stopping, or
// frozen): then nothing changes, as if it had not been scheduled: a taken
// timer is armed again (meta and the store still hold it) and a run owed
// stays owed, and they run after a start or a top-up.
func (n *Node) handleTimer(c *canister, m *message) {
	c.timerQueued = false
	taken, owed := c.timerTaken, c.meta.TimerPending
	c.timerTaken = false
	switch {
	case m.codeEpoch != c.codeEpoch:
		return
	case c.meta.Status != "running":
		return
	case c.module != nil && c.module.Info.HasGlobalTimer && n.timerFrozen(c):
		n.log.Debug("global timer skipped: out of cycles", "canister", c.id.String())
		return
	}
	if taken {
		c.meta.GlobalTimer = 0
	}
	c.meta.TimerPending = false
	if !n.handleSystemTask(c, "canister_global_timer") && (taken || owed) {
		n.commitMeta(c, "deactivate the global timer")
	}
}

// commitMeta commits c's metadata as it is in memory (c.mu held
// exclusively); a failure leaves it to c's next commit.
func (n *Node) commitMeta(c *canister, what string) {
	if err := n.commit(store.Change{ID: c.id.Bytes(), Meta: c.meta}); err != nil {
		n.log.Error(what, "canister", c.id.String(), "err", err)
	}
}

// handleSystemTask runs canister_global_timer, canister_heartbeat or
// canister_on_low_wasm_memory, and reports whether it committed anything.
func (n *Node) handleSystemTask(c *canister, entry string) bool {
	if c.module == nil || c.meta.Status != "running" {
		return false
	}
	switch info := &c.module.Info; entry {
	case "canister_global_timer":
		if !info.HasGlobalTimer {
			return false
		}
	case "canister_heartbeat":
		if !info.HasHeartbeat {
			return false
		}
		if n.store.Room(0) != nil {
			// Below the disk margin (diskmargin.go) its commit may be
			// refused after it ran, uncharged, every interval: skipped,
			// as an update is refused. Debug: the refusals are logged,
			// paced, where commits are refused.
			n.log.Debug("heartbeat skipped: the node's disk is nearly full", "canister", c.id.String())
			return false
		}
	case "canister_on_low_wasm_memory":
		if !info.HasLowWasmMemory {
			return false
		}
	default:
		return false
	}
	limit := n.cfg.UpdateInstructions
	if err := n.outOfCycles(c, entry, n.executionFee(limit)); err != nil {
		// Debug, as the trap below: a canister decides how often this
		// happens (a heartbeat every second, a timer every tick), and
		// what it causes must not fill the operator's log.
		n.log.Debug("system task skipped: out of cycles", "canister", c.id.String(), "entry", entry)
		return false
	}
	// A system task has nobody to answer: its context counts as answered,
	// so neither it nor its callbacks may reply.
	cc := &callContext{origin: origin{system: true}, caller: principal.Management(), responded: true}
	id := n.newID(c)
	c.contexts[id] = cc
	in := n.input(c, c.module, sysapi.CtxSystemTask, entry, limit)
	in.Caller, in.Responded = principal.Management().Bytes(), cc.responded
	in.Limits.Calls = n.callLimits(c, n.executionFee(limit))
	if testHookTaskStarts != nil {
		testHookTaskStarts(c.id, entry)
	}
	out, err := n.execute(c, in, false)
	if err != nil || out.Trapped {
		delete(c.contexts, id)
		committed := false
		switch {
		case err == nil:
			committed = n.chargeOnly(c, out.Instructions, logsOf(out), cycles.Amount{}, cycles.Amount{}) == nil
			// The whole message is in the canister's own log.
			n.log.Debug("system task trapped", "canister", c.id.String(), "entry", entry, "trap", truncateText(out.TrapMessage, 256))
		case sandboxFault(err):
			committed = n.chargeOnly(c, limit, nil, cycles.Amount{}, cycles.Amount{}) == nil
		}
		n.stopIfIdle(c)
		return committed
	}
	return n.finish(c, id, cc, out, cycles.Amount{}, cycles.Amount{}, nil, nil)
}

// testHookTaskStarts, set by tests before any node opens, is called as a
// system task's execution starts.
var testHookTaskStarts func(id principal.Principal, entry string)

// HeartbeatInterval is how often canister_heartbeat runs (the IC runs it
// about once per round, roughly every second).
const HeartbeatInterval = time.Second

// timerLoop fires due timers and heartbeats and charges storage fees of
// loaded canisters until the node closes, taking from the deadline heap
// only the canisters that are due (timers.go). It never waits for a
// canister: one executing a long message holds its lock for as long as
// that runs, and waiting for it would hold back every other canister's
// timers; such a canister gets a goroutine that takes its lock and does the
// work, at most one per canister.
func (n *Node) timerLoop() {
	t := time.NewTicker(timerTick)
	defer t.Stop()
	for {
		select {
		case <-n.done:
			return
		case <-t.C:
		}
		n.timerTick()
	}
}

// timerWorkDo does c's timer-loop work (c.mu held exclusively).
func (n *Node) timerWorkDo(c *canister, now uint64) {
	if c.deleted {
		return
	}
	if n.storageDue(c, now) {
		if err := n.chargeStorageNow(c); err != nil {
			n.log.Error("storage fee", "canister", c.id.String(), "err", err)
		}
	}
	n.scheduleTimer(c)
	if heartbeatWanted(c) && now >= c.nextBeat {
		c.heartbeatQueued = true // at most one heartbeat waits in the queue
		c.nextBeat = now + uint64(HeartbeatInterval)
		n.enqueue(c, &message{kind: kindHeartbeat})
	}
	// A hook left ready by a restart, a start or a settings change.
	n.scheduleLowMemory(c)
}

// stopIfIdle completes a pending stop once no call context is open.
func (n *Node) stopIfIdle(c *canister) {
	if c.meta.Status != "stopping" || len(c.contexts) > 0 {
		return
	}
	meta := c.meta
	meta.Status = "stopped"
	if err := n.commit(store.Change{ID: c.id.Bytes(), Meta: meta}); err != nil {
		n.log.Error("complete stop", "canister", c.id.String(), "err", err)
		return
	}
	c.meta = meta
	if c.stopping != nil {
		c.stopping.end(nil)
		c.stopping = nil
	}
}

// truncateText cuts s to at most n bytes at a character boundary, marking
// the cut.
func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
