package wasmbin

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"testing"
)

const featuresWAT = `(module
  (type $v (func))
  (type $t (func (param i32)))
  (import "env" "f" (func $f (type $v)))
  (import "env" "g" (global $ig i64))
  (import "env" "m" (memory $im i64 1 10))
  (import "env" "tab" (table $it 1 externref))
  (import "env" "tag" (tag $itag (type $t)))
  (memory $m2 1 2 shared)
  (memory $m3 i64 3)
  (table $t64 i64 2 funcref)
  (table $ti 3 funcref (ref.func $g))
  (tag $tg (param i32))
  (global $a (mut i32) (i32.add (i32.const 1) (i32.mul (i32.const 2) (i32.const 3))))
  (global $b i64 (i64.sub (global.get $ig) (i64.const -5)))
  (global $c (mut v128) (v128.const i32x4 1 2 3 4))
  (global $d funcref (ref.func $g))
  (global $e (mut externref) (ref.null extern))
  (global $ff f32 (f32.const 1.5))
  (global $fd (mut f64) (f64.const -2.25))
  (func $g (export "g") (param i32) (result i32 i64) (local.get 0) (i64.const 1))
  (export "mem" (memory $m3))
  (export "glob" (global $c))
  (export "tag" (tag $tg))
  (export "tab" (table $t64))
  (elem declare func $g)
)`

// TestDecodeFeatures covers memory64, shared memory, multi-memory, table64,
// table initializers, tags, imported globals and every constant-expression
// opcode, assembled by wasmtime's own WAT parser.
func TestDecodeFeatures(t *testing.T) {
	m, err := Decode(wat(t, featuresWAT))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(m.NumImportedFuncs, m.NumImportedGlobals, m.NumImportedMemories, m.NumImportedTables, m.NumImportedTags); got != "1 1 1 1 1" {
		t.Errorf("imported counts %s", got)
	}
	if imp := m.Imports[2]; imp.Kind != ExternMemory || *imp.Memory != (Limits{Min: 1, Max: 10, HasMax: true, Is64: true}) {
		t.Errorf("imported memory %+v", imp)
	}
	if imp := m.Imports[3]; imp.Kind != ExternTable || imp.Table.Elem != ExternRef || imp.Table.Limits.Min != 1 {
		t.Errorf("imported table %+v", imp)
	}
	if imp := m.Imports[4]; imp.Kind != ExternTag || imp.TypeIndex != 1 {
		t.Errorf("imported tag %+v", imp)
	}
	if !m.Memory64() {
		t.Errorf("memory 0 (imported, i64) not reported as 64-bit")
	}
	wantMems := []Limits{{Min: 1, Max: 2, HasMax: true, Shared: true}, {Min: 3, Is64: true}}
	if fmt.Sprint(m.Memories) != fmt.Sprint(wantMems) {
		t.Errorf("memories %+v", m.Memories)
	}
	if l, ok := m.Memory(2); !ok || !l.Is64 || l.Min != 3 {
		t.Errorf("Memory(2) = %+v, %v", l, ok)
	}
	if _, ok := m.Memory(3); ok {
		t.Errorf("Memory(3) exists")
	}
	wantTabs := []Table{{Elem: FuncRef, Limits: Limits{Min: 2, Is64: true}}, {Elem: FuncRef, Limits: Limits{Min: 3}, HasInit: true}}
	if fmt.Sprint(m.Tables) != fmt.Sprint(wantTabs) {
		t.Errorf("tables %+v", m.Tables)
	}
	if len(m.Tags) != 1 || m.Tags[0] != 1 {
		t.Errorf("tags %v", m.Tags)
	}
	wantGlobals := []GlobalType{{I32, true}, {I64, false}, {V128, true}, {FuncRef, false}, {ExternRef, true}, {F32, false}, {F64, true}}
	if fmt.Sprint(m.Globals) != fmt.Sprint(wantGlobals) {
		t.Errorf("globals %v", m.Globals)
	}
	if g, ok := m.Global(0); !ok || g != (GlobalType{I64, false}) {
		t.Errorf("Global(0) = %v %v", g, ok)
	}
	if g, ok := m.Global(3); !ok || g != (GlobalType{V128, true}) {
		t.Errorf("Global(3) = %v %v", g, ok)
	}
	if _, ok := m.Global(8); ok {
		t.Errorf("Global(8) exists")
	}
	if ft, ok := m.FuncType(0); !ok || ft.String() != "() -> ()" {
		t.Errorf("FuncType(0) = %v %v", ft, ok)
	}
	if ft, ok := m.FuncType(1); !ok || ft.String() != "(i32) -> (i32, i64)" {
		t.Errorf("FuncType(1) = %v %v", ft, ok)
	}
	if _, ok := m.FuncType(2); ok {
		t.Errorf("FuncType(2) exists")
	}
	if e, ok := m.Export("tag"); !ok || e.Kind != ExternTag || e.Index != 1 {
		t.Errorf("tag export %+v", e)
	}
	if e, ok := m.Export("tab"); !ok || e.Kind != ExternTable || e.Index != 1 {
		t.Errorf("table export %+v", e)
	}

	// Accessors must also work on a Module assembled by hand (no index).
	hand := &Module{Imports: m.Imports, Types: m.Types, NumImportedFuncs: 1, NumImportedGlobals: 1, NumImportedMemories: 1}
	if g, ok := hand.Global(0); !ok || g.Type != I64 {
		t.Errorf("hand-built Global(0) = %v %v", g, ok)
	}
	if !hand.Memory64() {
		t.Errorf("hand-built Memory64")
	}
}

func TestDecodeMinimal(t *testing.T) {
	m, err := Decode(module())
	if err != nil {
		t.Fatal(err)
	}
	if m.Memory64() || m.Start != nil || len(m.Sections) != 0 {
		t.Errorf("empty module: %+v", m)
	}
	if _, ok := m.FuncType(0); ok {
		t.Errorf("FuncType on empty module")
	}
	if _, ok := m.CustomSection("x"); ok {
		t.Errorf("CustomSection on empty module")
	}
}

func TestCustomSections(t *testing.T) {
	b := module(
		sec(SectionCustom, str("icp:public candid:service"), []byte("service : {}")),
		sec(SectionType, vec(funcTypeVoid)),
		sec(SectionCustom, str("")), // empty name and data are legal
		sec(SectionCustom, str("icp:public candid:service"), []byte("second")),
	)
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := m.CustomSection("icp:public candid:service"); !ok || string(d) != "service : {}" {
		t.Errorf("CustomSection = %q %v", d, ok)
	}
	if all := m.CustomSections("icp:public candid:service"); len(all) != 2 {
		t.Errorf("CustomSections = %q", all)
	}
	if d, ok := m.CustomSection(""); !ok || d == nil || len(d) != 0 {
		t.Errorf("empty custom section = %v %v", d, ok)
	}
	// The module must not alias the input.
	b[len(b)-1] = 'X'
	if string(m.CustomSections("icp:public candid:service")[1]) != "second" {
		t.Errorf("custom section data aliases the input")
	}
}

func TestDecodeSectionOrder(t *testing.T) {
	typ := sec(SectionType, vec(funcTypeVoid))
	fn := sec(SectionFunction, vec(leb(0)))
	code := sec(SectionCode, vec(emptyBody))
	mem := sec(SectionMemory, vec([]byte{0, 1}))
	glob := sec(SectionGlobal, vec([]byte{0x7f, 1, 0x41, 0, 0x0b}))
	tag := sec(SectionTag, vec([]byte{0, 0}))
	elem := sec(SectionElement, vec())
	dc := sec(SectionDataCount, leb(0))
	data := sec(SectionData, vec())
	custom := sec(SectionCustom, str("c"))

	ok := [][]byte{
		module(typ, fn, mem, tag, glob, elem, dc, code, data),
		module(custom, typ, custom, fn, custom, mem, custom, tag, custom, glob, custom, elem, custom, dc, custom, code, custom, data, custom),
		module(dc, data),
	}
	for i, b := range ok {
		if _, err := Decode(b); err != nil {
			t.Errorf("valid order %d: %v", i, err)
		}
	}
	bad := map[string][]byte{
		"duplicate type":        module(typ, typ),
		"function before type":  module(sec(SectionFunction, vec()), typ),
		"tag after global":      module(typ, glob, tag),
		"tag before memory":     module(typ, tag, mem),
		"datacount after code":  module(typ, fn, code, dc),
		"datacount before elem": module(dc, elem),
		"code after data":       module(typ, fn, data, code),
		"duplicate datacount":   module(dc, dc),
	}
	for name, b := range bad {
		_, err := Decode(b)
		e := wantErr(t, err, ErrMalformed)
		if !strings.Contains(e.Msg, "out of order") && !strings.Contains(e.Msg, "duplicate") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestHostile feeds hand-crafted malicious binaries and checks the error kind
// and that the message names the offending section.
func TestHostile(t *testing.T) {
	maxU32 := leb(math.MaxUint32)
	typ := sec(SectionType, vec(funcTypeVoid))
	tests := []struct {
		name    string
		b       []byte
		kind    error
		section string
	}{
		{"empty", nil, ErrTruncated, "header"},
		{"bad magic", []byte("\x00asn\x01\x00\x00\x00"), ErrMalformed, "header"},
		{"elf", []byte("\x7fELF"), ErrMalformed, "header"},
		{"short header", []byte("\x00asm\x01"), ErrTruncated, "header"},
		{"version 2", []byte("\x00asm\x02\x00\x00\x00"), ErrMalformed, "header"},
		{"component", []byte("\x00asm\x0d\x00\x01\x00"), ErrUnsupported, "header"},
		{"unknown section id", module([]byte{14, 0}), ErrMalformed, "module"},
		{"section id 0xff", module([]byte{0xff, 0}), ErrMalformed, "module"},
		{"section size past end", module([]byte{1, 10, 0}), ErrTruncated, "type"},
		{"section size 2^32-1", module(cat([]byte{1}, maxU32)), ErrTruncated, "type"},
		{"section size overlong LEB", module([]byte{1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}), ErrMalformed, "type"},
		{"section size bit 32", module([]byte{1, 0x80, 0x80, 0x80, 0x80, 0x10}), ErrMalformed, "type"},
		{"section size unterminated", module([]byte{1, 0x80, 0x80}), ErrTruncated, "type"},
		{"section trailing bytes", module(sec(SectionType, vec(funcTypeVoid), []byte{0})), ErrMalformed, "type"},
		{"type count 2^32-1", module(sec(SectionType, maxU32)), ErrLimit, "type"},
		{"type count beyond data", module(sec(SectionType, leb(1000))), ErrTruncated, "type"},
		{"type count overlong", module(sec(SectionType, []byte{0x81, 0x80, 0x80, 0x80, 0x80, 0x00})), ErrMalformed, "type"},
		{"gc rec type", module(sec(SectionType, vec([]byte{0x4e, 0, 0}))), ErrUnsupported, "type"},
		{"bad type form", module(sec(SectionType, vec([]byte{0x61, 0, 0}))), ErrMalformed, "type"},
		{"bad valtype", module(sec(SectionType, vec([]byte{0x60, 1, 0x01, 0}))), ErrMalformed, "type"},
		{"typed ref valtype", module(sec(SectionType, vec([]byte{0x60, 1, 0x64, 0x70, 0}))), ErrUnsupported, "type"},
		{"param count 2^32-1", module(sec(SectionType, vec(cat([]byte{0x60}, maxU32)))), ErrLimit, "type"},
		{"param count past end", module(sec(SectionType, vec([]byte{0x60, 100, 0x7f}))), ErrTruncated, "type"},
		{"import count 2^32-1", module(typ, sec(SectionImport, maxU32)), ErrLimit, "import"},
		{"import name length 2^32-1", module(typ, sec(SectionImport, vec(cat(maxU32, []byte("x"))))), ErrLimit, "import"},
		{"import name past end", module(typ, sec(SectionImport, vec(cat(leb(50), []byte("abc"))))), ErrTruncated, "import"},
		{"import name bad utf8", module(typ, sec(SectionImport, vec(cat(str("\xff\xfe"), str("x"), []byte{0, 0})))), ErrMalformed, "import"},
		{"import kind", module(typ, sec(SectionImport, vec(cat(str("a"), str("b"), []byte{7, 0})))), ErrMalformed, "import"},
		{"import func bad type", module(typ, sec(SectionImport, vec(cat(str("a"), str("b"), []byte{0, 1})))), ErrMalformed, "import"},
		{"import global bad mut", module(sec(SectionImport, vec(cat(str("a"), str("b"), []byte{3, 0x7f, 2})))), ErrMalformed, "import"},
		{"function count 2^32-1", module(typ, sec(SectionFunction, maxU32)), ErrLimit, "function"},
		{"function bad type", module(typ, sec(SectionFunction, vec(leb(5)))), ErrMalformed, "function"},
		{"function without code", module(typ, sec(SectionFunction, vec(leb(0)))), ErrMalformed, "module"},
		{"code count mismatch", module(typ, sec(SectionFunction, vec(leb(0))), sec(SectionCode, vec(emptyBody, emptyBody))), ErrMalformed, "code"},
		{"code count 2^32-1", module(typ, sec(SectionFunction, vec(leb(0))), sec(SectionCode, maxU32)), ErrLimit, "code"},
		{"code body past end", module(typ, sec(SectionFunction, vec(leb(0))), sec(SectionCode, vec([]byte{100, 0, 0x0b}))), ErrTruncated, "code"},
		{"code body size 2^32-1", module(typ, sec(SectionFunction, vec(leb(0))), sec(SectionCode, vec(maxU32))), ErrTruncated, "code"},
		{"code body empty", module(typ, sec(SectionFunction, vec(leb(0))), sec(SectionCode, vec([]byte{0, 0x0b}))), ErrMalformed, "code"},
		{"table count 2^32-1", module(sec(SectionTable, maxU32)), ErrLimit, "table"},
		{"table elem i32", module(sec(SectionTable, vec([]byte{0x7f, 0, 1}))), ErrMalformed, "table"},
		{"table shared", module(sec(SectionTable, vec([]byte{0x70, 3, 1, 2}))), ErrUnsupported, "table"},
		{"table bad flags", module(sec(SectionTable, vec([]byte{0x70, 0x10, 1}))), ErrMalformed, "table"},
		{"table init bad reserved", module(sec(SectionTable, vec([]byte{0x40, 1, 0x70, 0, 1, 0xd0, 0x70, 0x0b}))), ErrMalformed, "table"},
		{"table min > max", module(sec(SectionTable, vec([]byte{0x70, 1, 5, 4}))), ErrMalformed, "table"},
		{"memory count 2^32-1", module(sec(SectionMemory, maxU32)), ErrLimit, "memory"},
		{"memory too many", module(sec(SectionMemory, cat(leb(101), bytes.Repeat([]byte{0, 1}, 101)))), ErrLimit, "memory"},
		{"memory custom page size", module(sec(SectionMemory, vec([]byte{0x08, 1, 16}))), ErrUnsupported, "memory"},
		{"memory bad flags", module(sec(SectionMemory, vec([]byte{0x20, 1}))), ErrMalformed, "memory"},
		{"memory32 > 4GiB", module(sec(SectionMemory, vec(cat([]byte{0}, leb(65537))))), ErrMalformed, "memory"},
		{"memory32 min overlong", module(sec(SectionMemory, vec([]byte{0, 0xff, 0xff, 0xff, 0xff, 0x1f}))), ErrMalformed, "memory"},
		{"memory64 > 2^48 pages", module(sec(SectionMemory, vec(cat([]byte{4}, leb(1<<48+1))))), ErrMalformed, "memory"},
		{"memory64 min 11 bytes", module(sec(SectionMemory, vec(cat([]byte{4}, bytes.Repeat([]byte{0x80}, 10), []byte{0})))), ErrMalformed, "memory"},
		{"shared memory without max", module(sec(SectionMemory, vec([]byte{2, 1}))), ErrMalformed, "memory"},
		{"memory min > max", module(sec(SectionMemory, vec([]byte{1, 2, 1}))), ErrMalformed, "memory"},
		{"tag count 2^32-1", module(typ, sec(SectionTag, maxU32)), ErrLimit, "tag"},
		{"tag bad attribute", module(typ, sec(SectionTag, vec([]byte{1, 0}))), ErrMalformed, "tag"},
		{"tag bad type", module(typ, sec(SectionTag, vec([]byte{0, 9}))), ErrMalformed, "tag"},
		{"global count 2^32-1", module(sec(SectionGlobal, maxU32)), ErrLimit, "global"},
		{"global init missing end", module(sec(SectionGlobal, vec([]byte{0x7f, 0, 0x41, 0}))), ErrTruncated, "global"},
		{"global init bad opcode", module(sec(SectionGlobal, vec([]byte{0x7f, 0, 0x20, 0, 0x0b}))), ErrMalformed, "global"},
		{"global init overlong i32.const", module(sec(SectionGlobal, vec([]byte{0x7f, 0, 0x41, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0x0b}))), ErrMalformed, "global"},
		{"global init i32.const out of range", module(sec(SectionGlobal, vec([]byte{0x7f, 0, 0x41, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x0b}))), ErrMalformed, "global"},
		{"global init f64 truncated", module(sec(SectionGlobal, vec([]byte{0x7c, 0, 0x44, 1, 2, 3}))), ErrTruncated, "global"},
		{"global init simd non-const", module(sec(SectionGlobal, vec([]byte{0x7b, 0, 0xfd, 0x0d, 0x0b}))), ErrMalformed, "global"},
		{"global init ref.null typed", module(sec(SectionGlobal, vec([]byte{0x70, 0, 0xd0, 0x00, 0x0b}))), ErrUnsupported, "global"},
		{"export count 2^32-1", module(sec(SectionExport, maxU32)), ErrLimit, "export"},
		{"export name length 2^32-1", module(sec(SectionExport, vec(cat(maxU32, []byte{0, 0})))), ErrLimit, "export"},
		{"export bad kind", module(sec(SectionMemory, vec([]byte{0, 1})), sec(SectionExport, vec(cat(str("m"), []byte{9, 0})))), ErrMalformed, "export"},
		{"export func out of range", module(sec(SectionExport, vec(cat(str("f"), []byte{0, 0})))), ErrMalformed, "export"},
		{"export memory out of range", module(sec(SectionMemory, vec([]byte{0, 1})), sec(SectionExport, vec(cat(str("m"), []byte{2, 1})))), ErrMalformed, "export"},
		{"export duplicate name", module(sec(SectionMemory, vec([]byte{0, 1})), sec(SectionExport, vec(cat(str("m"), []byte{2, 0}), cat(str("m"), []byte{2, 0})))), ErrMalformed, "export"},
		{"start out of range", module(typ, sec(SectionStart, leb(0))), ErrMalformed, "start"},
		{"start 2^32-1", module(typ, sec(SectionStart, maxU32)), ErrMalformed, "start"},
		{"start wrong type", module(sec(SectionType, vec(funcTypeI32)), sec(SectionFunction, vec(leb(0))), sec(SectionStart, leb(0)), sec(SectionCode, vec([]byte{4, 0, 0x20, 0, 0x0b}))), ErrMalformed, "start"},
		{"start trailing", module(typ, sec(SectionFunction, vec(leb(0))), sec(SectionStart, leb(0), []byte{0}), sec(SectionCode, vec(emptyBody))), ErrMalformed, "start"},
		{"datacount mismatch", module(sec(SectionDataCount, leb(2)), sec(SectionData, vec([]byte{1, 0}))), ErrMalformed, "module"},
		{"datacount without data", module(sec(SectionDataCount, leb(1))), ErrMalformed, "module"},
		{"datacount overlong", module(sec(SectionDataCount, []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0})), ErrMalformed, "datacount"},
		{"custom name length 2^32-1", module(sec(SectionCustom, maxU32)), ErrLimit, "custom"},
		{"custom name length past end", module(sec(SectionCustom, leb(1000), []byte("abc"))), ErrTruncated, "custom"},
		{"custom name bad utf8", module(sec(SectionCustom, str("\xc0\x80"))), ErrMalformed, "custom"},
		{"custom empty section", module([]byte{0, 0}), ErrTruncated, "custom"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			before := ms.TotalAlloc
			m, err := Decode(tc.b)
			runtime.ReadMemStats(&ms)
			if m != nil {
				t.Errorf("got a module alongside an error")
			}
			e := wantErr(t, err, tc.kind)
			if e.Section != tc.section {
				t.Errorf("section %q, want %q (%v)", e.Section, tc.section, err)
			}
			if !strings.Contains(err.Error(), tc.section) {
				t.Errorf("message %q does not name section %q", err, tc.section)
			}
			if e.Offset > len(tc.b) {
				t.Errorf("offset %d beyond input length %d", e.Offset, len(tc.b))
			}
			// A tiny hostile input must not cause a large allocation.
			if alloc := ms.TotalAlloc - before; alloc > 64<<10 {
				t.Errorf("allocated %d bytes for a %d-byte input", alloc, len(tc.b))
			}
			// Instrument must reject it the same way.
			if _, _, err2 := Instrument(tc.b); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("Instrument: %v, Decode: %v", err2, err)
			}
		})
	}
}

func TestErrorMessage(t *testing.T) {
	_, err := Decode(module(sec(SectionType, vec(funcTypeVoid)), sec(SectionImport, vec(cat(str("ic0"), leb(9), []byte("x"))))))
	want := "wasmbin: import section at offset 21 (0x15): unexpected end of data: import name: need 9 bytes, 1 remain"
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
	var e *Error
	if !errors.As(err, &e) || e.Offset != 21 {
		t.Errorf("offset %+v", e)
	}
}

func TestConfigLimits(t *testing.T) {
	b := module(sec(SectionGlobal, vec(
		[]byte{0x7f, 0, 0x41, 0, 0x0b},
		[]byte{0x7f, 0, 0x41, 0, 0x0b},
	)), sec(SectionCustom, str("a")), sec(SectionCustom, str("b")))
	if _, err := (Config{}).Decode(b); err != nil {
		t.Fatalf("zero Config must mean defaults: %v", err)
	}
	cases := []Config{
		{MaxGlobals: 1},
		{MaxCustomSections: 1},
		{MaxModuleSize: len(b) - 1},
		{MaxNameLen: 0}, // default: passes; checked below with a long name
	}
	for i, c := range cases[:3] {
		if _, err := c.Decode(b); !errors.Is(err, ErrLimit) {
			t.Errorf("case %d: %v, want ErrLimit", i, err)
		}
	}
	long := module(sec(SectionCustom, str(strings.Repeat("n", 101))))
	if _, err := (Config{MaxNameLen: 100}).Decode(long); !errors.Is(err, ErrLimit) {
		t.Errorf("long name: %v", err)
	}
	// Imports count toward the index-space limit.
	imp := module(sec(SectionImport, vec(cat(str("a"), str("b"), []byte{3, 0x7f, 0}))),
		sec(SectionGlobal, vec([]byte{0x7f, 0, 0x41, 0, 0x0b})))
	if _, err := (Config{MaxGlobals: 1}).Decode(imp); !errors.Is(err, ErrLimit) {
		t.Errorf("imported+defined globals: %v", err)
	}
	if _, err := (Config{MaxGlobals: 2}).Decode(imp); err != nil {
		t.Errorf("imported+defined globals within limit: %v", err)
	}
}

// TestTruncatedRealModule decodes every prefix of a real canister: only
// prefixes ending on a section boundary may decode, all others must fail,
// and nothing may panic.
func TestTruncatedRealModule(t *testing.T) {
	b := readFile(t, realModules(t)[0])
	full, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	// A prefix ending on a section boundary is itself a module; it is valid
	// unless it declares functions without code or a DataCount without data.
	okAt := map[int]bool{headerSize: true} // the bare header is an empty module
	funcs, code, dc, data := false, false, false, false
	for _, s := range full.Sections {
		switch s.ID {
		case SectionFunction:
			funcs = true
		case SectionCode:
			code = true
		case SectionDataCount:
			dc = true
		case SectionData:
			data = true
		}
		okAt[s.End] = (!funcs || code) && (!dc || data)
	}
	step := 1
	if testing.Short() {
		step = 97
	}
	for n := 0; n < len(b); n += step {
		m, err := Decode(b[:n])
		if (err == nil) != okAt[n] {
			t.Fatalf("prefix of %d bytes: err=%v, want success=%v", n, err, okAt[n])
		}
		if err == nil && n > headerSize && m.Sections[len(m.Sections)-1].End != n {
			t.Fatalf("prefix %d: last section ends at %d", n, m.Sections[len(m.Sections)-1].End)
		}
	}
}

// TestCorruptRealModule overwrites each byte of the structural sections of a
// real module (everything before the code section) with hostile values.
// Whatever the decoder accepts must instrument into something that decodes.
func TestCorruptRealModule(t *testing.T) {
	b := readFile(t, realModules(t)[0])
	full, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	limit := 0
	for _, s := range full.Sections {
		if s.ID == SectionCode {
			limit = s.Offset + 8 // include the code header and first body size
		}
	}
	mut := make([]byte, len(b))
	accepted := 0
	for i := 0; i < limit; i++ {
		for _, v := range []byte{0x00, 0xff, 0x80, 0x7f, b[i] + 1, b[i] - 1, b[i] ^ 0x40} {
			copy(mut, b)
			mut[i] = v
			out, info, err := Instrument(mut)
			if err != nil {
				continue
			}
			accepted++
			if _, err := Decode(out); err != nil {
				t.Fatalf("byte %d=%#x: instrumented output does not decode: %v", i, v, err)
			}
			if info.Module == nil {
				t.Fatalf("no module in info")
			}
		}
	}
	t.Logf("%d of %d single-byte corruptions accepted", accepted, limit*7)
}
