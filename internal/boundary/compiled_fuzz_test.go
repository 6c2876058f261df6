package boundary

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/wasmbin"
)

// customSection appends a custom section (name, data) to a module.
func customSection(wasm []byte, name string, data []byte) []byte {
	uleb := func(b []byte, v uint64) []byte {
		for {
			c := byte(v & 0x7f)
			v >>= 7
			if v != 0 {
				c |= 0x80
			}
			b = append(b, c)
			if v == 0 {
				return b
			}
		}
	}
	content := append(uleb(nil, uint64(len(name))), name...)
	content = append(content, data...)
	out := append(append([]byte(nil), wasm...), 0)
	out = uleb(out, uint64(len(content)))
	return append(out, content...)
}

// FuzzCompiledHonest: hostile Wasm through engine.Validate (the compiler
// sandbox's checks), without panicking; and whatever it accepts, the
// answer an honest compiler sends for it passes the host's checks
// (DecodeCompiled, ValidateCompiled) unchanged, so that no module the
// sandbox accepts is turned into a protocol violation (a killed compiler,
// an install failing as if the sandbox lied).
func FuzzCompiledHonest(f *testing.F) {
	for _, w := range []string{
		`(module)`,
		`(module (memory 1) (global (mut i64) (i64.const 3)) (global f32 (f32.const 1))
		  (func (export "canister_update a")) (func (export "canister_query b")) (func (export "canister_init")))`,
		`(module (import "ic0" "msg_reply" (func)) (memory i64 1) (table 1 funcref) (global funcref (ref.null func))
		  (func $f (export "canister_composite_query c") (call 0)) (start $f))`,
	} {
		b, err := wasmtime.Wat2Wasm(w)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		b = customSection(b, "icp:public candid:service", []byte("service : { a : () -> () }"))
		b = customSection(b, "icp:private enhanced-orthogonal-persistence", nil)
		f.Add(customSection(b, "icp:public x", []byte{0xff, 0}))
	}
	lim := engine.DefaultModuleLimits()
	f.Fuzz(func(t *testing.T, wasm []byte) {
		m, info, err := engine.Validate(wasm, lim)
		if err != nil {
			return
		}
		// The global types engine.Module.GlobalTypes reports: every
		// defined global, 0 for those not persisted.
		types := make([]state.GlobalType, len(m.Globals))
		for i, g := range m.Globals {
			switch g.Type {
			case wasmbin.I32:
				types[i] = state.GlobalI32
			case wasmbin.I64:
				types[i] = state.GlobalI64
			case wasmbin.F32:
				types[i] = state.GlobalF32
			case wasmbin.F64:
				types[i] = state.GlobalF64
			}
		}
		sent := &Compiled{Info: info, GlobalTypes: types, Artifact: []byte("artifact")}
		got, err := DecodeCompiled(EncodeCompiled(sent), lim)
		if err != nil {
			t.Fatalf("an honest answer does not decode: %v", err)
		}
		if err := ValidateCompiled(lim, len(wasm), 1<<20, got); err != nil {
			t.Fatalf("an honest answer for a module engine.Validate accepts is refused: %v", err)
		}
		got.Info.Hash, got.Info.Size = info.Hash, info.Size // set by the host, not sent
		if !reflect.DeepEqual(got.Info.Methods, info.Methods) || len(got.Info.Metadata) != len(info.Metadata) ||
			!bytes.Equal(EncodeCompiled(got), EncodeCompiled(sent)) {
			t.Fatalf("the decoded answer differs:\n%+v\n%+v", got.Info, info)
		}
	})
}
