package store

import (
	"os"
	"time"
)

// SetCommitObserver has f called after every Commit with its duration, the
// payload bytes it wrote (pages, module, log text) and its error. Set it
// before the store is shared; nil removes it.
func (s *Store) SetCommitObserver(f func(d time.Duration, bytes int64, err error)) { s.onCommit = f }

func (s *Store) observeCommit(start time.Time, changes []Change, err error) {
	if s.onCommit == nil {
		return
	}
	s.onCommit(time.Since(start), payloadBytes(changes), err)
}

// payloadBytes is what a commit writes, before bbolt's own overhead.
func payloadBytes(changes []Change) int64 {
	var n int64
	for i := range changes {
		c := &changes[i]
		for _, m := range []*MemoryChange{c.Heap, c.Stable} {
			if m == nil {
				continue
			}
			for _, p := range m.Delta.Pages {
				n += int64(len(p.Data))
			}
		}
		n += int64(len(c.Module)) + int64(len(c.Globals))*16
		for _, l := range c.Logs {
			n += int64(len(l.Text))
		}
		for _, ch := range c.Chunks {
			n += int64(len(ch))
		}
		for _, r := range c.Ingress {
			n += int64(len(r.Key) + len(r.Value))
		}
		n += 512 // metadata, roughly
	}
	return n
}

// Size is the size of the store file in bytes (0 if it cannot be read).
func (s *Store) Size() int64 {
	fi, err := os.Stat(s.db.Path())
	if err != nil {
		return 0
	}
	return fi.Size()
}

// SyncInfo describes one durable transaction of the group committer.
type SyncInfo struct {
	Commits  int           // Commit calls it made durable together
	Bytes    int64         // their payload bytes (as for the commit observer)
	Duration time.Duration // from the transaction's start to the end of its sync
	Err      error         // the write or sync failed: none of them happened
}

// SetSyncObserver has f called after every transaction of grouped commits,
// from the store's writer goroutine; the number of commits per sync is the
// measure of grouping. f must not call Commit (the writer would wait for
// itself). Set it before the store is shared; nil removes it.
func (s *Store) SetSyncObserver(f func(SyncInfo)) { s.onSync = f }

func (s *Store) observeSync(start time.Time, group []*request, err error) {
	if s.onSync == nil {
		return
	}
	info := SyncInfo{Commits: len(group), Duration: time.Since(start), Err: err}
	for _, r := range group {
		info.Bytes += r.bytes
	}
	s.onSync(info)
}

// SyncStats counts the store's write transactions (each one sync) and the
// Commit calls answered, since Open. Syncs/Commits is the syncs per commit.
type SyncStats struct {
	Syncs   uint64
	Commits uint64
}

// SyncStats returns the counts so far.
func (s *Store) SyncStats() SyncStats {
	return SyncStats{Syncs: s.gc.syncs.Load(), Commits: s.gc.commits.Load()}
}
