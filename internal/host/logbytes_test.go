package host

import (
	"context"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// logSpamWat prints as much as one message may: 256 lines of 16 KiB, of
// '<' (which JSON stored as six bytes each), of 0xff (one invalid run,
// printed as one U+FFFD: many short lines) or of 0xff and 'A' in turn
// (each invalid byte printed as a 3-byte U+FFFD: 32 KiB a line).
const logSpamWat = `
(module
  (import "ic0" "debug_print" (func $print (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (func $spam (param $fill i32) (param $mixed i32)
    (local $i i32)
    (memory.fill (i32.const 0) (local.get $fill) (i32.const 16384))
    (if (local.get $mixed)
      (then
        (loop $m
          (i32.store8 (local.get $i) (i32.const 255))
          (local.set $i (i32.add (local.get $i) (i32.const 2)))
          (br_if $m (i32.lt_u (local.get $i) (i32.const 16384))))
        (local.set $i (i32.const 0))))
    (loop $l
      (call $print (i32.const 0) (i32.const 16384))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 256))))
    (call $reply))
  (func (export "canister_update spam") (call $spam (i32.const 60) (i32.const 0)))
  (func (export "canister_update spam_ff") (call $spam (i32.const 255) (i32.const 0)))
  (func (export "canister_update spam_mixed") (call $spam (i32.const 65) (i32.const 1)))
  (func (export "canister_update print")
    (call $print (i32.const 0) (i32.const 1))
    (call $reply))
)`

// checkLogBytes checks that what id's log holds in memory and in the
// store is within budget, the same lines in both, the newest printed
// (seq last) kept.
func checkLogBytes(t *testing.T, f *fixture, id principal.Principal, budget int, last uint64) []store.LogEntry {
	t.Helper()
	c, err := f.node.get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	ram := c.logs.snapshot()
	disk, err := f.node.store.Logs(id.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	size := func(es []store.LogEntry) (n int) {
		for _, e := range es {
			n += e.Size()
		}
		return n
	}
	if n := size(ram); n > budget {
		t.Fatalf("the log holds %d bytes in memory (%d lines), budget %d", n, len(ram), budget)
	}
	if n := size(disk); n > budget {
		t.Fatalf("the log holds %d bytes in the store (%d lines), budget %d", n, len(disk), budget)
	}
	if len(ram) == 0 || len(ram) != len(disk) {
		t.Fatalf("%d lines in memory, %d in the store", len(ram), len(disk))
	}
	for i := range ram {
		if ram[i].Seq != disk[i].Seq || ram[i].Text != disk[i].Text || ram[i].Truncated != disk[i].Truncated {
			t.Fatalf("line %d: seq %d in memory, %d in the store", i, ram[i].Seq, disk[i].Seq)
		}
	}
	if got := ram[len(ram)-1].Seq; got != last {
		t.Fatalf("newest line kept: seq %d, want %d", got, last)
	}
	return ram
}

// A canister printing all it may, message after message, holds no more
// than limits.log_bytes of log in the host's memory and in the store
// (counted with each line's overhead), also after a restart and after the
// bound is lowered, and its file does not grow with what it prints. Before
// the byte bound, four such messages kept ~15 MiB in memory and ~93 MiB on
// disk.
func TestLogSpamBoundedInBytes(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		budget := f.node.Config().LogBytes
		if budget != DefaultLogBytes {
			t.Fatalf("default log budget %d", budget)
		}
		id := f.install(mustWat(t, logSpamWat), nil)
		before := f.node.store.Size()
		const messages = 8
		for range messages {
			f.update(id, "spam", nil)
		}
		kept := checkLogBytes(t, f, id, budget, messages*256-1)
		if len(kept) != 3 || kept[0].Text != strings.Repeat("<", 16384) || kept[0].Truncated {
			t.Fatalf("kept %d lines of 16 KiB, want 3 whole ones", len(kept))
		}
		if grown := f.node.store.Size() - before; grown > 2<<20 {
			t.Fatalf("the store grew by %d bytes for a log of %d", grown, budget)
		}
		// Followers and fetch_canister_logs see the same numbering.
		es, _, err := f.node.LogsSince(context.Background(), id, messages*256-2)
		if err != nil || len(es) != 2 || es[0].Seq != messages*256-2 {
			t.Fatalf("LogsSince: %d lines, %v", len(es), err)
		}
		if recs := f.mustFetchLogs(id); len(recs) != 1 || recs[0].Idx != messages*256-1 || len(recs[0].Content) != maxLogContent {
			t.Fatalf("fetch_canister_logs: %d records", len(recs))
		}

		// Lines twice as long once printed (an invalid byte becomes a
		// 3-byte U+FFFD): one fits whole.
		seq := uint64(messages*256 - 1)
		f.update(id, "spam_mixed", nil)
		seq += 256
		kept = checkLogBytes(t, f, id, budget, seq)
		if len(kept) != 1 || len(kept[0].Text) != 2*16384 || kept[0].Truncated {
			t.Fatalf("kept %d lines, the last of %d bytes", len(kept), len(kept[0].Text))
		}
		// Short lines count their overhead: the byte bound holds before
		// the line bound.
		for range 4 {
			f.update(id, "spam_ff", nil)
			seq += 256
		}
		kept = checkLogBytes(t, f, id, budget, seq)
		if want := budget / (store.LogEntryOverhead + len("\uFFFD")); len(kept) != want || kept[0].Text != "\uFFFD" {
			t.Fatalf("kept %d short lines, want %d", len(kept), want)
		}
		f.update(id, "spam", nil)
		seq += 256

		// After a restart the ring is what the store kept; numbering
		// goes on.
		f.restart()
		checkLogBytes(t, f, id, budget, seq)
		f.update(id, "spam", nil)
		seq += 256
		checkLogBytes(t, f, id, budget, seq)

		// A lower bound applies to what was stored under the higher one,
		// in memory and in the store, the newest line cut to fit it.
		f.cfg.LogBytes = MinLogBytes
		f.restart()
		kept = checkLogBytes(t, f, id, MinLogBytes, seq)
		if len(kept) != 1 || !kept[0].Truncated || kept[0].Size() != MinLogBytes {
			t.Fatalf("under the lower bound: %d lines, the last %d bytes", len(kept), kept[0].Size())
		}
		f.update(id, "print", nil)
		kept = checkLogBytes(t, f, id, MinLogBytes, seq+1)
		if len(kept) != 1 || kept[0].Text != "<" {
			t.Fatalf("%d lines after a short one pushed the full one out", len(kept))
		}
	})
}
