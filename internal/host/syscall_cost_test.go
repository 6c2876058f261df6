package host

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// ic0Loops calls the cheapest ic0 import in loops: a thousand times, and
// until the instruction limit.
const ic0Loops = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "canister_status" (func $status (result i32)))
  (func (export "canister_query thousand") (local $i i32)
    (loop $l (drop (call $status)) (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
    (call $reply))
  (func (export "canister_query forever") (loop $l (drop (call $status)) (br $l))))`

// An ic0 call costs the host microseconds (a cgo callback), a thousand
// times a Wasm instruction; a canister calling the cheapest import in a
// loop is charged for that, so a free query spinning on ic0 calls reaches
// its instruction limit in seconds, and ends with the same deterministic
// limit trap in both isolation modes, not a watchdog kill (sandbox, after
// a minute of CPU) or minutes of host CPU (in-process).
func TestIC0LoopChargedForHostCPU(t *testing.T) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newModeFixture(t, mode)
			id := f.install(mustWat(t, ic0Loops), nil)
			r, err := f.node.Query(context.Background(), Message{Canister: id, Method: "thousand", Caller: user})
			if err != nil {
				t.Fatal(err)
			}
			// At least 5,000 instructions a call (1 µs at plain Wasm's
			// 0.2 ns an instruction); it was 25 with the loop.
			if r.Instructions < 1000*5000 {
				t.Fatalf("1,000 ic0 calls charged %d instructions", r.Instructions)
			}
			_, err = f.node.Query(context.Background(), Message{Canister: id, Method: "forever", Caller: user})
			rej := f.reject(err)
			if rej.Code != CanisterError || !strings.Contains(rej.Message, sysapi.ErrInstructionLimit.Message) {
				t.Fatalf("forever: %v, want the instruction limit", err)
			}
			// The host is fine: the canister still answers.
			if _, err := f.node.Query(context.Background(), Message{Canister: id, Method: "thousand", Caller: user}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// appendLEB appends v to b in unsigned LEB128.
func appendLEB(b []byte, v uint64) []byte { return append(b, leb(v)...) }

// wasmSection is a module's section: its id, its size and its content.
func wasmSection(id byte, c []byte) []byte {
	return append(appendLEB([]byte{id}, uint64(len(c))), c...)
}

// updateExport is the content of an export section exporting function fn
// as the update method "f".
func updateExport(fn uint64) []byte {
	const name = "canister_update f"
	ex := append(appendLEB(appendLEB(nil, 1), uint64(len(name))), name...)
	return appendLEB(append(ex, 0), fn) // 0: a function
}

// localsWasm is n functions, each declaring 49,990 i64 locals in one
// 4-byte group: 16 KB at n = 2,000 that once took 15 s to compile.
func localsWasm(n int) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, wasmSection(1, []byte{1, 0x60, 0, 0})...)
	fs := appendLEB(nil, uint64(n))
	for range n {
		fs = append(fs, 0)
	}
	m = append(m, wasmSection(3, fs)...)
	m = append(m, wasmSection(7, updateExport(0))...)
	body := append(appendLEB([]byte{1}, 49990), 0x7e, 0x0b)
	code := appendLEB(nil, uint64(n))
	for range n {
		code = append(appendLEB(code, uint64(len(body))), body...)
	}
	return append(m, wasmSection(10, code)...)
}

// A module declaring 100 M locals in 16 KB is refused by validation in the
// compiler sandbox, before it compiles, as an invalid module; the
// canister keeps working with a module within the bound.
func TestInstallManyLocalsRefused(t *testing.T) {
	f := newModeFixture(t, "sandbox")
	ctx := context.Background()
	id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: localsWasm(2000), Caller: user})
	if err == nil || !strings.Contains(err.Error(), "locals") {
		t.Fatalf("install of 2,000 × 49,990 locals: %v, want a refusal for its locals", err)
	}
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: localsWasm(2), Caller: user}); err != nil {
		t.Fatalf("install of 2 × 49,990 locals: %v", err)
	}
}

// blockBombWasm is one function of n sibling blocks, each with a br_if
// (7 bytes a block), plus an exported update method: metering updates the
// counter after every br_if and end, and at n = 120,000 (840 KB) Cranelift
// took 35 s of CPU to compile it.
func blockBombWasm(n int) []byte {
	unit := []byte{0x02, 0x40, 0x20, 0, 0x0d, 0, 0x0b} // block; local.get 0; br_if 0; end
	return controlWasm(1, n, unit)
}

// controlWasm is funcs functions (i32) -> () whose body is unit repeated
// reps times, plus an exported update method (the last function).
func controlWasm(funcs, reps int, unit []byte) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, wasmSection(1, []byte{2, 0x60, 1, 0x7f, 0, 0x60, 0, 0})...) // (i32) -> (), () -> ()
	fs := appendLEB(nil, uint64(funcs+1))
	for range funcs {
		fs = append(fs, 0)
	}
	m = append(m, wasmSection(3, append(fs, 1))...)
	m = append(m, wasmSection(7, updateExport(uint64(funcs)))...)
	body := []byte{0} // no locals
	for range reps {
		body = append(body, unit...)
	}
	body = append(body, 0x0b)
	code := appendLEB(nil, uint64(funcs+1))
	for range funcs {
		code = append(appendLEB(code, uint64(len(body))), body...)
	}
	code = append(code, 2, 0, 0x0b)
	return append(m, wasmSection(10, code)...)
}

// refusal is a module install must refuse as an invalid module whose
// error says each of want.
type refusal struct {
	what string
	wasm []byte
	want []string
}

// checkRefusedThenInstalls installs, in each isolation mode, each of
// refused on one canister, wanting it refused, and then fits, which must
// install: the refusals leave the canister able to take a module within
// the bounds.
func checkRefusedThenInstalls(t *testing.T, refused []refusal, fitsWhat string, fits []byte) {
	t.Helper()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newModeFixture(t, mode)
			ctx := context.Background()
			id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range refused {
				_, err = f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: r.wasm, Caller: user})
				ok := errors.Is(err, engine.ErrInvalidModule)
				for _, w := range r.want {
					ok = ok && strings.Contains(err.Error(), w)
				}
				if !ok {
					t.Fatalf("install of %s: %v, want a refusal as an invalid module saying %q", r.what, err, r.want)
				}
			}
			if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: fits, Caller: user}); err != nil {
				t.Fatalf("install of %s: %v", fitsWhat, err)
			}
		})
	}
}

// The compile bomb is refused by validation (in the compiler sandbox, or
// in the node's process) before it compiles, as an invalid module that
// says why; the canister then installs a module within the bounds.
func TestInstallControlBombRefused(t *testing.T) {
	t.Parallel()
	checkRefusedThenInstalls(t, []refusal{
		{"120,000 blocks in one function", blockBombWasm(120_000), []string{"control instructions"}},
	}, "1,000 blocks", blockBombWasm(1000))
}

// A module one control instruction beyond the default module bound
// (500,000; at the former 1 M a module of 250,000 compiled in about 16 s and
// one at that bound in 88 s), every body within the function's bound, is
// refused before it compiles, in the compiler sandbox too (the limits
// travel in the compile request), saying which limit; and so is one body
// one beyond the function's bound (20,000).
func TestInstallJustOverControlBoundsRefused(t *testing.T) {
	t.Parallel()
	brIf := []byte{0x20, 0, 0x0d, 0} // local.get 0; br_if 0: one control instruction
	checkRefusedThenInstalls(t, []refusal{
		// 25 bodies of 20,000 (with their ends) and the method's end.
		{"500,001 control instructions", controlWasm(25, 19_999, brIf), []string{"module has 500001 control instructions", "the limit"}},
		{"a body of 20,001", controlWasm(1, 20_000, brIf), []string{"function 0 has 20001 control instructions", "the limit"}},
	}, "a body at the function's bound", controlWasm(1, 19_999, brIf))
}

// mergeBombWasm is one function (i32) -> () declaring 500 i64 locals and
// holding ifs ifs, each rewriting all 500 and followed by reading them,
// plus an exported update method: each if's join merges 500 values on two
// edges, and register allocation grows with the square of those merges.
// Without a bound, its install at 100 ifs (about 500 KB) took 31 s here
// (in-process, the machine loaded).
func mergeBombWasm(ifs int) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, wasmSection(1, []byte{2, 0x60, 1, 0x7f, 0, 0x60, 0, 0})...) // (i32) -> (), () -> ()
	m = append(m, wasmSection(3, []byte{2, 0, 1})...)
	m = append(m, wasmSection(7, updateExport(1))...)
	const locals = 500
	body := append(appendLEB([]byte{1}, locals), 0x7e)
	k := uint64(0)
	for range ifs {
		body = append(body, 0x20, 0, 0x04, 0x40) // local.get 0; if
		for j := uint64(1); j <= locals; j++ {
			k++
			// i64.const (k's bits: distinct constants); local.set j
			body = appendLEB(append(appendLEB(append(body, 0x42), k), 0x21), j)
		}
		body = append(body, 0x0b, 0x20, 1) // end; local.get 1
		for j := uint64(2); j <= locals; j++ {
			body = append(appendLEB(append(body, 0x20), j), 0x7c) // local.get j; i64.add
		}
		body = append(body, 0x1a) // drop
	}
	body = append(body, 0x0b)
	code := append(appendLEB([]byte{2}, uint64(len(body))), body...)
	code = append(code, 2, 0, 0x0b)
	return append(m, wasmSection(10, code)...)
}

// The register-allocation bomb is refused by validation before it
// compiles, as an invalid module naming the limit; a module of a few such
// ifs installs.
func TestInstallMergeBombRefused(t *testing.T) {
	t.Parallel()
	checkRefusedThenInstalls(t, []refusal{
		{"100 ifs rewriting 500 locals", mergeBombWasm(100), []string{"too many values merge"}},
	}, "4 such ifs", mergeBombWasm(4))
}

// stackBombWasm is one function (i32) -> () that pushes values onto the
// operand stack, the parameter plus j for j = 1 to v, then adds them up,
// plus an exported update method: 5v+1 instructions, no control
// instruction, no local.
func stackBombWasm(v int) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, wasmSection(1, []byte{2, 0x60, 1, 0x7f, 0, 0x60, 0, 0})...) // (i32) -> (), () -> ()
	m = append(m, wasmSection(3, []byte{2, 0, 1})...)
	m = append(m, wasmSection(7, updateExport(1))...)
	body := []byte{0} // no locals
	for j := 1; j <= v; j++ {
		// local.get 0; i64.extend_i32_u; i64.const j; i64.add
		body = append(append(append(body, 0x20, 0, 0xad, 0x42), sleb(int64(j))...), 0x7c)
	}
	for j := 2; j <= v; j++ {
		body = append(body, 0x7c) // i64.add
	}
	body = append(body, 0x1a, 0x0b) // drop; end
	code := append(appendLEB([]byte{2}, uint64(len(body))), body...)
	code = append(code, 2, 0, 0x0b)
	return append(m, wasmSection(10, code)...)
}

// A body of 2 M instructions, within every other bound, made Cranelift
// panic, which aborted the process compiling it: in process, the node
// (this test's binary), in a sandbox the compiler. Validation refuses it
// before it compiles (by the IC's bound on a body's instructions; the
// engine's tests cover a crashing body within it, refused by its weight),
// in the compiler sandbox too; the canister then installs a module of such
// a body within the bounds.
func TestInstallInstructionBombRefused(t *testing.T) {
	t.Parallel()
	checkRefusedThenInstalls(t, []refusal{
		{"400,000 values pushed and added", stackBombWasm(400_000), []string{"function 0 has 2000001 instructions", "the limit"}},
	}, "1,000 such values", stackBombWasm(1000))
}
