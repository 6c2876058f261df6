package candid

import (
	"errors"
	"fmt"
	"math/big"
)

// coercer implements the coercion relation v : t ~> v' : t' of the Candid
// specification: it converts a value decoded at its wire type t to the
// expected type t'.
type coercer struct {
	*state
	subtyper *subtyper
}

// args coerces an argument sequence like a tuple record: extra values are
// ignored, and missing arguments of types null, opt and reserved read as
// null.
func (c *coercer) args(vals []Value, wire, expected []*Type) ([]Value, error) {
	out := make([]Value, len(expected))
	for i, et := range expected {
		if i >= len(vals) {
			if !nullable(et) {
				return nil, fmt.Errorf("missing argument %d of type %s", i, et.brief())
			}
			out[i] = nullValue(et)
			continue
		}
		v, err := c.coerce(vals[i], wire[i], et, 0)
		if err != nil {
			return nil, fmt.Errorf("argument %d: %w", i, err)
		}
		out[i] = v
	}
	return out, nil
}

func typeMismatch(wt, et *Type) error {
	return fmt.Errorf("type mismatch: cannot read %s as %s", wt.brief(), et.brief())
}

// coerce converts v, of wire type wt, to expected type et. Errors caused by
// exhausted limits are *limitError and must not be recovered from.
func (c *coercer) coerce(v Value, wt, et *Type, depth int) (Value, error) {
	if err := c.deeper(depth); err != nil {
		return nil, err
	}
	if err := c.charge(1); err != nil {
		return nil, err
	}
	if et.Kind == KindReserved {
		return Reserved{}, nil
	}
	if et.Kind == KindOpt {
		return c.opt(v, wt, et, depth)
	}
	if wt.future {
		return nil, typeMismatch(wt, et)
	}
	switch et.Kind {
	case KindNull, KindBool, KindNat8, KindNat16, KindNat32, KindNat64,
		KindInt8, KindInt16, KindInt32, KindInt64, KindFloat32, KindFloat64, KindText, KindNat:
		if wt.Kind == et.Kind {
			return v, nil
		}
	case KindInt:
		switch wt.Kind {
		case KindInt:
			return v, nil
		case KindNat:
			if n, ok := v.(Nat); ok {
				return Int{new(big.Int).Set(n.big())}, nil
			}
		}
	case KindPrincipal:
		switch p := v.(type) {
		case Principal:
			return p, nil
		case ServiceRef:
			return Principal(p), nil
		}
	case KindVec:
		if wt.Kind == KindVec {
			return c.vec(v, wt, et, depth)
		}
	case KindRecord:
		if wt.Kind == KindRecord {
			return c.record(v, wt, et, depth)
		}
	case KindVariant:
		if wt.Kind == KindVariant {
			vv, ok := v.(Variant)
			if !ok {
				break
			}
			wf, ok1 := wt.Field(vv.ID)
			ef, ok2 := et.Field(vv.ID)
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("variant case %d is not in the expected type", vv.ID)
			}
			x, err := c.coerce(vv.Value, wf.Type, ef.Type, depth+1)
			if err != nil {
				return nil, wrapPath(err, "variant case %s", ef.Label())
			}
			return Variant{vv.ID, x}, nil
		}
	case KindFunc, KindService:
		if wt.Kind != et.Kind {
			break
		}
		ok, err := c.sub(wt, et)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%s reference type is not a subtype of the expected type", wt.Kind)
		}
		return v, nil
	case KindEmpty:
		return nil, errors.New("no value has type empty")
	}
	return nil, typeMismatch(wt, et)
}

func (c *coercer) sub(t1, t2 *Type) (bool, error) {
	if c.subtyper == nil {
		c.subtyper = newSubtyper(c.state)
	}
	return c.subtyper.sub(t1, t2, 0)
}

// opt coerces v : wt to the option type et, with the special rules:
// null, reserved and none go to null; a value that does not coerce to the
// content type goes to null.
func (c *coercer) opt(v Value, wt, et *Type, depth int) (Value, error) {
	if wt.Kind == KindNull || wt.Kind == KindReserved {
		return Opt{}, nil
	}
	x, wx := v, wt
	if wt.Kind == KindOpt {
		o, ok := v.(Opt)
		if !ok || o.Value == nil {
			return Opt{}, nil
		}
		x, wx = o.Value, wt.Elem
	}
	y, err := c.coerce(x, wx, et.Elem, depth+1)
	if err != nil {
		if isLimit(err) {
			return nil, err
		}
		return Opt{}, nil
	}
	return Opt{y}, nil
}

func (c *coercer) vec(v Value, wt, et *Type, depth int) (Value, error) {
	switch vs := v.(type) {
	case Blob:
		if et.Elem.Kind == KindNat8 {
			return vs, nil
		}
		if err := c.charge(int64(len(vs))); err != nil {
			return nil, err
		}
		if err := c.alloc(headerBytes + slotBytes*int64(len(vs))); err != nil {
			return nil, err
		}
		out := make(Vec, len(vs))
		for i, b := range vs {
			x, err := c.coerce(Nat8(b), wt.Elem, et.Elem, depth+1)
			if err != nil {
				return nil, wrapPath(err, "vec element %d", i)
			}
			out[i] = x
		}
		return out, nil
	case Vec:
		// The coerced elements replace the wire ones in place: a wire
		// value is coerced once and not used after.
		out := vs
		var blob Blob
		if et.Elem.Kind == KindNat8 {
			if err := c.alloc(headerBytes + int64(len(vs))); err != nil {
				return nil, err
			}
			blob = make(Blob, len(vs))
		}
		for i, e := range vs {
			x, err := c.coerce(e, wt.Elem, et.Elem, depth+1)
			if err != nil {
				return nil, wrapPath(err, "vec element %d", i)
			}
			if blob != nil {
				n, ok := x.(Nat8)
				if !ok {
					return nil, fmt.Errorf("vec element %d: %T is not a nat8", i, x)
				}
				blob[i] = byte(n)
			}
			out[i] = x
		}
		if blob != nil {
			return blob, nil
		}
		return out, nil
	}
	return nil, typeMismatch(wt, et)
}

func (c *coercer) record(v Value, wt, et *Type, depth int) (Value, error) {
	rec, ok := v.(Record)
	if !ok {
		return nil, typeMismatch(wt, et)
	}
	if err := c.alloc(headerBytes + fieldBytes*int64(len(et.Fields))); err != nil {
		return nil, err
	}
	out := make(Record, 0, len(et.Fields))
	i := 0 // index into rec, sorted by ID like et.Fields
	for _, ef := range et.Fields {
		for i < len(rec) && rec[i].ID < ef.ID {
			i++
		}
		if i < len(rec) && rec[i].ID == ef.ID {
			wf, ok := wt.Field(ef.ID)
			if !ok {
				return nil, fmt.Errorf("field %s missing from the wire type", ef.Label())
			}
			x, err := c.coerce(rec[i].Value, wf.Type, ef.Type, depth+1)
			if err != nil {
				return nil, wrapPath(err, "field %s", ef.Label())
			}
			out = append(out, FieldValue{ef.ID, x})
			continue
		}
		if !nullable(ef.Type) {
			return nil, fmt.Errorf("missing record field %s of type %s", ef.Label(), ef.Type.brief())
		}
		out = append(out, FieldValue{ef.ID, nullValue(ef.Type)})
	}
	return out, nil
}
