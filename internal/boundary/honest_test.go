package boundary

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// allWat exercises every System API call whose trace sysapi.MinInstructions
// counts, built the ways a canister may build them: a reply from many small
// appends, call arguments in pieces, prints that are invalid UTF-8 or
// truncated, stable writes across a page boundary, cycles, certified data,
// the timer, callbacks that answer, a print before a trap.
const allWat = `
(module
  (import "ic0" "debug_print" (func $print (param i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reject" (func $reject (param i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $call_append (param i32 i32)))
  (import "ic0" "call_on_cleanup" (func $on_cleanup (param i32 i32)))
  (import "ic0" "call_with_best_effort_response" (func $best_effort (param i32)))
  (import "ic0" "call_cycles_add128" (func $cycles_add (param i64 i64)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (import "ic0" "certified_data_set" (func $certify (param i32 i32)))
  (import "ic0" "global_timer_set" (func $timer (param i64) (result i64)))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $swrite (param i64 i64 i64)))
  (import "ic0" "msg_cycles_accept128" (func $accept (param i64 i64 i32)))
  (import "ic0" "cycles_burn128" (func $burn (param i64 i64 i32)))
  (import "ic0" "accept_message" (func $accept_message))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 0) $cb $cb_reply)
  (data (i32.const 0) "hello world, a line longer than the sixteen bytes printed")
  (data (i32.const 200) "\ff\fe ok \c0")
  (func $cb (param i32))
  (func $cb_reply (param i32) (call $print (i32.const 0) (i32.const 5)) (call $reply_pieces))
  (func $prints
    (call $print (i32.const 0) (i32.const 5))
    (call $print (i32.const 200) (i32.const 8))
    (call $print (i32.const 0) (i32.const 50)))
  (func $reply_pieces
    (local $i i32)
    (loop $l
      (call $append (local.get $i) (i32.const 3))
      (local.set $i (i32.add (local.get $i) (i32.const 3)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 30))))
    (call $append (i32.const 0) (i32.const 0))
    (call $reply))
  (func $calls (param $n i32) (param $cycles i64)
    (loop $l
      (call $call_new (i32.const 0) (i32.const 10) (i32.const 0) (i32.const 5)
        (i32.const 1) (i32.const 7) (i32.const 0) (i32.const 7))
      (call $call_append (i32.const 0) (i32.const 2))
      (call $call_append (i32.const 2) (i32.const 0))
      (call $call_append (i32.const 3) (i32.const 4))
      (call $on_cleanup (i32.const 0) (i32.const 1))
      (call $best_effort (i32.const 0))
      (if (i64.ne (local.get $cycles) (i64.const 0))
        (then (call $cycles_add (i64.const 0) (local.get $cycles))))
      (drop (call $perform))
      (local.tee $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l)))
  (func $stable
    (drop (call $sgrow (i64.const 1)))
    (call $swrite (i64.const 4095) (i64.const 0) (i64.const 2))
    (call $swrite (i64.const 100) (i64.const 0) (i64.const 1)))
  (func (export "canister_init") (call $prints) (call $stable) (call $certify (i32.const 0) (i32.const 32)))
  (func (export "canister_pre_upgrade") (call $stable))
  (func (export "canister_update all")
    (call $prints)
    (call $reply_pieces)
    (call $calls (i32.const 2) (i64.const 3))
    (call $certify (i32.const 0) (i32.const 32))
    (call $certify (i32.const 0) (i32.const 3))
    (drop (call $timer (i64.const 5)))
    (call $stable)
    (call $accept (i64.const 0) (i64.const 5) (i32.const 500))
    (call $burn (i64.const 0) (i64.const 3) (i32.const 500)))
  (func (export "canister_update rej") (call $reject (i32.const 0) (i32.const 5)))
  (func (export "canister_update boom") (call $prints) unreachable)
  (func (export "canister_query q") (call $prints) (call $reply_pieces))
  (func (export "canister_composite_query cq") (call $prints) (call $calls (i32.const 3) (i64.const 0)))
  (func (export "canister_inspect_message") (call $print (i32.const 0) (i32.const 3)) (call $accept_message))
  (func (export "canister_heartbeat") (drop (call $timer (i64.const 9))) (call $calls (i32.const 1) (i64.const 0)))
)`

// honestCanister runs a module with the engine, applying outputs as the
// host does, and checks every output as the host checks a sandbox's.
type honestCanister struct {
	t      *testing.T
	e      *engine.Engine
	m      *engine.Module
	lim    sysapi.Limits
	heap   *state.PageMap // nil before install
	stable *state.PageMap
	glob   []state.Global
	id     uint64
}

func newHonest(t *testing.T, e *engine.Engine, wasm []byte, lim sysapi.Limits) *honestCanister {
	t.Helper()
	m, err := e.Compile(wasm, engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	return &honestCanister{t: t, e: e, m: m, lim: lim, stable: state.NewPageMap(0)}
}

// run executes entry in ctx (fresh: on the module's initial memory, with
// its start function) and checks the output against its bound.
func (c *honestCanister) run(ctx sysapi.Context, entry string, arg []byte, fresh bool, cb sysapi.Callback) *sysapi.Output {
	t := c.t
	t.Helper()
	in := &sysapi.Input{
		Context: ctx, Entry: entry, Arg: arg, Memory64: c.m.Info.Memory64, Callback: cb,
		CanisterID: []byte{0, 0, 0, 0, 0, 0, 0, 1, 1, 1}, Caller: []byte{4}, Status: sysapi.StatusRunning, Time: 1,
		Balance: cycles.New(1_000_000_000_000), Limits: c.lim, Stable: c.stable, MethodName: "all",
	}
	if ctx == sysapi.CtxUpdate {
		in.CyclesAvailable = cycles.New(1000)
	}
	heap := c.heap
	req := &engine.Request{Module: c.m, Input: in, RunStart: fresh}
	if fresh {
		heap = nil
	} else {
		req.Heap, req.Globals = heap, c.glob
	}
	out, err := c.e.Run(req)
	if err != nil {
		t.Fatalf("%s: %v", entry, err)
	}
	boundary := *out
	Normalize(ctx, &boundary)
	c.id++
	exp := ExpectFor(c.id, in, heap, c.stable, c.m.GlobalTypes())
	if err := ValidateOutput(exp, &boundary); err != nil {
		t.Fatalf("%s (%s): an honest output is refused: %v", entry, ctx, err)
	}
	least := sysapi.MinInstructions(&boundary, &exp.Limits, exp.StableSize, uint64(len(boundary.Heap.Pages)), uint64(len(boundary.Stable.Pages)))
	t.Logf("%-40s %-26s bound %9d of %11d instructions reported", entry, ctx, least, boundary.Instructions)
	if least > boundary.Instructions {
		t.Fatalf("%s: bound %d above the %d instructions reported", entry, least, boundary.Instructions)
	}
	if out.Trapped || ctx.IsQuery() {
		return out
	}
	if fresh {
		c.heap = state.NewPageMap(0)
	}
	if err := c.heap.Apply(out.Heap); err != nil {
		t.Fatal(err)
	}
	if err := c.stable.Apply(out.Stable); err != nil {
		t.Fatal(err)
	}
	c.glob = out.Globals
	return out
}

// Honest executions are never below the instruction bound, whatever they
// do: the WAT canister above in every context it has, and the Motoko corpus
// (replies, prints, calls, cycles, timers, stable memory, upgrades, traps).
func TestHonestExecutionsMeetInstructionBound(t *testing.T) {
	e, err := engine.New(engine.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Run("wat", func(t *testing.T) {
		wasm, err := wasmtime.Wat2Wasm(allWat)
		if err != nil {
			t.Fatal(err)
		}
		lim := hostLimits(5_000_000_000)
		lim.DebugPrintBytes = 16
		c := newHonest(t, e, wasm, lim)
		c.run(sysapi.CtxInit, "canister_init", nil, true, sysapi.Callback{})
		for _, s := range []struct {
			ctx   sysapi.Context
			entry string
			cb    sysapi.Callback
		}{
			{sysapi.CtxUpdate, "canister_update all", sysapi.Callback{}},
			{sysapi.CtxUpdate, "canister_update rej", sysapi.Callback{}},
			{sysapi.CtxUpdate, "canister_update boom", sysapi.Callback{}},
			{sysapi.CtxNonReplicatedQuery, "canister_query q", sysapi.Callback{}},
			{sysapi.CtxReplicatedQuery, "canister_query q", sysapi.Callback{}},
			{sysapi.CtxCompositeQuery, "canister_composite_query cq", sysapi.Callback{}},
			{sysapi.CtxCompositeReply, "", sysapi.Callback{Fun: 1, Env: 7}},
			{sysapi.CtxReply, "", sysapi.Callback{Fun: 1, Env: 7}},
			{sysapi.CtxCleanup, "", sysapi.Callback{Fun: 0, Env: 1}},
			{sysapi.CtxInspect, "canister_inspect_message", sysapi.Callback{}},
			{sysapi.CtxSystemTask, "canister_heartbeat", sysapi.Callback{}},
			{sysapi.CtxPreUpgrade, "canister_pre_upgrade", sysapi.Callback{}},
		} {
			c.run(s.ctx, s.entry, nil, false, s.cb)
		}
	})
	corpus := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "canisters", name+".wasm"))
		if err != nil {
			t.Skipf("corpus module %s: %v", name, err)
		}
		return b
	}
	type step struct {
		ctx    sysapi.Context
		method string // canister_update / canister_query name; "" with ctx PreUpgrade/Init: the upgrade
		arg    []byte
	}
	upd := func(m string, arg []byte) step { return step{sysapi.CtxUpdate, m, arg} }
	qry := func(m string, arg []byte) step { return step{sysapi.CtxNonReplicatedQuery, m, arg} }
	upgrade := []step{{sysapi.CtxPreUpgrade, "", nil}, {sysapi.CtxInit, "", nil}}
	callee := []byte{0, 0, 0, 0, 0, 0, 0, 2, 1, 1}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"counter", append([]step{upd("inc", noArgs), upd("add", natArg(5)), qry("get", noArgs), qry("greet", textArg("Bob"))}, upgrade...)},
		{"kv", append([]step{upd("put", twoText("k", "v")), upd("put", twoText("key", "a longer value")), qry("get", textArg("k")),
			qry("keys", noArgs), upd("delete", textArg("k"))}, upgrade...)},
		{"stable", append([]step{upd("append", blobArg(make([]byte, 70000))), upd("append", blobArg([]byte("x"))),
			qry("read", readArg(65530, 20)), qry("pages", noArgs)}, upgrade...)},
		{"timer", []step{upd("once", natArg(1)), upd("startRecurring", natArg(5)), qry("count", noArgs)}},
		{"wallet", []step{upd("deposit", noArgs), qry("total", noArgs)}},
		{"relay", []step{upd("add", principalNatArg(callee, 3)), upd("fanout", principalsNatArg([][]byte{callee, callee, callee}, 1))}},
		{"random", []step{upd("bytes", noArgs)}},
		{"traps", []step{upd("setThenTrap", natArg(3)), upd("divZero", natArg(0)), qry("get", noArgs)}},
		{"compute", []step{qry("fib", natArg(15)), qry("primes", natArg(200))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newHonest(t, e, corpus(tc.name), hostLimits(5_000_000_000))
			c.run(sysapi.CtxInit, "canister_init", noArgs, true, sysapi.Callback{})
			for _, s := range tc.steps {
				switch {
				case s.method == "" && s.ctx == sysapi.CtxPreUpgrade:
					c.run(s.ctx, "canister_pre_upgrade", nil, false, sysapi.Callback{})
				case s.method == "":
					c.run(s.ctx, "canister_post_upgrade", noArgs, true, sysapi.Callback{})
				case s.ctx == sysapi.CtxUpdate:
					c.run(s.ctx, "canister_update "+s.method, s.arg, false, sysapi.Callback{})
				default:
					c.run(s.ctx, "canister_query "+s.method, s.arg, false, sysapi.Callback{})
				}
			}
		})
	}
}

// Candid arguments of the corpus's methods.
var noArgs = []byte("DIDL\x00\x00")

func leb(n uint64) []byte {
	var b []byte
	for {
		c := byte(n & 0x7f)
		if n >>= 7; n != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

func natArg(n uint64) []byte { return append([]byte("DIDL\x00\x01\x7d"), leb(n)...) }
func textArg(s string) []byte {
	return append(append([]byte("DIDL\x00\x01\x71"), leb(uint64(len(s)))...), s...)
}
func twoText(a, b string) []byte {
	out := []byte("DIDL\x00\x02\x71\x71")
	out = append(append(out, leb(uint64(len(a)))...), a...)
	return append(append(out, leb(uint64(len(b)))...), b...)
}
func blobArg(b []byte) []byte {
	return append(append([]byte("DIDL\x01\x6d\x7b\x01\x00"), leb(uint64(len(b)))...), b...)
}
func readArg(off uint64, size uint64) []byte {
	out := []byte("DIDL\x00\x02\x78\x7d")
	for i := 0; i < 8; i++ {
		out = append(out, byte(off>>(8*i)))
	}
	return append(out, leb(size)...)
}
func principalValue(p []byte) []byte { return append(append([]byte{1}, leb(uint64(len(p)))...), p...) }
func principalNatArg(p []byte, n uint64) []byte {
	return append(append([]byte("DIDL\x00\x02\x68\x7d"), principalValue(p)...), leb(n)...)
}
func principalsNatArg(ps [][]byte, n uint64) []byte {
	out := append([]byte("DIDL\x01\x6d\x68\x02\x00\x7d"), leb(uint64(len(ps)))...)
	for _, p := range ps {
		out = append(out, principalValue(p)...)
	}
	return append(out, leb(n)...)
}
