package engine

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// A grow that fails against one of the canister's own limits returns -1,
// as before the grow check: the check must never take a deterministic
// failure for the host's (the execution would then fail, uncharged, every
// time). Each limit is tried at its edge: a grow to exactly the limit
// succeeds, one page more returns -1; huge deltas too (no overflow).
func TestGrowAtTheCanistersLimitsReturnsMinusOne(t *testing.T) {
	t.Parallel()
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, mem, idx string
		heapBytes      uint64
		deltas         []string // grown in turn
		want           []int64  // each grow's result
	}{
		{"4 GiB of a 32-bit memory", "1", "i32", 4 << 30, []string{"65535", "1", "0"}, []int64{1, -1, 65536}},
		{"declared maximum", "1 10", "i32", 4 << 30, []string{"9", "1"}, []int64{1, -1}},
		{"heap limit", "1", "i32", 16<<16 + 1000, []string{"15", "1"}, []int64{1, -1}},
		{"heap limit below the memory", "0", "i32", 0, []string{"1", "0"}, []int64{-1, 0}},
		{"huge 32-bit delta", "1", "i32", 4 << 30, []string{"-1", "-2147483648"}, []int64{-1, -1}},
		{"6 GiB of a 64-bit memory", "i64 1", "i64", MaxHeapBytes, []string{"98303", "1"}, []int64{1, -1}},
		{"64-bit declared maximum", "i64 1 10", "i64", MaxHeapBytes, []string{"9", "1"}, []int64{1, -1}},
		{"huge 64-bit deltas", "i64 1", "i64", MaxHeapBytes, []string{"-1", "-9223372036854775808", "281474976710656"}, []int64{-1, -1, -1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := ""
			for i, d := range c.deltas {
				res := fmt.Sprintf("(memory.grow (%s.const %s))", c.idx, d)
				if c.idx == "i32" {
					res = "(i64.extend_i32_s " + res + ")"
				}
				body += fmt.Sprintf("(i64.store (i32.const %d) %s)\n", 8*i, res)
			}
			ptr := func(n int) string { return fmt.Sprintf("(%s.const %d)", c.idx, n) }
			wat := fmt.Sprintf(`(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param %[1]s %[1]s)))
  (memory %[2]s)
  (func (export "canister_update g")
    %[3]s
    (call $append %[4]s %[5]s)
    (call $reply)))`, c.idx, c.mem, body, ptr(0), ptr(8*len(c.deltas)))
			if c.idx == "i64" {
				wat = replaceStores(wat)
			}
			if c.mem == "0" {
				// No page to write the results to: answer the two
				// results through a trap message instead.
				wat = fmt.Sprintf(`(module
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory 0)
  (func (export "canister_update g")
    (if (i32.ne (memory.grow (i32.const %s)) (i32.const -1)) (then unreachable))
    (if (i32.ne (memory.grow (i32.const %s)) (i32.const 0)) (then unreachable))
    (call $trap (i32.const 0) (i32.const 0))))`, c.deltas[0], c.deltas[1])
			}
			wasm, err := wasmtime.Wat2Wasm(wat)
			if err != nil {
				t.Fatal(err)
			}
			m, err := e.Compile(wasm, DefaultModuleLimits())
			if err != nil {
				t.Fatal(err)
			}
			in := testInput(sysapi.CtxUpdate, "canister_update g", nil, m)
			in.Limits.HeapBytes = c.heapBytes
			out, err := e.Run(&Request{Module: m, Input: in})
			if err != nil {
				t.Fatalf("a grow at the canister's limits failed the execution: %v", err)
			}
			if c.mem == "0" {
				if !out.Trapped || out.TrapMessage == "Canister trapped: unreachable" {
					t.Fatalf("want the explicit trap (grows as expected), got %+v", out)
				}
				return
			}
			if out.Trapped {
				t.Fatalf("trapped: %s", out.TrapMessage)
			}
			for i, w := range c.want {
				if got := int64(binary.LittleEndian.Uint64(out.Reply[8*i:])); got != w {
					t.Errorf("grow %d (%s pages): %d, want %d", i, c.deltas[i], got, w)
				}
			}
		})
	}
}

// replaceStores makes the results' stores take i64 addresses.
func replaceStores(wat string) string {
	out := ""
	for i := 0; i < len(wat); i++ {
		if i+len("(i64.store (i32.const ") <= len(wat) && wat[i:i+len("(i64.store (i32.const ")] == "(i64.store (i32.const " {
			out += "(i64.store (i64.const "
			i += len("(i64.store (i32.const ") - 1
			continue
		}
		out += string(wat[i])
	}
	return out
}
