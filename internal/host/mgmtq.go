package host

import (
	"slices"
	"sync"

	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Ingress calls to the management canister do not wait in a canister's
// queue: each runs in its own goroutine, holding its argument (up to
// Messages.IngressArgBytes), for as long as the call takes — a
// stop_canister waits for the canister's call contexts to close, an
// install for the canister's lock. So those in progress are bounded here,
// in number and argument bytes, per canister they are about (its
// canister_id; calls about no canister count under aaaaa-aa) and per node;
// one more is refused at once with SYS_TRANSIENT, as a full ingress queue
// is (ingressq.go). Calls from canisters are bounded where they are made
// (call_perform, queues.go) and are not counted here.

// A caller that is not allowed to make a call about a canister is refused
// before the call is counted and before it waits for the canister's lock
// (refuseUncontrolled): otherwise anyone could fill a busy canister's bound
// with calls that are refused only once it is free, and lock its
// controllers out meanwhile.

// mgmtLoad is what management calls in progress hold.
type mgmtLoad struct {
	calls int
	bytes uint64
}

// mgmtCalls counts the management ingress calls in progress.
type mgmtCalls struct {
	mu   sync.Mutex
	per  map[principal.Principal]mgmtLoad // by the canister they are about
	node mgmtLoad
}

// admit counts a call about target with an argument of size bytes, or
// refuses it.
func (q *mgmtCalls) admit(lim MessageLimits, target principal.Principal, method string, size uint64) *Reject {
	q.mu.Lock()
	defer q.mu.Unlock()
	cur := q.per[target]
	if (lim.MgmtCalls > 0 && cur.calls >= lim.MgmtCalls) ||
		(lim.MgmtCallBytes > 0 && size > lim.MgmtCallBytes-min(cur.bytes, lim.MgmtCallBytes)) {
		return rejectf(SysTransient, "Management canister: too many calls about canister %s in progress (%d, %d bytes); %s refused, retry later",
			target, cur.calls, cur.bytes, method)
	}
	if (lim.NodeMgmtCalls > 0 && q.node.calls >= lim.NodeMgmtCalls) ||
		(lim.NodeMgmtCallBytes > 0 && size > lim.NodeMgmtCallBytes-min(q.node.bytes, lim.NodeMgmtCallBytes)) {
		return rejectf(SysTransient, "Management canister: too many calls in progress on the node (%d, %d bytes); %s refused, retry later",
			q.node.calls, q.node.bytes, method)
	}
	if q.per == nil {
		q.per = map[principal.Principal]mgmtLoad{}
	}
	q.per[target] = mgmtLoad{calls: cur.calls + 1, bytes: cur.bytes + size}
	q.node.calls++
	q.node.bytes += size
	return nil
}

// release uncounts a call admitted with the same target and size.
func (q *mgmtCalls) release(target principal.Principal, size uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	cur := q.per[target]
	cur.calls--
	cur.bytes -= size
	if cur.calls <= 0 {
		delete(q.per, target)
	} else {
		q.per[target] = cur
	}
	q.node.calls--
	q.node.bytes -= size
}

// load reports what the calls about target, and all of them, hold.
func (q *mgmtCalls) load(target principal.Principal) (about, node mgmtLoad) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.per[target], q.node
}

// ManagementTarget is the canister a management canister call is about:
// the canister_id field of its argument record (as the IC derives the
// effective canister id), or install_chunked_code's target_canister. ok is
// false for methods without one (creating a canister, raw_rand) and for
// arguments that do not decode, which the management canister itself then
// rejects.
//
// Only that field is decoded (the fields before it are read, not kept):
// the management canister decodes the whole argument once, with its own
// bounds, when it runs the call.
func ManagementTarget(method string, arg []byte) (principal.Principal, bool) {
	v, _, ok, err := (&candid.Decoder{}).Field(arg, candid.Hash(targetField(method)))
	if err != nil || !ok {
		return principal.Principal{}, false
	}
	p, ok := v.(candid.Principal)
	return p.Principal, ok
}

// targetField is the field of a management method's argument that names
// the canister the call is about.
func targetField(method string) string {
	if method == "install_chunked_code" {
		return "target_canister"
	}
	return "canister_id"
}

// ManagementHasTarget reports whether a management method's argument has
// the field ManagementTarget reads: false for methods about no canister
// (creating one, raw_rand) and for those the management canister does
// not have. For a method that has it, an argument ManagementTarget cannot
// read names no canister the call could be checked against.
func ManagementHasTarget(method string) bool {
	svc, err := managementService()
	if err != nil {
		return true // the embedded interface always parses; if not, say the least
	}
	m, ok := svc.Method(method)
	if !ok {
		return false
	}
	args := m.Args()
	if len(args) != 1 || args[0].Kind != candid.KindRecord {
		return false
	}
	_, ok = args[0].Field(candid.Hash(targetField(method)))
	return ok
}

// controllerOnly are the management methods only a canister's controllers
// may call about it; true: the canister itself may too.
var controllerOnly = map[string]bool{
	"install_code": false, "install_chunked_code": false, "uninstall_code": false,
	"update_settings": false, "start_canister": false, "stop_canister": false,
	"delete_canister": false,
	"canister_status": true, "upload_chunk": true, "stored_chunks": true, "clear_chunk_store": true,
}

// refuseUncontrolled refuses a management call about target from a caller
// that its controllers, as last committed, do not let make it. It takes no
// lock of target's and loads nothing: a canister not loaded is left to the
// call's own check, which, under target's lock, decides in every case (a
// controller removed since the snapshot is refused there).
func (n *Node) refuseUncontrolled(method string, target, caller principal.Principal) *Reject {
	self, ok := controllerOnly[method]
	if !ok || (self && caller == target) {
		return nil
	}
	n.mu.Lock()
	c, loaded := n.canisters[target]
	n.mu.Unlock()
	if !loaded {
		return nil
	}
	ctrls := c.controllers.Load()
	if ctrls == nil || slices.Contains(*ctrls, caller.String()) {
		return nil
	}
	op := method
	if method == "install_chunked_code" {
		op = "install_code" // as install's own check names it
	}
	return rejectf(CanisterError, "Only controllers of canister %s can call %s (caller %s)", target, op, caller)
}
