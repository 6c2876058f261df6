package host

import (
	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/store"
)

// Cycles in flight. The cycles attached to a call leave the caller's
// balance with the commit of the execution that made it; they arrive with
// later commits of other canisters (the callee's that accepts some, the
// management canister's that deposits them or creates a canister with
// them, the caller's that takes back the refund with the response), while
// the request and the response that carry them live only in memory. So
// that no committed state, which is what a crash leaves, loses them, each
// commit that moves them records what is still in flight in the store, in
// the same transaction (store/inflight.go): the sending commit records the
// call's amount (store.Change.Sent), a delivering one lowers it or removes
// it (store.Change.Left). A node that opens its store returns what is
// still recorded to the callers: their calls did not survive.

// inFlight is the record of the call o came from, with amount left in
// flight; ok is false for a request from a user or the system, which
// carries no cycles.
func (o origin) inFlight(amount cycles.Amount) (store.CallCycles, bool) {
	if o.ingress != nil || o.system {
		return store.CallCycles{}, false
	}
	return store.CallCycles{Caller: o.canister.Bytes(), Call: o.callbackID, Amount: amount}, true
}

// delivered is the record of a request from a canister whose cycles were
// all taken (deposited, spent on a creation): none is left in flight.
func delivered(o origin) []store.CallCycles {
	if r, ok := o.inFlight(cycles.Amount{}); ok {
		return []store.CallCycles{r}
	}
	return nil
}

// refunded is the record a response's commit removes: the refund it
// credits is what was left in flight of call id of canister c.
func refunded(c *canister, id uint64) []store.CallCycles {
	return []store.CallCycles{{Caller: c.id.Bytes(), Call: id}}
}

// callFlight are the records of cycles in flight an execution's commit
// writes: its calls' cycles (sent) and what is left of the cycles it
// delivers (left).
type callFlight struct{ sent, left []store.CallCycles }
