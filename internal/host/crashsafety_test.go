package host

import (
	"context"
	"encoding/binary"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// crashWat writes the first byte of 1200 heap pages (of 1280) and some
// stable memory, in messages that commit, trap or never end.
const crashWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $swrite (param i64 i64 i64)))
  (import "ic0" "stable64_size" (func $ssize (result i64)))
  (memory (export "memory") 80)
  (global $counter (mut i64) (i64.const 0))
  (data (i32.const 0) "ok")
  ;; the first byte of pages [1, n] := v
  (func $touch (param $v i32) (param $n i32)
    (local $i i32)
    (local.set $i (i32.const 1))
    (loop $l
      (i32.store8 (i32.mul (local.get $i) (i32.const 4096)) (local.get $v))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.le_u (local.get $i) (local.get $n)))))
  (func (export "canister_update fill")
    (call $touch (i32.const 1) (i32.const 1200))
    (drop (call $sgrow (i64.const 1)))
    (call $swrite (i64.const 0) (i64.const 0) (i64.const 2))
    (global.set $counter (i64.add (global.get $counter) (i64.const 1)))
    (call $append (i32.const 0) (i32.const 2)) (call $reply))
  (func (export "canister_update write_then_trap")
    (call $touch (i32.const 171) (i32.const 1200))
    (drop (memory.grow (i32.const 16)))
    (i32.store8 (i32.const 5300000) (i32.const 7))
    (drop (call $sgrow (i64.const 16)))
    (call $swrite (i64.const 65536) (i64.const 4096) (i64.const 4096))
    (global.set $counter (i64.const 999))
    (call $trap (i32.const 0) (i32.const 2)))
  (func (export "canister_update spin")
    (global.set $counter (i64.const 777))
    (call $touch (i32.const 205) (i32.const 1200))
    (loop $l (br $l)))
  (func (export "canister_update inc")
    (global.set $counter (i64.add (global.get $counter) (i64.const 1)))
    (call $append (i32.const 0) (i32.const 2)) (call $reply))
  ;; the sum of the first bytes of all pages, the memory sizes and the counter
  (func (export "canister_query sum")
    (local $i i32) (local $s i64) (local $n i32)
    (local.set $n (i32.mul (memory.size) (i32.const 16)))
    (loop $l
      (local.set $s (i64.add (local.get $s) (i64.load8_u (i32.mul (local.get $i) (i32.const 4096)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (i64.store (i32.const 16) (local.get $s))
    (i64.store (i32.const 24) (i64.extend_i32_u (memory.size)))
    (i64.store (i32.const 32) (call $ssize))
    (i64.store (i32.const 40) (global.get $counter))
    (call $append (i32.const 16) (i32.const 32)) (call $reply))
)`

// memSum is what the sum query reports: what executions see of the
// committed memory.
type memSum struct{ firstBytes, heapPages, stablePages, counter uint64 }

func (f *fixture) memSum(id principal.Principal) memSum {
	f.t.Helper()
	b := f.query(id, "sum", nil)
	if len(b) != 32 {
		f.t.Fatalf("sum: %d bytes", len(b))
	}
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	return memSum{u(0), u(1), u(2), u(3)}
}

func (f *fixture) stateHash(id principal.Principal) string {
	f.t.Helper()
	st, err := f.node.Status(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return st.StateHash
}

// newCrashFixture is a node in the given isolation mode whose executions
// and memory cost nothing. A trap is charged its instructions on the IC,
// and every message the storage fee for the time since the last, which
// change the balance and with it the state hash; priced at zero, a message
// that leaves nothing behind leaves the whole hash as it was.
func newCrashFixture(t *testing.T, isolation string) *fixture {
	cfg := testConfig(t, isolation)
	cfg.UpdateInstructions = 4_000_000_000 // bounds spin if the kill never lands
	cfg.Fees.UpdateExecution, cfg.Fees.PerInstruction = 0, 0
	cfg.Fees.IngressReception, cfg.Fees.IngressPerByte = 0, 0
	cfg.Fees.Call, cfg.Fees.CallPerByte = 0, 0
	cfg.Fees.GiBStoragePerSecond = 0
	return openFixture(t, cfg)
}

// A message that writes 1200 heap pages, grows both memories and writes
// stable memory, then traps, leaves the committed state, its hash and what
// the next execution sees unchanged, in both isolation modes, and across a
// restart.
func TestTrapAfterWritingPagesLeavesState(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newCrashFixture(t, mode)
			id := f.install(mustWat(t, crashWat), nil)
			eq(t, "fill", f.update(id, "fill", nil), []byte("ok"))
			want := memSum{firstBytes: 'o' + 1200, heapPages: 80, stablePages: 1, counter: 1}
			if got := f.memSum(id); got != want {
				t.Fatalf("after fill: %+v, want %+v", got, want)
			}
			hash := f.stateHash(id)

			_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "write_then_trap", Caller: user})
			if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "trap") {
				t.Fatalf("write_then_trap: %v", r)
			}
			if got := f.stateHash(id); got != hash {
				t.Fatalf("state hash changed by a trap: %s, was %s", got, hash)
			}
			if got := f.memSum(id); got != want {
				t.Fatalf("after the trap, executions see %+v, want %+v", got, want)
			}
			eq(t, "inc after the trap", f.update(id, "inc", nil), []byte("ok"))
			want.counter++
			if got := f.memSum(id); got != want {
				t.Fatalf("after inc: %+v, want %+v", got, want)
			}
			hash = f.stateHash(id)
			f.restart()
			if got := f.stateHash(id); got != hash {
				t.Fatalf("state hash after restart %s, before %s", got, hash)
			}
			if got := f.memSum(id); got != want {
				t.Fatalf("after restart: %+v, want %+v", got, want)
			}
		})
	}
}

// canisterPid is the pid of the canister's sandbox, 0 if none is live.
func (f *fixture) canisterPid(id principal.Principal) int {
	for _, s := range f.node.Sandboxes() {
		if s.Kind == "canister" && s.Canister == id.String() {
			return s.PID
		}
	}
	return 0
}

// A sandbox killed while it runs a message (after writing 1200 pages of
// its copy of the heap) fails that message with CANISTER_ERROR and changes
// nothing: the state hash, what the next execution sees, and the store.
// The host retries an execution once on a fresh sandbox when a reused one
// crashes, so the test kills every sandbox the message runs in until the
// message is answered.
func TestSandboxKilledMidMessageLeavesState(t *testing.T) {
	t.Parallel()
	f := newCrashFixture(t, "sandbox")
	id := f.install(mustWat(t, crashWat), nil)
	eq(t, "fill", f.update(id, "fill", nil), []byte("ok"))
	want := f.memSum(id)
	hash := f.stateHash(id)
	before := f.storedMeta(id)

	done := make(chan error, 1)
	go func() {
		_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "spin", Caller: user})
		done <- err
	}()
	killed := map[int]bool{}
	var err error
	deadline := time.After(60 * time.Second)
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-deadline:
			t.Fatal("spin was not answered")
		case <-time.After(20 * time.Millisecond):
		}
		pid := f.canisterPid(id)
		if pid == 0 || killed[pid] {
			continue
		}
		// Let the execution get going in this sandbox, then kill it.
		time.Sleep(300 * time.Millisecond)
		if f.canisterPid(id) != pid {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill sandbox %d: %v", pid, err)
		}
		killed[pid] = true
	}
	if len(killed) == 0 {
		t.Fatal("no sandbox was killed")
	}
	if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "sandbox") {
		t.Fatalf("spin in a killed sandbox: %v", r)
	}
	t.Logf("%d sandboxes killed; the message got: %v", len(killed), err)
	// Charged once, at its whole limit, however many sandboxes it ran in
	// (a crash of a reused sandbox is retried on a fresh one).
	if after := f.storedMeta(id); after.Messages-before.Messages != 1 || after.Instructions-before.Instructions != f.cfg.UpdateInstructions {
		t.Fatalf("the killed message was charged %d times, %d instructions; want once, %d", after.Messages-before.Messages,
			after.Instructions-before.Instructions, f.cfg.UpdateInstructions)
	}
	if got := f.stateHash(id); got != hash {
		t.Fatalf("state hash changed by a killed sandbox: %s, was %s", got, hash)
	}
	if got := f.memSum(id); got != want {
		t.Fatalf("after the kill, executions see %+v, want %+v", got, want)
	}
	eq(t, "inc after the kill", f.update(id, "inc", nil), []byte("ok"))
	want.counter++
	if got := f.memSum(id); got != want {
		t.Fatalf("after inc: %+v, want %+v", got, want)
	}
	hash = f.stateHash(id)
	f.restart()
	if got := f.stateHash(id); got != hash {
		t.Fatalf("state hash after restart %s, before %s", got, hash)
	}
	if got := f.memSum(id); got != want {
		t.Fatalf("after restart: %+v, want %+v", got, want)
	}
}
