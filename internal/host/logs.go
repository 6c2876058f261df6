package host

import (
	"context"
	"sync"

	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// logRing keeps a canister's most recent debug_print lines in memory.
type logRing struct {
	mu      sync.Mutex
	keep    int
	entries []store.LogEntry
	nextSeq uint64
	changed chan struct{} // closed (and replaced) when lines are published
}

func newLogRing(keep int) *logRing {
	if keep <= 0 {
		keep = 1
	}
	return &logRing{keep: keep}
}

func (r *logRing) load(es []store.LogEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries[:0], es...)
	r.trim()
	if len(es) > 0 {
		r.nextSeq = es[len(es)-1].Seq + 1
	}
}

// clear drops the kept lines (a reinstall or uninstall purges the log);
// numbering goes on. Followers see only lines published afterwards.
func (r *logRing) clear() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = nil
}

// next returns the sequence number of the next line.
func (r *logRing) next() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nextSeq
}

// continueFrom makes numbering go on from at least seq (after a cleared log
// was loaded).
func (r *logRing) continueFrom(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextSeq = max(r.nextSeq, seq)
}

// prepare assigns sequence numbers to new lines without publishing them.
func (r *logRing) prepare(es []store.LogEntry) []store.LogEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range es {
		es[i].Seq = r.nextSeq + uint64(i)
	}
	return es
}

// publish makes committed lines visible.
func (r *logRing) publish(es []store.LogEntry) {
	if len(es) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, es...)
	r.nextSeq = es[len(es)-1].Seq + 1
	r.trim()
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

func (r *logRing) trim() {
	if extra := len(r.entries) - r.keep; extra > 0 {
		r.entries = append([]store.LogEntry(nil), r.entries[extra:]...)
	}
}

func (r *logRing) snapshot() []store.LogEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]store.LogEntry(nil), r.entries...)
}

// since returns the kept lines with Seq >= seq, and a channel closed when
// more are published.
func (r *logRing) since(seq uint64) ([]store.LogEntry, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []store.LogEntry
	for i, e := range r.entries {
		if e.Seq >= seq {
			out = append(out, r.entries[i:]...)
			break
		}
	}
	if r.changed == nil {
		r.changed = make(chan struct{})
	}
	return out, r.changed
}

// LogsSince returns a canister's kept debug_print lines with sequence
// numbers from seq on, and a channel that is closed when it prints more
// (for `cordon logs -f`).
func (n *Node) LogsSince(ctx context.Context, id principal.Principal, seq uint64) ([]store.LogEntry, <-chan struct{}, error) {
	c, err := n.get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	c.mu.RLock()
	deleted := c.deleted
	c.mu.RUnlock()
	if deleted {
		return nil, nil, rejectf(DestinationInvalid, "Canister %s not found", id)
	}
	es, ch := c.logs.since(seq)
	return es, ch, nil
}
