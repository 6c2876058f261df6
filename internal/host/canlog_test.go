package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// logWat writes to its log and traps in each of the ways the IC logs (and
// one it does not). Arguments are raw bytes; every method but the timer
// first counts itself in memory, so a rolled-back trap shows in "count".
const logWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "debug_print" (func $print (param i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "stable64_read" (func $sread (param i64 i64 i64)))
  (import "ic0" "global_timer_set" (func $timer_set (param i64) (result i64)))
  (memory (export "memory") 1)
  (table 1 funcref)
  (type $v (func))
  (data (i32.const 1000) "right before trap")
  (data (i32.const 1100) "right before timer trap")
  (data (i32.const 1200) "timer trap")
  (func $arg (result i32)
    (local $n i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 4096) (i32.const 0) (local.get $n))
    (local.get $n))
  (func $bump (i64.store (i32.const 0) (i64.add (i64.load (i32.const 0)) (i64.const 1))))
  (func $recurse (param i64) (result i64)
    (i64.add (call $recurse (i64.add (local.get 0) (i64.const 1))) (i64.const 1)))
  (func (export "canister_update print")
    (call $print (i32.const 4096) (call $arg)) (call $bump) (call $reply))
  (func (export "canister_update trap")
    (local $n i32)
    (local.set $n (call $arg))
    (call $bump)
    (call $print (i32.const 1000) (i32.const 17))
    (call $trap (i32.const 4096) (local.get $n)))
  (func (export "canister_update heap_oob") (call $bump) (drop (i32.load (i32.const 0x7ffffff0))))
  (func (export "canister_update unreachable") (call $bump) unreachable)
  (func (export "canister_update divzero")
    (call $bump) (drop (i32.div_u (i32.const 1) (i32.sub (call $arg_size) (call $arg_size)))))
  (func (export "canister_update stack_overflow") (call $bump) (drop (call $recurse (i64.const 0))))
  (func (export "canister_update stable_oob") (call $bump) (call $sread (i64.const 0) (i64.const 100) (i64.const 8)))
  (func (export "canister_update table_oob") (call $bump) (call_indirect (type $v) (i32.const 5)))
  (func (export "canister_update reply_twice") (call $bump) (call $reply) (call $reply))
  (func (export "canister_update set_timer") (drop (call $timer_set (i64.const 1))) (call $reply))
  (func (export "canister_global_timer")
    (call $print (i32.const 1100) (i32.const 23))
    (call $trap (i32.const 1200) (i32.const 10)))
  (func (export "canister_query count") (call $append (i32.const 0) (i32.const 8)) (call $reply))
)`

// fetchLogs calls fetch_canister_logs as caller, a user query as on the IC.
func (f *fixture) fetchLogs(id, caller principal.Principal) ([]LogRecord, error) {
	f.t.Helper()
	arg := encodeText(f.t, fmt.Sprintf(`(record { canister_id = principal %q })`, id))
	r, err := f.node.Query(context.Background(), Message{Canister: principal.Management(), Method: "fetch_canister_logs", Arg: arg, Caller: caller})
	if err != nil {
		return nil, err
	}
	a, err := candid.Decode(r.Data)
	if err != nil || len(a.Values) != 1 {
		f.t.Fatalf("fetch_canister_logs reply %x: %v", r.Data, err)
	}
	top, _ := a.Values[0].(candid.Record)
	v, ok := top.GetNamed("canister_log_records")
	vec, isVec := v.(candid.Vec)
	if !ok || !isVec {
		f.t.Fatalf("fetch_canister_logs reply has no canister_log_records: %s", a)
	}
	var out []LogRecord
	for _, e := range vec {
		rec, _ := e.(candid.Record)
		idx, ok1 := rec.GetNamed("idx")
		ts, ok2 := rec.GetNamed("timestamp_nanos")
		content, ok3 := blobField(rec, "content")
		i, ok4 := idx.(candid.Nat64)
		t, ok5 := ts.(candid.Nat64)
		if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
			f.t.Fatalf("malformed log record %v", rec)
		}
		out = append(out, LogRecord{Idx: uint64(i), TimestampNanos: uint64(t), Content: content})
	}
	return out, nil
}

func (f *fixture) mustFetchLogs(id principal.Principal) []LogRecord {
	f.t.Helper()
	recs, err := f.fetchLogs(id, user)
	if err != nil {
		f.t.Fatalf("fetch_canister_logs: %v", err)
	}
	return recs
}

// checkLog compares the log with the expected contents, idx first..; and
// checks that `cordon logs` (Node.Logs) shows the same records.
func checkLog(t *testing.T, f *fixture, id principal.Principal, first uint64, want []string) {
	t.Helper()
	recs := f.mustFetchLogs(id)
	var got []string
	for _, r := range recs {
		got = append(got, string(r.Content))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("log records:\n got %.2000q\nwant %.2000q", got, want)
	}
	kept, err := f.node.Logs(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	bySeq := map[uint64]string{}
	for _, e := range kept {
		bySeq[e.Seq] = e.Text
	}
	var last uint64
	for i, r := range recs {
		if r.Idx != first+uint64(i) {
			t.Fatalf("record %d has idx %d, want %d", i, r.Idx, first+uint64(i))
		}
		if r.TimestampNanos == 0 || r.TimestampNanos < last {
			t.Fatalf("record %d: timestamp %d after %d", i, r.TimestampNanos, last)
		}
		last = r.TimestampNanos
		// The same record; the node keeps what the IC's buffer cuts.
		if text, ok := bySeq[r.Idx]; !ok || text[:min(len(text), maxLogContent)] != string(r.Content) {
			t.Fatalf("cordon logs shows record %d as %.80q (kept: %v), fetch_canister_logs as %.80q", r.Idx, text, ok, r.Content)
		}
	}
}

// Traps are logged as the IC logs them, in both isolation modes, and the
// log outlives the rollback of the trapped message.
func TestCanisterLogTraps(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		id := f.install(mustWat(t, logWat), nil)
		ctx := context.Background()
		call := func(method, arg string) error {
			_, err := f.node.Update(ctx, Message{Canister: id, Method: method, Arg: []byte(arg), Caller: user})
			return err
		}
		if err := call("print", "hello"); err != nil {
			t.Fatal(err)
		}
		traps := []struct{ method, arg, reject string }{
			{"trap", "oops!", "Canister called `ic0.trap` with message: 'oops!'"},
			{"trap", "", "Canister called `ic0.trap` with message: ''"},
			{"heap_oob", "", "heap out of bounds"},
			{"unreachable", "", "unreachable"},
			{"divzero", "", "integer division by 0"},
			{"stack_overflow", "", "stack overflow"},
			{"stable_oob", "", "stable memory out of bounds"},
			{"table_oob", "", "table out of bounds"},
			{"reply_twice", "", "already replied"},
		}
		for _, tr := range traps {
			err := call(tr.method, tr.arg)
			if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, tr.reject) {
				t.Fatalf("%s: %v, want a CANISTER_ERROR containing %q", tr.method, err, tr.reject)
			}
		}
		if err := call("print", "after"); err != nil {
			t.Fatal(err)
		}
		// Only the two prints were kept; the traps' state was rolled back.
		if n := binary.LittleEndian.Uint64(f.query(id, "count", nil)); n != 2 {
			t.Fatalf("count = %d after 2 prints and 9 traps, want 2", n)
		}
		want := []string{
			"hello",
			"right before trap", "[TRAP]: oops!",
			"right before trap", "[TRAP]: (no message)",
			"[TRAP]: heap out of bounds",
			"[TRAP]: unreachable",
			"[TRAP]: integer division by 0",
			"[TRAP]: stack overflow",
			"[TRAP]: stable memory out of bounds",
			"[TRAP]: table out of bounds",
			// ic0.msg_reply twice is a misuse of the System API: no record.
			"after",
		}
		checkLog(t, f, id, 0, want)

		// A system task's trap is logged too (the canister_logs example's
		// timer), and survives a restart with its idx.
		if err := call("set_timer", ""); err != nil {
			t.Fatal(err)
		}
		want = append(want, "right before timer trap", "[TRAP]: timer trap")
		deadline := time.Now().Add(2 * time.Minute)
		for len(f.mustFetchLogs(id)) < len(want) {
			if time.Now().After(deadline) {
				t.Fatalf("the timer's records never came: %d records", len(f.mustFetchLogs(id)))
			}
			time.Sleep(20 * time.Millisecond)
		}
		checkLog(t, f, id, 0, want)
		f.restart()
		checkLog(t, f, id, 0, want)
		if err := call("print", "restarted"); err != nil {
			t.Fatal(err)
		}
		checkLog(t, f, id, 0, append(want, "restarted"))
	})
}

// The log is bounded as on the IC: 4 KiB of records (40 bytes each plus
// the content), the oldest dropped first, a record's content cut at
// 4056 bytes; idx keeps counting.
func TestCanisterLogBounded(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		id := f.install(mustWat(t, logWat), nil)
		line := func(i int) string { return fmt.Sprintf("line %03d %s", i, strings.Repeat("x", 51)) } // 60 bytes
		const lines = 150
		for i := range lines {
			f.update(id, "print", []byte(line(i)))
		}
		// 100 bytes a record: the newest 40 fit in 4096.
		var want []string
		for i := lines - 40; i < lines; i++ {
			want = append(want, line(i))
		}
		checkLog(t, f, id, lines-40, want)

		// One record longer than the buffer: cut to fit, alone.
		big := strings.Repeat("y", 5000)
		f.update(id, "print", []byte(big))
		checkLog(t, f, id, lines, []string{big[:4056]})
		// The node keeps the whole line for `cordon logs`.
		kept, _ := f.node.Logs(context.Background(), id)
		if last := kept[len(kept)-1]; last.Seq != lines || last.Text != big {
			t.Fatalf("cordon logs' last line: seq %d, %d bytes", last.Seq, len(last.Text))
		}
		// A short record after it pushes it out: 4096 - 41 < 4096 + 41.
		f.update(id, "print", []byte("z"))
		checkLog(t, f, id, lines+1, []string{"z"})
	})
}

// Who may fetch the logs: controllers by default, anyone when public, the
// allowed viewers when listed; never a canister nor an update call.
func TestFetchCanisterLogsAccess(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(mustWat(t, logWat), nil)
	f.update(id, "print", []byte("secret"))
	other := principal.SelfAuthenticating([]byte("not a controller"))
	viewer := principal.SelfAuthenticating([]byte("a viewer"))
	denied := func(who principal.Principal) {
		t.Helper()
		_, err := f.fetchLogs(id, who)
		r := f.reject(err)
		if want := fmt.Sprintf("Caller %s is not allowed to query ic00 method fetch_canister_logs", who); r.Code != CanisterReject || r.Message != want {
			t.Fatalf("fetch by %s: %v, want CANISTER_REJECT %q", who, err, want)
		}
	}
	allowed := func(who principal.Principal) {
		t.Helper()
		recs, err := f.fetchLogs(id, who)
		if err != nil || len(recs) != 1 || string(recs[0].Content) != "secret" {
			t.Fatalf("fetch by %s: %v %v", who, recs, err)
		}
	}
	setVisibility := func(v string) {
		t.Helper()
		if _, err := f.mgmt("update_settings", fmt.Sprintf(`(record { canister_id = principal %q; settings = record { log_visibility = opt %s } })`, id, v)); err != nil {
			t.Fatal(err)
		}
	}
	allowed(user)
	denied(other)
	denied(viewer)

	setVisibility("variant { public }")
	allowed(other)
	if st := f.status(id); st.LogVisibility != "public" {
		t.Fatalf("status log_visibility %q", st.LogVisibility)
	}
	setVisibility(fmt.Sprintf(`variant { allowed_viewers = vec { principal %q } }`, viewer))
	allowed(viewer)
	allowed(user) // controllers always may
	denied(other)
	status, err := f.mgmt("canister_status", fmt.Sprintf(`(record { canister_id = principal %q })`, id))
	if err != nil || !strings.Contains(status, viewer.String()) {
		t.Fatalf("canister_status does not list the viewer: %s %v", status, err)
	}
	// At most 10 viewers, as on the IC.
	var many []string
	for i := range 11 {
		many = append(many, fmt.Sprintf("principal %q", principal.SelfAuthenticating([]byte{byte(i)})))
	}
	if _, err := f.mgmt("update_settings", fmt.Sprintf(`(record { canister_id = principal %q; settings = record { log_visibility = opt variant { allowed_viewers = vec { %s } } } })`, id, strings.Join(many, "; "))); err == nil {
		t.Fatal("11 allowed viewers accepted")
	}
	allowed(viewer) // unchanged
	setVisibility("variant { controllers }")
	denied(viewer)
	// The setting survives a restart.
	setVisibility("variant { public }")
	f.restart()
	allowed(other)

	// create_canister's settings take them too.
	reply, err := f.mgmt("provisional_create_canister_with_cycles", fmt.Sprintf(`(record { settings = opt record { log_visibility = opt variant { allowed_viewers = vec { principal %q } }; wasm_memory_threshold = opt (4096 : nat) } })`, viewer))
	if err != nil {
		t.Fatal(err)
	}
	created, err := principal.FromText(strings.TrimSuffix(reply[strings.Index(reply, `principal "`)+len(`principal "`):], `" })`))
	if err != nil {
		t.Fatalf("created %s: %v", reply, err)
	}
	if st := f.status(created); st.LogVisibility != "allowed_viewers" || len(st.LogViewers) != 1 || st.LogViewers[0] != viewer.String() || st.WasmMemoryThreshold != 4096 {
		t.Fatalf("created with settings: %+v", st)
	}

	// Replicated calls are refused: a canister's call, an update call.
	arg := encodeText(t, fmt.Sprintf(`(record { canister_id = principal %q })`, id))
	const replicated = "fetch_canister_logs API is only accessible in non-replicated mode"
	_, _, err = f.node.managementCall(context.Background(), &message{kind: kindRequest, caller: id, method: "fetch_canister_logs", arg: arg})
	if r := f.reject(err); r.Code != CanisterReject || r.Message != replicated {
		t.Fatalf("a canister's fetch_canister_logs: %v", err)
	}
	_, err = f.node.Update(context.Background(), Message{Canister: principal.Management(), Method: "fetch_canister_logs", Arg: arg, Caller: user})
	if r := f.reject(err); r.Code != CanisterReject || r.Message != replicated {
		t.Fatalf("fetch_canister_logs as an update: %v", err)
	}
	// Methods that change state are not queries; a missing canister is not found.
	_, err = f.node.Query(context.Background(), Message{Canister: principal.Management(), Method: "stop_canister", Arg: arg, Caller: user})
	if r := f.reject(err); r.Code != CanisterReject || !strings.Contains(r.Message, "cannot be called as a query") {
		t.Fatalf("stop_canister as a query: %v", err)
	}
	if _, err := f.fetchLogs(principal.CanisterID(4242), user); f.reject(err).Code != DestinationInvalid {
		t.Fatalf("logs of a missing canister: %v", err)
	}
}

// A real Motoko canister's traps (shared corpus, traps.mo): the records
// are Motoko's own trap messages through ic0.trap and the Wasm traps, and
// every trapped message left the state as it was.
func TestCanisterLogMotokoTraps(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		id := f.install(module(t, corpusDir, "traps"), noArgs)
		for _, c := range []struct{ method, arg string }{
			{"setThenTrap", "(5 : nat)"},
			{"assertFalse", "()"},
			{"outOfBounds", "(10 : nat)"},
			{"divZero", "(0 : nat)"},
		} {
			_, err := f.node.Update(context.Background(), Message{Canister: id, Method: c.method, Arg: encodeText(t, c.arg), Caller: user})
			if r := f.reject(err); r.Code != CanisterError {
				t.Fatalf("%s: %v", c.method, err)
			}
		}
		eq(t, "get", f.query(id, "get", noArgs), natReply(1))
		var got []string
		for _, r := range f.mustFetchLogs(id) {
			got = append(got, string(r.Content))
		}
		want := []string{
			"[TRAP]: trapped after write",                      // Debug.trap
			"[TRAP]: assertion failed at traps.mo:13.55-13.67", // assert false
			"[TRAP]: Array index out of bounds",                // Motoko's bounds check
			"[TRAP]: integer division by 0",                    // a Wasm trap
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("records %q, want %q", got, want)
		}
	})
}

// Reinstall and uninstall purge the log, as on the IC; an upgrade keeps
// it; idx goes on counting, across a restart too.
func TestCanisterLogPurge(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wasm := mustWat(t, logWat)
	id := f.install(wasm, nil)
	f.update(id, "print", []byte("one"))
	f.update(id, "print", []byte("two"))
	f.upgrade(id, wasm)
	checkLog(t, f, id, 0, []string{"one", "two"})
	if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeReinstall, Wasm: wasm, Caller: user}); err != nil {
		t.Fatal(err)
	}
	if recs := f.mustFetchLogs(id); len(recs) != 0 {
		t.Fatalf("log after reinstall: %v", recs)
	}
	f.update(id, "print", []byte("three"))
	checkLog(t, f, id, 2, []string{"three"})
	f.restart()
	checkLog(t, f, id, 2, []string{"three"})
	if err := f.node.Uninstall(context.Background(), id, user); err != nil {
		t.Fatal(err)
	}
	if recs := f.mustFetchLogs(id); len(recs) != 0 {
		t.Fatalf("log after uninstall: %v", recs)
	}
	f.restart() // nothing stored: the numbering comes from the metadata
	if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeInstall, Wasm: wasm, Caller: user}); err != nil {
		t.Fatal(err)
	}
	f.update(id, "print", []byte("four"))
	checkLog(t, f, id, 3, []string{"four"})
}
