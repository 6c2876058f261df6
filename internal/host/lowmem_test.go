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

// hashText is a field name's id as Candid text prints it (1_054_895_615).
func hashText(name string) string {
	s := fmt.Sprint(candid.Hash(name))
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "_" + s[i:]
	}
	return s
}

// lowMemWat counts its canister_on_low_wasm_memory runs at address 0 and
// prints each; "grow" grows the heap by its argument (a little-endian
// u32, in Wasm pages).
const lowMemWat = `
(module
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "debug_print" (func $print (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "low memory hook")
  (func (export "canister_on_low_wasm_memory")
    (i64.store (i32.const 0) (i64.add (i64.load (i32.const 0)) (i64.const 1)))
    (call $print (i32.const 100) (i32.const 15)))
  (func (export "canister_update grow")
    (call $arg_copy (i32.const 8) (i32.const 0) (i32.const 4))
    (i64.store (i32.const 16) (i64.extend_i32_s (memory.grow (i32.load (i32.const 8)))))
    (call $append (i32.const 16) (i32.const 8))
    (call $reply))
  (func (export "canister_update ping") (call $reply))
  (func (export "canister_query hooks") (call $append (i32.const 0) (i32.const 8)) (call $reply))
)`

// hooks is how often the hook ran, read once every message sent before
// (and any hook it caused) has run: the hook is queued before a message's
// reply goes out, so a ping sent afterwards runs after it.
func (f *fixture) hooks(id principal.Principal) uint64 {
	f.t.Helper()
	f.update(id, "ping", nil)
	return binary.LittleEndian.Uint64(f.query(id, "hooks", nil))
}

func (f *fixture) settings(id principal.Principal, fields string) {
	f.t.Helper()
	if _, err := f.mgmt("update_settings", fmt.Sprintf(`(record { canister_id = principal %q; settings = record { %s } })`, id, fields)); err != nil {
		f.t.Fatalf("update_settings %s: %v", fields, err)
	}
}

// The hook runs once when wasm_memory_limit - heap falls below
// wasm_memory_threshold, not again while that holds, and again once the
// condition has cleared and arises anew: through growth, a lowered limit,
// a raised threshold. Its state survives a restart.
func TestLowWasmMemoryHook(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		id := f.install(mustWat(t, lowMemWat), nil)
		const page = wasmPage
		// Limit 10 pages, threshold 5: the hook is due once the heap is
		// above 5 pages (limit < heap + threshold).
		f.settings(id, fmt.Sprintf("wasm_memory_limit = opt (%d : nat); wasm_memory_threshold = opt (%d : nat)", 10*page, 5*page))
		if st := f.status(id); st.WasmMemoryThreshold != 5*page {
			t.Fatalf("status wasm_memory_threshold = %d", st.WasmMemoryThreshold)
		}
		if got := f.grow(id, "grow", 4); got != 1 {
			t.Fatalf("grow returned %d", got)
		}
		if n := f.hooks(id); n != 0 {
			t.Fatalf("hook ran %d times at 5 of 10 pages, threshold 5", n)
		}
		f.grow(id, "grow", 1) // 6 pages: 4 left < 5
		if n := f.hooks(id); n != 1 {
			t.Fatalf("hook ran %d times after the heap crossed the threshold, want 1", n)
		}
		f.grow(id, "grow", 2) // 8 pages: the condition still holds
		if n := f.hooks(id); n != 1 {
			t.Fatalf("hook ran %d times while the condition held, want 1", n)
		}
		f.restart() // executed is remembered
		if n := f.hooks(id); n != 1 {
			t.Fatalf("hook ran %d times after a restart, want 1", n)
		}
		// Raising the limit clears the condition; lowering it again
		// brings it back: a second run.
		f.settings(id, fmt.Sprintf("wasm_memory_limit = opt (%d : nat)", 100*page))
		if n := f.hooks(id); n != 1 {
			t.Fatalf("hook ran %d times after the condition cleared, want 1", n)
		}
		f.settings(id, fmt.Sprintf("wasm_memory_limit = opt (%d : nat)", 10*page))
		if n := f.hooks(id); n != 2 {
			t.Fatalf("hook ran %d times after the condition arose again, want 2", n)
		}
		// Through the threshold alone.
		f.settings(id, "wasm_memory_threshold = opt (0 : nat)")
		f.settings(id, fmt.Sprintf("wasm_memory_threshold = opt (%d : nat)", 3*page)) // 2 left < 3
		if n := f.hooks(id); n != 3 {
			t.Fatalf("hook ran %d times after the threshold rose, want 3", n)
		}
		// Each run printed; the hook's state changes were committed.
		logs, _ := f.node.Logs(context.Background(), id)
		var runs int
		for _, l := range logs {
			if l.Text == "low memory hook" {
				runs++
			}
		}
		if runs != 3 {
			t.Fatalf("%d hook lines in the log, want 3", runs)
		}
		status, err := f.mgmt("canister_status", fmt.Sprintf(`(record { canister_id = principal %q })`, id))
		// 3 pages = 196_608 bytes (Candid text groups digits).
		if err != nil || !strings.Contains(status, hashText("wasm_memory_threshold")+" = 196_608 : nat") {
			t.Fatalf("canister_status does not show the threshold: %s %v", status, err)
		}
	})
}

// A module without the hook is unaffected, and one whose hook traps is not
// retried while the condition holds; the trap is logged.
func TestLowWasmMemoryHookTraps(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		trapping := strings.Replace(lowMemWat, `(call $print (i32.const 100) (i32.const 15)))`,
			`(call $print (i32.const 100) (i32.const 15)) unreachable)`, 1)
		id := f.install(mustWat(t, trapping), nil)
		f.settings(id, fmt.Sprintf("wasm_memory_limit = opt (%d : nat); wasm_memory_threshold = opt (%d : nat)", 4*wasmPage, 2*wasmPage))
		f.grow(id, "grow", 2) // 3 pages: 1 left < 2
		f.grow(id, "grow", 0)
		if n := f.hooks(id); n != 0 {
			t.Fatalf("a trapping hook's count was kept: %d", n)
		}
		recs := f.mustFetchLogs(id)
		var got []string
		for _, r := range recs {
			got = append(got, string(r.Content))
		}
		if want := "low memory hook\n[TRAP]: unreachable"; strings.Join(got, "\n") != want {
			t.Fatalf("log %q, want one run that trapped", got)
		}

		plain := f.install(mustWat(t, memWat), nil)
		f.settings(plain, fmt.Sprintf("wasm_memory_limit = opt (%d : nat); wasm_memory_threshold = opt (%d : nat)", 4*wasmPage, 2*wasmPage))
		if got := f.grow(plain, "grow", 2); got != 1 {
			t.Fatalf("grow without a hook returned %d", got)
		}
		f.update(plain, "ping", nil)
	})
}

// A Motoko canister's `system func lowmemory` (examples/lowmem64.mo, the
// dfinity/examples low_wasm_memory example in Motoko): growing its heap
// past wasm_memory_limit - wasm_memory_threshold runs it once.
func TestLowWasmMemoryMotoko(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		id := f.install(module(t, examplesDir, "lowmem64"), noArgs)
		runs := func() string { return f.queryText(id, "runs", "()") }
		const mib = 1 << 20
		h0 := f.status(id).HeapBytes
		// Due once the heap is 16 MiB above what it is now.
		f.settings(id, fmt.Sprintf("wasm_memory_limit = opt (%d : nat); wasm_memory_threshold = opt (%d : nat)", h0+64*mib, 48*mib))
		if got := runs(); got != "(0 : nat)" {
			t.Fatalf("runs before growing: %s", got)
		}
		for f.status(id).HeapBytes <= h0+16*mib {
			f.callText(id, "grow", "(4 : nat)")
		}
		// Motoko runs the async* hook body in a message of its own: wait
		// for it (each update lets queued messages run first).
		deadline := time.Now().Add(2 * time.Minute)
		for runs() != "(1 : nat)" {
			if time.Now().After(deadline) {
				t.Fatalf("the hook never ran: runs %s, heap %d, limit %d", runs(), f.status(id).HeapBytes, h0+64*mib)
			}
			f.update(id, "runs", noArgs) // a replicated query: a message through the queue
		}
		f.callText(id, "grow", "(4 : nat)")
		f.update(id, "runs", noArgs)
		if got := runs(); got != "(1 : nat)" {
			t.Fatalf("runs after growing further: %s", got)
		}
		logs, _ := f.node.Logs(context.Background(), id)
		if n := len(logs); n == 0 || logs[n-1].Text != "low memory hook 1" {
			t.Fatalf("log %v", logs)
		}
	})
}

// A hook that becomes due while the canister is stopped runs once it is
// started again (the timer loop queues it), and survives a restart
// while pending.
func TestLowWasmMemoryHookWhileStopped(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(mustWat(t, lowMemWat), nil)
	ctx := context.Background()
	if err := f.node.SetStatus(ctx, id, user, "stopped"); err != nil {
		t.Fatal(err)
	}
	// 1 page, limit 2, threshold 2: due now, but the canister is stopped.
	f.settings(id, fmt.Sprintf("wasm_memory_limit = opt (%d : nat); wasm_memory_threshold = opt (%d : nat)", 2*wasmPage, 2*wasmPage))
	f.restart()
	c, err := f.node.get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.RLock()
	state := c.meta.LowMemoryHook
	c.mu.RUnlock()
	if state != hookReady {
		t.Fatalf("hook state %d on a stopped canister after a restart, want ready", state)
	}
	if err := f.node.SetStatus(ctx, id, user, "running"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for binary.LittleEndian.Uint64(f.query(id, "hooks", nil)) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the pending hook never ran after start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := f.hooks(id); n != 1 {
		t.Fatalf("hook ran %d times, want 1", n)
	}
}
