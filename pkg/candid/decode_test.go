package candid

import (
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
)

func TestDecodeWireTypes(t *testing.T) {
	// record { foo : int; bar : bool } = record { foo = 42; bar = true }
	b := []byte("DIDL\x01\x6c\x02\xd3\xe3\xaa\x02\x7e\x86\x8e\xb7\x02\x7c\x01\x00\x01\x2a")
	a, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.String(); got != "(record { 4_895_187 = true; 5_097_222 = 42 : int })" {
		t.Errorf("Decode = %s", got)
	}
	if got := a.Types[0].String(); got != "record { 4895187 : bool; 5097222 : int }" {
		t.Errorf("wire type = %s", got)
	}
	want := mustTypes(t, "(record { foo : int; bar : bool })")
	a, err = DecodeAs(b, want)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.String(); got != "(record { bar = true; foo = 42 : int })" {
		t.Errorf("DecodeAs = %s", got)
	}
	if v, ok := a.Values[0].(Record).GetNamed("foo"); !ok || !Equal(v, IntOf(42)) {
		t.Errorf("GetNamed(foo) = %v, %v", v, ok)
	}
}

func TestDecodeRecursiveWireType(t *testing.T) {
	// type List = opt record { head : int; tail : List }, the list [1, 2].
	b := []byte("DIDL\x02\x6e\x01\x6c\x02\xa0\xd2\xac\xa8\x04\x7c\x90\xed\xda\xe7\x04\x00\x01\x00\x01\x01\x01\x02\x00")
	a, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	typ := a.Types[0]
	if typ.Kind != KindOpt || typ.Elem.Fields[1].Type != typ {
		t.Fatalf("wire type %s is not recursive", typ)
	}
	if got := typ.String(); got != "opt record { 1158359328 : int; 1291237008 : rec_0 }" {
		t.Errorf("type = %s", got)
	}
	// Re-encoding the wire values gives the same message.
	b2, err := EncodeArgs(a)
	if err != nil || string(b2) != string(b) {
		t.Errorf("re-encoded %q, %v", b2, err)
	}
}

// TestDecodeLimits checks that hostile messages fail quickly.
func TestDecodeLimits(t *testing.T) {
	tests := []struct {
		name string
		msg  string
		typ  string
	}{
		{"vec null, a billion", "DIDL\x01\x6d\x7f\x01\x00\x80\x94\xeb\xdc\x03", "(vec null)"},
		{"vec reserved unused", "DIDL\x01\x6d\x70\x01\x00\x80\x94\xeb\xdc\x03", "()"},
		{"vec record {}", "DIDL\x02\x6d\x01\x6c\x00\x01\x00\x80\xad\xe2\x04", "(vec record {})"},
		{"text length", "DIDL\x00\x01\x71\x80\x94\xeb\xdc\x03Motoko", "(text)"},
		{"table length", "DIDL\x80\x94\xeb\xdc\x03\x00", "()"},
		{"record fields", "DIDL\x01\x6c\x80\x94\xeb\xdc\x03\x00\x7f\x00\x7f", "()"},
		{"empty recursion", "DIDL\x01\x6c\x01\x00\x00\x01\x00", "()"},
		{"leb overflow", "DIDL\x00\x01\x71\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "(text)"},
		{"opcode overflow", "DIDL\x00\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "()"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := DecodeAs([]byte(tt.msg), mustTypes(t, tt.typ))
			if err == nil {
				t.Fatal("decoded a hostile message")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func TestDecoderConfig(t *testing.T) {
	// 1000 nulls pass by default but not with a small budget.
	msg := []byte("DIDL\x01\x6d\x7f\x01\x00\xe8\x07")
	types := mustTypes(t, "(vec null)")
	if _, err := DecodeAs(msg, types); err != nil {
		t.Fatalf("default limits: %v", err)
	}
	d := &Decoder{BaseCost: 100, CostPerByte: 1}
	if _, err := d.DecodeAs(msg, types); err == nil || !strings.Contains(err.Error(), "cost limit") {
		t.Errorf("small budget: error = %v", err)
	}
	// Nesting depth.
	deep := "DIDL\x01\x6e\x00\x01\x00" + strings.Repeat("\x01", 50) + "\x00"
	opt := mustTypes(t, "type O = opt O; (O)")
	if _, err := DecodeAs([]byte(deep), opt); err != nil {
		t.Fatalf("depth 50: %v", err)
	}
	d = &Decoder{MaxDepth: 20}
	if _, err := d.DecodeAs([]byte(deep), opt); err == nil || !strings.Contains(err.Error(), "depth") {
		t.Errorf("MaxDepth 20: error = %v", err)
	}
	// Type table size.
	d = &Decoder{MaxTypeTable: 1}
	if _, err := d.Decode([]byte("DIDL\x02\x6e\x7f\x6e\x7f\x00")); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("MaxTypeTable 1: error = %v", err)
	}
}

func TestIsSubtype(t *testing.T) {
	defs := `type List = opt record { head : int; tail : List };
	type Rec = record { 0 : Rec };
	type Svc = service { m : () -> (Svc) };`
	tests := []struct {
		t1, t2 string
		want   bool
	}{
		{"nat", "int", true},
		{"int", "nat", false},
		{"nat8", "nat", false},
		{"empty", "nat", true},
		{"nat", "reserved", true},
		{"nat", "opt bool", true}, // special opt rule
		{"null", "opt nat", true},
		{"vec nat", "vec int", true},
		{"record { a : nat; b : text }", "record { a : int }", true},
		{"record { a : nat }", "record { a : nat; b : opt text }", true},
		{"record { a : nat }", "record { a : nat; b : text }", false},
		{"variant { a }", "variant { a; b }", true},
		{"variant { a; b }", "variant { a }", false},
		{"func (int) -> (nat)", "func (nat) -> (int)", true},
		{"func (nat) -> (nat)", "func (int) -> (nat)", false},
		{"func () -> () query", "func () -> ()", false},
		{"func (text) -> (nat)", "func (text, opt text) -> ()", true},
		{"service { m : () -> (); n : () -> () }", "service { m : () -> () }", true},
		{"service {}", "service { m : () -> () }", false},
		{"service {}", "principal", true},
		{"principal", "service {}", false},
		{"Svc", "principal", true},
		{"Svc", "service { m : () -> (principal) }", true},
		{"Svc", "service { m : () -> (nat) }", false},
		{"Svc", "service { m : () -> (service {}) }", true},
		{"List", "opt record { head : int; tail : List }", true},
		{"Rec", "record { 0 : record { 0 : Rec } }", true},
		{"Rec", "empty", false},
	}
	for _, tt := range tests {
		ts := mustTypes(t, defs+"("+tt.t1+", "+tt.t2+")")
		if got := IsSubtype(ts[0], ts[1]); got != tt.want {
			t.Errorf("%s <: %s = %v, want %v", tt.t1, tt.t2, got, tt.want)
		}
	}
}

// A failed subtype check leaves no conclusion that depended on it: after
// func () -> (X1) <: func () -> (Y1) fails (under opt: the reference reads
// as null), func () -> (X2) is still not read as a func () -> (Y2), since
// X2 <: Y2 needs X1 <: Y1. The coercer keeps one subtyper for the message,
// so X2 <: Y2, concluded while X1 <: Y1 was assumed, was remembered.
func TestSubtypeFailureForgetsDependentAssumptions(t *testing.T) {
	mk := func(last Kind) (*Type, *Type) {
		x1, x2 := &Type{Kind: KindRecord}, &Type{Kind: KindRecord}
		x1.Fields = []Field{{ID: 0, Type: x2}, {ID: 1, Type: Prim(last)}}
		x2.Fields = []Field{{ID: 0, Type: x1}}
		return x1, x2
	}
	x1, x2 := mk(KindNat)
	y1, y2 := mk(KindText)
	if IsSubtype(x2, y2) {
		t.Fatal("X2 <: Y2 on its own")
	}
	wire := []*Type{OptOf(FuncOf(nil, []*Type{x1})), FuncOf(nil, []*Type{x2})}
	ref := FuncRef{Service: principal.Management(), Method: "m"}
	msg, err := EncodeArgs(Args{Types: wire, Values: []Value{Opt{ref}, ref}})
	if err != nil {
		t.Fatal(err)
	}
	expected := []*Type{OptOf(FuncOf(nil, []*Type{y1})), FuncOf(nil, []*Type{y2})}
	if a, err := DecodeAs(msg, expected); err == nil {
		t.Fatalf("func () -> (X2) read as func () -> (Y2): %s", a)
	}
	// What held stays known: the same reference twice at a type it fits.
	msg, err = EncodeArgs(Args{Types: []*Type{wire[1], wire[1]}, Values: []Value{ref, ref}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeAs(msg, []*Type{wire[1], FuncOf(nil, []*Type{x2})}); err != nil {
		t.Fatalf("func () -> (X2) read as itself: %v", err)
	}
}

// dagMessage returns a message whose type table entry k is
// record { k-1; k-1 }: printed inline, its type is exponentially large.
func dagMessage(levels int) []byte {
	b := []byte("DIDL")
	b = appendUleb(b, uint64(levels+1))
	b = append(b, 0x6c, 0x00) // entry 0: record {}
	for k := 1; k <= levels; k++ {
		b = append(b, 0x6c, 0x02, 0x00)
		b = appendSleb(b, int64(k-1))
		b = append(b, 0x01)
		b = appendSleb(b, int64(k-1))
	}
	b = append(b, 0x01)
	return appendSleb(b, int64(levels))
}

func TestDecodeSharedTypes(t *testing.T) {
	msg := dagMessage(60)
	start := time.Now()
	if _, err := DecodeAs(msg, mustTypes(t, "(nat)")); err == nil {
		t.Error("DecodeAs succeeded")
	}
	if _, err := Decode(msg); err == nil {
		t.Error("Decode succeeded")
	}
	a, err := Decode(dagMessage(3))
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Types[0].String(); got != "record { record { record { record {}; record {} }; record { record {}; record {} } }; record { record { record {}; record {} }; record { record {}; record {} } } }" {
		t.Errorf("type = %s", got)
	}
	// Printing the type of the 60-level message is cut short.
	r := reader{buf: msg, state: &state{budget: 1 << 20, maxDepth: 100}}
	types, err := r.header(1000)
	if err != nil {
		t.Fatal(err)
	}
	if s := types[0].String(); len(s) > 2<<20 || !strings.HasSuffix(s, "...") {
		t.Errorf("String of a huge type: %d bytes", len(s))
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}
