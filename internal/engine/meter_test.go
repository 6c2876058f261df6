package engine

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// meterCanister writes memory and a global, then does what the method
// says; "get" replies the stored byte and the global.
const meterCanister = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "performance_counter" (func $perf (param i32) (result i64)))
  (memory 2)
  (global $g (mut i32) (i32.const 0))
  (func $touch (i32.store8 (i32.const 100) (i32.const 9)) (global.set $g (i32.const 7)))
  (func $deep (param i32) (result i32) (i32.add (call $deep (local.get 0)) (i32.const 1)))
  (func (export "canister_update set") (i32.store8 (i32.const 100) (i32.const 1)) (global.set $g (i32.const 1)) (call $reply))
  (func (export "canister_update spin") (call $touch) (loop (br 0)))
  (func (export "canister_update deep") (call $touch) (drop (call $deep (i32.const 0))))
  (func (export "canister_update fill") (call $touch)
    (memory.fill (i32.const 0) (i32.const 1) (i32.const 131072)))
  (func (export "canister_update perf") (local $i i32)
    (i64.store (i32.const 0) (call $perf (i32.const 0)))
    (loop (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if 0 (i32.lt_u (local.get $i) (i32.const 1000))))
    (i64.store (i32.const 8) (call $perf (i32.const 0)))
    (call $append (i32.const 0) (i32.const 16)) (call $reply))
  (func (export "canister_query get")
    (i32.store (i32.const 200) (global.get $g))
    (call $append (i32.const 100) (i32.const 1)) (call $append (i32.const 200) (i32.const 4)) (call $reply)))`

func meterSetup(t *testing.T) (*Engine, *canister) {
	t.Helper()
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(meterCanister)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	c := &canister{m: m, stable: state.NewPageMap(0)}
	c.run(t, e, sysapi.CtxInit, "", nil, true)
	if out := c.run(t, e, sysapi.CtxUpdate, "canister_update set", nil, false); out.Trapped {
		t.Fatalf("set: %s", out.TrapMessage)
	}
	return e, c
}

// runLimited runs an update with an instruction limit.
func (c *canister) runLimited(t *testing.T, e *Engine, entry string, limit uint64) *sysapi.Output {
	t.Helper()
	in := testInput(sysapi.CtxUpdate, entry, nil, c.m)
	in.Stable = c.stable
	in.Limits.Instructions = limit
	out, err := e.Run(&Request{Module: c.m, Input: in, Heap: c.heap, Globals: c.globals})
	if err != nil {
		t.Fatalf("%s: %v", entry, err)
	}
	return out
}

// The instruction limit stops a tight loop, deep recursion and a huge
// memory.fill with the limit's trap, and nothing the message did is kept.
func TestInstructionLimitTraps(t *testing.T) {
	e, c := meterSetup(t)
	for _, entry := range []string{"canister_update spin", "canister_update deep", "canister_update fill"} {
		const limit = 50_000
		out := c.runLimited(t, e, entry, limit)
		if !out.Trapped || out.TrapMessage != sysapi.ErrInstructionLimit.Message {
			t.Fatalf("%s: trapped %v: %q", entry, out.Trapped, out.TrapMessage)
		}
		if out.Instructions != limit {
			t.Errorf("%s: %d instructions, want the limit %d", entry, out.Instructions, limit)
		}
		if len(out.Heap.Pages) != 0 || out.Globals != nil {
			t.Errorf("%s: a trapped output carries state: %d pages, globals %v", entry, len(out.Heap.Pages), out.Globals)
		}
		got := c.run(t, e, sysapi.CtxNonReplicatedQuery, "canister_query get", nil, false)
		if want := []byte{1, 1, 0, 0, 0}; !bytes.Equal(got.Reply, want) {
			t.Fatalf("after %s: state %x, want %x", entry, got.Reply, want)
		}
	}
	// Within the limit, the fill runs and costs its length.
	out := c.runLimited(t, e, "canister_update fill", 1_000_000)
	if out.Trapped || out.Instructions < 131072 || out.Instructions > 131072+100 {
		t.Fatalf("fill: trapped %v (%s), %d instructions", out.Trapped, out.TrapMessage, out.Instructions)
	}
}

// Instruction counts are deterministic, and ic0.performance_counter sees
// the instrumented counter.
func TestInstructionCountsDeterministic(t *testing.T) {
	e, c := meterSetup(t)
	var first *sysapi.Output
	for i := 0; i < 3; i++ {
		out := c.runLimited(t, e, "canister_update perf", 5e9)
		if out.Trapped {
			t.Fatalf("perf: %s", out.TrapMessage)
		}
		if first == nil {
			first = out
		} else if out.Instructions != first.Instructions || !bytes.Equal(out.Reply, first.Reply) {
			t.Fatalf("run %d: %d instructions, reply %x; first %d, %x", i, out.Instructions, out.Reply, first.Instructions, first.Reply)
		}
	}
	before := binary.LittleEndian.Uint64(first.Reply[0:])
	after := binary.LittleEndian.Uint64(first.Reply[8:])
	// The loop runs 1000 iterations of at least 8 instructions.
	if before == 0 || after < before+8000 || after > first.Instructions {
		t.Fatalf("performance_counter %d then %d, execution %d", before, after, first.Instructions)
	}
	// A limit between the two reads traps; one just above the total does not.
	if out := c.runLimited(t, e, "canister_update perf", after); !out.Trapped {
		t.Fatalf("limit %d: did not trap", after)
	}
	if out := c.runLimited(t, e, "canister_update perf", first.Instructions); out.Trapped {
		t.Fatalf("limit %d (exactly the count): trapped: %s", first.Instructions, out.TrapMessage)
	}
	if out := c.runLimited(t, e, "canister_update perf", first.Instructions-1); !out.Trapped {
		t.Fatalf("limit %d (one below the count): did not trap", first.Instructions-1)
	}
}
