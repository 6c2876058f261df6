package candid

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// magic is the prefix of every Candid message.
const magic = "DIDL"

// Binary opcodes of the types.
const (
	opNull      = -1
	opBool      = -2
	opNat       = -3
	opInt       = -4
	opNat8      = -5
	opNat16     = -6
	opNat32     = -7
	opNat64     = -8
	opInt8      = -9
	opInt16     = -10
	opInt32     = -11
	opInt64     = -12
	opFloat32   = -13
	opFloat64   = -14
	opText      = -15
	opReserved  = -16
	opEmpty     = -17
	opOpt       = -18
	opVec       = -19
	opRecord    = -20
	opVariant   = -21
	opFunc      = -22
	opService   = -23
	opPrincipal = -24
)

var primOpcode = map[Kind]int64{
	KindNull: opNull, KindBool: opBool, KindNat: opNat, KindInt: opInt,
	KindNat8: opNat8, KindNat16: opNat16, KindNat32: opNat32, KindNat64: opNat64,
	KindInt8: opInt8, KindInt16: opInt16, KindInt32: opInt32, KindInt64: opInt64,
	KindFloat32: opFloat32, KindFloat64: opFloat64, KindText: opText,
	KindReserved: opReserved, KindEmpty: opEmpty, KindPrincipal: opPrincipal,
}

var opcodePrim = func() map[int64]Kind {
	m := make(map[int64]Kind, len(primOpcode))
	for k, op := range primOpcode {
		m[op] = k
	}
	return m
}()

// maxEncodeDepth bounds the nesting of values and types that EncodeArgs
// accepts (it also stops cyclic Go values).
const maxEncodeDepth = 1000

// maxTypeDepth bounds the nesting of types checked by checkType.
const maxTypeDepth = 10000

// EncodeArgs encodes the values a.Values at the types a.Types in the Candid
// binary format. Each value must be of its type: Blob or Vec of Nat8 at a
// vec nat8; Null or Opt{nil} for the null of an opt type; Nat also at int;
// Principal or ServiceRef at principal and service types; any value at
// reserved. Records must hold exactly the fields of their type.
func EncodeArgs(a Args) ([]byte, error) {
	if len(a.Types) != len(a.Values) {
		return nil, fmt.Errorf("candid: encode: %d types for %d values", len(a.Types), len(a.Values))
	}
	e := encoder{index: map[*Type]int64{}}
	codes := make([]int64, len(a.Types))
	for i, t := range a.Types {
		if err := checkType(t); err != nil {
			return nil, fmt.Errorf("candid: encode: argument %d: invalid type: %w", i, err)
		}
		code, err := e.typeRef(t, 0)
		if err != nil {
			return nil, fmt.Errorf("candid: encode: argument %d: %w", i, err)
		}
		codes[i] = code
	}
	out := []byte(magic)
	out = appendUleb(out, uint64(len(e.table)))
	for _, entry := range e.table {
		out = append(out, entry...)
	}
	out = appendUleb(out, uint64(len(codes)))
	for _, c := range codes {
		out = appendSleb(out, c)
	}
	e.buf = out
	for i, v := range a.Values {
		if err := e.value(v, a.Types[i], 0); err != nil {
			return nil, fmt.Errorf("candid: encode: argument %d: %w", i, err)
		}
	}
	return e.buf, nil
}

type encoder struct {
	index map[*Type]int64
	table [][]byte
	buf   []byte
}

// typeRef returns the code of t in the type table (its opcode if it is
// primitive, else its index), adding it and the types it refers to.
func (e *encoder) typeRef(t *Type, depth int) (int64, error) {
	if t.future {
		return opReserved, nil
	}
	if op, ok := primOpcode[t.Kind]; ok {
		return op, nil
	}
	if i, ok := e.index[t]; ok {
		return i, nil
	}
	if depth > maxEncodeDepth {
		return 0, errors.New("type nested too deeply")
	}
	idx := int64(len(e.table))
	e.index[t] = idx
	e.table = append(e.table, nil)
	var b []byte
	ref := func(t *Type) error {
		c, err := e.typeRef(t, depth+1)
		b = appendSleb(b, c)
		return err
	}
	switch t.Kind {
	case KindOpt, KindVec:
		op := int64(opOpt)
		if t.Kind == KindVec {
			op = opVec
		}
		b = appendSleb(b, op)
		if err := ref(t.Elem); err != nil {
			return 0, err
		}
	case KindRecord, KindVariant:
		op := int64(opRecord)
		if t.Kind == KindVariant {
			op = opVariant
		}
		b = appendSleb(b, op)
		b = appendUleb(b, uint64(len(t.Fields)))
		for _, f := range t.Fields {
			b = appendUleb(b, uint64(f.ID))
			if err := ref(f.Type); err != nil {
				return 0, err
			}
		}
	case KindFunc:
		b = appendSleb(b, opFunc)
		for _, ts := range [][]*Type{t.Args, t.Results} {
			b = appendUleb(b, uint64(len(ts)))
			for _, a := range ts {
				if err := ref(a); err != nil {
					return 0, err
				}
			}
		}
		b = appendUleb(b, uint64(len(t.Modes)))
		for _, m := range t.Modes {
			b = append(b, byte(m))
		}
	case KindService:
		b = appendSleb(b, opService)
		b = appendUleb(b, uint64(len(t.Methods)))
		for _, m := range t.Methods {
			b = appendUleb(b, uint64(len(m.Name)))
			b = append(b, m.Name...)
			if err := ref(m.Type); err != nil {
				return 0, err
			}
		}
	default:
		return 0, fmt.Errorf("invalid type kind %d", t.Kind)
	}
	e.table[idx] = b
	return idx, nil
}

func mismatch(v Value, t *Type) error {
	return fmt.Errorf("value of Go type %T does not match type %s", v, t.brief())
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:runeCut(s, n)] + "..."
	}
	return s
}

// runeCut is n (n < len(s)), or less if s[n] is inside a UTF-8 character:
// the start of that character (a cut through it would put invalid UTF-8 in
// a message). Bytes that are not part of a valid character are cut at n.
func runeCut(s string, n int) int {
	for i := n; i >= 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			if _, size := utf8.DecodeRuneInString(s[i:]); i < n && i+size > n {
				return i
			}
			return n
		}
	}
	return n
}

func (e *encoder) value(v Value, t *Type, depth int) error {
	if depth > maxEncodeDepth {
		return errors.New("value nested too deeply")
	}
	if t.Kind == KindReserved {
		return nil
	}
	switch t.Kind {
	case KindNull:
		if _, ok := v.(Null); !ok {
			return mismatch(v, t)
		}
	case KindBool:
		b, ok := v.(Bool)
		if !ok {
			return mismatch(v, t)
		}
		if b {
			e.buf = append(e.buf, 1)
		} else {
			e.buf = append(e.buf, 0)
		}
	case KindNat:
		n, ok := v.(Nat)
		if !ok {
			return mismatch(v, t)
		}
		if n.big().Sign() < 0 {
			return fmt.Errorf("negative nat %s", n.big())
		}
		e.buf = appendBigUleb(e.buf, n.big())
	case KindInt:
		switch n := v.(type) {
		case Int:
			e.buf = appendBigSleb(e.buf, n.big())
		case Nat:
			e.buf = appendBigSleb(e.buf, n.big())
		default:
			return mismatch(v, t)
		}
	case KindNat8, KindNat16, KindNat32, KindNat64, KindInt8, KindInt16, KindInt32, KindInt64, KindFloat32, KindFloat64:
		return e.fixed(v, t)
	case KindText:
		s, ok := v.(Text)
		if !ok {
			return mismatch(v, t)
		}
		if !utf8.ValidString(string(s)) {
			return errors.New("text is not valid UTF-8")
		}
		e.buf = appendUleb(e.buf, uint64(len(s)))
		e.buf = append(e.buf, s...)
	case KindEmpty:
		return errors.New("no value has type empty")
	case KindPrincipal, KindService:
		switch p := v.(type) {
		case Principal:
			e.principal(p.Principal)
		case ServiceRef:
			e.principal(p.Principal)
		default:
			return mismatch(v, t)
		}
	case KindFunc:
		f, ok := v.(FuncRef)
		if !ok {
			return mismatch(v, t)
		}
		if !utf8.ValidString(f.Method) {
			return errors.New("func method name is not valid UTF-8")
		}
		e.buf = append(e.buf, 1)
		e.principal(f.Service)
		e.buf = appendUleb(e.buf, uint64(len(f.Method)))
		e.buf = append(e.buf, f.Method...)
	case KindOpt:
		switch o := v.(type) {
		case Null:
			e.buf = append(e.buf, 0)
		case Opt:
			if o.Value == nil {
				e.buf = append(e.buf, 0)
				return nil
			}
			e.buf = append(e.buf, 1)
			return e.value(o.Value, t.Elem, depth+1)
		default:
			return mismatch(v, t)
		}
	case KindVec:
		switch vs := v.(type) {
		case Blob:
			if t.Elem.Kind == KindNat8 {
				e.buf = appendUleb(e.buf, uint64(len(vs)))
				e.buf = append(e.buf, vs...)
				return nil
			}
			e.buf = appendUleb(e.buf, uint64(len(vs)))
			for _, b := range vs {
				if err := e.value(Nat8(b), t.Elem, depth+1); err != nil {
					return err
				}
			}
		case Vec:
			e.buf = appendUleb(e.buf, uint64(len(vs)))
			for i, x := range vs {
				if err := e.value(x, t.Elem, depth+1); err != nil {
					return fmt.Errorf("vec element %d: %w", i, err)
				}
			}
		default:
			return mismatch(v, t)
		}
	case KindRecord:
		r, ok := v.(Record)
		if !ok {
			return mismatch(v, t)
		}
		if !slices.IsSortedFunc(r, func(a, b FieldValue) int { return cmpUint32(a.ID, b.ID) }) {
			r = slices.Clone(r)
			slices.SortStableFunc(r, func(a, b FieldValue) int { return cmpUint32(a.ID, b.ID) })
		}
		if len(r) != len(t.Fields) {
			return fmt.Errorf("record value has %d fields, its type %d", len(r), len(t.Fields))
		}
		for i, f := range t.Fields {
			if r[i].ID != f.ID {
				return fmt.Errorf("record value lacks field %s", f.Label())
			}
			if err := e.value(r[i].Value, f.Type, depth+1); err != nil {
				return fmt.Errorf("field %s: %w", f.Label(), err)
			}
		}
	case KindVariant:
		va, ok := v.(Variant)
		if !ok {
			return mismatch(v, t)
		}
		for i, f := range t.Fields {
			if f.ID == va.ID {
				e.buf = appendUleb(e.buf, uint64(i))
				if err := e.value(va.Value, f.Type, depth+1); err != nil {
					return fmt.Errorf("variant case %s: %w", f.Label(), err)
				}
				return nil
			}
		}
		return fmt.Errorf("variant value has case %d, not in its type", va.ID)
	default:
		return fmt.Errorf("invalid type kind %d", t.Kind)
	}
	return nil
}

func cmpUint32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (e *encoder) principal(p principal.Principal) {
	e.buf = append(e.buf, 1)
	e.buf = appendUleb(e.buf, uint64(p.Len()))
	e.buf = append(e.buf, p.Bytes()...)
}

func (e *encoder) fixed(v Value, t *Type) error {
	var ok bool
	switch t.Kind {
	case KindNat8:
		var n Nat8
		if n, ok = v.(Nat8); ok {
			e.buf = append(e.buf, byte(n))
		}
	case KindNat16:
		var n Nat16
		if n, ok = v.(Nat16); ok {
			e.buf = binary.LittleEndian.AppendUint16(e.buf, uint16(n))
		}
	case KindNat32:
		var n Nat32
		if n, ok = v.(Nat32); ok {
			e.buf = binary.LittleEndian.AppendUint32(e.buf, uint32(n))
		}
	case KindNat64:
		var n Nat64
		if n, ok = v.(Nat64); ok {
			e.buf = binary.LittleEndian.AppendUint64(e.buf, uint64(n))
		}
	case KindInt8:
		var n Int8
		if n, ok = v.(Int8); ok {
			e.buf = append(e.buf, byte(n))
		}
	case KindInt16:
		var n Int16
		if n, ok = v.(Int16); ok {
			e.buf = binary.LittleEndian.AppendUint16(e.buf, uint16(n))
		}
	case KindInt32:
		var n Int32
		if n, ok = v.(Int32); ok {
			e.buf = binary.LittleEndian.AppendUint32(e.buf, uint32(n))
		}
	case KindInt64:
		var n Int64
		if n, ok = v.(Int64); ok {
			e.buf = binary.LittleEndian.AppendUint64(e.buf, uint64(n))
		}
	case KindFloat32:
		var f Float32
		if f, ok = v.(Float32); ok {
			e.buf = binary.LittleEndian.AppendUint32(e.buf, math.Float32bits(float32(f)))
		}
	case KindFloat64:
		var f Float64
		if f, ok = v.(Float64); ok {
			e.buf = binary.LittleEndian.AppendUint64(e.buf, math.Float64bits(float64(f)))
		}
	}
	if !ok {
		return mismatch(v, t)
	}
	return nil
}

// quoteText returns s as a Candid text literal. Besides the C0 controls and
// DEL, it escapes what could act on a terminal or make one line look like
// several: C1 controls (U+009B is a one-character CSI), U+2028 and U+2029,
// and format characters (bidirectional overrides reorder what is shown).
// Text, labels and method names printed from a reply come from the
// canister.
func quoteText(s string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			sb.WriteString(`\"`)
		case '\\':
			sb.WriteString(`\\`)
		case '\n':
			sb.WriteString(`\n`)
		case '\r':
			sb.WriteString(`\r`)
		case '\t':
			sb.WriteString(`\t`)
		default:
			if r < 0x20 || r >= 0x7f && r <= 0x9f || r == 0x2028 || r == 0x2029 ||
				r == utf8.RuneError || unicode.Is(unicode.Cf, r) {
				fmt.Fprintf(&sb, `\u{%x}`, r)
			} else {
				sb.WriteRune(r)
			}
		}
	}
	sb.WriteByte('"')
	return sb.String()
}
