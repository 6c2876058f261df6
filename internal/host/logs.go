package host

import (
	"context"
	"sync"

	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// DefaultLogBytes is what a canister's kept log holds by default
// (Config.LogBytes): one Wasm page, 625 MiB for 10 000 canisters that all
// fill theirs, and room for the longest debug_print line whole (32 KiB:
// 16 KiB with every other byte invalid, each printed as a 3-byte U+FFFD;
// 48 KiB, the most the trust boundary lets a sandbox send) and for what
// fetch_canister_logs returns (RATIONALE.md).
const DefaultLogBytes = 64 << 10

// MinLogBytes is the least Config.LogBytes the configuration accepts: the
// records the IC's 4 KiB buffer holds (at most 102 of 40 bytes plus their
// content) count at most 6 544 bytes here, so fetch_canister_logs still
// sees all of them (canlog.go).
const MinLogBytes = 8 << 10

// logRing keeps a canister's most recent debug_print lines in memory: at
// most keep lines and keepBytes bytes (store.LogEntry.Size), the same as
// the store keeps (store.KeptLogs).
type logRing struct {
	mu        sync.Mutex
	keep      int
	keepBytes int
	entries   []store.LogEntry
	nextSeq   uint64
	changed   chan struct{} // closed (and replaced) when lines are published
}

func newLogRing(keep, keepBytes int) *logRing {
	if keep <= 0 {
		keep = 1
	}
	if keepBytes <= 0 {
		keepBytes = DefaultLogBytes
	}
	return &logRing{keep: keep, keepBytes: keepBytes}
}

// load sets the kept lines to the stored es, cut to the ring's bounds. It
// reports whether it cut any: es were stored under larger bounds.
func (r *logRing) load(es []store.LogEntry) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = r.entries[:0]
	cut := false
	for _, e := range es {
		c := store.ClipLog(e, r.keepBytes)
		cut = cut || c.Truncated != e.Truncated || len(c.Text) != len(e.Text)
		r.entries = append(r.entries, c)
	}
	if r.trim() {
		cut = true
	}
	if len(es) > 0 {
		r.nextSeq = es[len(es)-1].Seq + 1
	}
	return cut
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
	for _, e := range es {
		r.entries = append(r.entries, store.ClipLog(e, r.keepBytes)) // as the store does
	}
	r.nextSeq = es[len(es)-1].Seq + 1
	r.trim()
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// trim drops the oldest lines beyond the ring's bounds (each line already
// fits: store.ClipLog), and reports whether there were any.
func (r *logRing) trim() bool {
	first := store.KeptLogs(r.entries, r.keep, r.keepBytes)
	if first == 0 {
		return false
	}
	// A copy, so the dropped lines' array is not kept.
	r.entries = append([]store.LogEntry(nil), r.entries[first:]...)
	return true
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
	if err := n.readLockWithin(ctx, c); err != nil {
		return nil, nil, err
	}
	deleted := c.deleted
	c.mu.RUnlock()
	if deleted {
		return nil, nil, rejectf(DestinationInvalid, "Canister %s not found", id)
	}
	es, ch := c.logs.since(seq)
	return es, ch, nil
}
