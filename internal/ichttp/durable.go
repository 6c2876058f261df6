package ichttp

import (
	"container/heap"
	"fmt"
	"slices"
	"strings"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// StatusStore is what a node offers to keep request statuses across
// restarts (host.Node does): the node commits a call's status with the
// execution that answers it (host.IngressStatus); the interface loads them
// when it starts and writes its pruning. A Node without it keeps statuses
// in memory only. PutIngressStatuses reports its own failures (host.Node
// in the node's log, as a storage failure when it is one).
type StatusStore interface {
	IngressStatuses(fn func(key, value []byte) error) error
	PutIngressStatuses(recs []store.IngressRecord) error
}

// doneTTL is how long a status stays "done" after its expiry has passed,
// before it is forgotten: the IC keeps the ids of expired requests for a
// while too, so a client polling late learns "done", not "unknown".
const doneTTL = maxIngressTTL

// storedStatus is a status as the store keeps it (CBOR, integer keys).
type storedStatus struct {
	Status        string `cbor:"1,keyasint"` // replied, rejected, done, or executing (awaiting calls)
	Expiry        uint64 `cbor:"2,keyasint"`
	Sender        []byte `cbor:"3,keyasint"`
	Canister      []byte `cbor:"4,keyasint"`
	Reply         []byte `cbor:"5,keyasint,omitempty"`
	RejectCode    uint64 `cbor:"6,keyasint,omitempty"`
	RejectMessage string `cbor:"7,keyasint,omitempty"`
}

// statusExecuting marks a call stored while it awaited the responses of
// its own calls. Calls in flight do not survive a restart of the node, so
// one found so at start can never be answered.
const statusExecuting = "executing"

// rejectText is a reject message as a status keeps it: valid UTF-8, which
// the store's CBOR text string (read back with UTF8RejectInvalid), the
// answers' CBOR and the certified tree's clients all need. The node's
// rejects are UTF-8 as made; this keeps a status readable at the next
// start whatever one says (decodeStatus would drop it as unreadable).
func rejectText(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

func encodeStatus(st *requestStatus) []byte {
	b, err := cbor.Marshal(storedStatus{Status: st.Status, Expiry: st.Expiry, Sender: st.Sender.Bytes(), Canister: st.Canister.Bytes(),
		Reply: st.Reply, RejectCode: st.RejectCode, RejectMessage: rejectText(st.RejectMessage)})
	if err != nil {
		panic(err) // strings, blobs and naturals always encode
	}
	return b
}

func decodeStatus(b []byte) (*requestStatus, error) {
	var s storedStatus
	if err := cbor.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	sender, err := principal.FromBytes(s.Sender)
	if err != nil {
		return nil, fmt.Errorf("sender: %w", err)
	}
	canister, err := principal.FromBytes(s.Canister)
	if err != nil {
		return nil, fmt.Errorf("canister: %w", err)
	}
	st := &requestStatus{Status: s.Status, Expiry: s.Expiry, Sender: sender, Canister: canister,
		Reply: s.Reply, RejectCode: s.RejectCode, RejectMessage: s.RejectMessage}
	switch s.Status {
	case "replied", "rejected", "done":
	case statusExecuting:
		st.Status, st.Reply = "rejected", nil
		st.RejectCode = uint64(host.CanisterError)
		// Its calls' responses, or a management call's last step (a stop
		// completing, a new canister's settings), were lost.
		st.RejectMessage = "the node restarted before the call finished; its outcome is lost"
	default:
		return nil, fmt.Errorf("unknown status %q", s.Status)
	}
	return st, nil
}

// ingressStatus is the hook with which the node commits req's status. It
// keeps what the status needs, not req: the node holds it while the call
// is open, and req's argument would stay with it.
func ingressStatus(req *Request) *host.IngressStatus {
	expiry, sender, canister := req.IngressExpiry, req.Sender, req.CanisterID
	return &host.IngressStatus{Key: append([]byte(nil), req.ID[:]...), Encode: func(o host.Outcome) []byte {
		st := &requestStatus{Status: statusExecuting, Expiry: expiry, Sender: sender, Canister: canister}
		switch {
		case o.Replied:
			st.Status, st.Reply = "replied", o.Reply
		case o.Reject != nil:
			st.Status, st.RejectCode, st.RejectMessage = "rejected", uint64(o.Reject.Code), rejectText(o.Reject.Message)
		}
		return encodeStatus(st)
	}}
}

// load reads the stored statuses (at start, before serving).
func (h *Handler) load() error {
	if h.store == nil {
		return nil
	}
	type kept struct {
		id [32]byte
		st *requestStatus
	}
	var all []kept
	var bad []store.IngressRecord
	err := h.store.IngressStatuses(func(k, v []byte) error {
		st, err := decodeStatus(v)
		if len(k) != 32 || err != nil {
			h.log.Warn("ic interface: dropping an unreadable stored request status", "key", fmt.Sprintf("%x", k), "error", err)
			bad = append(bad, store.IngressRecord{Key: append([]byte(nil), k...)})
			return nil
		}
		all = append(all, kept{[32]byte(k), st})
		return nil
	})
	if err != nil {
		return fmt.Errorf("load request statuses: %w", err)
	}
	// By expiry, which is close to arrival: the replies kept are the
	// newest, and done statuses go oldest first.
	slices.SortStableFunc(all, func(a, b kept) int {
		switch {
		case a.st.Expiry < b.st.Expiry:
			return -1
		case a.st.Expiry > b.st.Expiry:
			return 1
		}
		return 0
	})
	h.mu.Lock()
	var recs []store.IngressRecord
	for _, k := range all {
		h.seq++
		k.st.seq = h.seq
		h.statuses[k.id] = k.st
		h.scheduleLocked(k.id, k.st)
		if isRefusal(k.st) {
			recs = append(recs, h.refuseLocked(k.id, k.st)...)
			continue
		}
		k.st.holds = true
		h.held[string(k.st.Sender.Bytes())]++
		if n := answerSize(k.st); n > 0 {
			h.answerBytes += n
			h.answered = append(h.answered, k.id)
		}
	}
	recs = append(append(bad, recs...), h.pruneLocked()...)
	recs = append(recs, h.capAnswersLocked()...)
	h.mu.Unlock()
	h.persist(recs)
	return nil
}

// persist writes the pruning's records (outside h.mu: it syncs). A
// failure is the store's to report (StatusStore): in memory the statuses
// are pruned all the same, and a restart prunes what it loads again.
func (h *Handler) persist(recs []store.IngressRecord) {
	if h.store == nil || len(recs) == 0 {
		return
	}
	_ = h.store.PutIngressStatuses(recs)
}

// endOf is when a status within the table stops being kept as it is:
// its expiry (with the clock drift the IC allows), or for a call still
// processing maxCallWait later, while the node may still finish it.
func endOf(st *requestStatus) uint64 {
	end := st.Expiry + uint64(maxClockDrift)
	if st.Status == "processing" {
		end += uint64(maxCallWait)
	}
	return end
}

// scheduleLocked puts id in due at st's end (again: an older entry of the
// same status is skipped or put back when it comes up). h.mu held.
func (h *Handler) scheduleLocked(id [32]byte, st *requestStatus) {
	heap.Push(&h.due, dueEntry{end: endOf(st), seq: st.seq, id: id})
	// Entries of statuses refused or gone meanwhile wait for their end;
	// rebuilt from the table when they are most of the heap.
	if len(h.due) > 1024 && len(h.due) > 2*len(h.statuses) {
		h.rebuildDueLocked()
	}
}

// rebuildDueLocked makes due again from the statuses not yet done. h.mu
// held.
func (h *Handler) rebuildDueLocked() {
	due := make(dueHeap, 0, len(h.statuses))
	for id, st := range h.statuses {
		if !st.evict && !st.refusal {
			due = append(due, dueEntry{end: endOf(st), seq: st.seq, id: id})
		}
	}
	heap.Init(&due)
	h.due = due
}

// pruneLocked moves statuses past their end (endOf) to "done", their
// replies dropped, whatever came before them: a call stuck processing
// holds back only itself. It forgets refused calls' statuses past their
// expiry, and done ones done for doneTTL (oldest first). It returns the
// store records of what changed. h.mu held.
func (h *Handler) pruneLocked() []store.IngressRecord {
	now := uint64(h.now().UnixNano())
	var recs []store.IngressRecord
	for len(h.due) > 0 && h.due[0].end < now {
		e := heap.Pop(&h.due).(dueEntry)
		st := h.statuses[e.id]
		switch {
		case st == nil || st.evict || st.seq != e.seq:
			continue // gone, done already, or another status of the same id
		case st.refusal:
			h.forgetLocked(e.id, st)
			recs = append(recs, store.IngressRecord{Key: append([]byte(nil), e.id[:]...)})
			continue
		case endOf(st) >= now:
			heap.Push(&h.due, dueEntry{end: endOf(st), seq: st.seq, id: e.id}) // still processing
			continue
		}
		if st.Status != "done" {
			h.answerBytes -= answerSize(st)
			st.Status, st.Reply, st.RejectCode, st.RejectMessage = "done", nil, 0, ""
			recs = append(recs, store.IngressRecord{Key: append([]byte(nil), e.id[:]...), Value: encodeStatus(st)})
		}
		h.releaseLocked(st) // done: evictable, no longer its sender's
		st.evict = true
		h.done = append(h.done, e.id)
	}
	for len(h.done) > 0 {
		st := h.statuses[h.done[0]]
		if st != nil && st.evict && st.Expiry+uint64(maxClockDrift+doneTTL) >= now {
			break
		}
		recs = append(recs, h.dropDoneLocked()...)
	}
	return recs
}

// dropDoneLocked forgets done[0] (if it is still a done status) and
// returns its store record. h.mu held.
func (h *Handler) dropDoneLocked() []store.IngressRecord {
	id := h.done[0]
	h.done[0] = [32]byte{}
	h.done = h.done[1:]
	st := h.statuses[id]
	if st == nil || !st.evict {
		return nil
	}
	h.forgetLocked(id, st)
	return []store.IngressRecord{{Key: append([]byte(nil), id[:]...)}}
}

// forgetLocked removes a status from the table. h.mu held.
func (h *Handler) forgetLocked(id [32]byte, st *requestStatus) {
	h.releaseLocked(st)
	if st.refusal {
		h.nRefused--
	}
	h.answerBytes -= answerSize(st)
	delete(h.statuses, id)
}

// releaseLocked stops counting st in its sender's held statuses. h.mu held.
func (h *Handler) releaseLocked(st *requestStatus) {
	if !st.holds {
		return
	}
	st.holds = false
	k := string(st.Sender.Bytes())
	if h.held[k]--; h.held[k] <= 0 {
		delete(h.held, k)
	}
}

// tableLocked is how many statuses count against maxStatuses: all but the
// refused calls'. h.mu held.
func (h *Handler) tableLocked() int { return len(h.statuses) - h.nRefused }

// makeRoomLocked forgets done statuses, oldest first, while the table is
// full. Only statuses past their expiry are done, so a replay of one is
// refused by its expiry. h.mu held.
func (h *Handler) makeRoomLocked() []store.IngressRecord {
	var recs []store.IngressRecord
	for h.tableLocked() >= maxStatuses && len(h.done) > 0 {
		recs = append(recs, h.dropDoneLocked()...)
	}
	return recs
}

// isRefusal reports whether a status is that of a call refused before
// anything ran: DESTINATION_INVALID is the system's reject of a call to no
// canister or no method (a canister's own rejects are CANISTER_REJECT).
func isRefusal(st *requestStatus) bool {
	return st.Status == "rejected" && st.RejectCode == uint64(host.DestinationInvalid)
}

// refuseLocked moves a refused call's status out of the table (and out of
// its sender's count) to the last maxRefused refused, forgetting the
// oldest beyond them, and keeps at most maxRefusalMessage of its reject
// message. It returns the store records of what it forgot. h.mu held.
func (h *Handler) refuseLocked(id [32]byte, st *requestStatus) []store.IngressRecord {
	h.releaseLocked(st)
	st.refusal = true
	if len(st.RejectMessage) > maxRefusalMessage {
		st.RejectMessage = host.ClipText(st.RejectMessage, maxRefusalMessage) + "…"
	}
	h.nRefused++
	h.refused = append(h.refused, id)
	var recs []store.IngressRecord
	for h.nRefused > maxRefused && len(h.refused) > 0 {
		old := h.refused[0]
		h.refused[0] = [32]byte{}
		h.refused = h.refused[1:]
		if o := h.statuses[old]; o != nil && o.refusal {
			h.forgetLocked(old, o)
			recs = append(recs, store.IngressRecord{Key: append([]byte(nil), old[:]...)})
		}
	}
	if len(h.refused) > 2*maxRefused { // ids pruned meanwhile
		h.refused = slices.DeleteFunc(h.refused, func(id [32]byte) bool { o := h.statuses[id]; return o == nil || !o.refusal })
	}
	return recs
}

// answerSize is what a status counts in h.answerBytes: its reply or reject
// message, which its canister chose. A refusal's message is bounded apart
// (refuseLocked), and processing and done statuses hold neither.
func answerSize(st *requestStatus) int {
	if st.refusal || (st.Status != "replied" && st.Status != "rejected") {
		return 0
	}
	return len(st.Reply) + len(st.RejectMessage)
}

// capAnswersLocked drops the oldest answers, replies and rejects, beyond
// maxAnswerBytes (their statuses become "done", as the IC prunes replies;
// they stay in the table until their expiry). h.mu held.
func (h *Handler) capAnswersLocked() []store.IngressRecord {
	var recs []store.IngressRecord
	for h.answerBytes > maxAnswerBytes && len(h.answered) > 0 {
		id := h.answered[0]
		h.answered[0] = [32]byte{}
		h.answered = h.answered[1:]
		if o := h.statuses[id]; o != nil && answerSize(o) > 0 {
			h.answerBytes -= answerSize(o)
			o.Status, o.Reply, o.RejectCode, o.RejectMessage = "done", nil, 0, ""
			recs = append(recs, store.IngressRecord{Key: append([]byte(nil), id[:]...), Value: encodeStatus(o)})
		}
	}
	// Answers that expired meanwhile leave their ids behind.
	if len(h.answered) > 1024 && len(h.answered) > 2*len(h.statuses) {
		h.answered = slices.DeleteFunc(h.answered, func(id [32]byte) bool { o := h.statuses[id]; return o == nil || answerSize(o) == 0 })
	}
	return recs
}

// dueEntry is a status's place in due: its end, then its arrival.
type dueEntry struct {
	end uint64
	seq uint64
	id  [32]byte
}

// dueHeap is a min-heap of dueEntry (container/heap).
type dueHeap []dueEntry

func (d dueHeap) Len() int { return len(d) }
func (d dueHeap) Less(i, j int) bool {
	if d[i].end != d[j].end {
		return d[i].end < d[j].end
	}
	return d[i].seq < d[j].seq
}
func (d dueHeap) Swap(i, j int) { d[i], d[j] = d[j], d[i] }
func (d *dueHeap) Push(x any)   { *d = append(*d, x.(dueEntry)) }
func (d *dueHeap) Pop() any {
	old := *d
	e := old[len(old)-1]
	*d = old[:len(old)-1]
	return e
}
