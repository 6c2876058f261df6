package candid

import (
	"encoding/hex"
	"math/big"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/pkg/principal"
)

func mustTypes(t *testing.T, s string) []*Type {
	t.Helper()
	ts, err := ParseTypes(s)
	if err != nil {
		t.Fatalf("ParseTypes(%q): %v", s, err)
	}
	return ts
}

func bigInt(s string) *big.Int {
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		panic("bad number " + s)
	}
	return n
}

func TestEncodeKnown(t *testing.T) {
	tests := []struct {
		name  string
		types string
		vals  []Value
		hex   string  // after "DIDL"
		want  []Value // the values decoded back, if not vals
	}{
		{"empty", "()", nil, "0000", nil},
		{"nat and text", "(nat, text)", []Value{NatOf(42), Text("hi")}, "00027d712a026869", nil},
		{"bool", "(bool)", []Value{Bool(true)}, "00017e01", nil},
		{"null", "(null)", []Value{Null{}}, "00017f", nil},
		{"int -1", "(int)", []Value{IntOf(-1)}, "00017c7f", nil},
		{"int -64", "(int)", []Value{IntOf(-64)}, "00017c40", nil},
		{"int 64", "(int)", []Value{IntOf(64)}, "00017cc000", nil},
		{"int -65", "(int)", []Value{IntOf(-65)}, "00017cbf7f", nil},
		{"nat 128", "(nat)", []Value{NatOf(128)}, "00017d8001", nil},
		{"big nat", "(nat)", []Value{Nat{bigInt("60000000000000000")}}, "00017d808098f4e9b5ca6a", nil},
		{"big int", "(int)", []Value{Int{bigInt("60000000000000000")}}, "00017c808098f4e9b5caea00", nil},
		{"big negative int", "(int)", []Value{Int{bigInt("-60000000000000000")}}, "00017c8080e88b96cab5957f", nil},
		{"nat at int", "(int)", []Value{NatOf(1)}, "00017c01", []Value{IntOf(1)}},
		{"fixed", "(nat16, int32, float64)", []Value{Nat16(256), Int32(-1), Float64(0.5)}, "00037a7572" + "0001" + "ffffffff" + "000000000000e03f", nil},
		{"float32", "(float32)", []Value{Float32(3)}, "00017300004040", nil},
		{"reserved ignores value", "(reserved)", []Value{Text("anything")}, "000170", []Value{Reserved{}}},
		{"opt none", "(opt nat)", []Value{Opt{}}, "016e7d010000", nil},
		{"opt null literal", "(opt nat)", []Value{Null{}}, "016e7d010000", []Value{Opt{}}},
		{"opt some", "(opt nat)", []Value{Opt{NatOf(1)}}, "016e7d01000101", nil},
		{"blob", "(blob)", []Value{Blob{1, 2}}, "016d7b0100020102", nil},
		{"vec nat8 as Vec", "(vec nat8)", []Value{Vec{Nat8(1), Nat8(2)}}, "016d7b0100020102", nil},
		{"record named", "(record { foo : int; bar : bool })", []Value{Record{{Hash("bar"), Bool(true)}, {Hash("foo"), IntOf(42)}}},
			"016c02d3e3aa027e868eb7027c0100012a", nil},
		{"record unsorted value", "(record { foo : int; bar : bool })", []Value{Record{{Hash("foo"), IntOf(42)}, {Hash("bar"), Bool(true)}}},
			"016c02d3e3aa027e868eb7027c0100012a", []Value{Record{{Hash("bar"), Bool(true)}, {Hash("foo"), IntOf(42)}}}},
		{"variant", "(variant { Ok : text; Err : text })", []Value{Variant{Hash("Ok"), Text("good")}},
			"016b02bc8a0171c5fed20171010000" + "04" + "676f6f64", nil},
		{"principal", "(principal)", []Value{Principal{principal.Anonymous()}}, "0001680101" + "04", nil},
		{"func", "(func () -> ())", []Value{FuncRef{principal.Management(), "m"}}, "016a000000010001010001" + "6d", nil},
		{"service", "(service {})", []Value{ServiceRef{principal.Management()}}, "016900010001" + "00", nil},
		{"recursive list", "(type List = opt record { head : int; tail : List }; (List))",
			[]Value{Opt{Record{{Hash("head"), IntOf(1)}, {Hash("tail"), Opt{}}}}},
			"026e016c02a0d2aca8047c90eddae704000100010100", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.types
			if strings.HasPrefix(src, "(type") {
				src = src[1 : len(src)-1]
			}
			types := mustTypes(t, src)
			b, err := EncodeArgs(Args{Types: types, Values: tt.vals})
			if err != nil {
				t.Fatalf("EncodeArgs: %v", err)
			}
			if string(b[:4]) != "DIDL" || hex.EncodeToString(b[4:]) != tt.hex {
				t.Errorf("EncodeArgs = DIDL%x, want DIDL%s", b[4:], tt.hex)
			}
			// And the encoding decodes back to the values.
			got, err := DecodeAs(b, types)
			if err != nil {
				t.Fatalf("DecodeAs: %v", err)
			}
			want := tt.want
			if want == nil {
				want = tt.vals
			}
			for i, v := range want {
				if !Equal(got.Values[i], v) {
					t.Errorf("value %d decodes to %s, want %s", i, FormatValue(got.Values[i], types[i]), FormatValue(v, types[i]))
				}
			}
		})
	}
}

func TestEncodeErrors(t *testing.T) {
	nat := Prim(KindNat)
	tests := []struct {
		name string
		a    Args
		want string
	}{
		{"count mismatch", Args{Types: []*Type{nat}}, "1 types for 0 values"},
		{"nil type", Args{Types: []*Type{nil}, Values: []Value{Null{}}}, "nil type"},
		{"wrong value", Args{Types: []*Type{nat}, Values: []Value{Text("x")}}, "does not match"},
		{"negative nat", Args{Types: []*Type{nat}, Values: []Value{Nat{big.NewInt(-1)}}}, "negative nat"},
		{"empty", Args{Types: []*Type{Prim(KindEmpty)}, Values: []Value{Null{}}}, "empty"},
		{"invalid utf8", Args{Types: []*Type{Prim(KindText)}, Values: []Value{Text("\xff")}}, "UTF-8"},
		{"missing field", Args{Types: []*Type{RecordOf(NamedField("a", nat), NamedField("b", nat))}, Values: []Value{Record{{Hash("a"), NatOf(1)}}}}, "fields"},
		{"wrong field", Args{Types: []*Type{RecordOf(NamedField("a", nat))}, Values: []Value{Record{{Hash("b"), NatOf(1)}}}}, "lacks field a"},
		{"unknown case", Args{Types: []*Type{VariantOf(NamedField("a", nat))}, Values: []Value{Variant{Hash("b"), NatOf(1)}}}, "not in its type"},
		{"duplicate field", Args{Types: []*Type{{Kind: KindRecord, Fields: []Field{{ID: 1, Type: nat}, {ID: 1, Type: nat}}}}, Values: []Value{Record{}}}, "duplicate field"},
		{"unsorted field", Args{Types: []*Type{{Kind: KindRecord, Fields: []Field{{ID: 2, Type: nat}, {ID: 1, Type: nat}}}}, Values: []Value{Record{}}}, "not sorted"},
		{"method not func", Args{Types: []*Type{{Kind: KindService, Methods: []Method{{"m", nat}}}}, Values: []Value{ServiceRef{}}}, "func type"},
		{"nil opt elem", Args{Types: []*Type{{Kind: KindOpt}}, Values: []Value{Opt{}}}, "nil type"},
		{"bad mode", Args{Types: []*Type{FuncOf(nil, nil, Mode(9))}, Values: []Value{FuncRef{}}}, "annotation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := EncodeArgs(tt.a)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("EncodeArgs error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestEncodeCyclicValue(t *testing.T) {
	typ := &Type{Kind: KindVec}
	typ.Elem = typ // type Vec = vec Vec
	v := make(Vec, 1)
	v[0] = v
	if _, err := EncodeArgs(Args{Types: []*Type{typ}, Values: []Value{v}}); err == nil {
		t.Fatal("EncodeArgs of a cyclic value succeeded")
	}
}

func TestLEB128(t *testing.T) {
	for _, s := range []string{"0", "1", "63", "64", "127", "128", "-1", "-64", "-65", "-128", "9223372036854775807",
		"-9223372036854775808", "9223372036854775808", "-9223372036854775809", "18446744073709551616",
		"340282366920938463463374607431768211455", "-340282366920938463463374607431768211456"} {
		n := bigInt(s)
		b := appendBigSleb(nil, n)
		r := reader{buf: b, state: &state{budget: 100, maxDepth: 10}}
		v, err := r.int()
		if err != nil || v.(Int).Cmp(n) != 0 || r.pos != len(b) {
			t.Errorf("sleb round trip of %s: got %v, %v", s, v, err)
		}
		if n.Sign() >= 0 {
			b := appendBigUleb(nil, n)
			r := reader{buf: b, state: &state{budget: 100, maxDepth: 10}}
			v, err := r.nat()
			if err != nil || v.(Nat).Cmp(n) != 0 || r.pos != len(b) {
				t.Errorf("uleb round trip of %s: got %v, %v", s, v, err)
			}
		}
	}
	// uleb must reject numbers over 64 bits.
	r := reader{buf: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}}
	if _, err := r.uleb(); err == nil {
		t.Error("uleb accepted a 65-bit number")
	}
	r = reader{buf: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}}
	if n, err := r.uleb(); err != nil || n != 1<<64-1 {
		t.Errorf("uleb(max) = %d, %v", n, err)
	}
	r = reader{buf: []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}}
	if n, err := r.uleb(); err != nil || n != 0 {
		t.Errorf("uleb(overlong 0) = %d, %v", n, err)
	}
}
