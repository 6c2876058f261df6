package candid

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// Default limits of a Decoder. See the Decoder fields.
const (
	DefaultMaxTypeTable = 10_000
	DefaultMaxDepth     = 1000
	DefaultBaseCost     = 1 << 20
	DefaultCostPerByte  = 8
	// DefaultBaseMemory and DefaultMemoryPerByte set the memory budget:
	// 64 bytes per input byte admits the densest ordinary data (a vec of
	// small nats takes 56 bytes of Go values per byte on the wire).
	DefaultBaseMemory    = 4 << 20
	DefaultMemoryPerByte = 64
)

// A Decoder decodes Candid binary messages within resource limits. The zero
// Decoder uses the default limits; Decode and DecodeAs use a zero Decoder.
//
// Decoding cost is metered: every decoded value, every vec element (charged
// before the vec is read, so that a vec of a billion nulls fails at once),
// every coercion step and every subtype check costs one unit. A message may
// spend at most BaseCost + CostPerByte*len(message) units. This bounds
// time on hostile inputs whose values have zero size on the wire
// (vec null, vec record {}, ...), while any well-formed message of
// ordinary data fits comfortably.
//
// The memory of the decoded values is metered too, in bytes of their Go
// representation (the interface or field slot each takes in its vec or
// record, and what it boxes: a big.Int, a string's bytes, a slice header),
// charged before it is allocated: at most BaseMemory +
// MemoryPerByte*len(message), both for decoding and for coercion. A value
// that costs many bytes per byte on the wire (vec vec null) runs out of
// memory budget long before it runs out of units.
type Decoder struct {
	// MaxTypeTable is the maximum number of type table entries
	// (default DefaultMaxTypeTable).
	MaxTypeTable int
	// MaxDepth is the maximum nesting depth of values, which also stops
	// the decoding of uninhabited recursive types such as
	// μx.record { x } (default DefaultMaxDepth).
	MaxDepth int
	// BaseCost and CostPerByte set the cost budget (defaults
	// DefaultBaseCost and DefaultCostPerByte).
	BaseCost, CostPerByte int64
	// BaseMemory and MemoryPerByte set the memory budget in bytes
	// (defaults DefaultBaseMemory and DefaultMemoryPerByte).
	BaseMemory, MemoryPerByte int64
}

// Decode decodes a Candid message using its own (wire) types: the result
// holds the types of the message's type table, without field names.
func Decode(b []byte) (Args, error) { return (&Decoder{}).Decode(b) }

// DecodeAs decodes a Candid message at the expected types, applying the
// Candid subtyping rules: extra arguments and record fields are ignored,
// missing arguments and fields of type null, opt or reserved read as null,
// a value that does not fit an opt type reads as null, nat is accepted as
// int, a service as principal, any value as reserved, and func and service
// references must be of a subtype. The result holds the expected types.
func DecodeAs(b []byte, expected []*Type) (Args, error) {
	return (&Decoder{}).DecodeAs(b, expected)
}

// Decode is like the package function Decode, with d's limits.
func (d *Decoder) Decode(b []byte) (Args, error) {
	_, wire, vals, err := d.decodeWire(b)
	if err != nil {
		return Args{}, err
	}
	return Args{Types: wire, Values: vals}, nil
}

// DecodeAs is like the package function DecodeAs, with d's limits.
func (d *Decoder) DecodeAs(b []byte, expected []*Type) (Args, error) {
	for i, t := range expected {
		if err := checkType(t); err != nil {
			return Args{}, fmt.Errorf("candid: decode: expected type %d: %w", i, err)
		}
	}
	st, wire, vals, err := d.decodeWire(b)
	if err != nil {
		return Args{}, err
	}
	c := coercer{state: st}
	out, err := c.args(vals, wire, expected)
	if err != nil {
		return Args{}, fmt.Errorf("candid: decode: %w", err)
	}
	return Args{Types: expected, Values: out}, nil
}

// Field decodes the field id of a message's first argument, a record, at
// its wire type, without keeping the fields before it and without reading
// what follows it (so the rest of the message is not checked). ok is false
// when the first argument is not a record with that field. It is for a
// caller that needs one field before the whole message is decoded (the
// canister a management call is about).
func (d *Decoder) Field(b []byte, id uint32) (v Value, t *Type, ok bool, err error) {
	st := d.newState(len(b))
	r := reader{buf: b, state: st}
	maxTable := d.MaxTypeTable
	if maxTable <= 0 {
		maxTable = DefaultMaxTypeTable
	}
	wire, err := r.header(maxTable)
	if err != nil {
		return nil, nil, false, fmt.Errorf("candid: decode: %w", err)
	}
	if len(wire) == 0 || wire[0].Kind != KindRecord {
		return nil, nil, false, nil
	}
	for _, f := range wire[0].Fields {
		if f.ID > id {
			break
		}
		st.skipping = f.ID != id
		v, err := r.value(f.Type, 1)
		if err != nil {
			return nil, nil, false, fmt.Errorf("candid: decode: argument 0 at offset %d: %w", r.pos, wrapPath(err, "field %d", f.ID))
		}
		if f.ID == id {
			return v, f.Type, true, nil
		}
	}
	return nil, nil, false, nil
}

// state holds the limits shared by decoding and coercion.
type state struct {
	cost, budget int64
	// mem is the memory charged so far, of memBudget (0: not metered; the
	// text parser and subtype checks meter units only).
	mem, memBudget int64
	maxDepth       int
	// skipping: values are read and checked but not kept (Field).
	skipping bool
}

// limitError reports an exhausted resource limit. Coercion never recovers
// from it (unlike from type mismatches under opt).
type limitError struct{ msg string }

func (e *limitError) Error() string { return e.msg }

// wrapPath prefixes err with the position in the value where it occurred,
// except for limit errors, whose position would only repeat itself.
func wrapPath(err error, format string, args ...any) error {
	if isLimit(err) {
		return err
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}

func isLimit(err error) bool {
	var le *limitError
	return errors.As(err, &le)
}

func (s *state) charge(n int64) error {
	if n < 0 || n > s.budget-s.cost {
		s.cost = s.budget
		return &limitError{fmt.Sprintf("decoding cost limit of %d exceeded", s.budget)}
	}
	s.cost += n
	return nil
}

// alloc charges n bytes of decoded representation.
func (s *state) alloc(n int64) error {
	if s.memBudget == 0 || s.skipping {
		return nil
	}
	if n < 0 || n > s.memBudget-s.mem {
		s.mem = s.memBudget
		return &limitError{fmt.Sprintf("decoding memory limit of %d bytes exceeded", s.memBudget)}
	}
	s.mem += n
	return nil
}

// Bytes of the Go representation of decoded values (64-bit platforms).
const (
	slotBytes      = 16 // an interface: a Vec element, FieldValue.Value, Opt
	fieldBytes     = 24 // a FieldValue
	headerBytes    = 24 // a slice header boxed in an interface
	wordBytes      = 8  // a boxed number; a big.Int word
	bigIntBytes    = 32 // a big.Int
	principalBytes = 32
)

func (s *state) deeper(depth int) error {
	if depth > s.maxDepth {
		return &limitError{fmt.Sprintf("nesting depth limit of %d exceeded", s.maxDepth)}
	}
	return nil
}

func (d *Decoder) newState(n int) *state {
	st := &state{maxDepth: d.MaxDepth, budget: d.BaseCost}
	if st.maxDepth <= 0 {
		st.maxDepth = DefaultMaxDepth
	}
	if st.budget <= 0 {
		st.budget = DefaultBaseCost
	}
	per := d.CostPerByte
	if per <= 0 {
		per = DefaultCostPerByte
	}
	st.budget += per * int64(n)
	st.memBudget = d.BaseMemory
	if st.memBudget <= 0 {
		st.memBudget = DefaultBaseMemory
	}
	perMem := d.MemoryPerByte
	if perMem <= 0 {
		perMem = DefaultMemoryPerByte
	}
	st.memBudget += perMem * int64(n)
	return st
}

// decodeWire decodes the type table, the argument types and the values at
// those types.
func (d *Decoder) decodeWire(b []byte) (*state, []*Type, []Value, error) {
	st := d.newState(len(b))
	r := reader{buf: b, state: st}
	maxTable := d.MaxTypeTable
	if maxTable <= 0 {
		maxTable = DefaultMaxTypeTable
	}
	wire, err := r.header(maxTable)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("candid: decode: %w", err)
	}
	vals := make([]Value, len(wire))
	for i, t := range wire {
		v, err := r.value(t, 0)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("candid: decode: argument %d at offset %d: %w", i, r.pos, err)
		}
		vals[i] = v
	}
	if r.pos != len(b) {
		return nil, nil, nil, fmt.Errorf("candid: decode: %d unexpected bytes after the last argument at offset %d", len(b)-r.pos, r.pos)
	}
	return st, wire, vals, nil
}

type reader struct {
	buf []byte
	pos int
	*state
}

var errShort = errors.New("unexpected end of input")

func (r *reader) remaining() int { return len(r.buf) - r.pos }

func (r *reader) byte() (byte, error) {
	if r.pos >= len(r.buf) {
		return 0, errShort
	}
	c := r.buf[r.pos]
	r.pos++
	return c, nil
}

func (r *reader) bytes(n uint64) ([]byte, error) {
	if n > uint64(r.remaining()) {
		return nil, fmt.Errorf("length %d exceeds the %d remaining bytes", n, r.remaining())
	}
	b := r.buf[r.pos : r.pos+int(n)]
	r.pos += int(n)
	return b, nil
}

// uleb reads an unsigned LEB128 number that must fit in 64 bits. Overlong
// encodings (trailing zero groups) are accepted.
func (r *reader) uleb() (uint64, error) {
	var n uint64
	var shift uint
	for {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		g := uint64(c & 0x7f)
		if shift >= 64 {
			if g != 0 {
				return 0, errors.New("LEB128 number overflows 64 bits")
			}
		} else {
			if shift > 0 && g>>(64-shift) != 0 {
				return 0, errors.New("LEB128 number overflows 64 bits")
			}
			n |= g << shift
		}
		shift += 7
		if c&0x80 == 0 {
			return n, nil
		}
	}
}

// sleb reads a signed LEB128 number that must fit in 64 bits. Overlong
// encodings are accepted.
func (r *reader) sleb() (int64, error) {
	start := r.pos
	for {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		if c&0x80 == 0 {
			break
		}
	}
	if r.pos-start <= 9 {
		var n int64
		var shift uint
		for _, c := range r.buf[start:r.pos] {
			n |= int64(c&0x7f) << shift
			shift += 7
		}
		if r.buf[r.pos-1]&0x40 != 0 {
			n |= -1 << shift
		}
		return n, nil
	}
	n := bigFromSleb(r.groups(start))
	if !n.IsInt64() {
		return 0, errors.New("signed LEB128 number overflows 64 bits")
	}
	return n.Int64(), nil
}

// length reads a count of items that each take at least minSize bytes,
// and checks it against the remaining input.
func (r *reader) length(what string, minSize int) (int, error) {
	n, err := r.uleb()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if minSize > 0 && n > uint64(r.remaining()/minSize) {
		return 0, fmt.Errorf("%s %d exceeds what the %d remaining bytes can hold", what, n, r.remaining())
	}
	if n > math.MaxInt32 {
		return 0, fmt.Errorf("%s %d too large", what, n)
	}
	return int(n), nil
}

func bigFromSleb(groups []byte) *big.Int {
	n := groupsToBig(groups)
	if groups[len(groups)-1]&0x40 != 0 {
		// Negative: subtract 2^(7*len).
		n.Sub(n, new(big.Int).Lsh(big.NewInt(1), uint(7*len(groups))))
	}
	return n
}

// rawEntry is a type table entry as read, before its references are resolved.
type rawEntry struct {
	op      int64
	elem    int64       // opt, vec
	fields  []rawField  // record, variant
	args    []int64     // func
	results []int64     // func
	modes   []Mode      // func
	methods []rawMethod // service
}

type rawField struct {
	id   uint32
	code int64
}

type rawMethod struct {
	name string
	code int64
}

// header reads the magic number, the type table and the argument types.
func (r *reader) header(maxTable int) ([]*Type, error) {
	m, err := r.bytes(4)
	if err != nil || string(m) != magic {
		return nil, errors.New(`missing magic number "DIDL"`)
	}
	n, err := r.length("type table length", 1)
	if err != nil {
		return nil, err
	}
	if n > maxTable {
		return nil, fmt.Errorf("type table has %d entries, more than the limit of %d", n, maxTable)
	}
	if err := r.charge(int64(n)); err != nil {
		return nil, err
	}
	raw := make([]rawEntry, n)
	for i := range raw {
		if raw[i], err = r.entry(); err != nil {
			return nil, fmt.Errorf("type table entry %d at offset %d: %w", i, r.pos, err)
		}
	}
	types := make([]*Type, n)
	for i := range types {
		types[i] = &Type{}
	}
	ref := func(code int64) (*Type, error) {
		if code >= 0 {
			if code >= int64(n) {
				return nil, fmt.Errorf("type index %d out of range (table has %d entries)", code, n)
			}
			return types[code], nil
		}
		k, ok := opcodePrim[code]
		if !ok {
			return nil, fmt.Errorf("opcode %d is not a primitive type", code)
		}
		return &Type{Kind: k}, nil
	}
	for i, e := range raw {
		t := types[i]
		if err := r.charge(int64(1 + len(e.fields) + len(e.args) + len(e.results) + len(e.methods))); err != nil {
			return nil, err
		}
		var err error
		switch e.op {
		case opOpt, opVec:
			t.Kind = KindOpt
			if e.op == opVec {
				t.Kind = KindVec
			}
			t.Elem, err = ref(e.elem)
		case opRecord, opVariant:
			t.Kind = KindRecord
			if e.op == opVariant {
				t.Kind = KindVariant
			}
			t.Fields = make([]Field, len(e.fields))
			for j, f := range e.fields {
				t.Fields[j].ID = f.id
				if t.Fields[j].Type, err = ref(f.code); err != nil {
					break
				}
			}
		case opFunc:
			t.Kind = KindFunc
			t.Modes = e.modes
			t.Args = make([]*Type, len(e.args))
			for j, c := range e.args {
				if t.Args[j], err = ref(c); err != nil {
					break
				}
			}
			t.Results = make([]*Type, len(e.results))
			for j, c := range e.results {
				if err != nil {
					break
				}
				t.Results[j], err = ref(c)
			}
		case opService:
			t.Kind = KindService
			t.Methods = make([]Method, len(e.methods))
			for j, m := range e.methods {
				if m.code < 0 || m.code >= int64(n) || raw[m.code].op != opFunc {
					err = fmt.Errorf("method %q: type %d is not a func type", m.name, m.code)
					break
				}
				t.Methods[j] = Method{Name: m.name, Type: types[m.code]}
			}
		default: // future type
			t.Kind = KindReserved
			t.future = true
		}
		if err != nil {
			return nil, fmt.Errorf("type table entry %d: %w", i, err)
		}
	}
	nargs, err := r.length("argument count", 1)
	if err != nil {
		return nil, err
	}
	if err := r.charge(int64(nargs)); err != nil {
		return nil, err
	}
	args := make([]*Type, nargs)
	for i := range args {
		code, err := r.sleb()
		if err != nil {
			return nil, fmt.Errorf("argument type %d: %w", i, err)
		}
		if args[i], err = ref(code); err != nil {
			return nil, fmt.Errorf("argument type %d: %w", i, err)
		}
	}
	return args, nil
}

// typeCode reads a type reference: a primitive opcode or a table index.
func (r *reader) typeCode() (int64, error) {
	return r.sleb()
}

func (r *reader) entry() (rawEntry, error) {
	op, err := r.sleb()
	if err != nil {
		return rawEntry{}, err
	}
	e := rawEntry{op: op}
	switch {
	case op == opOpt || op == opVec:
		e.elem, err = r.typeCode()
	case op == opRecord || op == opVariant:
		n, err := r.length("field count", 2)
		if err != nil {
			return e, err
		}
		e.fields = make([]rawField, n)
		for j := range e.fields {
			id, err := r.uleb()
			if err != nil {
				return e, fmt.Errorf("field id: %w", err)
			}
			if id > math.MaxUint32 {
				return e, fmt.Errorf("field id %d does not fit in 32 bits", id)
			}
			if j > 0 && uint32(id) <= e.fields[j-1].id {
				if uint32(id) == e.fields[j-1].id {
					return e, fmt.Errorf("duplicate field id %d", id)
				}
				return e, fmt.Errorf("field ids not sorted (%d after %d)", id, e.fields[j-1].id)
			}
			code, err := r.typeCode()
			if err != nil {
				return e, fmt.Errorf("field %d type: %w", id, err)
			}
			e.fields[j] = rawField{uint32(id), code}
		}
	case op == opFunc:
		for _, list := range []*[]int64{&e.args, &e.results} {
			n, err := r.length("func argument count", 1)
			if err != nil {
				return e, err
			}
			*list = make([]int64, n)
			for j := range *list {
				if (*list)[j], err = r.typeCode(); err != nil {
					return e, err
				}
			}
		}
		n, err := r.length("func annotation count", 1)
		if err != nil {
			return e, err
		}
		for range n {
			c, err := r.byte()
			if err != nil {
				return e, err
			}
			m := Mode(c)
			if m < ModeQuery || m > ModeCompositeQuery {
				return e, fmt.Errorf("unknown func annotation %#x", c)
			}
			for _, prev := range e.modes {
				if prev == m {
					return e, fmt.Errorf("duplicate func annotation %s", m)
				}
			}
			e.modes = append(e.modes, m)
		}
		sortModes(e.modes)
	case op == opService:
		n, err := r.length("method count", 2)
		if err != nil {
			return e, err
		}
		e.methods = make([]rawMethod, n)
		for j := range e.methods {
			l, err := r.length("method name length", 1)
			if err != nil {
				return e, err
			}
			name, err := r.bytes(uint64(l))
			if err != nil {
				return e, err
			}
			if !utf8.Valid(name) {
				return e, fmt.Errorf("method name %q is not valid UTF-8", name)
			}
			if j > 0 && string(name) <= e.methods[j-1].name {
				if string(name) == e.methods[j-1].name {
					return e, fmt.Errorf("duplicate method %q", name)
				}
				return e, fmt.Errorf("methods not sorted (%q after %q)", name, e.methods[j-1].name)
			}
			code, err := r.typeCode()
			if err != nil {
				return e, err
			}
			e.methods[j] = rawMethod{string(name), code}
		}
	case op < opPrincipal:
		// A future type: a length-prefixed blob we skip.
		n, err := r.uleb()
		if err != nil {
			return e, err
		}
		if _, err := r.bytes(n); err != nil {
			return e, fmt.Errorf("future type: %w", err)
		}
	case op >= 0:
		return e, fmt.Errorf("a type table entry cannot be a type index (%d)", op)
	default:
		return e, fmt.Errorf("primitive type %d in the type table", op)
	}
	return e, err
}

func sortModes(ms []Mode) {
	for i := 1; i < len(ms); i++ {
		for j := i; j > 0 && ms[j] < ms[j-1]; j-- {
			ms[j], ms[j-1] = ms[j-1], ms[j]
		}
	}
}

// minSize returns a lower bound on the encoded size of a value of type t.
func minSize(t *Type) int {
	switch t.Kind {
	case KindNull, KindReserved, KindRecord, KindEmpty:
		// Records may be of size zero; computing a better bound for
		// them would need a fixpoint over recursive types.
		return 0
	case KindNat16, KindInt16:
		return 2
	case KindNat32, KindInt32, KindFloat32:
		return 4
	case KindNat64, KindInt64, KindFloat64:
		return 8
	case KindPrincipal, KindService:
		return 2
	case KindFunc:
		return 4
	}
	if t.future {
		return 0
	}
	return 1
}

// value decodes a value of wire type t.
func (r *reader) value(t *Type, depth int) (Value, error) {
	if err := r.deeper(depth); err != nil {
		return nil, err
	}
	if err := r.charge(1); err != nil {
		return nil, err
	}
	switch t.Kind {
	case KindNull:
		return Null{}, nil
	case KindBool:
		c, err := r.byte()
		if err != nil {
			return nil, err
		}
		if c > 1 {
			return nil, fmt.Errorf("invalid bool %#x", c)
		}
		return Bool(c == 1), nil
	case KindNat:
		return r.nat()
	case KindInt:
		return r.int()
	case KindNat8:
		c, err := r.byte()
		return Nat8(c), err
	case KindInt8:
		c, err := r.byte()
		return Int8(c), err
	case KindNat16, KindInt16:
		if err := r.alloc(wordBytes); err != nil {
			return nil, err
		}
		b, err := r.bytes(2)
		if err != nil {
			return nil, err
		}
		n := binary.LittleEndian.Uint16(b)
		if t.Kind == KindInt16 {
			return Int16(n), nil
		}
		return Nat16(n), nil
	case KindNat32, KindInt32, KindFloat32:
		if err := r.alloc(wordBytes); err != nil {
			return nil, err
		}
		b, err := r.bytes(4)
		if err != nil {
			return nil, err
		}
		n := binary.LittleEndian.Uint32(b)
		switch t.Kind {
		case KindInt32:
			return Int32(n), nil
		case KindFloat32:
			return Float32(math.Float32frombits(n)), nil
		}
		return Nat32(n), nil
	case KindNat64, KindInt64, KindFloat64:
		if err := r.alloc(wordBytes); err != nil {
			return nil, err
		}
		b, err := r.bytes(8)
		if err != nil {
			return nil, err
		}
		n := binary.LittleEndian.Uint64(b)
		switch t.Kind {
		case KindInt64:
			return Int64(n), nil
		case KindFloat64:
			return Float64(math.Float64frombits(n)), nil
		}
		return Nat64(n), nil
	case KindText:
		n, err := r.uleb()
		if err != nil {
			return nil, fmt.Errorf("text length: %w", err)
		}
		b, err := r.bytes(n)
		if err != nil {
			return nil, fmt.Errorf("text: %w", err)
		}
		if !utf8.Valid(b) {
			return nil, errors.New("text is not valid UTF-8")
		}
		if err := r.alloc(slotBytes + int64(len(b))); err != nil {
			return nil, err
		}
		return Text(b), nil
	case KindReserved:
		if t.future {
			return Reserved{}, r.futureValue()
		}
		return Reserved{}, nil
	case KindEmpty:
		return nil, errors.New("cannot decode a value of type empty")
	case KindPrincipal:
		if err := r.alloc(principalBytes); err != nil {
			return nil, err
		}
		p, err := r.principal()
		return Principal{p}, err
	case KindService:
		if err := r.alloc(principalBytes); err != nil {
			return nil, err
		}
		p, err := r.principal()
		return ServiceRef{p}, err
	case KindFunc:
		c, err := r.byte()
		if err != nil {
			return nil, err
		}
		if c != 1 {
			return nil, fmt.Errorf("func reference: unsupported tag %#x (only public references, tag 1, are supported)", c)
		}
		p, err := r.principal()
		if err != nil {
			return nil, fmt.Errorf("func reference: %w", err)
		}
		n, err := r.uleb()
		if err != nil {
			return nil, fmt.Errorf("func method name: %w", err)
		}
		name, err := r.bytes(n)
		if err != nil {
			return nil, fmt.Errorf("func method name: %w", err)
		}
		if !utf8.Valid(name) {
			return nil, errors.New("func method name is not valid UTF-8")
		}
		if err := r.alloc(principalBytes + slotBytes + int64(len(name))); err != nil {
			return nil, err
		}
		return FuncRef{Service: p, Method: string(name)}, nil
	case KindOpt:
		c, err := r.byte()
		if err != nil {
			return nil, err
		}
		switch c {
		case 0:
			return Opt{}, nil
		case 1:
			if err := r.alloc(slotBytes); err != nil {
				return nil, err
			}
			v, err := r.value(t.Elem, depth+1)
			if err != nil {
				return nil, err
			}
			return Opt{v}, nil
		}
		return nil, fmt.Errorf("invalid opt tag %#x", c)
	case KindVec:
		n, err := r.length("vec length", minSize(t.Elem))
		if err != nil {
			return nil, err
		}
		if err := r.charge(int64(n)); err != nil {
			return nil, err
		}
		if t.Elem.Kind == KindNat8 {
			if err := r.alloc(headerBytes); err != nil {
				return nil, err
			}
			b, err := r.bytes(uint64(n))
			if err != nil {
				return nil, err
			}
			return Blob(b), nil // the input's bytes, not a copy
		}
		// Its slots are charged before they are made, at once, so a vec
		// of zero-size elements costs its memory, not its wire bytes.
		if err := r.alloc(headerBytes + slotBytes*int64(n)); err != nil {
			return nil, err
		}
		var vs Vec
		if !r.skipping {
			vs = make(Vec, n)
		}
		for i := 0; i < n; i++ {
			v, err := r.value(t.Elem, depth+1)
			if err != nil {
				return nil, wrapPath(err, "vec element %d", i)
			}
			if vs != nil {
				vs[i] = v
			}
		}
		return vs, nil
	case KindRecord:
		if err := r.alloc(headerBytes + fieldBytes*int64(len(t.Fields))); err != nil {
			return nil, err
		}
		var rec Record
		if !r.skipping {
			rec = make(Record, len(t.Fields))
		}
		for i, f := range t.Fields {
			v, err := r.value(f.Type, depth+1)
			if err != nil {
				return nil, wrapPath(err, "field %d", f.ID)
			}
			if rec != nil {
				rec[i] = FieldValue{f.ID, v}
			}
		}
		return rec, nil
	case KindVariant:
		idx, err := r.uleb()
		if err != nil {
			return nil, fmt.Errorf("variant index: %w", err)
		}
		if idx >= uint64(len(t.Fields)) {
			return nil, fmt.Errorf("variant index %d out of range (%d cases)", idx, len(t.Fields))
		}
		f := t.Fields[idx]
		if err := r.alloc(fieldBytes); err != nil {
			return nil, err
		}
		v, err := r.value(f.Type, depth+1)
		if err != nil {
			return nil, wrapPath(err, "variant case %d", f.ID)
		}
		return Variant{f.ID, v}, nil
	}
	return nil, fmt.Errorf("invalid type kind %d", t.Kind)
}

func (r *reader) nat() (Value, error) {
	start := r.pos
	for {
		c, err := r.byte()
		if err != nil {
			return nil, fmt.Errorf("nat: %w", err)
		}
		if c&0x80 == 0 {
			break
		}
	}
	if r.pos-start <= 9 {
		var n uint64
		var shift uint
		for _, c := range r.buf[start:r.pos] {
			n |= uint64(c&0x7f) << shift
			shift += 7
		}
		return Nat{new(big.Int).SetUint64(n)}, r.alloc(bigIntBytes + wordBytes)
	}
	if err := r.alloc(bigIntBytes + int64(r.pos-start)*2); err != nil { // groups, then words
		return nil, err
	}
	return Nat{groupsToBig(r.groups(start))}, nil
}

func (r *reader) int() (Value, error) {
	start := r.pos
	for {
		c, err := r.byte()
		if err != nil {
			return nil, fmt.Errorf("int: %w", err)
		}
		if c&0x80 == 0 {
			break
		}
	}
	if r.pos-start <= 9 {
		var n int64
		var shift uint
		for _, c := range r.buf[start:r.pos] {
			n |= int64(c&0x7f) << shift
			shift += 7
		}
		if r.buf[r.pos-1]&0x40 != 0 {
			n |= -1 << shift
		}
		return Int{big.NewInt(n)}, r.alloc(bigIntBytes + wordBytes)
	}
	if err := r.alloc(bigIntBytes + int64(r.pos-start)*2); err != nil {
		return nil, err
	}
	return Int{bigFromSleb(r.groups(start))}, nil
}

func (r *reader) groups(start int) []byte {
	g := make([]byte, r.pos-start)
	for i := range g {
		g[i] = r.buf[start+i] & 0x7f
	}
	return g
}

func (r *reader) principal() (principal.Principal, error) {
	c, err := r.byte()
	if err != nil {
		return principal.Principal{}, err
	}
	if c != 1 {
		return principal.Principal{}, fmt.Errorf("principal: unsupported tag %#x (only transparent references, tag 1, are supported)", c)
	}
	n, err := r.uleb()
	if err != nil {
		return principal.Principal{}, fmt.Errorf("principal length: %w", err)
	}
	b, err := r.bytes(n)
	if err != nil {
		return principal.Principal{}, fmt.Errorf("principal: %w", err)
	}
	p, err := principal.FromBytes(b)
	if err != nil {
		return principal.Principal{}, err
	}
	return p, nil
}

// futureValue skips the value of a future type: a byte count m, a reference
// count n, and m bytes. References are not supported.
func (r *reader) futureValue() error {
	m, err := r.uleb()
	if err != nil {
		return fmt.Errorf("future value: %w", err)
	}
	n, err := r.uleb()
	if err != nil {
		return fmt.Errorf("future value: %w", err)
	}
	if n != 0 {
		return errors.New("future value with references is not supported")
	}
	if _, err := r.bytes(m); err != nil {
		return fmt.Errorf("future value: %w", err)
	}
	return nil
}
