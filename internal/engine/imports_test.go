package engine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// importWat is a module importing one ic0 function with the given types.
func importWat(t *testing.T, memory64 bool, name string, params, results []string) []byte {
	t.Helper()
	sig := ""
	if len(params) > 0 {
		sig += " (param " + strings.Join(params, " ") + ")"
	}
	if len(results) > 0 {
		sig += " (result " + strings.Join(results, " ") + ")"
	}
	mem := "(memory 1)"
	if memory64 {
		mem = "(memory i64 1)"
	}
	wasm, err := wasmtime.Wat2Wasm(fmt.Sprintf(`(module (import "ic0" %q (func%s)) %s)`, name, sig, mem))
	if err != nil {
		t.Fatal(err)
	}
	return wasm
}

// Every entry of the System API table is accepted with its signature in each
// width it exists in, and refused with any other signature or in a width it
// does not exist in (the 32-bit-only legacy imports in 64-bit canisters).
func TestEveryImportSignature(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range sysapi.Imports {
		if seen[s.Name] {
			t.Fatalf("ic0.%s is in the table twice", s.Name)
		}
		seen[s.Name] = true
		for _, memory64 := range []bool{false, true} {
			kinds := func(ks []sysapi.Kind) []string {
				var out []string
				for _, k := range ks {
					if k == sysapi.I32 || (k == sysapi.Ptr && !memory64) {
						out = append(out, "i32")
					} else {
						out = append(out, "i64")
					}
				}
				return out
			}
			params, results := kinds(s.Params), kinds(s.Results)
			_, _, err := Validate(importWat(t, memory64, s.Name, params, results), DefaultModuleLimits())
			if s.Only32 && memory64 {
				if err == nil || !strings.Contains(err.Error(), "no such System API function for a 64-bit canister") {
					t.Errorf("32-bit-only ic0.%s in a 64-bit canister: %v", s.Name, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("ic0.%s (%s): %v", s.Name, width(memory64), err)
			}
			// One parameter more, or a parameter of the other width, is refused.
			for _, bad := range [][]string{append(append([]string{}, params...), "i32"), flipFirst(params)} {
				if bad == nil {
					continue
				}
				if _, _, err := Validate(importWat(t, memory64, s.Name, bad, results), DefaultModuleLimits()); err == nil || !strings.Contains(err.Error(), "the System API defines") {
					t.Errorf("ic0.%s with params %v (%s) accepted: %v", s.Name, bad, width(memory64), err)
				}
			}
		}
	}
	// The imports the IC's replica links beyond the specification's list.
	for _, name := range []string{"mint_cycles128", "mint_cycles", "cost_http_request_v2"} {
		if !seen[name] {
			t.Errorf("ic0.%s missing", name)
		}
	}
}

func flipFirst(params []string) []string {
	if len(params) == 0 {
		return nil
	}
	out := append([]string{}, params...)
	if out[0] == "i32" {
		out[0] = "i64"
	} else {
		out[0] = "i32"
	}
	return out
}
