package host

import (
	"sync/atomic"

	"github.com/cordon-dev/cordon/internal/store"
)

// IngressStatus makes an ingress message's outcome durable: the IC HTTP
// interface's request status (internal/ichttp). The node commits the
// record Encode makes under Key in the same store transaction as the
// execution that answers the message, so a crash leaves both the state
// change and the status, or neither; an answer without such an execution
// (a refusal, a trap, the management canister) is written on its own just
// before it is delivered. The node does not read the record: ichttp
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
	if s == nil || s.final.Load() {
		return
	}
	o := Outcome{Replied: rej == nil, Reply: reply, Reject: rej}
	if err := n.store.PutIngress(s.record(o)...); err != nil {
		n.log.Error("store ingress status", "err", err)
		return
	}
	s.final.Store(true)
}

// IngressStatuses calls fn with every stored ingress status.
func (n *Node) IngressStatuses(fn func(key, value []byte) error) error { return n.store.Ingress(fn) }

// PutIngressStatuses writes (nil Value: deletes) ingress statuses on their
// own, for the interface's pruning.
func (n *Node) PutIngressStatuses(recs []store.IngressRecord) error {
	return n.store.PutIngress(recs...)
}
