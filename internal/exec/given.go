package exec

import (
	"slices"
	"weak"

	"github.com/cordon-dev/cordon/internal/state"
)

// The memories a sandbox was given are trimmed once it is gone.
//
// A sandbox may map the memory images an execution brings (read-only) and
// read them whenever it likes. A read of a hole allocates a page of zeros
// in the host's file, charged to the sandbox's cgroup and, once the
// sandbox is gone, to the node group, for as long as the image lives.
// Every execution trims its memories as it ends (trimImages), but a
// compromised sandbox reads between executions, and a query its caller
// gave up on goes on reading after its execution's trim; its canister need
// never run again, so no later trim comes. So when a sandbox's process is
// gone, the images of the memories it was given are trimmed too: nothing
// can fault them any more.

// maxGiven bounds the memories a sandbox remembers. At the bound, those
// released (a composite query frame's clones, once their frame ends) are
// dropped first: a sandbox is given its canister's heap and stable memory
// and its live frames' clones, so it rarely holds more, and then the
// oldest goes.
const maxGiven = 16

// noteGiven records the memories an execution sends to sb's process. Weak:
// a sandbox keeps no canister's memory alive.
func (sb *canisterSandbox) noteGiven(heap, stable *state.PageMap) {
	sb.givenMu.Lock()
	defer sb.givenMu.Unlock()
	for _, m := range []*state.PageMap{heap, stable} {
		if m == nil {
			continue
		}
		w := weak.Make(m)
		if slices.Contains(sb.given, w) {
			continue
		}
		if len(sb.given) >= maxGiven {
			sb.given = slices.DeleteFunc(sb.given, func(w weak.Pointer[state.PageMap]) bool {
				g := w.Value()
				return g == nil || !g.HasImage()
			})
		}
		if len(sb.given) >= maxGiven {
			sb.given = slices.Delete(sb.given, 0, 1)
		}
		sb.given = append(sb.given, w)
	}
}

// trimGiven punches out of the images of the memories sb's process was
// given the pages its reads allocated in their holes (state.PageMap.
// TrimImage), once that process is gone (sb.mu held, after its exit was
// awaited). In the background: a pass over a large image that was read
// through takes a while (~130 ms for 256 MiB), and this runs where other
// canisters' sandboxes are evicted to make room; TrimImage takes the
// memory's own locks, as its writers do. An image passed over less than
// its gap ago (state.TrimMinGap) has its pass scheduled for the gap's end,
// not skipped: a sandbox that dies on every message cannot make the host
// pass over its images each time either.
func (sb *canisterSandbox) trimGiven() {
	sb.givenMu.Lock()
	given := sb.given
	sb.given = nil
	sb.givenMu.Unlock()
	if len(given) == 0 {
		return
	}
	go func() {
		for _, w := range given {
			if m := w.Value(); m != nil {
				m.TrimImage()
			}
		}
	}()
}
