package engine

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// runCallback installs a module and runs one callback on its state.
func runCallback(t *testing.T, e *Engine, src string, ctx sysapi.Context, cb sysapi.Callback) (*sysapi.Output, *canister) {
	t.Helper()
	wasm, err := wasmtime.Wat2Wasm(src)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(wasm, DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	c := &canister{m: m, stable: state.NewPageMap(0)}
	if out := c.run(t, e, sysapi.CtxInit, "", nil, true); out.Trapped {
		t.Fatalf("install: %s", out.TrapMessage)
	}
	in := testInput(ctx, "", []byte("reply"), m)
	in.Callback = cb
	out, err := e.Run(&Request{Module: m, Input: in, Heap: c.heap, Globals: c.globals})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return out, c
}

// Callbacks resolve through table 0 whatever the module exports; every way
// the table can fail to give a (I) -> () function is a trap naming it, never
// a panic of the engine (an externref table 0 used to reach Val.Funcref,
// which panics on anything but a funcref).
func TestCallbackEdgeCases(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	const body32 = `
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func $cb (param i32) (i32.store (i32.const 64) (local.get 0)) (call $reply))
  (func $two (param i32 i32))
  (func $res (param i32) (result i32) (local.get 0))
  (func $i64 (param i64))`
	const body64 = `
  (import "ic0" "msg_reply" (func $reply))
  (memory i64 1)
  (func $cb (param i64) (i64.store (i64.const 64) (local.get 0)) (call $reply))
  (func $i32 (param i32))`
	for _, tc := range []struct {
		name string
		src  string
		ctx  sysapi.Context
		cb   sysapi.Callback
		want string // trap message part; "" means it must run and reply
	}{
		{"32-bit reply", `(module ` + body32 + ` (table 5 funcref) (elem (i32.const 1) $cb $two $res $i64))`, sysapi.CtxReply, sysapi.Callback{Fun: 1, Env: 0xfeedbeef}, ""},
		{"32-bit composite reply", `(module ` + body32 + ` (table 4 funcref) (elem (i32.const 1) $cb))`, sysapi.CtxCompositeReply, sysapi.Callback{Fun: 1, Env: 5}, ""},
		{"exported table still works", `(module ` + body32 + ` (table (export "t") 2 funcref) (elem (i32.const 1) $cb))`, sysapi.CtxReject, sysapi.Callback{Fun: 1, Env: 5}, ""},
		{"outside the table", `(module ` + body32 + ` (table 4 funcref) (elem (i32.const 1) $cb))`, sysapi.CtxReply, sysapi.Callback{Fun: 4}, "non-existent Wasm function 4 from table 0"},
		{"far outside the table", `(module ` + body32 + ` (table 4 funcref) (elem (i32.const 1) $cb))`, sysapi.CtxReply, sysapi.Callback{Fun: 0xffffffff}, "non-existent Wasm function 4294967295 from table 0"},
		{"null entry", `(module ` + body32 + ` (table 4 funcref) (elem (i32.const 1) $cb))`, sysapi.CtxReply, sysapi.Callback{Fun: 0}, "unexpected null function reference"},
		{"two parameters", `(module ` + body32 + ` (table 5 funcref) (elem (i32.const 1) $cb $two $res $i64))`, sysapi.CtxReply, sysapi.Callback{Fun: 2}, "callback 2 has type (i32, i32) -> (), a callback must be (i32) -> ()"},
		{"a result", `(module ` + body32 + ` (table 5 funcref) (elem (i32.const 1) $cb $two $res $i64))`, sysapi.CtxCleanup, sysapi.Callback{Fun: 3}, "callback 3 has type (i32) -> (i32)"},
		{"i64 env in a 32-bit canister", `(module ` + body32 + ` (table 5 funcref) (elem (i32.const 1) $cb $two $res $i64))`, sysapi.CtxReply, sysapi.Callback{Fun: 4}, "callback 4 has type (i64) -> ()"},
		{"env beyond 32 bits", `(module ` + body32 + ` (table 4 funcref) (elem (i32.const 1) $cb))`, sysapi.CtxReply, sysapi.Callback{Fun: 1, Env: 1 << 32}, "does not fit a 32-bit canister"},
		{"no table", `(module ` + body32 + `)`, sysapi.CtxReply, sysapi.Callback{Fun: 0}, "table not found"},
		{"externref table 0", `(module ` + body32 + ` (table 2 externref))`, sysapi.CtxReply, sysapi.Callback{Fun: 1}, "is not a function reference"},
		{"64-bit reply, table64", `(module ` + body64 + ` (table i64 3 funcref) (elem (i64.const 1) $cb $i32))`, sysapi.CtxReply, sysapi.Callback{Fun: 1, Env: 0x1234_5678_9abc_def0}, ""},
		{"64-bit reply, 32-bit table", `(module ` + body64 + ` (table 3 funcref) (elem (i32.const 1) $cb $i32))`, sysapi.CtxReject, sysapi.Callback{Fun: 1, Env: 1 << 40}, ""},
		{"64-bit callback taking i32", `(module ` + body64 + ` (table i64 3 funcref) (elem (i64.const 1) $cb $i32))`, sysapi.CtxReply, sysapi.Callback{Fun: 2}, "callback 2 has type (i32) -> (), a callback must be (i64) -> ()"},
		{"64-bit index beyond 32 bits", `(module ` + body64 + ` (table i64 3 funcref) (elem (i64.const 1) $cb $i32))`, sysapi.CtxReply, sysapi.Callback{Fun: 1<<32 + 1}, "non-existent Wasm function 4294967297 from table 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, c := runCallback(t, e, tc.src, tc.ctx, tc.cb)
			if tc.want != "" {
				if !out.Trapped || !strings.Contains(out.TrapMessage, tc.want) {
					t.Fatalf("got %+v, want a trap with %q", out, tc.want)
				}
				if len(out.Heap.Pages) != 0 || out.Response != sysapi.NoResponse {
					t.Fatalf("a trapped callback left changes: %+v", out)
				}
				return
			}
			if out.Trapped || out.Response != sysapi.Replied {
				t.Fatalf("callback did not run and reply: %+v", out)
			}
			// The callback wrote its environment to the heap, full width.
			var page0 *state.Page
			for _, p := range out.Heap.Pages {
				if p.Index == 0 {
					page0 = p.Data
				}
			}
			if page0 == nil {
				t.Fatalf("callback wrote nothing: %+v", out.Heap)
			}
			got := binary.LittleEndian.Uint64(page0[64:])
			if !c.m.Info.Memory64 {
				got = uint64(binary.LittleEndian.Uint32(page0[64:]))
			}
			if got != tc.cb.Env {
				t.Fatalf("callback saw env %#x, want %#x", got, tc.cb.Env)
			}
		})
	}
}

// Table 0 is always the module's own: a canister cannot import a table (or
// anything but ic0 functions), so callbacks never reach a table the host or
// another module provides.
func TestTableImportRefused(t *testing.T) {
	for _, src := range []string{
		`(module (import "ic0" "table" (table 1 funcref)) (memory 1))`,
		`(module (import "ic0" "table" (table i64 1 funcref)) (memory i64 1))`,
	} {
		wasm, err := wasmtime.Wat2Wasm(src)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := Validate(wasm, DefaultModuleLimits()); err == nil || !strings.Contains(err.Error(), "only functions may be imported") {
			t.Fatalf("%s: %v", src, err)
		}
	}
}
