package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
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
	// Within the limit, the fill runs and costs its length, and the 32
	// heap pages it changed cost sysapi.HeapDirtyPageCost each.
	out := c.runLimited(t, e, "canister_update fill", 1_000_000)
	cost := 131072 + uint64(len(out.Heap.Pages))*sysapi.HeapDirtyPageCost
	if out.Trapped || len(out.Heap.Pages) != 32 || out.Instructions < cost || out.Instructions > cost+100 {
		t.Fatalf("fill: trapped %v (%s), %d pages, %d instructions", out.Trapped, out.TrapMessage, len(out.Heap.Pages), out.Instructions)
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

// Every corpus canister behaves the same metered and unmetered: install
// (start and init), then every method with an empty Candid argument, each
// compared by trap, reply, heap pages and globals.
func TestMeteredCorpusBehavesTheSame(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "..", "..", "shared", "canisters", "*.wasm"))
	if len(files) == 0 {
		t.Skip("no corpus")
	}
	engines := [2]*Engine{}
	for i, off := range []bool{false, true} {
		cfg := DefaultConfig()
		cfg.DisableFuel = off
		var err error
		if engines[i], err = New(cfg); err != nil {
			t.Fatal(err)
		}
	}
	empty := []byte("DIDL\x00\x00")
	for _, f := range files {
		wasm, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(f)
		var cs [2]*canister
		for i, e := range engines {
			m, err := e.Compile(wasm, DefaultModuleLimits())
			if err != nil {
				t.Fatalf("%s: compile (metering off %v): %v", name, i == 1, err)
			}
			cs[i] = &canister{m: m, stable: state.NewPageMap(0)}
		}
		compare := func(what string, a, b *sysapi.Output) {
			t.Helper()
			if a.Trapped != b.Trapped || a.TrapMessage != b.TrapMessage || !bytes.Equal(a.Reply, b.Reply) ||
				len(a.Heap.Pages) != len(b.Heap.Pages) || len(a.Globals) != len(b.Globals) {
				t.Fatalf("%s %s: metered %v %q reply %x %d pages; unmetered %v %q reply %x %d pages", name, what,
					a.Trapped, a.TrapMessage, a.Reply, len(a.Heap.Pages), b.Trapped, b.TrapMessage, b.Reply, len(b.Heap.Pages))
			}
			for i := range a.Heap.Pages {
				if a.Heap.Pages[i].Index != b.Heap.Pages[i].Index || *a.Heap.Pages[i].Data != *b.Heap.Pages[i].Data {
					t.Fatalf("%s %s: heap page %d differs", name, what, a.Heap.Pages[i].Index)
				}
			}
			for i := range a.Globals {
				if a.Globals[i] != b.Globals[i] {
					// Motoko's runtime keeps ic0.performance_counter
					// readings (GC statistics) in globals; unmetered
					// they read 0.
					if b.Globals[i].Bits != 0 {
						t.Fatalf("%s %s: global %d differs: %v vs %v", name, what, i, a.Globals[i], b.Globals[i])
					}
				}
			}
			if a.Instructions == 0 || b.Instructions != 0 {
				t.Fatalf("%s %s: instructions metered %d, unmetered %d", name, what, a.Instructions, b.Instructions)
			}
		}
		var outs [2]*sysapi.Output
		for i, e := range engines {
			entry := ""
			if cs[i].m.Info.HasInit {
				entry = "canister_init"
			}
			outs[i] = cs[i].run(t, e, sysapi.CtxInit, entry, empty, true)
		}
		compare("install", outs[0], outs[1])
		if outs[0].Trapped {
			continue
		}
		for _, kind := range []MethodKind{UpdateMethod, QueryMethod} {
			for _, method := range cs[0].m.Info.MethodNames(kind) {
				ctx, entry := sysapi.CtxUpdate, "canister_update "+method
				if kind == QueryMethod {
					ctx, entry = sysapi.CtxNonReplicatedQuery, "canister_query "+method
				}
				outs[0] = cs[0].run(t, engines[0], ctx, entry, empty, false)
				if outs[0].TrapMessage == sysapi.ErrInstructionLimit.Message {
					continue // unmetered, it would run unbounded
				}
				outs[1] = cs[1].run(t, engines[1], ctx, entry, empty, false)
				compare(method, outs[0], outs[1])
			}
		}
	}
}

// A module cannot reach the instruction counter (or the metering locals)
// through an index that is out of range in the module as written.
func TestCounterUnreachableFromCanister(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string][]byte{
		"global.set of the counter's index": {0x00, 0x42, 0x00, 0x24, 0x00, 0x0b},
		"local.set of a metering local":     {0x00, 0x42, 0x00, 0x21, 0x00, 0x0b},
	} {
		wasm := []byte{0, 'a', 's', 'm', 1, 0, 0, 0,
			1, 4, 1, 0x60, 0, 0, // type () -> ()
			3, 2, 1, 0, // one function
			7, 17, 1, 13, 'c', 'a', 'n', 'i', 's', 't', 'e', 'r', '_', 'i', 'n', 'i', 't', 0, 0}
		wasm = append(wasm, 10, byte(len(body)+2), 1, byte(len(body)))
		wasm = append(wasm, body...)
		_, err := e.Compile(wasm, DefaultModuleLimits())
		if err == nil || !errors.Is(err, ErrInvalidModule) || !strings.Contains(err.Error(), "out of range") {
			t.Errorf("%s: compiled (err %v)", name, err)
		}
	}
}
