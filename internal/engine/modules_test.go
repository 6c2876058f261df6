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
