package host

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// funcWeightBound is the engine's bound on a body's weight
// (maxFuncInstructions), stricter than the IC's on its instructions.
const funcWeightBound = 500_000

// nopBodyCode is a function body of n instructions (no locals, n-1 nops,
// its end), with its length in front, as the code section holds it.
func nopBodyCode(n int) []byte {
	b := appendLEB(nil, uint64(n+1))
	b = append(b, 0) // no locals
	for range n - 1 {
		b = append(b, 0x01)
	}
	return append(b, 0x0b)
}

// nopCodeWasm is a module whose code section's content is exactly size
// bytes (at least 2 MB): functions () -> () of nops, each of at most
// 999,999 instructions, the first exported as an update method.
func nopCodeWasm(size int) []byte {
	const full = funcWeightBound // a full body's bytes: one instruction fewer, within every bound
	n := size/(full+3) + 1       // bodies; every body below takes a 3-byte length
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
	m = append(m, wasmSection(1, []byte{1, 0x60, 0, 0})...)
	fs := appendLEB(nil, uint64(n))
	for range n {
		fs = append(fs, 0)
	}
	m = append(m, wasmSection(3, fs)...)
	m = append(m, wasmSection(7, updateExport(0))...)
	code := appendLEB(nil, uint64(n))
	for _, s := range sizes {
		code = append(code, nopBodyCode(s-1)...)
	}
	return append(m, wasmSection(10, code)...)
}

// nopFuncWasm is one function () -> () of n instructions, exported as an
// update method.
func nopFuncWasm(n int) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, wasmSection(1, []byte{1, 0x60, 0, 0})...)
	m = append(m, wasmSection(3, []byte{1, 0})...)
	m = append(m, wasmSection(7, updateExport(0))...)
	return append(m, wasmSection(10, append([]byte{1}, nopBodyCode(n)...))...)
}

// methodsWasm is one function () -> () exported as an update method under
// each of names.
func methodsWasm(names ...string) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, wasmSection(1, []byte{1, 0x60, 0, 0})...)
	m = append(m, wasmSection(3, []byte{1, 0})...)
	ex := appendLEB(nil, uint64(len(names)))
	for _, n := range names {
		n = "canister_update " + n
		ex = append(append(appendLEB(ex, uint64(len(n))), n...), 0, 0)
	}
	m = append(m, wasmSection(7, ex)...)
	return append(m, wasmSection(10, []byte{1, 2, 0, 0x0b})...)
}

// The IC's bounds on a module that cordon once did not enforce, at
// install in each isolation mode: a module one beyond the code section's
// size (12 MiB; larger ones compiled for minutes, and beyond some 70 MB
// failed in sandbox mode only by the compiler's deadline), a body's
// instructions or the methods' names is refused as an invalid module
// naming the bound, before it compiles (in the compiler sandbox, or the
// node's process); one at the bound installs.
func TestInstallJustOverICModuleBoundsRefused(t *testing.T) {
	t.Parallel()
	a, b := strings.Repeat("a", 10_000), strings.Repeat("b", 10_000)
	cases := []struct {
		what       string
		over, fits []byte
		want       string
	}{
		{"code section", nopCodeWasm(engine.MaxCodeSectionBytes + 1), nopCodeWasm(engine.MaxCodeSectionBytes),
			fmt.Sprintf("code section is %d bytes, the limit is %d (the IC's MAX_CODE_SECTION_SIZE_IN_BYTES)", engine.MaxCodeSectionBytes+1, engine.MaxCodeSectionBytes)},
		// The body that fits is at cordon's own, stricter bound (its
		// weight: a nop weighs 1).
		{"instructions of a body", nopFuncWasm(engine.MaxFuncInstructions + 1), nopFuncWasm(funcWeightBound),
			fmt.Sprintf("function 0 has %d instructions, the limit per function is %d (the IC's WASM_FUNCTION_SIZE_LIMIT)", engine.MaxFuncInstructions+1, engine.MaxFuncInstructions)},
		{"methods' names", methodsWasm(a, b+"b"), methodsWasm(a, b),
			fmt.Sprintf("total %d bytes, the limit is %d (the IC's max_sum_exported_function_name_lengths)", engine.MaxMethodNameBytes+1, engine.MaxMethodNameBytes)},
	}
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newModeFixture(t, mode)
			ctx := context.Background()
			for _, c := range cases {
				id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
				if err != nil {
					t.Fatal(err)
				}
				_, err = f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: c.over, Caller: user})
				if !errors.Is(err, engine.ErrInvalidModule) || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("install of one beyond the bound on the %s: %v, want a refusal as an invalid module saying %q", c.what, err, c.want)
				}
				if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: c.fits, Caller: user}); err != nil {
					t.Fatalf("install at the bound on the %s: %v", c.what, err)
				}
			}
		})
	}
}
