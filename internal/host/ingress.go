package host

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/cordon-dev/cordon/internal/store"
)

// IngressStatus makes an ingress message's outcome durable: the IC HTTP
// interface's request status (internal/ichttp). The node commits the
// record Encode makes under Key in the same store transaction as the
// execution that answers the message, so a crash leaves both the state
// change and the status, or neither. A trap commits its status with its
// charge, a management call that changes state with that change (answerOf).
// An answer with no commit of its own (a refusal, a call that changes
// nothing, a call finished after an earlier commit stored it in progress)
// is written on its own just before it is delivered. The node does not
// read the record: ichttp
// encodes it, loads it at start and prunes it.
type IngressStatus struct {
	Key    []byte
	Encode func(Outcome) []byte

	final atomic.Bool // a final outcome is stored
}

// Outcome is what an ingress message came to: replied (Reply), rejected
// (Reject), or neither yet: it executed and committed, and awaits the
// responses of the calls it made.
type Outcome struct {
	Replied bool
	Reply   []byte
	Reject  *Reject
}

// record is the store record of outcome o (nil for a nil status).
func (s *IngressStatus) record(o Outcome) []store.IngressRecord {
	if s == nil || s.Encode == nil || len(s.Key) == 0 {
		return nil
	}
	return []store.IngressRecord{{Key: s.Key, Value: s.Encode(o)}}
}

// recordAnswer stores an answer no execution's commit carried, before it
// goes out: the client may read the status once it has the answer.
func (n *Node) recordAnswer(s *IngressStatus, reply []byte, rej *Reject) {
	if s == nil || s.final.Load() || n.noSeparateAnswer {
		return
	}
	if rej != nil && errors.Is(rej, ErrWritesStopped) {
		return // the store takes no writes (storefail.go)
	}
	o := Outcome{Replied: rej == nil, Reply: reply, Reject: rej}
	if err := n.store.PutIngress(s.record(o)...); err != nil {
		_ = n.backgroundWrite(err, "storing the request status of an answer")
		return
	}
	s.final.Store(true)
}

// answerKey carries a management call's pendingAnswer in its context.
type answerKey struct{}

// pendingAnswer is the ingress status of a management call, on its way
// to the commit that makes the call's change: a crash then leaves both or
// neither, so a replay of the request never runs the call twice.
type pendingAnswer struct {
	status *IngressStatus
	// reply makes the call's reply from what the change returns (a new
	// canister's id, a chunk's hash, nil).
	reply func(result any) ([]byte, error)
	// later: this commit does not finish the call, which another commit
	// answers; it stores the status of a call in progress, which after a
	// restart reads as rejected (the call cannot finish) and whose replay
	// runs nothing.
	later bool
}

// answering carries m's ingress status, if m is an ingress message, in ctx
// for answerOf.
func answering(ctx context.Context, m *message, reply func(result any) ([]byte, error)) context.Context {
	if m.origin.ingress == nil || m.origin.status == nil {
		return ctx
	}
	return context.WithValue(ctx, answerKey{}, &pendingAnswer{status: m.origin.status, reply: reply})
}

// answeringLater marks ctx's commit as one that does not finish the call
// (a create whose settings commit next).
func answeringLater(ctx context.Context) context.Context {
	a, _ := ctx.Value(answerKey{}).(*pendingAnswer)
	if a == nil {
		return ctx
	}
	l := *a
	l.later = true
	return context.WithValue(ctx, answerKey{}, &l)
}

// answerOf returns the ingress record replying to ctx's management call
// with result, to commit with the call's change, and done, to call once
// that commit succeeded (the answer is then not written again). Without a
// status in ctx, or a reply it cannot make, it returns nothing to commit.
func answerOf(ctx context.Context, result any) (recs []store.IngressRecord, done func()) {
	a, _ := ctx.Value(answerKey{}).(*pendingAnswer)
	if a == nil {
		return nil, func() {}
	}
	if a.later {
		recs, _ = a.outcome(Outcome{})
		return recs, func() {}
	}
	reply, err := a.reply(result)
	if err != nil {
		return nil, func() {} // answered by the separate write
	}
	return a.outcome(Outcome{Replied: true, Reply: reply})
}

// rejectionOf is answerOf for a call its commit rejects (a trapped
// install is charged).
func rejectionOf(ctx context.Context, rej *Reject) (recs []store.IngressRecord, done func()) {
	a, _ := ctx.Value(answerKey{}).(*pendingAnswer)
	if a == nil {
		return nil, func() {}
	}
	return a.outcome(Outcome{Reject: rej})
}

func (a *pendingAnswer) outcome(o Outcome) (recs []store.IngressRecord, done func()) {
	if a.status.final.Load() {
		return nil, func() {}
	}
	if recs = a.status.record(o); recs == nil {
		return nil, func() {}
	}
	return recs, func() { a.status.final.Store(true) }
}

// IngressStatuses calls fn with every stored ingress status.
func (n *Node) IngressStatuses(fn func(key, value []byte) error) error { return n.store.Ingress(fn) }

// PutIngressStatuses writes (nil Value: deletes) ingress statuses on their
// own, for the interface's pruning. A failure is in the node's log
// (backgroundWrite); the error wraps ErrWritesStopped or ErrStorageFull
// when it is the store's.
func (n *Node) PutIngressStatuses(recs []store.IngressRecord) error {
	return n.backgroundWrite(n.store.PutIngress(recs...), "pruning the IC interface's request statuses")
}
