package wasmbin

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// Tiny assembler for hand-built (often hostile) binaries.

func leb(v uint64) []byte {
	var b []byte
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// vec encodes a vector: count then the items concatenated.
func vec(items ...[]byte) []byte { return cat(leb(uint64(len(items))), cat(items...)) }

func str(s string) []byte { return cat(leb(uint64(len(s))), []byte(s)) }

// sec encodes a section with a correct size.
func sec(id SectionID, content ...[]byte) []byte {
	c := cat(content...)
	return cat([]byte{byte(id)}, leb(uint64(len(c))), c)
}

// module prefixes sections with the wasm header.
func module(sections ...[]byte) []byte {
	return cat([]byte{0, 'a', 's', 'm', 1, 0, 0, 0}, cat(sections...))
}

var (
	funcTypeVoid = []byte{0x60, 0, 0}             // () -> ()
	funcTypeI32  = []byte{0x60, 1, 0x7f, 1, 0x7f} // (i32) -> (i32)
	emptyBody    = []byte{2, 0, 0x0b}             // size 2: no locals, end
)

// wat assembles WAT text with wasmtime's assembler.
func wat(t testing.TB, src string) []byte {
	t.Helper()
	b, err := wasmtime.Wat2Wasm(src)
	if err != nil {
		t.Fatalf("wat2wasm: %v\n%s", err, src)
	}
	return b
}

func newEngine() *wasmtime.Engine {
	cfg := wasmtime.NewConfig()
	cfg.SetWasmMemory64(true)
	cfg.SetWasmMultiMemory(true)
	return wasmtime.NewEngineWithConfig(cfg)
}

// realModules returns the sample canisters, sorted by size (smallest first).
func realModules(t testing.TB) []string {
	t.Helper()
	files, _ := filepath.Glob("/work/shared/canisters/*.wasm")
	if len(files) == 0 {
		t.Skip("no sample canisters in /work/shared/canisters")
	}
	size := func(f string) int64 {
		st, err := os.Stat(f)
		if err != nil {
			return 0
		}
		return st.Size()
	}
	sort.Slice(files, func(i, j int) bool { return size(files[i]) < size(files[j]) })
	return files
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantErr fails unless err is an *Error of the given kind.
func wantErr(t *testing.T, err error, kind error) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", kind)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("got %v, want kind %v", err, kind)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not a *wasmbin.Error", err)
	}
	return e
}
