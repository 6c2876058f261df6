package candid

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// ParseArgs parses a textual argument list such as
// `(42 : nat, "hi", record { name = "x"; age = 3 : nat8 })` and infers the
// types from the values and their annotations, like dfx does without a
// service description: an unannotated integer is an int, a float is a
// float64, a record's field names are kept, an empty vec is a vec empty, and
// the elements of a vec take the type of the first one.
func ParseArgs(text string) (Args, error) {
	p := newParser(text)
	exprs, err := p.parseArgValues()
	if err != nil {
		return Args{}, err
	}
	if _, err := p.expect(tEOF); err != nil {
		return Args{}, err
	}
	c := newTextConverter(text)
	a := Args{Types: make([]*Type, len(exprs)), Values: make([]Value, len(exprs))}
	for i, e := range exprs {
		v, t, err := c.infer(e, 0)
		if err != nil {
			return Args{}, fmt.Errorf("candid: argument %d: %w", i, err)
		}
		a.Types[i], a.Values[i] = t, v
	}
	return a, nil
}

// ParseArgsTyped parses a textual argument list at the given types: numbers
// take the expected numeric type (42 reads as a nat8 where a nat8 is
// expected), record fields not in the type are ignored, and absent
// arguments and record fields of types null, opt and reserved read as null.
// Unlike binary decoding, a plain value is not accepted where an opt is
// expected: write opt 42. Annotated values (42 : nat) are converted with
// the binary subtyping rules.
func ParseArgsTyped(text string, types []*Type) (Args, error) {
	for i, t := range types {
		if err := checkType(t); err != nil {
			return Args{}, fmt.Errorf("candid: expected type %d: %w", i, err)
		}
	}
	p := newParser(text)
	exprs, err := p.parseArgValues()
	if err != nil {
		return Args{}, err
	}
	if _, err := p.expect(tEOF); err != nil {
		return Args{}, err
	}
	if len(exprs) > len(types) {
		return Args{}, fmt.Errorf("candid: %d arguments given, but the types list only %d", len(exprs), len(types))
	}
	c := newTextConverter(text)
	a := Args{Types: types, Values: make([]Value, len(types))}
	for i, t := range types {
		if i >= len(exprs) {
			if !nullable(t) {
				return Args{}, fmt.Errorf("candid: missing argument %d of type %s", i, t.brief())
			}
			a.Values[i] = nullValue(t)
			continue
		}
		v, err := c.convert(exprs[i], t, 0)
		if err != nil {
			return Args{}, fmt.Errorf("candid: argument %d: %w", i, err)
		}
		a.Values[i] = v
	}
	return a, nil
}

// textConverter turns value syntax trees into Values.
type textConverter struct {
	src string
	env *typeEnv
	st  *state
}

func newTextConverter(src string) *textConverter {
	return &textConverter{
		src: src,
		env: newTypeEnv(src),
		st:  &state{budget: DefaultBaseCost + DefaultCostPerByte*int64(len(src)), maxDepth: 2 * maxParseDepth},
	}
}

// A converter's errors are about values, not syntax: the text parsed.
func (c *textConverter) wrap(pos int, err error) error {
	var ve *ValueError
	var se *SyntaxError
	if errors.As(err, &ve) || errors.As(err, &se) {
		return err // positioned already (an annotation's type)
	}
	return valueErr(c.src, pos, err, "%v", err)
}

func (c *textConverter) errorf(pos int, format string, args ...any) error {
	return valueErr(c.src, pos, nil, format, args...)
}

// annotation resolves the type of an annotated value.
func (c *textConverter) annotation(e *valueExpr) (*Type, error) {
	t, err := c.env.resolve(e.typ)
	if err != nil {
		return nil, err
	}
	if err := checkType(t); err != nil {
		return nil, c.wrap(e.pos, err)
	}
	return t, nil
}

func (c *textConverter) mismatch(e *valueExpr, t *Type) error {
	return c.errorf(e.pos, "%s cannot be of type %s", describe(e), t.brief())
}

func describe(e *valueExpr) string {
	switch e.kind {
	case vNull:
		return "null"
	case vBool:
		return "a bool"
	case vNumber:
		return "the number " + truncate(e.text, 40)
	case vFloat:
		return "the float " + truncate(e.text, 40)
	case vText:
		return "a text"
	case vBlob:
		return "a blob"
	case vOpt:
		return "an opt value"
	case vVec:
		return "a vec"
	case vRecord:
		return "a record"
	case vVariant:
		return "a variant"
	case vPrincipal:
		return "a principal"
	case vService:
		return "a service reference"
	case vFunc:
		return "a func reference"
	}
	return "an annotated value"
}

// convert converts e to a value of type t.
func (c *textConverter) convert(e *valueExpr, t *Type, depth int) (Value, error) {
	if err := c.st.deeper(depth); err != nil {
		return nil, c.wrap(e.pos, err)
	}
	if err := c.st.charge(1); err != nil {
		return nil, c.wrap(e.pos, err)
	}
	if e.kind == vAnnot {
		at, err := c.annotation(e)
		if err != nil {
			return nil, err
		}
		v, err := c.convert(e.elem, at, depth+1)
		if err != nil {
			return nil, err
		}
		co := coercer{state: c.st}
		w, err := co.coerce(v, at, t, 0)
		var le *limitError
		if err != nil && !errors.As(err, &le) {
			// Say it in the text's terms: binary decoding's "cannot read
			// int as nat" is this value's annotation against its type.
			msg := fmt.Sprintf("type mismatch: a value of type %s cannot be of type %s", at.brief(), t.brief())
			if err.Error() != typeMismatch(at, t).Error() {
				msg += " (" + err.Error() + ")"
			}
			return nil, valueErr(c.src, e.pos, err, "%s", msg)
		}
		if err != nil {
			return nil, c.wrap(e.pos, err)
		}
		return w, nil
	}
	if t.Kind == KindReserved {
		// Any value reads as reserved, but must still be well formed.
		if _, _, err := c.infer(e, depth+1); err != nil {
			return nil, err
		}
		return Reserved{}, nil
	}
	switch e.kind {
	case vNull:
		switch t.Kind {
		case KindNull:
			return Null{}, nil
		case KindOpt:
			return Opt{}, nil
		}
	case vBool:
		if t.Kind == KindBool {
			return Bool(e.b), nil
		}
	case vNumber:
		return c.number(e, t)
	case vFloat:
		switch t.Kind {
		case KindFloat32, KindFloat64:
			return c.float(e, t)
		}
	case vText:
		if t.Kind == KindText {
			if !utf8.ValidString(e.text) {
				return nil, c.errorf(e.pos, "text is not valid UTF-8")
			}
			return Text(e.text), nil
		}
	case vBlob:
		if t.IsBlob() {
			return Blob(e.text), nil
		}
	case vOpt:
		if t.Kind == KindOpt {
			v, err := c.convert(e.elem, t.Elem, depth+1)
			if err != nil {
				return nil, err
			}
			return Opt{v}, nil
		}
	case vVec:
		if t.Kind == KindVec {
			if t.IsBlob() {
				b := make(Blob, len(e.elems))
				for i, x := range e.elems {
					v, err := c.convert(x, t.Elem, depth+1)
					if err != nil {
						return nil, err
					}
					n, ok := v.(Nat8)
					if !ok {
						return nil, c.mismatch(x, t.Elem)
					}
					b[i] = byte(n)
				}
				return b, nil
			}
			vs := make(Vec, len(e.elems))
			for i, x := range e.elems {
				v, err := c.convert(x, t.Elem, depth+1)
				if err != nil {
					return nil, err
				}
				vs[i] = v
			}
			return vs, nil
		}
	case vRecord:
		if t.Kind == KindRecord {
			return c.record(e, t, depth)
		}
	case vVariant:
		if t.Kind == KindVariant {
			fe := e.fields[0]
			f, ok := t.Field(fe.id)
			if !ok {
				return nil, c.errorf(e.pos, "variant case %s is not in type %s", fieldName(fe), t.brief())
			}
			v, err := c.convert(fe.value, f.Type, depth+1)
			if err != nil {
				return nil, err
			}
			return Variant{f.ID, v}, nil
		}
	case vPrincipal:
		if t.Kind == KindPrincipal {
			p, err := c.principal(e)
			return Principal{p}, err
		}
	case vService:
		if t.Kind == KindService {
			p, err := c.principal(e)
			return ServiceRef{p}, err
		}
	case vFunc:
		if t.Kind == KindFunc {
			return c.funcRef(e)
		}
	}
	return nil, c.mismatch(e, t)
}

func fieldName(f fieldValueExpr) string {
	if f.name != "" {
		return strconv.Quote(f.name)
	}
	return strconv.FormatUint(uint64(f.id), 10)
}

func (c *textConverter) record(e *valueExpr, t *Type, depth int) (Value, error) {
	byID := make(map[uint32]*valueExpr, len(e.fields))
	for _, f := range e.fields {
		if _, dup := byID[f.id]; dup {
			return nil, c.errorf(f.value.pos, "duplicate record field %s", fieldName(f))
		}
		byID[f.id] = f.value
	}
	rec := make(Record, 0, len(t.Fields))
	for _, f := range t.Fields {
		x, ok := byID[f.ID]
		if !ok {
			if !nullable(f.Type) {
				return nil, c.errorf(e.pos, "record lacks field %s of type %s", f.Label(), f.Type.brief())
			}
			rec = append(rec, FieldValue{f.ID, nullValue(f.Type)})
			continue
		}
		v, err := c.convert(x, f.Type, depth+1)
		if err != nil {
			return nil, err
		}
		rec = append(rec, FieldValue{f.ID, v})
	}
	return rec, nil
}

func (c *textConverter) principal(e *valueExpr) (principal.Principal, error) {
	p, err := principal.FromText(e.text)
	if err != nil {
		return p, c.wrap(e.pos, err)
	}
	return p, nil
}

func (c *textConverter) funcRef(e *valueExpr) (Value, error) {
	p, err := c.principal(e)
	if err != nil {
		return nil, err
	}
	if !utf8.ValidString(e.method) {
		return nil, c.errorf(e.pos, "method name is not valid UTF-8")
	}
	return FuncRef{Service: p, Method: e.method}, nil
}

// bigNumber returns the integer literal of e.
func (c *textConverter) bigNumber(e *valueExpr) (*big.Int, error) {
	base := 10
	if e.hex {
		base = 16
	}
	if len(e.text) > 100_000 {
		return nil, c.errorf(e.pos, "number literal too long")
	}
	n, ok := new(big.Int).SetString(e.text, base)
	if !ok {
		return nil, c.errorf(e.pos, "malformed number %q", truncate(e.text, 40))
	}
	if e.neg {
		n.Neg(n)
	}
	return n, nil
}

var intRanges = map[Kind][2]*big.Int{
	KindNat8:  {big.NewInt(0), big.NewInt(math.MaxUint8)},
	KindNat16: {big.NewInt(0), big.NewInt(math.MaxUint16)},
	KindNat32: {big.NewInt(0), big.NewInt(math.MaxUint32)},
	KindNat64: {big.NewInt(0), new(big.Int).SetUint64(math.MaxUint64)},
	KindInt8:  {big.NewInt(math.MinInt8), big.NewInt(math.MaxInt8)},
	KindInt16: {big.NewInt(math.MinInt16), big.NewInt(math.MaxInt16)},
	KindInt32: {big.NewInt(math.MinInt32), big.NewInt(math.MaxInt32)},
	KindInt64: {big.NewInt(math.MinInt64), big.NewInt(math.MaxInt64)},
}

func (c *textConverter) number(e *valueExpr, t *Type) (Value, error) {
	switch t.Kind {
	case KindFloat32, KindFloat64:
		return c.float(e, t)
	case KindNat, KindInt, KindNat8, KindNat16, KindNat32, KindNat64, KindInt8, KindInt16, KindInt32, KindInt64:
	default:
		return nil, c.mismatch(e, t)
	}
	n, err := c.bigNumber(e)
	if err != nil {
		return nil, err
	}
	switch t.Kind {
	case KindNat:
		if n.Sign() < 0 {
			return nil, c.errorf(e.pos, "%s is negative, it cannot be a nat", n)
		}
		return Nat{n}, nil
	case KindInt:
		return Int{n}, nil
	}
	r := intRanges[t.Kind]
	if n.Cmp(r[0]) < 0 || n.Cmp(r[1]) > 0 {
		return nil, c.errorf(e.pos, "%s is out of the range of %s", truncate(n.String(), 40), t.Kind)
	}
	switch t.Kind {
	case KindNat8:
		return Nat8(n.Uint64()), nil
	case KindNat16:
		return Nat16(n.Uint64()), nil
	case KindNat32:
		return Nat32(n.Uint64()), nil
	case KindNat64:
		return Nat64(n.Uint64()), nil
	case KindInt8:
		return Int8(n.Int64()), nil
	case KindInt16:
		return Int16(n.Int64()), nil
	case KindInt32:
		return Int32(n.Int64()), nil
	}
	return Int64(n.Int64()), nil
}

func (c *textConverter) float(e *valueExpr, t *Type) (Value, error) {
	bits := 64
	if t.Kind == KindFloat32 {
		bits = 32
	}
	var f float64
	if e.kind == vNumber {
		n, err := c.bigNumber(e)
		if err != nil {
			return nil, err
		}
		bf := new(big.Float).SetInt(n)
		if bits == 32 {
			f32, _ := bf.Float32()
			return Float32(f32), nil
		}
		f, _ = bf.Float64()
		return Float64(f), nil
	}
	// Parsing at the target precision avoids double rounding.
	f, err := strconv.ParseFloat(e.text, bits)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return nil, c.errorf(e.pos, "malformed float %q", truncate(e.text, 40))
	}
	if e.neg {
		f = -f
	}
	if bits == 32 {
		return Float32(f), nil
	}
	return Float64(f), nil
}

// infer converts e to a value, inferring its type.
func (c *textConverter) infer(e *valueExpr, depth int) (Value, *Type, error) {
	if err := c.st.deeper(depth); err != nil {
		return nil, nil, c.wrap(e.pos, err)
	}
	if err := c.st.charge(1); err != nil {
		return nil, nil, c.wrap(e.pos, err)
	}
	var t *Type
	switch e.kind {
	case vAnnot:
		at, err := c.annotation(e)
		if err != nil {
			return nil, nil, err
		}
		v, err := c.convert(e.elem, at, depth+1)
		return v, at, err
	case vNull:
		return Null{}, Prim(KindNull), nil
	case vBool:
		t = Prim(KindBool)
	case vNumber:
		t = Prim(KindInt)
	case vFloat:
		t = Prim(KindFloat64)
	case vText:
		t = Prim(KindText)
	case vBlob:
		t = BlobType()
	case vPrincipal:
		t = Prim(KindPrincipal)
	case vService:
		t = ServiceOf()
	case vFunc:
		t = FuncOf(nil, nil)
	case vOpt:
		v, et, err := c.infer(e.elem, depth+1)
		if err != nil {
			return nil, nil, err
		}
		return Opt{v}, OptOf(et), nil
	case vVec:
		return c.inferVec(e, depth)
	case vRecord:
		seen := map[uint32]bool{}
		rec := make(Record, 0, len(e.fields))
		fields := make([]Field, 0, len(e.fields))
		for _, f := range e.fields {
			if seen[f.id] {
				return nil, nil, c.errorf(f.value.pos, "duplicate record field %s", fieldName(f))
			}
			seen[f.id] = true
			v, ft, err := c.infer(f.value, depth+1)
			if err != nil {
				return nil, nil, err
			}
			rec = append(rec, FieldValue{f.id, v})
			fields = append(fields, Field{ID: f.id, Name: f.name, Type: ft})
		}
		sortFields(fields)
		sortFieldValues(rec)
		return rec, &Type{Kind: KindRecord, Fields: fields}, nil
	case vVariant:
		f := e.fields[0]
		v, ft, err := c.infer(f.value, depth+1)
		if err != nil {
			return nil, nil, err
		}
		return Variant{f.id, v}, VariantOf(Field{ID: f.id, Name: f.name, Type: ft}), nil
	}
	v, err := c.convert(e, t, depth)
	return v, t, err
}

// inferVec infers the type of a vec as the join of the types of its
// elements, so that vec { null; opt 1 } is a vec opt int and
// vec { variant { a }; variant { b = 1 } } a vec variant { a; b : int }.
func (c *textConverter) inferVec(e *valueExpr, depth int) (Value, *Type, error) {
	if len(e.elems) == 0 {
		return Vec{}, VecOf(Prim(KindEmpty)), nil
	}
	var et *Type
	for _, x := range e.elems {
		if et != nil {
			// An element that fits the type so far (such as 2 in
			// vec { 1 : nat8; 2 }) does not change it.
			if _, err := c.convert(x, et, depth+1); err == nil {
				continue
			} else if isLimit(err) {
				return nil, nil, err
			}
		}
		_, t, err := c.infer(x, depth+1)
		if err != nil {
			return nil, nil, err
		}
		if et == nil {
			et = t
			continue
		}
		j, ok := join(et, t, 0)
		if !ok {
			return nil, nil, c.errorf(x.pos, "vec elements of different types %s and %s",
				et.brief(), t.brief())
		}
		et = j
	}
	t := VecOf(et)
	v, err := c.convert(e, t, depth)
	return v, t, err
}

// join returns the least common supertype of two inferred types, as far as
// it is useful for values written in text: equal types, null and opt,
// records with the same fields, and variants (the union of their cases).
func join(a, b *Type, depth int) (*Type, bool) {
	if a == b {
		return a, true
	}
	if depth > maxParseDepth {
		return nil, false
	}
	switch {
	case a.Kind == KindNull && b.Kind == KindOpt:
		return b, true
	case a.Kind == KindOpt && b.Kind == KindNull:
		return a, true
	case a.Kind == KindEmpty:
		return b, true
	case b.Kind == KindEmpty:
		return a, true
	case a.Kind != b.Kind:
		return nil, false
	}
	switch a.Kind {
	case KindOpt, KindVec:
		e, ok := join(a.Elem, b.Elem, depth+1)
		if !ok {
			return nil, false
		}
		return &Type{Kind: a.Kind, Elem: e}, true
	case KindRecord:
		if len(a.Fields) != len(b.Fields) {
			return nil, false
		}
		fs := make([]Field, len(a.Fields))
		for i, fa := range a.Fields {
			fb := b.Fields[i]
			if fa.ID != fb.ID {
				return nil, false
			}
			t, ok := join(fa.Type, fb.Type, depth+1)
			if !ok {
				return nil, false
			}
			fs[i] = Field{ID: fa.ID, Name: cmp.Or(fa.Name, fb.Name), Type: t}
		}
		return &Type{Kind: KindRecord, Fields: fs}, true
	case KindVariant:
		fs := slices.Clone(a.Fields)
		for _, fb := range b.Fields {
			i := slices.IndexFunc(fs, func(f Field) bool { return f.ID == fb.ID })
			if i < 0 {
				fs = append(fs, fb)
				continue
			}
			t, ok := join(fs[i].Type, fb.Type, depth+1)
			if !ok {
				return nil, false
			}
			fs[i] = Field{ID: fb.ID, Name: cmp.Or(fs[i].Name, fb.Name), Type: t}
		}
		sortFields(fs)
		return &Type{Kind: KindVariant, Fields: fs}, true
	case KindFunc, KindService:
		// Reference values infer the most general types.
		return a, true
	}
	return a, a.Kind.IsPrimitive()
}

func sortFieldValues(r Record) {
	slices.SortStableFunc(r, func(a, b FieldValue) int { return cmpUint32(a.ID, b.ID) })
}
