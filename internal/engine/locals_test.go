package engine

import (
	"errors"
	"strings"
	"testing"
)

// localsModule builds a module of n functions () -> (), each declaring k
// i64 locals in one group (4 bytes, whatever k), plus an exported update
// method so it installs as a canister.
func localsModule(n int, k uint64) []byte {
	leb := func(b []byte, v uint64) []byte {
		for {
			c := byte(v & 0x7f)
			if v >>= 7; v == 0 {
				return append(b, c)
			}
			b = append(b, c|0x80)
		}
	}
	section := func(id byte, content []byte) []byte {
		return append(leb([]byte{id}, uint64(len(content))), content...)
	}
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{1, 0x60, 0, 0})...)
	funcs := leb(nil, uint64(n))
	for range n {
		funcs = append(funcs, 0)
	}
	m = append(m, section(3, funcs)...)
	name := "canister_update f"
	ex := append(leb(leb(nil, 1), uint64(len(name))), name...)
	m = append(m, section(7, append(ex, 0, 0))...)
	body := append(leb([]byte{1}, k), 0x7e, 0x0b)
	code := leb(nil, uint64(n))
	for range n {
		code = append(leb(code, uint64(len(body))), body...)
	}
	return append(m, section(10, code)...)
}

// A 16 KB module declaring 2,000 × 49,990 locals (seconds of compile time
// for a fee per byte) is refused by validation, before it compiles; a
// module within the bound compiles.
func TestDeclaredLocalsBounded(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	lim := DefaultModuleLimits()
	hostile := localsModule(2000, 49_990)
	if _, _, err := Validate(hostile, lim); !errors.Is(err, ErrInvalidModule) || !strings.Contains(err.Error(), "locals") {
		t.Fatalf("Validate: %v, want a refusal for its locals", err)
	}
	if _, err := e.Compile(hostile, lim); !errors.Is(err, ErrInvalidModule) || !strings.Contains(err.Error(), "locals") {
		t.Fatalf("Compile: %v, want a refusal for its locals", err)
	}
	// Within the bound (20 × 49,990 < 1 M): valid, and it compiles.
	if _, err := e.Compile(localsModule(20, 49_990), lim); err != nil {
		t.Fatalf("20 × 49,990 locals: %v", err)
	}
	// One body beyond wasmparser's per-function bound is refused too.
	if _, _, err := Validate(localsModule(1, 50_001), lim); !errors.Is(err, ErrInvalidModule) {
		t.Fatalf("50,001 locals in one body: %v", err)
	}
}
