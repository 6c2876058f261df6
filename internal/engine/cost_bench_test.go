package engine

import (
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// costLoops runs 1,000,000 iterations of a loop: plain Wasm, or one ic0
// call per iteration.
const costLoops = `(module
  (import "ic0" "canister_status" (func $status (result i32)))
  (import "ic0" "stable64_read" (func $sread (param i64 i64 i64)))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func (export "canister_query plain") (local $i i32) (local $x i32)
    (loop $l (local.set $x (i32.xor (local.get $x) (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))
    (call $reply))
  (func (export "canister_query status") (local $i i32)
    (loop $l (drop (call $status)) (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))
    (call $reply))
  (func (export "canister_update sread0") (local $i i32)
    (drop (call $sgrow (i64.const 1)))
    (loop $l (call $sread (i64.const 0) (i64.const 0) (i64.const 0)) (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))
    (call $reply)))`

// BenchmarkCPUPerInstruction measures the host CPU an execution spends per
// instruction it is charged: for plain Wasm and for loops bound by ic0
// calls. The fixed charge per ic0 call (sysapi's cost table) should keep
// the two within a small factor, so no code gets CPU the meter does not see.
//
//	go test ./internal/engine -run '^$' -bench CPUPerInstruction -benchtime 5x
func BenchmarkCPUPerInstruction(b *testing.B) {
	e, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(costLoops)
	if err != nil {
		b.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ctx  sysapi.Context
	}{
		{"canister_query plain", sysapi.CtxNonReplicatedQuery},
		{"canister_query status", sysapi.CtxNonReplicatedQuery},
		{"canister_update sread0", sysapi.CtxUpdate},
	} {
		b.Run(tc.name[strings.IndexByte(tc.name, 0x20)+1:], func(b *testing.B) {
			var instr uint64
			cpu0 := processCPU(b)
			for b.Loop() {
				in := testInput(tc.ctx, tc.name, nil, m)
				in.Limits.Instructions = 1 << 40
				out, err := e.Run(&Request{Module: m, Input: in, RunStart: true})
				if err != nil || out.Trapped {
					b.Fatalf("%s: %v %+v", tc.name, err, out)
				}
				instr += out.Instructions
			}
			cpu := processCPU(b) - cpu0
			b.ReportMetric(float64(instr)/float64(b.N), "instr/op")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(instr), "cpu-ns/instr")
		})
	}
}
