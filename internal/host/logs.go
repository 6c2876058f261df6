package host

import (
	"sync"

	"github.com/cordon-dev/cordon/internal/store"
)

// logRing keeps a canister's most recent debug_print lines in memory.
type logRing struct {
	mu      sync.Mutex
	keep    int
	entries []store.LogEntry
	nextSeq uint64
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
