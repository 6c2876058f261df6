package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
	"unsafe"

	bolt "go.etcd.io/bbolt"
)

func openLogStore(t *testing.T) (*Store, []byte) {
	t.Helper()
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	id := []byte{7}
	if err := s.Commit(Change{ID: id, Meta: Meta{ID: "x", Status: "running"}}); err != nil {
		t.Fatal(err)
	}
	return s, id
}

// appendLog commits lines of the given texts, numbered from seq on.
func appendLog(t *testing.T, s *Store, id []byte, seq uint64, lines, bytes int, texts ...string) {
	t.Helper()
	es := make([]LogEntry, len(texts))
	for i, x := range texts {
		es[i] = LogEntry{Seq: seq + uint64(i), Time: time.Unix(1_700_000_000, int64(i)).UTC(), Text: x}
	}
	if err := s.Commit(Change{ID: id, Meta: Meta{ID: "x", Status: "running"}, Logs: es, KeepLogs: lines, KeepLogBytes: bytes}); err != nil {
		t.Fatal(err)
	}
}

func logSize(es []LogEntry) (n int) {
	for _, e := range es {
		n += e.Size()
	}
	return n
}

// rawLogBytes is what the log's values take in the file.
func rawLogBytes(t *testing.T, s *Store, id []byte) (n int) {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCanisters).Bucket(id).Bucket(keyLogs).ForEach(func(k, v []byte) error {
			n += len(k) + len(v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// checkSuffix checks that the stored log is the newest lines of all that
// fit in the bounds, numbered as they were committed.
func checkSuffix(t *testing.T, s *Store, id []byte, all []string, lines, bytes int) []LogEntry {
	t.Helper()
	got, err := s.Logs(id)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]LogEntry, len(all))
	for i, x := range all {
		want[i] = ClipLog(LogEntry{Seq: uint64(i), Text: x}, bytes)
	}
	want = want[KeptLogs(want, lines, bytes):]
	if len(got) != len(want) {
		t.Fatalf("%d lines stored, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Seq != want[i].Seq || got[i].Text != want[i].Text || got[i].Truncated != want[i].Truncated {
			t.Fatalf("line %d: seq %d %.20q, want seq %d %.20q", i, got[i].Seq, got[i].Text, want[i].Seq, want[i].Text)
		}
	}
	if n := logSize(got); n > bytes {
		t.Fatalf("stored log counts %d bytes, budget %d", n, bytes)
	}
	return got
}

// The store keeps a log within its byte budget as well as its line count,
// the oldest lines dropped first, however the lines come: many small
// commits, one commit of many lines larger than the budget, lines of every
// size in between.
func TestLogsTrimmedToBytes(t *testing.T) {
	const lines, bytes = 1000, 4096
	s, id := openLogStore(t)
	var all []string
	add := func(texts ...string) {
		appendLog(t, s, id, uint64(len(all)), lines, bytes, texts...)
		all = append(all, texts...)
	}
	for i := range 200 {
		add(fmt.Sprintf("line %d", i)) // 64 + 6..8 bytes: about 57 fit
	}
	got := checkSuffix(t, s, id, all, lines, bytes)
	if len(got) < 50 || len(got) > 60 {
		t.Fatalf("%d short lines kept in 4 KiB", len(got))
	}
	// A message of 256 lines of 16 KiB: only its last line, cut, is kept.
	big := make([]string, 256)
	for i := range big {
		big[i] = strings.Repeat(string(rune('a'+i%26)), 16<<10)
	}
	add(big...)
	got = checkSuffix(t, s, id, all, lines, bytes)
	if len(got) != 1 || !got[0].Truncated || got[0].Size() != bytes {
		t.Fatalf("after a flood of long lines: %d lines, last truncated %v, %d bytes", len(got), got[0].Truncated, got[0].Size())
	}
	if raw := rawLogBytes(t, s, id); raw > bytes {
		t.Fatalf("the log takes %d bytes in the file, budget %d", raw, bytes)
	}
	// A commit whose own lines push each other out leaves room that older
	// lines must not take: they were older than the ones it dropped.
	for range 20 {
		add("short")
	}
	add(strings.Repeat("m", 3000), strings.Repeat("n", 3000))
	if got = checkSuffix(t, s, id, all, lines, bytes); len(got) != 1 {
		t.Fatalf("%d lines kept after two of 3000 bytes in 4 KiB", len(got))
	}
	// Lines of every size: each commit leaves the newest that fit.
	for i := range 100 {
		add(strings.Repeat("x", i*37%5000), "y")
		checkSuffix(t, s, id, all, lines, bytes)
	}
	// The line bound still holds on its own.
	for i := range 30 {
		add(fmt.Sprint(i))
	}
	appendLog(t, s, id, uint64(len(all)), 10, bytes, "last")
	all = append(all, "last")
	if got := checkSuffix(t, s, id, all, 10, bytes); len(got) != 10 {
		t.Fatalf("%d lines kept, bound 10", len(got))
	}
}

// A line longer than the budget is cut at a character boundary, marked
// truncated, and copied: the kept text does not pin the whole line.
func TestClipLog(t *testing.T) {
	line := strings.Repeat("é", 1000) // 2000 bytes
	e := ClipLog(LogEntry{Seq: 3, Text: line}, LogEntryOverhead+101)
	if !e.Truncated || len(e.Text) != 100 || !utf8.ValidString(e.Text) || e.Seq != 3 {
		t.Fatalf("cut to %d bytes (valid %v), truncated %v", len(e.Text), utf8.ValidString(e.Text), e.Truncated)
	}
	if e.Size() > LogEntryOverhead+101 {
		t.Fatalf("size %d", e.Size())
	}
	if e.Text != line[:100] {
		t.Fatal("not a prefix")
	}
	if unsafe.StringData(e.Text) == unsafe.StringData(line) {
		t.Fatal("the cut text shares the whole line's memory")
	}
	if f := ClipLog(LogEntry{Text: "short"}, 1000); f.Truncated || f.Text != "short" {
		t.Fatalf("a line that fits changed: %+v", f)
	}
	if f := ClipLog(LogEntry{Text: line}, 0); f.Text != line {
		t.Fatal("no budget cut a line")
	}
	if f := ClipLog(LogEntry{Text: line}, 10); f.Text != "" || !f.Truncated {
		t.Fatalf("a budget below the overhead: %q", f.Text)
	}
}

// What a canister prints is stored as printed: JSON stored '<' as \u003c,
// six bytes for each.
func TestLogValuesDoNotInflate(t *testing.T) {
	s, id := openLogStore(t)
	hostile := strings.Repeat("<>&\x01\u2028", 1000) // 7000 bytes
	appendLog(t, s, id, 0, 10, 64<<10, hostile)
	if raw := rawLogBytes(t, s, id); raw > len(hostile)+32 {
		t.Fatalf("a line of %d bytes takes %d in the file", len(hostile), raw)
	}
	got, err := s.Logs(id)
	if err != nil || len(got) != 1 || got[0].Text != hostile {
		t.Fatalf("read back: %v", err)
	}
}

// Times, flags and numbers survive the encoding.
func TestLogEncodingRoundTrip(t *testing.T) {
	for _, e := range []LogEntry{
		{Seq: 0, Text: ""},
		{Seq: 1, Time: time.Unix(1_700_000_000, 999_999_999).UTC(), Text: "x", Truncated: true},
		{Seq: 1 << 63, Time: time.Unix(-5, 1).UTC(), Text: "{\"not json\""},
	} {
		k := binary.BigEndian.AppendUint64(nil, e.Seq)
		got, err := decodeLog(k, encodeLog(&e))
		if err != nil || got != e || !got.Time.Equal(e.Time) {
			t.Fatalf("%+v came back as %+v (%v)", e, got, err)
		}
	}
	k := binary.BigEndian.AppendUint64(nil, 1)
	for _, v := range [][]byte{nil, {}, {2, 0}, {1}, {1, 0}, {1, 0, 0}, {1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}, []byte("{bad")} {
		if _, err := decodeLog(k, v); err == nil {
			t.Fatalf("%x decoded", v)
		}
	}
	if _, err := decodeLog([]byte{1}, encodeLog(&LogEntry{})); err == nil {
		t.Fatal("a short key decoded")
	}
}

func FuzzDecodeLog(f *testing.F) {
	f.Add(encodeLog(&LogEntry{Text: "hi", Truncated: true}))
	f.Add([]byte(`{"seq":1,"time":"2024-01-01T00:00:00Z","text":"a"}`))
	k := binary.BigEndian.AppendUint64(nil, 1)
	f.Fuzz(func(t *testing.T, v []byte) {
		e, err := decodeLog(k, v)
		size, serr := storedLogSize(k, v)
		if (err == nil) != (serr == nil) || err == nil && size != e.Size() {
			t.Fatalf("decode %v, size %d (%v), entry size %d", err, size, serr, e.Size())
		}
	})
}

// putLegacyLogs writes entries as the store did before the current
// encoding (json.Marshal), with no bound.
func putLegacyLogs(t *testing.T, s *Store, id []byte, es []LogEntry) {
	t.Helper()
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketCanisters).Bucket(id).CreateBucketIfNotExists(keyLogs)
		if err != nil {
			return err
		}
		for _, e := range es {
			v, err := json.Marshal(e)
			if err != nil {
				return err
			}
			if err := b.Put(binary.BigEndian.AppendUint64(nil, e.Seq), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A store written before the byte bound (JSON values, 1000 lines of any
// length) still reads, is trimmed to the bounds by TrimLogs (the newest
// line cut to fit, as the node's ring cuts it on load) and by the next
// append, which mixes both encodings.
func TestLegacyLogsReadAndTrimmed(t *testing.T) {
	const lines, bytes = 1000, 8 << 10
	s, id := openLogStore(t)
	var all []string
	var legacy []LogEntry
	for i := range 300 {
		x := fmt.Sprintf("%d %s", i, strings.Repeat("<", i*13%700))
		all = append(all, x)
		legacy = append(legacy, LogEntry{Seq: uint64(i), Time: time.Unix(1_600_000_000+int64(i), 0).UTC(), Text: x})
	}
	big := strings.Repeat("<", 20000) // longer than the budget, and newest
	all = append(all, big)
	legacy = append(legacy, LogEntry{Seq: 300, Time: time.Unix(1_600_001_000, 5).UTC(), Text: big})
	putLegacyLogs(t, s, id, legacy)

	got, err := s.Logs(id)
	if err != nil || len(got) != len(legacy) {
		t.Fatalf("legacy logs: %d lines, %v", len(got), err)
	}
	for i := range got {
		if got[i].Seq != legacy[i].Seq || got[i].Text != legacy[i].Text || !got[i].Time.Equal(legacy[i].Time) || got[i].Truncated {
			t.Fatalf("legacy line %d read as %+.30v", i, got[i])
		}
	}
	if err := s.TrimLogs(id, lines, bytes); err != nil {
		t.Fatal(err)
	}
	kept := checkSuffix(t, s, id, all, lines, bytes)
	if len(kept) != 1 || !kept[0].Truncated || kept[0].Seq != 300 {
		t.Fatalf("after trimming: %d lines", len(kept))
	}

	// Legacy lines that fit stay as they are, beside new ones.
	s2, id2 := openLogStore(t)
	putLegacyLogs(t, s2, id2, legacy[:50])
	if err := s2.TrimLogs(id2, lines, bytes); err != nil {
		t.Fatal(err)
	}
	all2 := append([]string(nil), all[:50]...)
	checkSuffix(t, s2, id2, all2, lines, bytes)
	for i := range 40 {
		x := fmt.Sprintf("new %d", i)
		appendLog(t, s2, id2, uint64(len(all2)), lines, bytes, x)
		all2 = append(all2, x)
		checkSuffix(t, s2, id2, all2, lines, bytes)
	}
	// TrimLogs writes nothing when the log fits.
	before := s2.gc.syncs.Load()
	if err := s2.TrimLogs(id2, lines, bytes); err != nil {
		t.Fatal(err)
	}
	if s2.gc.syncs.Load() != before {
		t.Fatal("TrimLogs wrote a log that fits")
	}
}

func TestKeptLogs(t *testing.T) {
	es := []LogEntry{{Text: "aaaa"}, {Text: "bb"}, {Text: "c"}, {Text: ""}}
	for _, c := range []struct{ lines, bytes, want int }{
		{0, 0, 0},
		{4, 0, 0},
		{3, 0, 1},
		{1, 0, 3},
		{0, 4*LogEntryOverhead + 7, 0},
		{0, 4*LogEntryOverhead + 6, 1},
		{0, 2*LogEntryOverhead + 1, 2},
		{0, 2 * LogEntryOverhead, 3}, // "c" needs one more
		{0, LogEntryOverhead - 1, 4},
		{2, 4*LogEntryOverhead + 7, 2},
	} {
		if got := KeptLogs(es, c.lines, c.bytes); got != c.want {
			t.Errorf("KeptLogs(lines %d, bytes %d) = %d, want %d", c.lines, c.bytes, got, c.want)
		}
	}
}
