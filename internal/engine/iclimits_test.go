package engine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/wasmbin"
)

// The IC's bounds on the code section, a body's instructions and the
// exported methods' names: a module at each compiles, one beyond is
// refused before it compiles, saying which bound. A body's instructions
// are also bounded by cordon's own, stricter weight (maxFuncInstructions,
// a Cranelift crash): the body that fits is at that bound, and one past
// the IC's is refused naming the IC's.
func TestICModuleBounds(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	lim := DefaultModuleLimits()
	for _, c := range []struct {
		what       string
		fits, over []byte
		reason     string
	}{
		{"code section", nopCodeModule(MaxCodeSectionBytes), nopCodeModule(MaxCodeSectionBytes + 1),
			fmt.Sprintf("code section is %d bytes, the limit is %d", MaxCodeSectionBytes+1, MaxCodeSectionBytes)},
		{"instructions of a body", voidFuncsModule(1, nopBody(maxFuncInstructions)), voidFuncsModule(1, nopBody(MaxFuncInstructions+1)),
			fmt.Sprintf("function 0 has %d instructions, the limit per function is %d", MaxFuncInstructions+1, MaxFuncInstructions)},
		{"methods' names", methodsModule(strings.Repeat("a", 10_000), strings.Repeat("b", 10_000)),
			methodsModule(strings.Repeat("a", 10_000), strings.Repeat("b", 10_001)),
			fmt.Sprintf("total %d bytes, the limit is %d", MaxMethodNameBytes+1, MaxMethodNameBytes)},
	} {
		t.Run(c.what, func(t *testing.T) {
			if _, err := e.Compile(c.fits, lim); err != nil {
				t.Fatalf("at the bound: %v", err)
			}
			refusedBeforeCompile(t, e, c.over, lim, c.reason)
		})
	}
}

// The builders make what they say: a code section of the size asked, its
// bodies within the IC's instructions per function and cordon's weight.
func TestNopCodeModuleSizes(t *testing.T) {
	for _, size := range []int{2 << 20, 3_000_009, MaxCodeSectionBytes, MaxCodeSectionBytes + 1, 5_020_000} {
		b := nopCodeModule(size)
		m, err := wasmbin.Decode(b)
		if err != nil {
			t.Fatalf("%d: %v", size, err)
		}
		got := -1
		for _, s := range m.Sections {
			if s.ID == wasmbin.SectionCode {
				got = s.End - s.Start
			}
		}
		c, err := wasmbin.CountBodies(b, m)
		if err != nil || got != size || c.MostInstructions > MaxFuncInstructions || c.MostWeight > maxFuncInstructions {
			t.Fatalf("asked %d: code section of %d, %d instructions in a body weighing %d (%v)", size, got, c.MostInstructions, c.MostWeight, err)
		}
	}
}

// Every corpus module is within the IC's bounds with room: the largest
// code section, body and methods' names are logged.
func TestICBoundsCorpusMargin(t *testing.T) {
	var code, instrs, names int
	var codeAt, instrsAt, namesAt string
	for name, b := range corpusModules(t) {
		m, info, err := Validate(b, DefaultModuleLimits())
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for _, s := range m.Sections {
			if s.ID == wasmbin.SectionCode && s.End-s.Start > code {
				code, codeAt = s.End-s.Start, name
			}
		}
		c, err := wasmbin.CountBodies(b, m)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if int(c.MostInstructions) > instrs {
			instrs, instrsAt = int(c.MostInstructions), name
		}
		n := 0
		for method := range info.Methods {
			n += len(method)
		}
		if n > names {
			names, namesAt = n, name
		}
	}
	t.Logf("largest code section %d bytes (%s), body %d instructions (%s), methods' names %d bytes (%s)", code, codeAt, instrs, instrsAt, names, namesAt)
	if code*2 > MaxCodeSectionBytes || instrs*2 > MaxFuncInstructions || names*2 > MaxMethodNameBytes {
		t.Errorf("the corpus is within half of every bound no longer")
	}
}
