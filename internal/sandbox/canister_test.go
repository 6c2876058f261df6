package sandbox

import (
	"bytes"
	"fmt"
	"io"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// runCanister is a real canister execution inside the sandbox: compile the
// canister passed as a file and install it, then for the counter canisters
// call inc three times and query get (as internal/engine's tests do
// in-process), for the traps canister make it trap (wasmtime's signal-based
// trap handling) and check the trap left the state alone.
func runCanister(kind string, wasmFile io.Reader) (string, error) {
	wasm, err := io.ReadAll(wasmFile)
	if err != nil {
		return "", err
	}
	e, err := engine.New(engine.DefaultConfig())
	if err != nil {
		return "", err
	}
	m, err := e.Compile(wasm, engine.DefaultModuleLimits())
	if err != nil {
		return "", err
	}
	var heap *state.PageMap
	stable := state.NewPageMap(0)
	var globals []state.Global
	empty := []byte("DIDL\x00\x00")
	var total uint64
	run := func(ctx sysapi.Context, entry string, fresh bool, arg ...byte) (*sysapi.Output, error) {
		if arg == nil {
			arg = empty
		}
		in := &sysapi.Input{
			Context: ctx, Entry: entry, Arg: arg, Memory64: m.Info.Memory64,
			CanisterID: []byte{0, 0, 0, 0, 0, 0, 0, 1, 1, 1}, Caller: []byte{4},
			Status: sysapi.StatusRunning, Time: 1,
			Limits: sysapi.Limits{Instructions: 5e9, HeapBytes: 4 << 30, StableBytes: 1 << 30, ReplyBytes: 2 << 20,
				CallArgBytes: 2 << 20, MaxOutgoing: 100, DebugPrintBytes: 1024, MaxLogLines: 100},
			Stable: stable,
		}
		req := &engine.Request{Module: m, Input: in, RunStart: fresh}
		if !fresh {
			req.Heap, req.Globals = heap, globals
		}
		out, err := e.Run(req)
		if err != nil {
			return nil, err
		}
		total += out.Instructions
		if out.Trapped {
			return out, fmt.Errorf("%s trapped: %s", entry, out.TrapMessage)
		}
		if ctx.IsQuery() {
			return out, nil
		}
		if fresh {
			heap = state.NewPageMap(0)
		}
		if err := heap.Apply(out.Heap); err != nil {
			return nil, err
		}
		if err := stable.Apply(out.Stable); err != nil {
			return nil, err
		}
		globals = out.Globals
		return out, nil
	}
	if _, err := run(sysapi.CtxInit, "canister_init", true); err != nil {
		return "", err
	}
	if kind == "traps" {
		// nat arguments: DIDL, no types, one arg of type nat (0x7d), LEB128.
		nat := func(v byte) []byte { return []byte{'D', 'I', 'D', 'L', 0, 1, 0x7d, v} }
		var msgs []string
		for _, c := range []struct {
			method string
			arg    []byte
		}{{"divZero", nat(0)}, {"outOfBounds", nat(9)}, {"setThenTrap", nat(5)},
			{"deepRecursion", []byte{'D', 'I', 'D', 'L', 0, 1, 0x7d, 0x80, 0xad, 0xe2, 0x04}}} {
			out, err := run(sysapi.CtxUpdate, "canister_update "+c.method, false, c.arg...)
			if err == nil || out == nil || !out.Trapped {
				return "", fmt.Errorf("%s did not trap: %v", c.method, err)
			}
			msgs = append(msgs, c.method+": "+out.TrapMessage)
		}
		out, err := run(sysapi.CtxNonReplicatedQuery, "canister_query get", false)
		if err != nil {
			return "", err
		}
		if !bytes.Equal(out.Reply, []byte("DIDL\x00\x01\x7d\x01")) {
			return "", fmt.Errorf("traps changed state: %x", out.Reply)
		}
		return fmt.Sprintf("traps ok (%d instructions): %q", total, msgs), nil
	}
	for i := 1; i <= 3; i++ {
		out, err := run(sysapi.CtxUpdate, "canister_update inc", false)
		if err != nil {
			return "", err
		}
		if want := []byte{'D', 'I', 'D', 'L', 0, 1, 0x7d, byte(i)}; !bytes.Equal(out.Reply, want) {
			return "", fmt.Errorf("inc %d: reply %x", i, out.Reply)
		}
	}
	out, err := run(sysapi.CtxNonReplicatedQuery, "canister_query get", false)
	if err != nil {
		return "", err
	}
	if !bytes.Equal(out.Reply, []byte("DIDL\x00\x01\x7d\x03")) {
		return "", fmt.Errorf("get: %x", out.Reply)
	}
	return fmt.Sprintf("%s=3 instructions=%d memory64=%v", kind, total, m.Info.Memory64), nil
}
