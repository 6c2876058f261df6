package host

import (
	"context"
	"encoding/binary"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// fanWat is the attacker: "fan" calls "fan" on itself 500 times per
// message (each callee fans out again, and so does each reply callback once
// "fan" has run, so every freed queue slot is taken again at once) until
// "halt"; "fan_once" calls
// "noop" 500 times, round robin over the 10-byte canister ids in its
// argument, and replies with how many call_perform accepted. Every call
// carries the 8-byte argument "payload!". "stats" reports its counters.
const fanWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $data (param i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (import "ic0" "cost_call" (func $cost_call (param i64 i64 i32)))
  (memory (export "memory") 1)
  (table (export "table") 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (global $halt (mut i32) (i32.const 0))
  (global $attacking (mut i32) (i32.const 0))
  (global $performed (mut i64) (i64.const 0))
  (global $refused (mut i64) (i64.const 0))
  (global $execs (mut i64) (i64.const 0))
  (global $replies (mut i64) (i64.const 0))
  (global $rejects (mut i64) (i64.const 0))
  (global $cost (mut i64) (i64.const 0))
  (data (i32.const 100) "fannoop")
  (data (i32.const 120) "payload!")
  ;; 500 calls of method (m, mlen) round robin over n callees of 10 bytes at
  ;; 1000 (n = 1: one callee of $len bytes); returns how many were performed.
  (func $fanout (param $n i32) (param $len i32) (param $m i32) (param $mlen i32) (result i32)
    (local $i i32) (local $ok i32)
    (loop $l
      (call $call_new
        (i32.add (i32.const 1000) (i32.mul (i32.rem_u (local.get $i) (local.get $n)) (i32.const 10))) (local.get $len)
        (local.get $m) (local.get $mlen)
        (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
      (call $data (i32.const 120) (i32.const 8))
      (if (i32.eqz (call $perform))
        (then (local.set $ok (i32.add (local.get $ok) (i32.const 1)))
              (global.set $performed (i64.add (global.get $performed) (i64.const 1))))
        (else (global.set $refused (i64.add (global.get $refused) (i64.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 500))))
    (local.get $ok))
  (func (export "canister_update fan")
    (local $len i32)
    (global.set $execs (i64.add (global.get $execs) (i64.const 1)))
    (global.set $attacking (i32.const 1))
    (call $cost_call (i64.const 3) (i64.const 8) (i32.const 300))
    (global.set $cost (i64.load (i32.const 300)))
    (if (i32.eqz (global.get $halt))
      (then
        (local.set $len (call $self_size))
        (call $self_copy (i32.const 1000) (i32.const 0) (local.get $len))
        (drop (call $fanout (i32.const 1) (local.get $len) (i32.const 100) (i32.const 3)))))
    (call $reply))
  (func (export "canister_update fan_once")
    (local $n i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 1000) (i32.const 0) (local.get $n))
    (call $cost_call (i64.const 4) (i64.const 8) (i32.const 300))
    (global.set $cost (i64.load (i32.const 300)))
    (i32.store (i32.const 400) (call $fanout (i32.div_u (local.get $n) (i32.const 10)) (i32.const 10) (i32.const 103) (i32.const 4)))
    (call $append (i32.const 400) (i32.const 4))
    (call $reply))
  (func (export "canister_update noop") (call $reply))
  (func (export "canister_update spin") (loop $l (br $l)))
  (func (export "canister_update halt") (global.set $halt (i32.const 1)) (call $reply))
  (func $on_reply (param i32)
    (local $len i32)
    (global.set $replies (i64.add (global.get $replies) (i64.const 1)))
    (if (i32.and (global.get $attacking) (i32.eqz (global.get $halt)))
      (then
        (local.set $len (call $self_size))
        (call $self_copy (i32.const 1000) (i32.const 0) (local.get $len))
        (drop (call $fanout (i32.const 1) (local.get $len) (i32.const 100) (i32.const 3))))))
  (func $on_reject (param i32) (global.set $rejects (i64.add (global.get $rejects) (i64.const 1))))
  (func (export "canister_query stats")
    (i64.store (i32.const 500) (global.get $performed))
    (i64.store (i32.const 508) (global.get $refused))
    (i64.store (i32.const 516) (global.get $execs))
    (i64.store (i32.const 524) (global.get $replies))
    (i64.store (i32.const 532) (global.get $rejects))
    (i64.store (i32.const 540) (global.get $cost))
    (call $append (i32.const 500) (i32.const 48))
    (call $reply))
)`

type fanStats struct{ performed, refused, execs, replies, rejects, cost uint64 }

func (f *fixture) fanStats(id principal.Principal) fanStats {
	b := f.query(id, "stats", nil)
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	return fanStats{u(0), u(1), u(2), u(3), u(4), u(5)}
}

func queueFixture(t *testing.T, isolation string, edit func(*Config)) *fixture {
	cfg := testConfig(t, "")
	cfg.UpdateInstructions = 2_000_000_000
	cfg.Isolation = isolation
	cfg.Fees.GiBStoragePerSecond = 0 // the cycles checks below are exact
	if edit != nil {
		edit(&cfg)
	}
	return openFixture(t, cfg)
}

// checkSandboxed asserts that id's executions ran in a live sandbox.
func (f *fixture) checkSandboxed(id principal.Principal) {
	f.t.Helper()
	for _, s := range f.node.Sandboxes() {
		if s.Canister == id.String() && s.Kind == "canister" && s.Executions > 0 {
			return
		}
	}
	f.t.Fatalf("canister %s has no sandbox that ran it: %+v", id, f.node.Sandboxes())
}

// checkCallsReleased asserts that once the node is quiet no call holds
// anything: the node's and the canisters' counts and reservations are zero.
func (f *fixture) checkCallsReleased(ids ...principal.Principal) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := f.node.Quiesce(ctx); err != nil {
		f.t.Fatal(err)
	}
	f.node.calls.mu.Lock()
	calls, bytes := f.node.calls.calls, f.node.calls.bytes
	f.node.calls.mu.Unlock()
	if calls != 0 || bytes != 0 {
		f.t.Fatalf("node still counts %d calls, %d bytes", calls, bytes)
	}
	for _, id := range ids {
		c, err := f.node.get(ctx, id)
		if err != nil {
			f.t.Fatal(err)
		}
		c.mu.RLock()
		per, b, res, cbs := len(c.calls.per), c.calls.bytes, c.meta.CyclesReserved, len(c.callbacks)
		c.mu.RUnlock()
		if per != 0 || b != 0 || !res.IsZero() || cbs != 0 {
			f.t.Fatalf("canister %s still holds: %d queues, %d bytes, %s reserved, %d callbacks", id, per, b, res, cbs)
		}
	}
	f.checkConservation()
}

// Each limit, alone, stops a canister's 500 calls in one message at the
// exact count it allows; call_perform says so (2) and the canister goes on.
// (Small limits keep the commits few; TestFanOutAttack runs the defaults.)
func TestCallLimitsAtCallPerform(t *testing.T) {
	t.Parallel()
	perCall := uint64(len("noop")+len("payload!")) + DefaultConfig().ReplyBytes
	cases := []struct {
		name      string
		edit      func(*Config)
		callees   int
		performed uint32
	}{
		{"queue capacity per pair", func(c *Config) { c.Messages.QueueCapacity = 20 }, 1, 20},
		{"queue capacity, two pairs", func(c *Config) { c.Messages.QueueCapacity = 20 }, 2, 40},
		{"callback quota", func(c *Config) { c.Messages.CallbackQuota, c.Messages.CallbackSoftLimit = 30, 0 }, 2, 30},
		{"node callback soft limit", func(c *Config) { c.Messages.CallbackQuota, c.Messages.CallbackSoftLimit = 0, 25 }, 2, 25},
		{"canister message memory", func(c *Config) { c.Messages.CanisterBytes = 12*perCall + perCall - 1 }, 2, 12},
		{"node message memory", func(c *Config) { c.Messages.NodeBytes = 15 * perCall }, 2, 15},
	}
	for _, tc := range cases {
		for _, iso := range []string{"inprocess", "sandbox"} {
			if iso == "sandbox" && tc.name != "queue capacity, two pairs" && tc.name != "node message memory" {
				continue // the sandbox gets the same limits through the boundary: two cases show it
			}
			t.Run(tc.name+"/"+iso, func(t *testing.T) {
				f := queueFixture(t, iso, tc.edit)
				wasm := mustWat(t, fanWat)
				a := f.install(wasm, nil)
				var arg []byte
				var ids []principal.Principal
				for range tc.callees {
					id := f.install(wasm, nil)
					ids = append(ids, id)
					arg = append(arg, id.Bytes()...)
				}
				got := binary.LittleEndian.Uint32(f.update(a, "fan_once", arg))
				if got != tc.performed {
					t.Fatalf("call_perform accepted %d of 500 calls, want %d", got, tc.performed)
				}
				if s := f.fanStats(a); s.refused != uint64(500-got) {
					t.Fatalf("refused %d, want %d", s.refused, 500-got)
				}
				if iso == "sandbox" {
					f.checkSandboxed(a)
				}
				f.checkCallsReleased(append(ids, a)...)
				if s := f.fanStats(a); s.replies != uint64(got) || s.rejects != 0 {
					t.Fatalf("responses: %+v, want %d replies", s, got)
				}
			})
		}
	}
}

// The balance must pay each call's fee and reservation and keep what the
// execution itself may cost: the count call_perform accepts is exact.
func TestCallPerformNeedsCycles(t *testing.T) {
	t.Parallel()
	f := queueFixture(t, "inprocess", func(c *Config) { c.InitialCycles = cycles.New(400_000_000_000) })
	wasm := mustWat(t, fanWat)
	a, b := f.install(wasm, nil), f.install(wasm, nil)
	st, err := f.node.Status(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.cfg
	ingress := cycles.New(cfg.Fees.IngressReception + cfg.Fees.IngressPerByte*10)
	keep := f.node.executionFee(cfg.UpdateInstructions).SaturatingAdd(ingress)
	charge := sysapi.CallCost(cfg.Fees.Call, cfg.Fees.CallPerByte, 4, 8).SaturatingAdd(f.node.callReservation())
	spare, err := st.Balance.Sub(keep)
	if err != nil {
		t.Fatal(err)
	}
	want := spare.Big()
	want.Quo(want, charge.Big())
	got := binary.LittleEndian.Uint32(f.update(a, "fan_once", b.Bytes()))
	if uint64(got) != want.Uint64() || got == 0 || got >= 500 {
		t.Fatalf("call_perform accepted %d calls with %s cycles, want %s", got, st.Balance, want)
	}
	f.checkCallsReleased(a, b)
}

// rssBytes reads this process's resident set size.
func rssBytes(t *testing.T) uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// The attack that killed a node: a canister whose every message calls
// itself 500 times. Unbounded, the queues grew exponentially (6 GB in
// 28 s). Bounded, the host's heap stays flat, call_perform starts returning
// 2 once the pair's queue is full, a neighbour keeps answering, and the
// attacker pays exactly for every call it sent.
func TestFanOutAttack(t *testing.T) {
	// Not t.Parallel: it measures the process's heap, which no other test
	// may use meanwhile. The two isolation modes attack at once, each on
	// its own node, and the heap is measured from before either started:
	// what both hold together is under the bound, so each one's is.
	heap := watchHeap(t)
	t.Cleanup(func() {
		grow, peakRSS := heap.stop()
		t.Logf("host heap in use %d → peak %d MiB; RSS %d → peak %d MiB", heap.base>>20, (heap.base+grow)>>20, heap.baseRSS>>20, peakRSS>>20)
		// Without limits the queues grew without bound; with them at most
		// 500 calls per attack are in flight, a few MiB. 256 MiB leaves
		// room for the engine and a loaded machine's garbage, and is far
		// below what one attack took.
		if grow > 256<<20 {
			t.Fatalf("host heap grew by %d MiB during the attacks", grow>>20)
		}
	})
	for _, tc := range []struct {
		iso   string
		execs uint64
	}{{"inprocess", 510}, {"sandbox", 510}} {
		t.Run(tc.iso, func(t *testing.T) {
			t.Parallel() // with its sibling only: the parent is not parallel
			fanOutAttack(t, tc.iso, tc.execs)
		})
	}
}

// heapWatch samples the process's Go heap in use and RSS until stopped.
type heapWatch struct {
	base, baseRSS uint64
	done          chan struct{}
	peaks         chan [2]uint64
}

// watchHeap collects garbage, takes the base figures and samples from then
// on; it decides nothing by time.
func watchHeap(t *testing.T) *heapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w := &heapWatch{base: ms.HeapInuse, baseRSS: rssBytes(t), done: make(chan struct{}), peaks: make(chan [2]uint64, 1)}
	go func() {
		var ms runtime.MemStats
		var peakHeap, peakRSS uint64
		for {
			runtime.ReadMemStats(&ms)
			peakHeap, peakRSS = max(peakHeap, ms.HeapInuse), max(peakRSS, rssBytes(t))
			select {
			case <-w.done:
				w.peaks <- [2]uint64{peakHeap, peakRSS}
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return w
}

// stop ends the sampling and returns how much the heap grew above its base
// at most, and the peak RSS.
func (w *heapWatch) stop() (grow, peakRSS uint64) {
	close(w.done)
	p := <-w.peaks
	return p[0] - min(p[0], w.base), p[1]
}

func fanOutAttack(t *testing.T, iso string, execs uint64) {
	f := queueFixture(t, iso, nil)
	ctx := context.Background()
	attacker := f.install(mustWat(t, fanWat), nil)
	neighbour := f.install(module(t, corpusDir, "counter"), noArgs)
	before, err := f.node.Status(ctx, attacker)
	if err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var lat []time.Duration
	var neighbourErr error
	wg.Add(1)
	go func() { // the neighbour's users
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if _, err := f.node.Update(ctx, Message{Canister: neighbour, Method: "inc", Arg: noArgs, Caller: user}); err != nil {
				neighbourErr = err
				return
			}
			lat = append(lat, time.Since(start))
		}
	}()

	// The attack runs until the limits have shown (the first wave filled
	// the queue, later executions were refused) and a few more executions,
	// then halts; what is queued then drains, a commit per execution.
	f.update(attacker, "fan", nil)
	deadline := time.Now().Add(5 * time.Minute) // a bound on a stuck test, not a performance assertion (both modes attack at once)
	var s fanStats
	for s = f.fanStats(attacker); s.execs < execs || s.refused == 0; s = f.fanStats(attacker) {
		if time.Now().After(deadline) {
			t.Fatalf("attack did not reach %d executions: %+v", execs, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.update(attacker, "halt", nil)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := f.node.Quiesce(qctx); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	s = f.fanStats(attacker)
	if iso == "sandbox" {
		f.checkSandboxed(attacker)
	}
	t.Logf("%s: %d executions, %d calls performed, %d refused by call_perform, %d replies, %d rejects",
		iso, s.execs, s.performed, s.refused, s.replies, s.rejects)

	if s.performed <= 500 || s.refused == 0 || s.replies+s.rejects != s.performed {
		t.Fatalf("attack stats: %+v", s)
	}
	if neighbourErr != nil || len(lat) == 0 {
		t.Fatalf("neighbour: %d answers, error %v", len(lat), neighbourErr)
	}
	slices.Sort(lat)
	t.Logf("neighbour answered %d updates during the attack: p50 %v, p99 %v, max %v",
		len(lat), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])

	// The attacker paid for every call it sent, exactly what cost_call
	// told it, and for every execution; nothing else moved.
	after, err := f.node.Status(ctx, attacker)
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.cfg
	// cost_call: the fee, 11 bytes of request, and the reservation of a
	// ReplyBytes response and its callback.
	reservation := cfg.Fees.CallPerByte*cfg.ReplyBytes + cfg.Fees.UpdateExecution + cfg.Fees.PerInstruction*cfg.UpdateInstructions
	if want := cfg.Fees.Call + cfg.Fees.CallPerByte*11 + reservation; s.cost != want {
		t.Fatalf("cost_call reported %d, want %d", s.cost, want)
	}
	paid := before.Balance.SaturatingSub(after.Balance)
	burned := after.CyclesBurned.SaturatingSub(before.CyclesBurned)
	msgs, instr := after.Messages-before.Messages, after.Instructions-before.Instructions
	want := cycles.New(msgs).MulSat(cfg.Fees.UpdateExecution).
		SaturatingAdd(cycles.New(instr).MulSat(cfg.Fees.PerInstruction)).
		SaturatingAdd(cycles.New(2 * cfg.Fees.IngressReception)).           // fan, halt: no argument bytes
		SaturatingAdd(cycles.New(s.performed).MulSat(s.cost - reservation)) // replies are empty: no transmission
	if paid != burned || burned != want {
		t.Fatalf("attacker paid %s, burned %s; want %s (%d executions, %d instructions, %d calls × %d)",
			paid, burned, want, msgs, instr, s.performed, s.cost)
	}
	f.checkCallsReleased(attacker, neighbour)
}

// A host that dies with calls in flight gives their reservations back when
// it starts again: the calls are gone (queues are not persisted), and the
// balance is what the caller had minus what it paid for sending them.
func TestReservationsSurviveHostCrash(t *testing.T) {
	t.Parallel()
	if home := os.Getenv("CORDON_TEST_CRASH_HOME"); home != "" {
		crashWithCallsInFlight(t, home)
		return
	}
	f := queueFixture(t, "inprocess", nil)
	wasm := mustWat(t, fanWat)
	a, b := f.install(wasm, nil), f.install(wasm, nil)
	before, err := f.node.Status(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}

	cmd := faultinject.Child("TestReservationsSurviveHostCrash", "CORDON_TEST_CRASH_HOME="+f.home, "CORDON_TEST_CRASH_IDS="+a.String()+","+b.String())
	ready := faultinject.KillAt(t, cmd, 0, func(line string) bool { return strings.HasPrefix(line, "CALLS IN FLIGHT") })
	if !ready {
		t.Fatal("the crashing host never reported its calls in flight")
	}

	f.open()
	ctx := context.Background()
	after, err := f.node.Status(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := f.node.get(ctx, a)
	c.mu.RLock()
	reserved := c.meta.CyclesReserved
	c.mu.RUnlock()
	if !reserved.IsZero() {
		t.Fatalf("%s still reserved after the restart", reserved)
	}
	cfg := f.cfg
	msgs, instr := after.Messages-before.Messages, after.Instructions-before.Instructions
	want := cycles.New(msgs).MulSat(cfg.Fees.UpdateExecution).
		SaturatingAdd(cycles.New(instr).MulSat(cfg.Fees.PerInstruction)).
		SaturatingAdd(cycles.New(cfg.Fees.IngressReception + cfg.Fees.IngressPerByte*10)).
		SaturatingAdd(sysapi.CallCost(cfg.Fees.Call, cfg.Fees.CallPerByte, 4, 8).MulSat(500))
	paid := before.Balance.SaturatingSub(after.Balance)
	burned := after.CyclesBurned.SaturatingSub(before.CyclesBurned)
	if msgs != 1 || paid != want || burned != want {
		t.Fatalf("after the crash the caller paid %s and burned %s in %d executions; want %s (one execution and 500 call fees)", paid, burned, msgs, want)
	}
	f.checkConservation()
}

// crashWithCallsInFlight is the host that dies: the callee is busy with an
// endless message, so the caller's 500 calls wait in its queue, committed
// with their reservations, when the parent kills this process.
func crashWithCallsInFlight(t *testing.T, home string) {
	ids := strings.Split(os.Getenv("CORDON_TEST_CRASH_IDS"), ",")
	a, err := principal.FromText(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := principal.FromText(ids[1])
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Home = home
	cfg.Fees.GiBStoragePerSecond = 0
	n, err := Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	go n.Update(ctx, Message{Canister: b, Method: "spin", Caller: user}) //nolint:errcheck // never returns
	cb, err := n.get(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	for cb.mu.TryRLock() { // until spin holds the callee
		cb.mu.RUnlock()
		time.Sleep(10 * time.Millisecond)
	}
	r, err := n.Update(ctx, Message{Canister: a, Method: "fan_once", Arg: b.Bytes(), Caller: user})
	if err != nil || binary.LittleEndian.Uint32(r.Data) != 500 {
		t.Fatalf("fan_once: %v %v", r, err)
	}
	os.Stdout.WriteString("CALLS IN FLIGHT\n")
	select {}
}

// The host's own count of calls awaiting responses: a call beyond a limit
// (only possible when canisters raced for the node's share) is reported so
// finish answers it with SYS_TRANSIENT; every hold is released with its
// response, and the reservation goes back to the balance.
func TestHoldAndReleaseCalls(t *testing.T) {
	t.Parallel()
	perCall := uint64(len("noop")+len("payload!")) + DefaultConfig().ReplyBytes
	f := queueFixture(t, "inprocess", func(c *Config) {
		c.Messages.QueueCapacity = 3
		c.Messages.NodeBytes = 4 * perCall
	})
	a := f.install(mustWat(t, fanWat), nil)
	c, err := f.node.get(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	res := f.node.callReservation()
	// The commit moved 5 reservations out of the balance (as commitExecution does).
	meta0 := c.meta
	c.meta.Balance = c.meta.Balance.SaturatingSub(res.MulSat(5))
	c.meta.CyclesReserved = res.MulSat(5)
	var cbs []*callback
	var held []bool
	for i, callee := range []string{"x", "x", "x", "x", "y"} {
		call := &sysapi.Call{Callee: []byte(callee), Method: "noop", Arg: []byte("payload!")}
		cb := &callback{callee: callee, memory: f.node.callMemory(call), reserved: res}
		c.callbacks[uint64(1000+i)] = cb
		cbs = append(cbs, cb)
		held = append(held, f.node.holdCall(c, cb))
	}
	// x: three fit its queue; the fourth exceeds it; y exceeds the node's memory.
	if want := []bool{true, true, true, false, false}; !slices.Equal(held, want) {
		t.Fatalf("held %v, want %v", held, want)
	}
	lim := f.node.callLimits(c, cycles.Amount{})
	if lim.Outstanding < 0 || lim.MemoryBytes != 0 || len(lim.Queues) != 2 || string(lim.Queues[0].Callee) != "x" || lim.Queues[0].Used != 4 {
		t.Fatalf("limits while over: %+v", lim)
	}
	for i, cb := range cbs {
		delete(c.callbacks, uint64(1000+i))
		f.node.releaseCall(c, cb, 0)
	}
	f.node.calls.mu.Lock()
	nc, nb := f.node.calls.calls, f.node.calls.bytes
	f.node.calls.mu.Unlock()
	if nc != 0 || nb != 0 || len(c.calls.per) != 0 || c.calls.bytes != 0 {
		t.Fatalf("after release: node %d calls %d bytes, canister %v %d bytes", nc, nb, c.calls.per, c.calls.bytes)
	}
	if c.meta.Balance != meta0.Balance || !c.meta.CyclesReserved.IsZero() {
		t.Fatalf("balance %s reserved %s after release, want %s and 0", c.meta.Balance, c.meta.CyclesReserved, meta0.Balance)
	}
}
