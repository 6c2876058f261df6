package candid

import (
	"errors"
	"math"
	"math/big"
	"strings"
	"testing"
)

func TestParseArgsInferred(t *testing.T) {
	tests := []struct {
		in, types, out string
	}{
		{`()`, `()`, `()`},
		{`(42)`, `(int)`, `(42 : int)`},
		{`(42 : nat, "hi")`, `(nat, text)`, `(42 : nat, "hi")`},
		{`(1_000_000 : nat)`, `(nat)`, `(1_000_000 : nat)`},
		{`(0xff : nat16, -0x10)`, `(nat16, int)`, `(255 : nat16, -16 : int)`},
		{`(+5 : int8)`, `(int8)`, `(5 : int8)`},
		{`(1.5, 3. : float32, 1e3)`, `(float64, float32, float64)`, `(1.5 : float64, 3.0 : float32, 1000.0 : float64)`},
		{`(3 : float64)`, `(float64)`, `(3.0 : float64)`},
		{`(nan : float64, -inf : float32)`, `(float64, float32)`, `(nan : float64, -inf : float32)`},
		{`(record { name = "x"; age = 3 : nat8 })`, `(record { name : text; age : nat8 })`, `(record { age = 3 : nat8; name = "x" })`},
		{`(record { 1 : nat; "a" })`, `(record { nat; text })`, `(record { 1 : nat; "a" })`},
		{`(record { 5 = true; false })`, `(record { 5 : bool; 6 : bool })`, `(record { 5 = true; 6 = false })`},
		{`(record { "quoted name" = 1 : nat8 })`, `(record { "quoted name" : nat8 })`, `(record { "quoted name" = 1 : nat8 })`},
		{`(variant { circle = 1.5 })`, `(variant { circle : float64 })`, `(variant { circle = 1.5 : float64 })`},
		{`(variant { none })`, `(variant { none })`, `(variant { none })`},
		{`(variant { 3 })`, `(variant { 3 })`, `(variant { 3 })`},
		{`(opt vec { 1; 2 })`, `(opt vec int)`, `(opt vec { 1 : int; 2 : int })`},
		{`(opt (5 : nat))`, `(opt nat)`, `(opt (5 : nat))`},
		{`(vec { null; opt 1 })`, `(vec opt int)`, `(vec { null; opt (1 : int) })`},
		{`(vec { variant { a }; variant { b = 1 : nat8 } })`, `(vec variant { a; b : nat8 })`, `(vec { variant { a }; variant { b = 1 : nat8 } })`},
		{`(vec { 1 : nat8; 2 })`, `(blob)`, `(blob "\01\02")`},
		{`(vec {})`, `(vec empty)`, `(vec {})`},
		{`(blob "\00\ff")`, `(blob)`, `(blob "\00\ff")`},
		{`(blob "hello")`, `(blob)`, `(blob "hello")`},
		{`(principal "aaaaa-aa", principal "2vxsx-fae")`, `(principal, principal)`, `(principal "aaaaa-aa", principal "2vxsx-fae")`},
		{`(service "aaaaa-aa", func "aaaaa-aa".m, func "aaaaa-aa"."a b")`, `(service {}, func () -> (), func () -> ())`,
			`(service "aaaaa-aa", func "aaaaa-aa".m, func "aaaaa-aa"."a b")`},
		{`(null, true, false)`, `(null, bool, bool)`, `(null, true, false)`},
		{`(null : reserved, null : opt nat)`, `(reserved, opt nat)`, `(null : reserved, null)`},
		{`("\u{2603}\n\t\"\\\'")`, `(text)`, `("☃\n\t\"\\'")`},
		{`("a", )`, `(text)`, `("a")`},
		{"( // comment\n 1 /* nested /* comment */ */ )", `(int)`, `(1 : int)`},
		{`(((5 : nat)))`, `(nat)`, `(5 : nat)`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			a, err := ParseArgs(tt.in)
			if err != nil {
				t.Fatalf("ParseArgs: %v", err)
			}
			if got := a.String(); got != tt.out {
				t.Errorf("String() = %s, want %s", got, tt.out)
			}
			want := mustTypes(t, tt.types)
			if len(want) != len(a.Types) {
				t.Fatalf("types = %v, want %v", a.Types, want)
			}
			for i := range want {
				if a.Types[i].String() != want[i].String() {
					t.Errorf("type %d = %s, want %s", i, a.Types[i], want[i])
				}
			}
			// The output parses back to the same values.
			b, err := ParseArgsTyped(a.String(), a.Types)
			if err != nil || !equalValues(a.Values, b.Values) {
				t.Errorf("reparse: %s, %v", b, err)
			}
		})
	}
}

func TestParseArgsTyped(t *testing.T) {
	tests := []struct {
		in, types, out string
	}{
		{`(42)`, `(nat8)`, `(42 : nat8)`},
		{`(42, -1, 7)`, `(nat, int, float32)`, `(42 : nat, -1 : int, 7.0 : float32)`},
		{`(18446744073709551615)`, `(nat64)`, `(18_446_744_073_709_551_615 : nat64)`},
		{`(-128, 127)`, `(int8, int8)`, `(-128 : int8, 127 : int8)`},
		{`(5 : nat)`, `(int)`, `(5 : int)`},
		{`()`, `(opt nat, null, reserved)`, `(null, null, null : reserved)`},
		{`(record { name = "x"; extra = 1 })`, `(record { name : text; age : opt nat8 })`, `(record { age = null; name = "x" })`},
		{`(vec { 1; 2 })`, `(blob)`, `(blob "\01\02")`},
		{`(vec { 1; 2 })`, `(vec nat16)`, `(vec { 1 : nat16; 2 : nat16 })`},
		{`(opt opt null)`, `(opt opt opt bool)`, `(opt opt null)`},
		{`(variant { ok = "x" })`, `(variant { ok : text; err : text })`, `(variant { ok = "x" })`},
		{`("x")`, `(reserved)`, `(null : reserved)`},
		{`(service "aaaaa-aa")`, `(service { m : () -> () })`, `(service "aaaaa-aa")`},
		{`(opt record { head = 1; tail = null })`, `(List)`, `(opt record { head = 1 : int; tail = null })`},
	}
	for _, tt := range tests {
		t.Run(tt.in+tt.types, func(t *testing.T) {
			types := mustTypes(t, "type List = opt record { head : int; tail : List };"+tt.types)
			a, err := ParseArgsTyped(tt.in, types)
			if err != nil {
				t.Fatalf("ParseArgsTyped: %v", err)
			}
			if got := a.String(); got != tt.out {
				t.Errorf("String() = %s, want %s", got, tt.out)
			}
		})
	}
}

func TestParseArgsErrors(t *testing.T) {
	tests := []struct {
		in, types, want string
	}{
		{`(`, ``, "expected a value"},
		{`(1`, ``, "expected ')'"},
		{`(1) x`, ``, "expected end of input"},
		{`42`, ``, "expected '('"},
		{`("abc)`, ``, "unclosed text"},
		{`("\q")`, ``, "unknown escape"},
		{`("\u{d800}")`, ``, "Unicode scalar value"},
		{`("\u{2603")`, ``, "unclosed"},
		{`("\ff")`, ``, "not valid UTF-8"},
		{`(principal "abc")`, ``, "principal"},
		{`(principal "aaaaa-ab")`, ``, "principal"},
		{`(record { a = 1; a = 2 })`, ``, "duplicate record field"},
		{`(variant {})`, ``, "exactly one case"},
		{`(variant { a; b })`, ``, "expected '}'"},
		{`(1 : nat8 : nat)`, ``, "expected ')'"},
		{`(1 : foo)`, ``, "undefined type"},
		{`(-1 : nat)`, ``, "negative"},
		{`(256 : nat8)`, ``, "out of the range"},
		{`(1.5 : int)`, ``, "cannot be of type int"},
		{`(vec { 1; "a" })`, ``, "different types"},
		{`(12abc)`, ``, "malformed number"},
		{`(0x)`, ``, "malformed hex"},
		{`(record { 4294967296 = 1 })`, ``, "32-bit"},
		{`(/* unclosed)`, ``, "unclosed comment"},
		{`(@)`, ``, "unexpected character"},
		{`(42)`, `(opt nat)`, "cannot be of type opt nat"},
		{`(1, 2)`, `(nat)`, "2 arguments given"},
		{`()`, `(nat)`, "missing argument"},
		{`(record {})`, `(record { a : nat })`, "lacks field a"},
		{`(variant { c })`, `(variant { a; b })`, "not in type"},
		{`(principal "aaaaa-aa")`, `(service {})`, "cannot be of type service"},
		{`(null)`, `(empty)`, "cannot be of type empty"},
		{`(-1)`, `(nat)`, "negative"},
		{`(1 : nat8)`, `(nat)`, "type mismatch"},
		{`(` + strings.Repeat("opt ", 3000) + `null)`, ``, "nesting deeper"},
	}
	for _, tt := range tests {
		t.Run(tt.in+tt.types, func(t *testing.T) {
			var err error
			if tt.types == "" {
				_, err = ParseArgs(tt.in)
			} else {
				_, err = ParseArgsTyped(tt.in, mustTypes(t, tt.types))
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestSyntaxErrorPosition(t *testing.T) {
	_, err := ParseArgs("(1,\n  2,\n  @)")
	var se *SyntaxError
	if !errors.As(err, &se) {
		t.Fatalf("error %v is not a *SyntaxError", err)
	}
	if se.Line != 3 || se.Col != 3 {
		t.Errorf("position = %d:%d, want 3:3", se.Line, se.Col)
	}
}

func TestFormatValue(t *testing.T) {
	person := mustTypes(t, "(record { name : text; age : nat8 })")[0]
	tests := []struct {
		v    Value
		t    *Type
		want string
	}{
		{Record{{Hash("age"), Nat8(3)}, {Hash("name"), Text("x")}}, person, `record { age = 3 : nat8; name = "x" }`},
		{Record{{Hash("age"), Nat8(3)}, {Hash("name"), Text("x")}}, nil, `record { 4_846_783 = 3 : nat8; 1_224_700_491 = "x" }`},
		{Record{{0, NatOf(1)}, {1, Text("a")}}, nil, `record { 1 : nat; "a" }`},
		{Record{}, nil, `record {}`},
		{Variant{5, Null{}}, nil, `variant { 5 }`},
		{Blob("a\"b"), nil, `blob "a\22b"`},
		{Blob{0, 1}, nil, `blob "\00\01"`},
		{Vec{}, BlobType(), `blob ""`},
		{Vec{}, nil, `vec {}`},
		{Opt{Opt{Null{}}}, nil, `opt opt null`},
		{Opt{IntOf(-1)}, nil, `opt (-1 : int)`},
		{Int64(-1234567), nil, `-1_234_567 : int64`},
		{Nat{nil}, nil, `0 : nat`},
		{Float32(0.1), nil, `0.1 : float32`},
		{Float64(0), nil, `0.0 : float64`},
		{Float64(math.Copysign(0, -1)), nil, `-0.0 : float64`},
		{Text("tab\there\x01"), nil, `"tab\there\u{1}"`},
		{Text("\u202e\u009b\u0085\u2028\u2029\u200b\ufeff\U000e0001é"), nil, `"\u{202e}\u{9b}\u{85}\u{2028}\u{2029}\u{200b}\u{feff}\u{e0001}é"`},
		{Variant{Hash("a\u202eb"), Null{}}, VariantOf(NamedField("a\u202eb", Prim(KindNull))), `variant { "a\u{202e}b" }`},
		{FuncRef{Method: "m\u2028"}, nil, `func "aaaaa-aa"."m\u{2028}"`},
		{FuncRef{Method: "query"}, nil, `func "aaaaa-aa"."query"`},
		{Reserved{}, nil, `null : reserved`},
	}
	for _, tt := range tests {
		if got := FormatValue(tt.v, tt.t); got != tt.want {
			t.Errorf("FormatValue(%#v) = %s, want %s", tt.v, got, tt.want)
		}
	}
}

// Format stops before its limit, where a field name repeated for each
// element of a vec would take the text far beyond the size of the message;
// what it prints is the start of String's text.
func TestFormatLimit(t *testing.T) {
	name := strings.Repeat("n", 1000)
	typ := VecOf(RecordOf(NamedField(name, Prim(KindNull))))
	vec := make(Vec, 1000)
	for i := range vec {
		vec[i] = Record{{Hash(name), Null{}}}
	}
	a := Args{Types: []*Type{typ}, Values: []Value{vec}}
	full := a.String()
	for _, limit := range []int{0, 1, 500, 10_000, len(full) - 1} {
		text, complete := a.Format(limit)
		if complete || len(text) > limit || !strings.HasPrefix(full, text) {
			t.Fatalf("Format(%d) = %d bytes, complete %v, a prefix of String: %v", limit, len(text), complete, strings.HasPrefix(full, text))
		}
	}
	if text, complete := a.Format(len(full)); !complete || text != full {
		t.Fatalf("Format(len(String())) cut the text: %d of %d bytes", len(text), len(full))
	}
}

// A nat or int beyond 4 KiB prints in hex, which takes time in proportion
// to its size (decimal took 9.5 s for a 2 MiB nat), and parses back.
func TestFormatLargeNumbersInHex(t *testing.T) {
	n := new(big.Int).Lsh(big.NewInt(1), 40_000)
	n.Add(n, big.NewInt(0xabc))
	neg := new(big.Int).Neg(n)
	a := Args{Types: []*Type{Prim(KindNat), Prim(KindInt), Prim(KindInt)}, Values: []Value{Nat{n}, Int{neg}, IntOf(-1234)}}
	text := a.String()
	want := "(0x1" + strings.Repeat("0", 9997) + "abc : nat, -0x1" + strings.Repeat("0", 9997) + "abc : int, -1_234 : int)"
	if text != want {
		t.Fatalf("printed %.60s…", text)
	}
	back, err := ParseArgs(text)
	if err != nil {
		t.Fatal(err)
	}
	if back.String() != text {
		t.Fatalf("%.60s… parses back as %.60s…", text, back.String())
	}
}
