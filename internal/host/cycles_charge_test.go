package host

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
)

// cleanupPayerWat makes four calls to take_none on the callee named by its
// argument, each with a reply callback that spins until the instruction
// limit (a trap) and a cleanup that runs until performance_counter(0)
// reaches the given count and then counts itself; then it burns all it may
// (down to what the execution must keep) and replies with the amount
// burned.
func cleanupPayerWat(cleanupRuns uint64) string {
	return fmt.Sprintf(`
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_on_cleanup" (func $on_cleanup (param i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (import "ic0" "cycles_burn128" (func $burn (param i64 i64 i32)))
  (import "ic0" "performance_counter" (func $perf (param i32) (result i64)))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 0) $spin $cleanup)
  (global $cleanups (mut i64) (i64.const 0))
  (data (i32.const 300) "take_none")
  (func (export "canister_update go")
    (local $n i32) (local $i i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 200) (i32.const 0) (local.get $n))
    (loop $l
      (call $call_new (i32.const 200) (local.get $n) (i32.const 300) (i32.const 9)
        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
      (call $on_cleanup (i32.const 1) (i32.const 0))
      (if (call $perform) (then unreachable))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 4))))
    (call $burn (i64.const -1) (i64.const -1) (i32.const 0))
    (call $append (i32.const 0) (i32.const 16))
    (call $reply))
  (func $spin (param i32) (loop $l (br $l)))
  (func $cleanup (param i32)
    (loop $l (br_if $l (i64.lt_u (call $perf (i32.const 0)) (i64.const %d))))
    (global.set $cleanups (i64.add (global.get $cleanups) (i64.const 1))))
  (func (export "canister_query cleanups")
    (i64.store (i32.const 0) (global.get $cleanups))
    (call $append (i32.const 0) (i32.const 8))
    (call $reply))
)`, cleanupRuns)
}

// A reply callback that traps after its whole instruction limit is
// followed by its cleanup, and the two are one message, as on the IC: the
// callback runs without the cleanup's reserve (5 % of the limit), the
// cleanup gets that reserve and what the callback left, and the pair is
// charged once, within what the call's reservation prepaid. Before, the
// cleanup got a whole limit of its own with no balance check, and a
// canister that had burned its balance ran cleanups (and committed their
// state) for nothing.
//
// Every instruction the canister executed is paid for: its burned cycles,
// less what it burned itself, the calls' fees and the ingress fee, cover
// its instructions; and each response is one message.
func TestCleanupRunsWithinTheResponsesLimit(t *testing.T) {
	const limit = 50_000_000
	for _, tc := range []struct {
		name        string
		cleanupRuns uint64 // what the cleanup runs before it counts itself
		committed   uint64 // cleanups that commit
	}{
		{"cleanup within the reserve commits", 1_000_000, 4},
		{"cleanup beyond the reserve traps", 40_000_000, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &conservationWatch{}
			cfg := DefaultConfig()
			cfg.Home = t.TempDir()
			cfg.Isolation = "inprocess"
			cfg.Fees.GiBStoragePerSecond = 0 // no storage fee, so no freezing limit
			cfg.Fees.CallPerByte = 0         // a call's reservation is the execution of its response
			cfg.UpdateInstructions = limit
			cfg.Metrics = w
			f := &fixture{t: t, home: cfg.Home, cfg: cfg}
			f.open()
			w.st.Store(f.node.store)
			t.Cleanup(func() { f.node.Close() })

			callee := f.install(mustWat(t, flightWat), nil)
			a := f.install(mustWat(t, cleanupPayerWat(tc.cleanupRuns)), nil)
			before := f.storedMeta(a)
			arg := callee.Bytes()
			got := f.update(a, "go", arg)
			f.quiesce()
			after := f.storedMeta(a)
			w.check(t)

			burnedSelf := cycles.Amount{Lo: binary.LittleEndian.Uint64(got), Hi: binary.LittleEndian.Uint64(got[8:])}
			fees := cfg.Fees
			ingress := cycles.New(fees.IngressReception + fees.IngressPerByte*uint64(len(arg)))
			calls := cycles.New(4 * fees.Call)
			burned := after.CyclesBurned.SaturatingSub(before.CyclesBurned)
			paid := burned.SaturatingSub(burnedSelf).SaturatingSub(ingress).SaturatingSub(calls)
			instr := after.Instructions - before.Instructions
			execs := after.Messages - before.Messages
			owed := cycles.New(instr * fees.PerInstruction)
			cleanups := binary.LittleEndian.Uint64(f.query(a, "cleanups", nil))
			t.Logf("messages %d, instructions %d, cleanups committed %d, balance %s", execs, instr, cleanups, after.Balance)
			if paid.Cmp(owed) < 0 {
				t.Fatalf("the canister ran %d instructions in %d messages (%s cycles owed) and paid %s: %s cycles of execution were free (%d cleanups committed, balance now %s)",
					instr, execs, owed, paid, owed.SaturatingSub(paid), cleanups, after.Balance)
			}
			if execs != 1+4 {
				t.Fatalf("%d messages charged, want 5: the update and one for each response (callback and cleanup together)", execs)
			}
			if cleanups != tc.committed {
				t.Fatalf("%d cleanups committed, want %d", cleanups, tc.committed)
			}
			if most := uint64(limit) * 5; instr > most {
				t.Fatalf("%d instructions: more than the update's and the four responses' limits (%d)", instr, most)
			}
		})
	}
}
