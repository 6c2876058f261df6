package host

import (
	"sync/atomic"

	"github.com/cordon-dev/cordon/internal/store"
)

// Query statistics (canister_status query_stats). Queries run under a
// canister's read lock and never commit, so what they add is counted in
// memory, atomically, and folded into the metadata by the canister's next
// commit (an update, a callback, a settings change) and when the node
// closes. canister_status reports the committed counts plus those pending,
// so nothing a user can observe lags; a host crash loses only the counts of
// the queries since the last commit (the IC, too, aggregates them with a
// delay).

// queryStats are a canister's counts not yet committed.
type queryStats struct {
	calls, instructions, request, response atomic.Uint64
}

// add counts one query call.
func (q *queryStats) add(instructions uint64, request, response int) {
	q.calls.Add(1)
	q.instructions.Add(instructions)
	q.request.Add(uint64(request))
	q.response.Add(uint64(response))
}

// count adds instructions of a further execution of the same call (a
// composite query's callbacks).
func (q *queryStats) count(instructions uint64) { q.instructions.Add(instructions) }

// pending returns the committed stats plus the pending ones.
func (q *queryStats) pending(committed store.QueryStats) store.QueryStats {
	return store.QueryStats{
		Calls:         satAdd(committed.Calls, q.calls.Load()),
		Instructions:  satAdd(committed.Instructions, q.instructions.Load()),
		RequestBytes:  satAdd(committed.RequestBytes, q.request.Load()),
		ResponseBytes: satAdd(committed.ResponseBytes, q.response.Load()),
	}
}

// fold moves the pending counts into meta; undo puts them back when the
// commit that carries meta fails.
func (q *queryStats) fold(meta *store.Meta) (undo func()) {
	c, i, req, resp := q.calls.Swap(0), q.instructions.Swap(0), q.request.Swap(0), q.response.Swap(0)
	s := &meta.QueryStats
	s.Calls, s.Instructions = satAdd(s.Calls, c), satAdd(s.Instructions, i)
	s.RequestBytes, s.ResponseBytes = satAdd(s.RequestBytes, req), satAdd(s.ResponseBytes, resp)
	return func() {
		q.calls.Add(c)
		q.instructions.Add(i)
		q.request.Add(req)
		q.response.Add(resp)
	}
}

// flushQueryStats commits the pending query stats of every loaded canister
// (Close).
func (n *Node) flushQueryStats() {
	n.mu.Lock()
	cs := make([]*canister, 0, len(n.canisters))
	for _, c := range n.canisters {
		cs = append(cs, c)
	}
	n.mu.Unlock()
	for _, c := range cs {
		if c.qstats.calls.Load() == 0 && c.qstats.instructions.Load() == 0 {
			continue
		}
		c.mu.Lock()
		if !c.deleted {
			meta := c.meta
			undo := c.qstats.fold(&meta)
			if err := n.commit(store.Change{ID: c.id.Bytes(), Meta: meta}); err != nil {
				undo()
				n.log.Warn("query stats not saved", "canister", c.id.String(), "err", err)
			} else {
				c.meta = meta
			}
		}
		c.mu.Unlock()
	}
}
