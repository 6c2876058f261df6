package candid

import (
	"math"
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// gen generates random types and values of those types.
type gen struct {
	r    *rand.Rand
	list *Type // type List = opt record { head : int; tail : List }
}

func newGen(seed uint64) *gen {
	list := &Type{Kind: KindOpt, Name: "List"}
	list.Elem = RecordOf(NamedField("head", Prim(KindInt)), NamedField("tail", list))
	return &gen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), list: list}
}

var genPrims = []Kind{KindNull, KindBool, KindNat, KindInt, KindNat8, KindNat16, KindNat32, KindNat64,
	KindInt8, KindInt16, KindInt32, KindInt64, KindFloat32, KindFloat64, KindText, KindReserved, KindPrincipal}

func (g *gen) name() string {
	const letters = "abcdefghijklmnopqrstuvwxyz_"
	n := 1 + g.r.IntN(8)
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[g.r.IntN(len(letters))]
	}
	if g.r.IntN(10) == 0 {
		return string(b) + " ☃" // needs quoting
	}
	return string(b)
}

func (g *gen) fields(n int, depth int) []Field {
	var fs []Field
	seen := map[uint32]bool{}
	for range n {
		var f Field
		switch g.r.IntN(3) {
		case 0:
			f = Field{ID: uint32(g.r.IntN(10))}
		case 1:
			f = Field{ID: g.r.Uint32()}
		default:
			name := g.name()
			f = Field{ID: Hash(name), Name: name}
		}
		if seen[f.ID] {
			continue
		}
		seen[f.ID] = true
		f.Type = g.typ(depth + 1)
		fs = append(fs, f)
	}
	return fs
}

func (g *gen) typ(depth int) *Type {
	if depth > 3 || g.r.IntN(3) == 0 {
		return Prim(genPrims[g.r.IntN(len(genPrims))])
	}
	switch g.r.IntN(9) {
	case 0:
		return OptOf(g.typ(depth + 1))
	case 1:
		return VecOf(g.typ(depth + 1))
	case 2:
		return BlobType()
	case 3:
		return RecordOf(g.fields(g.r.IntN(4), depth)...)
	case 4:
		n := g.r.IntN(4)
		ts := make([]*Type, n)
		for i := range ts {
			ts[i] = g.typ(depth + 1)
		}
		return TupleOf(ts...)
	case 5:
		return VariantOf(g.fields(1+g.r.IntN(4), depth)...)
	case 6:
		var modes []Mode
		if g.r.IntN(2) == 0 {
			modes = append(modes, ModeQuery)
		}
		return FuncOf([]*Type{g.typ(depth + 1)}, []*Type{g.typ(depth + 1)}, modes...)
	case 7:
		return ServiceOf(Method{Name: g.name(), Type: FuncOf(nil, []*Type{g.typ(depth + 1)})})
	}
	return g.list
}

func (g *gen) principal() principal.Principal {
	b := make([]byte, g.r.IntN(30))
	for i := range b {
		b[i] = byte(g.r.UintN(256))
	}
	p, _ := principal.FromBytes(b)
	return p
}

func (g *gen) bigInt(signed bool) *big.Int {
	n := new(big.Int)
	for range g.r.IntN(4) {
		n.Lsh(n, 64)
		n.Or(n, new(big.Int).SetUint64(g.r.Uint64()>>g.r.IntN(64)))
	}
	if signed && g.r.IntN(2) == 0 {
		n.Neg(n)
	}
	return n
}

func (g *gen) float() float64 {
	switch g.r.IntN(6) {
	case 0:
		return 0
	case 1:
		return float64(g.r.IntN(1000)) / 4
	case 2:
		return math.MaxFloat64
	case 3:
		return -math.SmallestNonzeroFloat64
	case 4:
		return []float64{math.Inf(1), math.Inf(-1), math.NaN(), math.Copysign(0, -1)}[g.r.IntN(4)]
	}
	return g.r.NormFloat64() * math.Pow(10, float64(g.r.IntN(40)-20))
}

func (g *gen) value(t *Type, depth int) Value {
	switch t.Kind {
	case KindNull:
		return Null{}
	case KindBool:
		return Bool(g.r.IntN(2) == 0)
	case KindNat:
		return Nat{g.bigInt(false)}
	case KindInt:
		return Int{g.bigInt(true)}
	case KindNat8:
		return Nat8(g.r.Uint32())
	case KindNat16:
		return Nat16(g.r.Uint32())
	case KindNat32:
		return Nat32(g.r.Uint32())
	case KindNat64:
		return Nat64(g.r.Uint64())
	case KindInt8:
		return Int8(g.r.Uint32())
	case KindInt16:
		return Int16(g.r.Uint32())
	case KindInt32:
		return Int32(g.r.Uint32())
	case KindInt64:
		return Int64(g.r.Uint64())
	case KindFloat32:
		return Float32(float32(g.float() / 1e10))
	case KindFloat64:
		return Float64(g.float())
	case KindText:
		s := []rune{'a', 'é', '☃', '\n', '"', '\\', '\'', 0, 0x1f600, '\t', 'Z', 0xfffd}
		var out []rune
		for range g.r.IntN(6) {
			out = append(out, s[g.r.IntN(len(s))])
		}
		return Text(string(out))
	case KindReserved:
		return Reserved{}
	case KindPrincipal:
		return Principal{g.principal()}
	case KindService:
		return ServiceRef{g.principal()}
	case KindFunc:
		return FuncRef{Service: g.principal(), Method: g.name()}
	case KindOpt:
		if depth > 6 || g.r.IntN(3) == 0 {
			return Opt{}
		}
		return Opt{g.value(t.Elem, depth+1)}
	case KindVec:
		n := g.r.IntN(4)
		if depth > 6 {
			n = 0
		}
		if t.Elem.Kind == KindNat8 {
			b := make(Blob, n*3)
			for i := range b {
				b[i] = byte(g.r.UintN(256))
			}
			return b
		}
		vs := make(Vec, n)
		for i := range vs {
			vs[i] = g.value(t.Elem, depth+1)
		}
		return vs
	case KindRecord:
		r := make(Record, len(t.Fields))
		for i, f := range t.Fields {
			r[i] = FieldValue{f.ID, g.value(f.Type, depth+1)}
		}
		return r
	case KindVariant:
		f := t.Fields[g.r.IntN(len(t.Fields))]
		return Variant{f.ID, g.value(f.Type, depth+1)}
	}
	panic("gen: unexpected kind " + t.Kind.String())
}

func (g *gen) args() Args {
	n := g.r.IntN(4)
	a := Args{Types: make([]*Type, n), Values: make([]Value, n)}
	for i := range n {
		a.Types[i] = g.typ(0)
		a.Values[i] = g.value(a.Types[i], 0)
	}
	return a
}

func equalValues(a, b []Value) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// hasRefs reports whether t contains func or service types, whose values
// print without their types.
func hasRefs(t *Type) bool {
	seen := map[*Type]bool{}
	var walk func(t *Type) bool
	walk = func(t *Type) bool {
		if seen[t] {
			return false
		}
		seen[t] = true
		switch t.Kind {
		case KindFunc, KindService:
			return true
		case KindOpt, KindVec:
			return walk(t.Elem)
		case KindRecord, KindVariant:
			for _, f := range t.Fields {
				if walk(f.Type) {
					return true
				}
			}
		}
		return false
	}
	return walk(t)
}

func TestRoundTrip(t *testing.T) {
	const n = 3000
	for i := range n {
		g := newGen(uint64(i))
		a := g.args()
		name := strconv.Itoa(i)

		// value -> binary -> value, at the same types.
		b, err := EncodeArgs(a)
		if err != nil {
			t.Fatalf("%s: EncodeArgs(%s): %v", name, a, err)
		}
		got, err := DecodeAs(b, a.Types)
		if err != nil {
			t.Fatalf("%s: DecodeAs(%s): %v\nmessage %q", name, a, err, b)
		}
		if !equalValues(got.Values, a.Values) {
			t.Fatalf("%s: binary round trip:\n got %s\nwant %s", name, got, a)
		}

		// binary -> wire values -> binary -> value.
		wire, err := Decode(b)
		if err != nil {
			t.Fatalf("%s: Decode(%s): %v", name, a, err)
		}
		b2, err := EncodeArgs(wire)
		if err != nil {
			t.Fatalf("%s: EncodeArgs(wire %s): %v", name, wire, err)
		}
		if got, err := DecodeAs(b2, a.Types); err != nil || !equalValues(got.Values, a.Values) {
			t.Fatalf("%s: wire round trip of %s: %s, %v", name, a, got, err)
		}

		// value -> text -> value, at the same types.
		text := a.String()
		parsed, err := ParseArgsTyped(text, a.Types)
		if err != nil {
			t.Fatalf("%s: ParseArgsTyped(%s): %v", name, text, err)
		}
		if !equalValues(parsed.Values, a.Values) {
			t.Fatalf("%s: text round trip:\n got %s\nwant %s", name, parsed, text)
		}
		if parsed.String() != text {
			t.Fatalf("%s: text -> value -> text:\n got %s\nwant %s", name, parsed, text)
		}

		// text -> value with inferred types -> binary -> value at the
		// original types.
		refs := false
		for _, typ := range a.Types {
			refs = refs || hasRefs(typ)
		}
		if refs {
			continue
		}
		untyped, err := ParseArgs(text)
		if err != nil {
			t.Fatalf("%s: ParseArgs(%s): %v", name, text, err)
		}
		b3, err := EncodeArgs(untyped)
		if err != nil {
			t.Fatalf("%s: EncodeArgs(ParseArgs(%s)): %v", name, text, err)
		}
		if got, err := DecodeAs(b3, a.Types); err != nil || !equalValues(got.Values, a.Values) {
			t.Fatalf("%s: untyped text round trip of %s: %s, %v", name, text, got, err)
		}
	}
}

func TestTypeStringRoundTrip(t *testing.T) {
	for i := range 500 {
		g := newGen(uint64(i))
		typ := g.typ(0)
		s := typ.String()
		back, err := ParseTypes("type List = opt record { head : int; tail : List }; (" + s + ")")
		if err != nil {
			t.Fatalf("ParseTypes(%s): %v", s, err)
		}
		if got := back[0].String(); got != s && !strings.Contains(s, "List") {
			t.Fatalf("type round trip: got %s, want %s", got, s)
		}
		if !IsSubtype(typ, back[0]) || !IsSubtype(back[0], typ) {
			t.Fatalf("type round trip of %s: not equivalent", s)
		}
	}
}
