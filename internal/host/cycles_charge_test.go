package host

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
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
	t.Parallel()
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
			// No storage fee (watchedFixture), so no freezing limit.
			f, w := watchedFixture(t, func(cfg *Config) {
				cfg.Fees.CallPerByte = 0 // a call's reservation is the execution of its response
				cfg.UpdateInstructions = limit
			})

			callee := f.install(mustWat(t, flightWat), nil)
			a := f.install(mustWat(t, cleanupPayerWat(tc.cleanupRuns)), nil)
			before := f.storedMeta(a)
			arg := callee.Bytes()
			got := f.update(a, "go", arg)
			f.quiesce()
			after := f.storedMeta(a)
			w.check(t)

			burnedSelf := cycles.Amount{Lo: binary.LittleEndian.Uint64(got), Hi: binary.LittleEndian.Uint64(got[8:])}
			fees := f.cfg.Fees
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

// dyingSandbox runs the executions of one canister in one context to
// their end, as a sandbox under the attacker's control would (its CPU is
// spent), then fails them with err: what a sandbox that spins natively
// until the watchdog's deadline, or crashes or lies after running, makes
// of every message.
type dyingSandbox struct {
	exec.Executor
	victim atomic.Pointer[dyingVictim]
	died   atomic.Uint64 // executions failed
}

type dyingVictim struct {
	id  string
	ctx sysapi.Context
	err error
}

func (x *dyingSandbox) Execute(ctx context.Context, id string, req *exec.Request) (*sysapi.Output, error) {
	out, err := x.Executor.Execute(ctx, id, req)
	v := x.victim.Load()
	if err != nil || v == nil || id != v.id || req.Input.Context != v.ctx {
		return out, err
	}
	x.died.Add(1)
	return nil, v.err
}

// kill makes the executions of id in context ctx fail with err from now
// on (c.mu held: no execution of id runs meanwhile), and returns id's
// metadata as it is then.
func (x *dyingSandbox) kill(f *fixture, id principal.Principal, ctx sysapi.Context, err error) store.Meta {
	c := f.loaded(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	x.victim.Store(&dyingVictim{id: id.String(), ctx: ctx, err: err})
	x.died.Store(0)
	return c.meta
}

// watchdogKill is the error of an execution the watchdog ended.
var watchdogKill = &exec.SandboxError{Op: "execute", Fault: exec.FaultTimeout, Timeout: 10 * time.Second}

// spinWat's update runs 40 M instructions and replies; with heartbeat, it
// exports a heartbeat that runs 40 M instructions too.
func spinWat(heartbeat bool) string {
	beat := ""
	if heartbeat {
		beat = `(func (export "canister_heartbeat") (call $spin))`
	}
	return `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "performance_counter" (func $perf (param i32) (result i64)))
  (func $spin (loop $l (br_if $l (i64.lt_u (call $perf (i32.const 0)) (i64.const 40000000)))))
  (func (export "canister_update work") (call $spin) (call $reply))
  ` + beat + `
)`
}

// An execution whose sandbox fails it (the watchdog, a crash, a protocol
// violation) is charged as a trap at its whole instruction limit, the
// ingress fee included: under the threat model the sandbox runs whatever
// native code the canister brings, and nothing it sends proves it ran
// less. Before, it was charged nothing (an update, a heartbeat, a
// callback) or only the module's compilation (an install), so such a
// canister ran every message until the watchdog killed it, unbilled. The
// host's own failures stay free, and other canisters pay as they did.
func TestSandboxFailureIsCharged(t *testing.T) {
	t.Parallel()
	f, w := watchedFixture(t)
	x := &dyingSandbox{Executor: f.node.exec}
	f.node.exec = x // before any canister runs
	fees := f.cfg.Fees
	limit := f.cfg.UpdateInstructions
	spin := mustWat(t, spinWat(false))
	work := func(id principal.Principal) error {
		_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "work", Caller: user})
		return err
	}
	burnedOf := func(before, after store.Meta) cycles.Amount {
		return after.CyclesBurned.SaturatingSub(before.CyclesBurned)
	}
	// charged checks what id was charged since before: executions at
	// instr instructions each, and fee.
	charged := func(t *testing.T, id principal.Principal, before store.Meta, executions, instr uint64, fee cycles.Amount) {
		t.Helper()
		after := f.storedMeta(id)
		want := n(executions).mul(f.node.executionFee(instr)).SaturatingAdd(fee)
		if got := burnedOf(before, after); got != want || after.Messages-before.Messages != executions || after.Instructions-before.Instructions != executions*instr {
			t.Fatalf("charged %s cycles for %d messages of %d instructions, want %s for %d of %d each",
				got, after.Messages-before.Messages, after.Instructions-before.Instructions, want, executions, instr)
		}
	}

	t.Run("update", func(t *testing.T) {
		a := f.install(spin, nil)
		before := x.kill(f, a, sysapi.CtxUpdate, watchdogKill)
		for range 3 {
			if r := f.reject(work(a)); r.Code != CanisterError {
				t.Fatalf("want CANISTER_ERROR, got %v", r)
			}
		}
		f.quiesce()
		charged(t, a, before, 3, limit, n(3).mul(cycles.New(fees.IngressReception)))
	})

	// A sandbox the kernel OOM-killed within its own limit, because the
	// node's sandboxes together reached theirs, failed by no doing of the
	// canister: SYS_TRANSIENT, and nothing charged, not even the fee.
	t.Run("node memory", func(t *testing.T) {
		a := f.install(spin, nil)
		before := x.kill(f, a, sysapi.CtxUpdate, &exec.SandboxError{Op: "execute", Fault: exec.FaultNodeMemory})
		for range 2 {
			if r := f.reject(work(a)); r.Code != SysTransient {
				t.Fatalf("want SYS_TRANSIENT, got %v", r)
			}
		}
		f.quiesce()
		charged(t, a, before, 0, limit, cycles.Amount{})
	})

	t.Run("other canisters pay as before", func(t *testing.T) {
		b := f.install(spin, nil)
		before := f.storedMeta(b)
		r, err := f.node.Update(context.Background(), Message{Canister: b, Method: "work", Caller: user})
		if err != nil {
			t.Fatal(err)
		}
		charged(t, b, before, 1, r.Instructions, cycles.New(fees.IngressReception))
	})

	t.Run("heartbeat", func(t *testing.T) {
		h := f.install(mustWat(t, spinWat(true)), nil)
		before := x.kill(f, h, sysapi.CtxSystemTask, &exec.SandboxError{Op: "execute", Fault: exec.FaultCrash})
		c := f.loaded(h)
		for range 2 {
			f.node.process(c, &message{kind: kindHeartbeat})
		}
		if err := f.node.SetStatus(context.Background(), h, user, "stopped"); err != nil {
			t.Fatal(err) // no heartbeat runs from here on
		}
		died := x.died.Load()
		if died < 2 {
			t.Fatalf("%d heartbeats died, want at least 2", died)
		}
		charged(t, h, before, died, limit, cycles.Amount{})
	})

	t.Run("reply callback", func(t *testing.T) {
		a, b := f.install(mustWat(t, flightWat), nil), f.install(mustWat(t, flightWat), nil)
		cb := f.loaded(b)
		cb.mu.Lock() // b answers once the update's charge is counted
		f.update(a, "forward", flightArg(b, "take_none", 0, false, nil))
		before := x.kill(f, a, sysapi.CtxReply, &exec.SandboxError{Op: "execute", Fault: exec.FaultViolation,
			Violation: &boundary.Violation{Kind: boundary.VFraming, Detail: "a lie"}})
		cb.mu.Unlock()
		f.quiesce()
		// The callback's limit: the response's, less the cleanup's reserve.
		charged(t, a, before, 1, limit-cleanupReserve(limit), cycles.Amount{})
	})

	t.Run("install", func(t *testing.T) {
		id, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
		if err != nil {
			t.Fatal(err)
		}
		x.victim.Store(&dyingVictim{id: id.String(), ctx: sysapi.CtxInit, err: watchdogKill})
		before := f.storedMeta(id)
		if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeInstall, Wasm: spin, Caller: user}); err == nil {
			t.Fatal("an install whose sandbox died succeeded")
		}
		charged(t, id, before, 1, f.cfg.InstallInstructions, f.node.compileFee(uint64(len(spin))))
	})

	t.Run("the host's own failure is free", func(t *testing.T) {
		a := f.install(spin, nil)
		before := x.kill(f, a, sysapi.CtxUpdate, fmt.Errorf("node closing: %w", context.Canceled))
		if err := work(a); !errors.Is(err, context.Canceled) && f.reject(err).Code != CanisterError {
			t.Fatalf("got %v", err)
		}
		f.quiesce()
		charged(t, a, before, 0, 0, cycles.Amount{})
	})
	x.victim.Store(nil)
	w.check(t)
}

// n is a count of cycles amounts, for sums in tests.
type n uint64

func (k n) mul(a cycles.Amount) cycles.Amount { return a.MulSat(uint64(k)) }

// growPastFreezingWat grows its memories by 3 GiB (49152 pages, not touched) in an
// update (grow, grow_stable), in the reply callback of a call to itself
// (grow_in_callback), or by 1 MiB (grow_little); each answers the grow's
// result as an i32. canister_init grows the heap by initPages pages.
func growPastFreezingWat(initPages int) string {
	initFn := fmt.Sprintf(`(func (export "canister_init") (drop (memory.grow (i32.const %d))))`, initPages)
	return `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (memory 1)
  (table 1 funcref)
  (elem (i32.const 0) $grow_cb)
  (data (i32.const 200) "noop")
  (func $answer (param i32)
    (i32.store (i32.const 0) (local.get 0))
    (call $append (i32.const 0) (i32.const 4))
    (call $reply))
  (func (export "canister_update grow") (call $answer (memory.grow (i32.const 49152))))
  (func (export "canister_update grow_little") (call $answer (memory.grow (i32.const 16))))
  (func (export "canister_update grow_stable") (call $answer (i32.wrap_i64 (call $sgrow (i64.const 49152)))))
  (func (export "canister_update noop") (call $reply))
  (func (export "canister_update grow_in_callback")
    (call $self_copy (i32.const 100) (i32.const 0) (call $self_size))
    (call $call_new (i32.const 100) (call $self_size) (i32.const 200) (i32.const 4)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (if (call $perform) (then unreachable)))
  (func $grow_cb (param i32) (call $answer (memory.grow (i32.const 49152))))
  ` + initFn + `
)`
}

// A canister may not grow its memory beyond what its balance can keep for
// its freezing threshold: before, a canister with 400 G cycles grew its
// heap by 3 GiB in one update, committed, was frozen at once and, once the
// storage fee had taken what was left, held the memory for nothing (a zero
// balance is frozen here, not uninstalled). As on the IC such a growth
// traps (InsufficientCyclesInMemoryGrow): heap or stable memory, in an
// update or (beyond the IC, which does not check them) a callback, and at
// the end of an install. A growth the balance covers succeeds.
func TestGrowthBeyondTheFreezingLimitTraps(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "inprocess")
	cfg.MemoryCapacity = 64 << 30 // not what stops the growth on a small machine
	f := openFixture(t, cfg)
	ctx := context.Background()
	// Pays the install, a few updates, and the freezing limit of a few
	// MiB, but not that of 3 GiB (about 1 T cycles for 30 days).
	bal := cycles.New(400_000_000_000)
	create := func() principal.Principal {
		id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}, Cycles: &bal, Minted: true})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	id := create()
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, growPastFreezingWat(0)), Caller: user}); err != nil {
		t.Fatal(err)
	}
	sizes := func() (heap, stable uint64) {
		c := f.loaded(id)
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.heap.Size(), c.stable.Size()
	}
	for _, method := range []string{"grow", "grow_stable", "grow_in_callback"} {
		r, err := f.node.Update(ctx, Message{Canister: id, Method: method, Caller: user})
		if err == nil {
			heap, stable := sizes()
			t.Fatalf("%s answered %d: the memory grew (heap %d, stable %d bytes) past what the balance keeps frozen", method,
				int32(binary.LittleEndian.Uint32(r.Data)), heap, stable)
		}
		if rej := f.reject(err); rej.Code != CanisterError || !strings.Contains(rej.Message, "cannot grow memory by") || !strings.Contains(rej.Message, "insufficient cycles") {
			t.Fatalf("%s: %v", method, rej)
		}
	}
	if heap, stable := sizes(); heap != 1<<16 || stable != 0 {
		t.Fatalf("heap %d, stable %d bytes after refused growths", heap, stable)
	}
	if got := int32(binary.LittleEndian.Uint32(f.update(id, "grow_little", nil))); got != 1 {
		t.Fatalf("a growth of 1 MiB answered %d", got)
	}
	c := f.loaded(id)
	c.mu.Lock()
	limit, balance := f.node.freezingLimit(c.meta.Settings, usageOf(c)), c.meta.Balance
	c.mu.Unlock()
	if balance.Cmp(limit) < 0 {
		t.Fatalf("balance %s below the freezing limit %s", balance, limit)
	}

	// An install whose canister_init grows the heap by 64 MiB, with a
	// freezing threshold of three years: 790 G cycles of freezing limit.
	fresh := create()
	if _, err := f.ingress(user, "update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { freezing_threshold = opt 100000000 } })`, fresh)); err != nil {
		t.Fatal(err)
	}
	_, err := f.node.Install(ctx, fresh, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, growPastFreezingWat(1024)), Caller: user})
	if err == nil || !strings.Contains(err.Error(), "cannot grow memory by") {
		t.Fatalf("an install growing the heap by 64 MiB: %v", err)
	}
}

// A refund that would take its caller's balance past 2^128-1 is burned,
// what does not fit, and the node opens again. Before, the commit of the
// callback failed on the overflow, so did the fallback credit, the cycles
// stayed recorded in flight, and the next open, giving them back with the
// same checked addition (store.ReturnCyclesInFlight), failed: the node no
// longer opened. (It needs a balance near 2^128, which only the operator
// can mint; any canister then reaches it with a deposit while its call is
// out.)
func TestRefundPastTheMaximumIsBurned(t *testing.T) {
	t.Parallel()
	f, w := watchedFixture(t)
	ctx := context.Background()
	wasm := mustWat(t, flightWat)
	b := f.install(wasm, nil)
	start := cycles.Max.SaturatingSub(cycles.New(1_000_000_000_000_000))
	a, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}, Cycles: &start, Minted: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.Install(ctx, a, InstallOptions{Mode: ModeInstall, Wasm: wasm, Caller: user}); err != nil {
		t.Fatal(err)
	}
	cb := f.loaded(b)
	cb.mu.Lock() // the callee answers once a is full
	f.update(a, "forward", flightArg(b, "take_none", flightCycles, false, nil))
	room := cycles.Max.SaturatingSub(f.storedMeta(a).Balance)
	if _, err := f.ingress(user, "provisional_top_up_canister", fmt.Sprintf(`(record { canister_id = principal "%s"; amount = %s })`, a, room)); err != nil {
		t.Fatal(err)
	}
	before := f.storedMeta(a)
	cb.mu.Unlock()
	f.quiesce()
	w.check(t)
	if rs := f.records(); len(rs) != 0 {
		t.Fatalf("the refund was neither credited nor burned: still in flight %+v", rs)
	}
	// The reservation and the refund came back to a full balance: what
	// did not fit was burned.
	if after := f.storedMeta(a); after.CyclesBurned.SaturatingSub(before.CyclesBurned).Cmp(cycles.New(flightCycles)) < 0 {
		t.Fatalf("burned %s more, want at least the refund of %d", after.CyclesBurned.SaturatingSub(before.CyclesBurned), flightCycles)
	}
	if got := binary.LittleEndian.Uint64(f.query(a, "refunded", nil)[8:]); got != 1 {
		t.Fatalf("the callback ran %d times, want once", got)
	}
	f.restart()
}

// settle adds a refund after what the execution spent, so that a spend of
// the refund itself settles, and caps only the refund.
func TestSettleCapsOnlyTheCredit(t *testing.T) {
	t.Parallel()
	c := cycles.New
	near := cycles.Max.SaturatingSub(c(10))
	for _, tc := range []struct {
		name                      string
		balance, credit, accepted cycles.Amount
		debits                    []cycles.Amount
		bal, over                 cycles.Amount
		fails                     bool
	}{
		{"plain", c(100), c(5), c(7), []cycles.Amount{c(2), c(3)}, c(107), c(0), false},
		{"spends the refund", c(10), c(50), c(0), []cycles.Amount{c(30)}, c(30), c(0), false},
		{"spends more than there is", c(10), c(5), c(0), []cycles.Amount{c(30)}, c(0), c(0), true},
		{"refund past the maximum", near, c(25), c(0), []cycles.Amount{c(5)}, cycles.Max, c(10), false},
		{"accepted past the maximum", near, c(0), c(25), nil, c(0), c(0), true},
		{"a spend makes room", near, c(25), c(0), []cycles.Amount{c(20)}, near.SaturatingAdd(c(5)), c(0), false},
	} {
		bal, over, err := settle(tc.balance, tc.credit, tc.accepted, tc.debits...)
		if (err != nil) != tc.fails || (err == nil && (bal != tc.bal || over != tc.over)) {
			t.Errorf("%s: %s, %s over, %v; want %s, %s over, failure %v", tc.name, bal, over, err, tc.bal, tc.over, tc.fails)
		}
	}
}

// liquidWat's update answers its liquid balance, then what burning all it
// may burned, then its balance after the burn, 16 bytes each.
const liquidWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "canister_liquid_cycle_balance128" (func $liquid (param i32)))
  (import "ic0" "canister_cycle_balance128" (func $balance (param i32)))
  (import "ic0" "cycles_burn128" (func $burn (param i64 i64 i32)))
  (memory 1)
  (func (export "canister_update liquid")
    (call $liquid (i32.const 0))
    (call $burn (i64.const -1) (i64.const -1) (i32.const 16))
    (call $balance (i32.const 32))
    (call $append (i32.const 0) (i32.const 48))
    (call $reply))
)`

// ic0.canister_liquid_cycle_balance128 is the liquid balance, as the
// interface specification defines it: the balance less what the
// execution must keep (its largest fee, the ingress fee included, and the
// freezing limit), which is what cycles_burn128 may burn. It answered the
// whole balance.
func TestLiquidBalanceIsWhatMayBeSpent(t *testing.T) {
	t.Parallel()
	f, w := watchedFixture(t)
	a := f.install(mustWat(t, liquidWat), nil)
	before := f.storedMeta(a)
	got := f.update(a, "liquid", nil)
	amount := func(i int) cycles.Amount {
		return cycles.Amount{Lo: binary.LittleEndian.Uint64(got[16*i:]), Hi: binary.LittleEndian.Uint64(got[16*i+8:])}
	}
	liquid, burned, left := amount(0), amount(1), amount(2)
	keep := f.node.executionFee(f.cfg.UpdateInstructions).SaturatingAdd(cycles.New(f.cfg.Fees.IngressReception)) // no storage fee: no freezing limit
	if want := before.Balance.SaturatingSub(keep); liquid != want || burned != liquid || left != keep {
		t.Fatalf("liquid %s, burned %s, left %s; want %s liquid (balance %s less %s kept), all of it burned", liquid, burned, left, want, before.Balance, keep)
	}
	w.check(t)
}
