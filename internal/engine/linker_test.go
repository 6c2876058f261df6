package engine

import (
	"fmt"
	"sync"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// TestLinkerDefinesEveryImport: the linkers, now built on first use, still
// define every ic0 import of the System API table, with its signature, in
// each width it exists in, and the 32-bit-only ones not in 64-bit linkers.
func TestLinkerDefinesEveryImport(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	kinds := func(ts []*wasmtime.ValType) []wasmtime.ValKind {
		out := make([]wasmtime.ValKind, len(ts))
		for i, v := range ts {
			out[i] = v.Kind()
		}
		return out
	}
	for _, memory64 := range []bool{false, true} {
		l, err := e.Linker(memory64)
		if err != nil {
			t.Fatal(err)
		}
		store := wasmtime.NewStore(e.wasmtime(memory64))
		defined := 0
		for i := range sysapi.Imports {
			s := &sysapi.Imports[i]
			ext := l.Get(store, "ic0", s.Name)
			if s.Only32 && memory64 {
				if ext != nil {
					t.Errorf("%s linker defines the 32-bit-only ic0.%s", width(memory64), s.Name)
				}
				continue
			}
			if ext == nil || ext.Func() == nil {
				t.Errorf("%s linker does not define ic0.%s", width(memory64), s.Name)
				continue
			}
			defined++
			got, want := ext.Func().Type(store), funcType(s, memory64)
			if fmt.Sprint(kinds(got.Params()), kinds(got.Results())) != fmt.Sprint(kinds(want.Params()), kinds(want.Results())) {
				t.Errorf("%s ic0.%s: type %v -> %v, want %v -> %v", width(memory64), s.Name,
					kinds(got.Params()), kinds(got.Results()), kinds(want.Params()), kinds(want.Results()))
			}
		}
		store.Close()
		t.Logf("%s linker: %d ic0 imports", width(memory64), defined)
		if again, _ := e.Linker(memory64); again != l {
			t.Errorf("%s linker built twice", width(memory64))
		}
	}
}

// TestLinkRacesRun: executions of both widths start on a fresh engine at
// once, racing to build the linkers (run it with -race); each linker is
// built once and every execution runs and replies.
func TestLinkRacesRun(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	const src = `(module (import "ic0" "msg_reply" (func $reply)) (memory %s 1)
  (func (export "canister_query q") (call $reply)))`
	var mods []*Module
	for _, mem := range []string{"", "i64"} {
		wasm, err := wasmtime.Wat2Wasm(fmt.Sprintf(src, mem))
		if err != nil {
			t.Fatal(err)
		}
		m, err := e.Compile(wasm, DefaultModuleLimits())
		if err != nil {
			t.Fatal(err)
		}
		mods = append(mods, m)
	}
	if !mods[1].Info.Memory64 || mods[0].Info.Memory64 {
		t.Fatal("the modules are not one of each width")
	}
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	linkers := make([][2]*wasmtime.Linker, n)
	for i := 0; i < n; i++ {
		wg.Add(2)
		go func(i int) {
			defer wg.Done()
			m := mods[i%2]
			out, err := e.Run(&Request{Module: m, Input: testInput(sysapi.CtxNonReplicatedQuery, "canister_query q", nil, m), RunStart: true})
			switch {
			case err != nil:
				errs <- fmt.Errorf("run %d: %w", i, err)
			case out.Trapped || out.Response != sysapi.Replied:
				errs <- fmt.Errorf("run %d did not reply: trapped %v %q", i, out.Trapped, out.TrapMessage)
			}
		}(i)
		go func(i int) {
			defer wg.Done()
			for w := 0; w < 2; w++ {
				l, err := e.Linker(w == 1)
				if err != nil {
					errs <- err
				}
				linkers[i][w] = l
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := 1; i < n; i++ {
		if linkers[i] != linkers[0] || linkers[0][0] == nil || linkers[0][1] == nil || linkers[0][0] == linkers[0][1] {
			t.Fatalf("linkers differ between callers: %v vs %v", linkers[i], linkers[0])
		}
	}
}

// BenchmarkLinker: what building one width's ic0 linker costs (New used to
// build both before a worker's Ready; now a canister worker builds the one
// its module needs when it loads it, and a compile worker none).
func BenchmarkLinker(b *testing.B) {
	e, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	for _, memory64 := range []bool{false, true} {
		b.Run(width(memory64), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := newLinker(e.wasmtime(memory64), memory64); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("engine.New", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := New(Config{MaxWasmStack: 2 << 20}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
