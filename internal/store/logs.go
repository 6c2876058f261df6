package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

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

// LogEntryOverhead is what a kept line counts for besides its text: about
// what it costs in the node's ring (a LogEntry is 56 bytes) and in the
// store (its key, value header and bbolt leaf element, about 30), so that
// a flood of empty lines is bounded by the byte budget too.
const LogEntryOverhead = 64

// Size is what e counts for against a canister's log byte budget.
func (e *LogEntry) Size() int { return LogEntryOverhead + len(e.Text) }

// ClipLog returns e cut so that its Size is at most budget (≤ 0: no bound):
// its text ends at the last whole character that fits and is marked
// truncated. The cut text is a copy, so it does not keep the whole line in
// memory.
func ClipLog(e LogEntry, budget int) LogEntry {
	if budget <= 0 || e.Size() <= budget {
		return e
	}
	n := max(budget-LogEntryOverhead, 0)
	for n > 0 && !utf8.RuneStart(e.Text[n]) {
		n--
	}
	e.Text = strings.Clone(e.Text[:n])
	e.Truncated = true
	return e
}

// KeptLogs returns the index of the first of es (oldest first) that a log
// of at most lines lines and bytes bytes (LogEntry.Size; ≤ 0: no bound)
// keeps: the longest run of the newest entries within both bounds.
func KeptLogs(es []LogEntry, lines, bytes int) int {
	used := 0
	for i := len(es) - 1; i >= 0; i-- {
		n := len(es) - i
		if lines > 0 && n > lines || bytes > 0 && used+es[i].Size() > bytes {
			return i + 1
		}
		used += es[i].Size()
	}
	return 0
}

// The encoding of a stored entry (under its sequence number, big-endian):
// logFormatV1, a flags byte (bit 0: truncated), the time as a varint of
// Unix seconds and a uvarint of nanoseconds, then the text's bytes. The
// text is stored as printed: JSON, the encoding before it, escapes '<',
// '>', '&' and control characters as \u00XX, six bytes for each byte a
// canister prints. A JSON value starts with '{', and is still read.
const (
	logFormatV1  = 1
	logTruncated = 1 << 0
)

func encodeLog(e *LogEntry) []byte {
	v := make([]byte, 0, 2+2*binary.MaxVarintLen64+len(e.Text))
	var flags byte
	if e.Truncated {
		flags |= logTruncated
	}
	v = append(v, logFormatV1, flags)
	v = binary.AppendVarint(v, e.Time.Unix())
	v = binary.AppendUvarint(v, uint64(e.Time.Nanosecond()))
	return append(v, e.Text...)
}

var errLogEncoding = errors.New("unknown log entry encoding")

// logHeader decodes the header of a stored V1 entry: its flags, time and
// the offset of its text in v.
func logHeader(v []byte) (flags byte, t time.Time, text int, err error) {
	if len(v) < 2 || v[0] != logFormatV1 {
		return 0, time.Time{}, 0, errLogEncoding
	}
	flags, text = v[1], 2
	sec, n := binary.Varint(v[text:])
	if n <= 0 {
		return 0, time.Time{}, 0, errors.New("log entry time: bad seconds")
	}
	text += n
	nsec, n := binary.Uvarint(v[text:])
	if n <= 0 || nsec >= uint64(time.Second) {
		return 0, time.Time{}, 0, errors.New("log entry time: bad nanoseconds")
	}
	text += n
	return flags, time.Unix(sec, int64(nsec)).UTC(), text, nil
}

// decodeLog decodes the stored entry v under key k (either encoding).
func decodeLog(k, v []byte) (LogEntry, error) {
	if len(k) != 8 {
		return LogEntry{}, fmt.Errorf("log key %x: not a sequence number", k)
	}
	if len(v) > 0 && v[0] == '{' {
		var e LogEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return LogEntry{}, fmt.Errorf("log entry %d: %w", binary.BigEndian.Uint64(k), err)
		}
		return e, nil
	}
	flags, t, text, err := logHeader(v)
	if err != nil {
		return LogEntry{}, fmt.Errorf("log entry %d: %w", binary.BigEndian.Uint64(k), err)
	}
	return LogEntry{Seq: binary.BigEndian.Uint64(k), Time: t, Text: string(v[text:]), Truncated: flags&logTruncated != 0}, nil
}

// storedLogSize is the Size of the stored entry v, read from its header
// alone when it is in the current encoding.
func storedLogSize(k, v []byte) (int, error) {
	if _, _, text, err := logHeader(v); err == nil {
		return LogEntryOverhead + len(v) - text, nil
	}
	e, err := decodeLog(k, v)
	if err != nil {
		return 0, err
	}
	return e.Size(), nil
}

// appendLogs adds entries and then drops the oldest stored entries beyond
// lines lines and bytes bytes (≤ 0: no bound), as the node's ring keeps
// them (KeptLogs, each entry cut by ClipLog first). Only those of entries
// that will be kept are written, so a message's lines that its own later
// lines push out never reach the file.
func appendLogs(cb *bolt.Bucket, entries []LogEntry, lines, bytes int) error {
	if len(entries) == 0 {
		return nil
	}
	b, err := cb.CreateBucketIfNotExists(keyLogs)
	if err != nil {
		return err
	}
	clipped := make([]LogEntry, len(entries))
	for i, e := range entries {
		clipped[i] = ClipLog(e, bytes)
	}
	first := KeptLogs(clipped, lines, bytes)
	for _, e := range clipped[first:] {
		if err := b.Put(binary.BigEndian.AppendUint64(nil, e.Seq), encodeLog(&e)); err != nil {
			return err
		}
	}
	if first == 0 {
		return trimLogs(b, lines, bytes)
	}
	// The new entries alone fill the log: every older one goes.
	return dropLogsThrough(b, clipped[first-1].Seq)
}

// trimLogs drops the oldest entries of the log bucket b beyond lines lines
// and bytes bytes (≤ 0: no bound), as KeptLogs does after ClipLog: an
// entry stored larger than the budget (before the budget shrank) is cut
// if it is the newest and dropped otherwise. It reads the newest entries
// back to the first one that does not fit, and touches only the dropped
// ones.
func trimLogs(b *bolt.Bucket, lines, bytes int) error {
	var (
		cur     = b.Cursor()
		n, used int
		cutoff  []byte    // key of the newest entry dropped
		clip    []byte    // key of the newest entry, when it must be cut
		clipped *LogEntry // and what it becomes
	)
	for k, v := cur.Last(); k != nil; k, v = cur.Prev() {
		size, err := storedLogSize(k, v)
		if err != nil {
			return err
		}
		if n == 0 && bytes > 0 && size > bytes {
			e, err := decodeLog(k, v)
			if err != nil {
				return err
			}
			e = ClipLog(e, bytes)
			clip, clipped, size = append([]byte(nil), k...), &e, e.Size()
		}
		if lines > 0 && n+1 > lines || bytes > 0 && used+size > bytes {
			cutoff = append([]byte(nil), k...)
			break
		}
		n++
		used += size
	}
	// The cursor is positioned again after every change, as bbolt asks.
	if clip != nil {
		if err := b.Put(clip, encodeLog(clipped)); err != nil {
			return err
		}
	}
	if cutoff == nil {
		return nil
	}
	return dropLogsThrough(b, binary.BigEndian.Uint64(cutoff))
}

// dropLogsThrough deletes the entries of the log bucket b numbered up to
// last, touching only them.
func dropLogsThrough(b *bolt.Bucket, last uint64) error {
	cur := b.Cursor()
	for k, _ := cur.First(); len(k) == 8 && binary.BigEndian.Uint64(k) <= last; k, _ = cur.First() {
		if err := cur.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// TrimLogs drops a canister's stored log entries beyond lines lines and
// bytes bytes, as appendLogs would: for a log stored under larger bounds
// (or before there was a byte bound). It writes only when there is
// something to drop.
func (s *Store) TrimLogs(id []byte, lines, bytes int) error {
	over := false
	err := s.db.View(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCanisters).Bucket(id)
		if cb == nil {
			return ErrNotFound
		}
		b := cb.Bucket(keyLogs)
		if b == nil {
			return nil
		}
		cur := b.Cursor()
		n, used := 0, 0
		for k, v := cur.Last(); k != nil; k, v = cur.Prev() {
			size, err := storedLogSize(k, v)
			if err != nil {
				return err
			}
			n++
			used += size
			if lines > 0 && n > lines || bytes > 0 && used > bytes {
				over = true
				return nil
			}
		}
		return nil
	})
	if err != nil || !over {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCanisters).Bucket(id)
		if cb == nil || cb.Bucket(keyLogs) == nil {
			return nil
		}
		return trimLogs(cb.Bucket(keyLogs), lines, bytes)
	})
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
		return b.ForEach(func(k, v []byte) error {
			e, err := decodeLog(k, v)
			if err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}
