package engine

import (
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// A table too large for the address space used to abort the process inside
// wasmtime 39 (RUSTSEC-2026-0114). With the store's table limit it is a trap
// of that one message. A regression here kills the test binary.
func TestHugeTableTraps(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{
		"(table i64 0xffffffffffffffff funcref)", // the advisory's case: the size overflows
		"(table i64 0x1000000000000000 funcref)",
		"(table 0xffffffff funcref)",
		"(table 10000001 funcref)", // one past maxTableElements
	} {
		wasm, err := wasmtime.Wat2Wasm(`(module ` + table + ` (memory 1) (func (export "canister_init")))`)
		if err != nil {
			t.Fatal(err)
		}
		m, err := e.Compile(wasm, DefaultModuleLimits())
		if err != nil {
			t.Logf("%s: refused at compile: %v", table, err)
			continue
		}
		in := testInput(sysapi.CtxInit, "canister_init", []byte("DIDL\x00\x00"), m)
		in.Stable = state.NewPageMap(0)
		out, err := e.Run(&Request{Module: m, Input: in, RunStart: true})
		if err == nil && !out.Trapped {
			t.Fatalf("%s: instantiated", table)
		}
	}
	// A table at the limit still works.
	wasm, err := wasmtime.Wat2Wasm(`(module (table 10000000 funcref) (memory 1) (func (export "canister_init")))`)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	in := testInput(sysapi.CtxInit, "canister_init", []byte("DIDL\x00\x00"), m)
	out, err := e.Run(&Request{Module: m, Input: in, RunStart: true})
	if err != nil || out.Trapped {
		t.Fatalf("table of %d elements: %v %+v", maxTableElements, err, out)
	}
}
