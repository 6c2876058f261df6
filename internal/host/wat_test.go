package host

import (
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

func mustWat(t testing.TB, src string) []byte {
	t.Helper()
	b, err := wasmtime.Wat2Wasm(src)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
