package engine

import (
	"errors"
	"strings"
	"testing"
)

// What the tests of the bounds on compile time share: modules built byte
// by byte (wat would take minutes over the sizes the bounds are about),
// and the check that such a module is refused by validation, before it
// compiles.

// appendLEB appends v to b in unsigned LEB128.
func appendLEB(b []byte, v uint64) []byte {
	for {
		c := byte(v & 0x7f)
		if v >>= 7; v == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// section is a module's section id with its content.
func section(id byte, content []byte) []byte {
	return append(appendLEB([]byte{id}, uint64(len(content))), content...)
}

// updateExport is an export section of one function, idx, exported as
// an update method, so that the module installs as a canister.
func updateExport(idx uint64) []byte {
	name := "canister_update f"
	ex := append(appendLEB(appendLEB(nil, 1), uint64(len(name))), name...)
	return section(7, appendLEB(append(ex, 0), idx))
}

// voidFuncsModule builds a module of funcs functions () -> (), each with
// body (its local declarations, its code and its end), the first exported
// as an update method.
func voidFuncsModule(funcs int, body []byte) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{1, 0x60, 0, 0})...)
	fs := appendLEB(nil, uint64(funcs))
	for range funcs {
		fs = append(fs, 0)
	}
	m = append(m, section(3, fs)...)
	m = append(m, updateExport(0)...)
	code := appendLEB(nil, uint64(funcs))
	for range funcs {
		code = append(appendLEB(code, uint64(len(body))), body...)
	}
	return append(m, section(10, code)...)
}

// refusedFor checks err is a refusal of the module that says why.
func refusedFor(t *testing.T, what string, err error, reason string) {
	t.Helper()
	if !errors.Is(err, ErrInvalidModule) || !strings.Contains(err.Error(), reason) {
		t.Fatalf("%s: %v, want a refusal for its %s", what, err, reason)
	}
}

// refusedBeforeCompile checks that validation refuses the compile bomb
// wasm, saying reason, and so does Compile, which validates it first: it
// never reaches Cranelift.
func refusedBeforeCompile(t *testing.T, e *Engine, wasm []byte, lim ModuleLimits, reason string) {
	t.Helper()
	_, _, err := Validate(wasm, lim)
	refusedFor(t, "Validate", err, reason)
	_, err = e.Compile(wasm, lim)
	refusedFor(t, "Compile", err, reason)
}

// nopBody is a function body of n instructions: no locals, n-1 nops and
// its end.
func nopBody(n int) []byte {
	b := make([]byte, n+1) // a zero is "no locals"
	for i := 1; i < n; i++ {
		b[i] = 0x01
	}
	b[n] = 0x0b
	return b
}

// nopCodeModule builds a module whose code section's content is exactly
// size bytes (at least 2 MB): bodies of nops, each within the IC's
// instructions per function, the first exported as an update method.
func nopCodeModule(size int) []byte {
	const full = maxFuncInstructions // a full body's bytes: one instruction fewer, within every bound
	n := size/(full+3) + 1           // bodies; every size below takes a 3-byte length
	sizes := make([]int, n)
	rest := size - len(appendLEB(nil, uint64(n)))
	for i := range n - 1 {
		sizes[i] = full
		rest -= full + 3
	}
	if rest < 20_000 { // keep the last body's length 3 bytes long
		sizes[0] -= 20_000
		rest += 20_000
	}
	sizes[n-1] = rest - 3
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{1, 0x60, 0, 0})...)
	fs := appendLEB(nil, uint64(n))
	for range n {
		fs = append(fs, 0)
	}
	m = append(m, section(3, fs)...)
	m = append(m, updateExport(0)...)
	code := appendLEB(nil, uint64(n))
	for _, s := range sizes {
		code = append(appendLEB(code, uint64(s)), nopBody(s-1)...)
	}
	return append(m, section(10, code)...)
}

// methodsModule builds a module of one function () -> () exported as an
// update method under each of names.
func methodsModule(names ...string) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{1, 0x60, 0, 0})...)
	m = append(m, section(3, []byte{1, 0})...)
	ex := appendLEB(nil, uint64(len(names)))
	for _, n := range names {
		n = "canister_update " + n
		ex = append(append(appendLEB(ex, uint64(len(n))), n...), 0, 0)
	}
	m = append(m, section(7, ex)...)
	return append(m, section(10, []byte{1, 2, 0, 0x0b})...)
}
