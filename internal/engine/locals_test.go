package engine

import (
	"errors"
	"testing"
)

// localsModule builds a module of n functions () -> (), each declaring k
// i64 locals in one group (4 bytes, whatever k), plus an exported update
// method so it installs as a canister.
func localsModule(n int, k uint64) []byte {
	return voidFuncsModule(n, append(appendLEB([]byte{1}, k), 0x7e, 0x0b))
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
	refusedBeforeCompile(t, e, localsModule(2000, 49_990), lim, "locals")
	// Within the bound (20 × 49,990 < 1 M): valid, and it compiles.
	if _, err := e.Compile(localsModule(20, 49_990), lim); err != nil {
		t.Fatalf("20 × 49,990 locals: %v", err)
	}
	// One body beyond wasmparser's per-function bound is refused too.
	if _, _, err := Validate(localsModule(1, 50_001), lim); !errors.Is(err, ErrInvalidModule) {
		t.Fatalf("50,001 locals in one body: %v", err)
	}
}
