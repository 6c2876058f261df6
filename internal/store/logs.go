package store

import (
	"encoding/binary"
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"
)

var keyLogs = []byte("logs")

// LogEntry is one debug_print line of a canister.
type LogEntry struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Text      string    `json:"text"`
	Truncated bool      `json:"truncated,omitempty"`
}

// appendLogs adds entries and trims the oldest beyond keep.
func appendLogs(cb *bolt.Bucket, entries []LogEntry, keep int) error {
	if len(entries) == 0 {
		return nil
	}
	b, err := cb.CreateBucketIfNotExists(keyLogs)
	if err != nil {
		return err
	}
	for _, e := range entries {
		v, err := json.Marshal(e)
		if err != nil {
			return err
		}
		if err := b.Put(binary.BigEndian.AppendUint64(nil, e.Seq), v); err != nil {
			return err
		}
	}
	// Sequence numbers are consecutive, so the entries to drop are those
	// below last-keep+1: delete from the front, touching only them.
	last := entries[len(entries)-1].Seq
	if keep <= 0 || last < uint64(keep) {
		return nil
	}
	cutoff := last - uint64(keep) + 1
	cur := b.Cursor()
	for k, _ := cur.First(); k != nil && binary.BigEndian.Uint64(k) < cutoff; k, _ = cur.First() {
		if err := cur.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// Logs returns a canister's stored debug_print lines, oldest first.
func (s *Store) Logs(id []byte) ([]LogEntry, error) {
	var out []LogEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCanisters).Bucket(id)
		if cb == nil {
			return ErrNotFound
		}
		b := cb.Bucket(keyLogs)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var e LogEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}
