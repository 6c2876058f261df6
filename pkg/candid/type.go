package candid

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Kind is the kind of a Candid type: one of the primitive types or a type
// constructor.
type Kind uint8

// The kinds of Candid types.
const (
	KindInvalid Kind = iota
	KindNull
	KindBool
	KindNat
	KindInt
	KindNat8
	KindNat16
	KindNat32
	KindNat64
	KindInt8
	KindInt16
	KindInt32
	KindInt64
	KindFloat32
	KindFloat64
	KindText
	KindReserved
	KindEmpty
	KindPrincipal
	KindOpt
	KindVec
	KindRecord
	KindVariant
	KindFunc
	KindService
)

var kindNames = [...]string{
	KindInvalid:   "invalid",
	KindNull:      "null",
	KindBool:      "bool",
	KindNat:       "nat",
	KindInt:       "int",
	KindNat8:      "nat8",
	KindNat16:     "nat16",
	KindNat32:     "nat32",
	KindNat64:     "nat64",
	KindInt8:      "int8",
	KindInt16:     "int16",
	KindInt32:     "int32",
	KindInt64:     "int64",
	KindFloat32:   "float32",
	KindFloat64:   "float64",
	KindText:      "text",
	KindReserved:  "reserved",
	KindEmpty:     "empty",
	KindPrincipal: "principal",
	KindOpt:       "opt",
	KindVec:       "vec",
	KindRecord:    "record",
	KindVariant:   "variant",
	KindFunc:      "func",
	KindService:   "service",
}

// String returns the Candid keyword of the kind, such as "nat" or "record".
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// IsPrimitive reports whether k is a primitive type, one that takes no type
// arguments (principal included).
func (k Kind) IsPrimitive() bool { return k >= KindNull && k <= KindPrincipal }

// primByName maps the names of the primitive types that are plain
// identifiers in the Candid grammar (all but null and principal, which are
// keywords) to their kind.
var primByName = map[string]Kind{
	"bool": KindBool, "nat": KindNat, "int": KindInt,
	"nat8": KindNat8, "nat16": KindNat16, "nat32": KindNat32, "nat64": KindNat64,
	"int8": KindInt8, "int16": KindInt16, "int32": KindInt32, "int64": KindInt64,
	"float32": KindFloat32, "float64": KindFloat64,
	"text": KindText, "reserved": KindReserved, "empty": KindEmpty,
}

// Mode is a function annotation.
type Mode uint8

// Function annotations, with their binary encodings as values.
const (
	ModeQuery          Mode = 1
	ModeOneway         Mode = 2
	ModeCompositeQuery Mode = 3
)

// String returns the Candid keyword of the annotation.
func (m Mode) String() string {
	switch m {
	case ModeQuery:
		return "query"
	case ModeOneway:
		return "oneway"
	case ModeCompositeQuery:
		return "composite_query"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// A Type is a Candid type. Types form a graph: recursive types are
// represented by pointer cycles, and a *Type is compared by identity where it
// matters (type tables, subtype caches). Construct types with Prim, OptOf,
// VecOf, RecordOf, TupleOf, VariantOf, FuncOf and ServiceOf, or parse them
// with ParseTypes and ParseService.
//
// The invariants (checked by EncodeArgs, guaranteed by the constructors and
// parsers) are: Fields are sorted by strictly increasing ID, Methods are
// sorted by strictly increasing name, method types are of KindFunc, and Elem
// is non-nil for KindOpt and KindVec.
type Type struct {
	Kind Kind

	// Elem is the element type of opt and vec types.
	Elem *Type
	// Fields are the fields of record and variant types, sorted by ID.
	Fields []Field
	// Args, Results and Modes describe func types.
	Args, Results []*Type
	Modes         []Mode
	// Methods are the methods of service types, sorted by name.
	Methods []Method

	// Name is the name of the type definition this type came from, if any.
	// It carries no meaning; String uses it to print recursive types.
	Name string

	// future marks a type decoded from an unknown ("future") opcode of
	// the binary format. It behaves as reserved.
	future bool
}

// A Field is a field of a record type or a case of a variant type.
type Field struct {
	ID   uint32
	Name string // the name hashed to ID, or "" if unknown
	Type *Type
}

// Label returns the field's name if known, else its numeric ID.
func (f Field) Label() string {
	if f.Name != "" {
		return f.Name
	}
	return strconv.FormatUint(uint64(f.ID), 10)
}

// A Method is a method of a service type.
type Method struct {
	Name string
	Type *Type // of KindFunc
}

// Args returns the argument types of the method.
func (m Method) Args() []*Type { return m.Type.Args }

// Results returns the result types of the method.
func (m Method) Results() []*Type { return m.Type.Results }

// HasMode reports whether the method is annotated with mode.
func (m Method) HasMode(mode Mode) bool { return slices.Contains(m.Type.Modes, mode) }

// IsQuery reports whether the method is a query or composite query.
func (m Method) IsQuery() bool { return m.HasMode(ModeQuery) || m.HasMode(ModeCompositeQuery) }

// Hash returns the Candid field id of a field name:
// the sum of utf8(name)[i] * 223^(k-i) modulo 2^32.
func Hash(name string) uint32 {
	var h uint32
	for i := 0; i < len(name); i++ {
		h = h*223 + uint32(name[i])
	}
	return h
}

// Prim returns a new primitive type of kind k, such as Prim(KindNat).
func Prim(k Kind) *Type { return &Type{Kind: k} }

// OptOf returns the type opt t.
func OptOf(t *Type) *Type { return &Type{Kind: KindOpt, Elem: t} }

// VecOf returns the type vec t.
func VecOf(t *Type) *Type { return &Type{Kind: KindVec, Elem: t} }

// BlobType returns the type blob, that is vec nat8.
func BlobType() *Type { return VecOf(Prim(KindNat8)) }

// NamedField returns a field whose ID is the hash of name.
func NamedField(name string, t *Type) Field { return Field{ID: Hash(name), Name: name, Type: t} }

// RecordOf returns a record type with the given fields, sorted by ID.
func RecordOf(fields ...Field) *Type {
	fs := slices.Clone(fields)
	sortFields(fs)
	return &Type{Kind: KindRecord, Fields: fs}
}

// TupleOf returns the record type record { t0; t1; ... } whose fields are
// numbered from 0.
func TupleOf(types ...*Type) *Type {
	fs := make([]Field, len(types))
	for i, t := range types {
		fs[i] = Field{ID: uint32(i), Type: t}
	}
	return &Type{Kind: KindRecord, Fields: fs}
}

// VariantOf returns a variant type with the given cases, sorted by ID.
func VariantOf(fields ...Field) *Type {
	fs := slices.Clone(fields)
	sortFields(fs)
	return &Type{Kind: KindVariant, Fields: fs}
}

// FuncOf returns the function type (args) -> (results) modes.
func FuncOf(args, results []*Type, modes ...Mode) *Type {
	ms := slices.Clone(modes)
	slices.Sort(ms)
	return &Type{Kind: KindFunc, Args: slices.Clone(args), Results: slices.Clone(results), Modes: slices.Compact(ms)}
}

// ServiceOf returns a service type with the given methods, sorted by name.
func ServiceOf(methods ...Method) *Type {
	ms := slices.Clone(methods)
	slices.SortFunc(ms, func(a, b Method) int { return strings.Compare(a.Name, b.Name) })
	return &Type{Kind: KindService, Methods: ms}
}

func sortFields(fs []Field) {
	slices.SortStableFunc(fs, func(a, b Field) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
}

// Field returns the field of a record or variant type with the given id.
func (t *Type) Field(id uint32) (Field, bool) {
	i, ok := slices.BinarySearchFunc(t.Fields, id, func(f Field, id uint32) int {
		switch {
		case f.ID < id:
			return -1
		case f.ID > id:
			return 1
		}
		return 0
	})
	if !ok {
		return Field{}, false
	}
	return t.Fields[i], true
}

// Method returns the method of a service type with the given name.
func (t *Type) Method(name string) (Method, bool) {
	i, ok := slices.BinarySearchFunc(t.Methods, name, func(m Method, name string) int {
		return strings.Compare(m.Name, name)
	})
	if !ok {
		return Method{}, false
	}
	return t.Methods[i], true
}

// IsBlob reports whether t is vec nat8.
func (t *Type) IsBlob() bool {
	return t != nil && t.Kind == KindVec && t.Elem != nil && t.Elem.Kind == KindNat8
}

// IsTuple reports whether t is a record whose field ids are 0, 1, 2, ...
func (t *Type) IsTuple() bool {
	if t == nil || t.Kind != KindRecord {
		return false
	}
	for i, f := range t.Fields {
		if f.ID != uint32(i) {
			return false
		}
	}
	return true
}

// nullable reports whether null <: t, that is whether t is null, opt or
// reserved. A record field or an argument of such a type may be absent.
func nullable(t *Type) bool {
	return t != nil && (t.Kind == KindNull || t.Kind == KindOpt || t.Kind == KindReserved)
}

// nullValue returns the value that stands for an absent field of a
// nullable type.
func nullValue(t *Type) Value {
	switch t.Kind {
	case KindOpt:
		return Opt{}
	case KindReserved:
		return Reserved{}
	}
	return Null{}
}

// String returns the type in Candid syntax, such as
// "record { name : text; age : nat8 }". A recursive occurrence of a type is
// printed as its Name (or a generated name "rec_N" if it has none), so the
// result of a recursive type refers to a definition it does not contain.
// Shared subtypes are printed in full at each occurrence; the output is
// cut short with "..." beyond 1 MiB or 2000 levels of nesting (only
// hostile types get there).
func (t *Type) String() string { return t.format(1 << 20) }

// format returns t in Candid syntax, cut short with "..." beyond about
// limit bytes.
func (t *Type) format(limit int) string {
	p := typePrinter{onStack: map[*Type]bool{}, names: map[*Type]string{}, limit: limit}
	p.typ(t, 0)
	if p.cut {
		p.sb.WriteString("...")
	}
	return p.sb.String()
}

// brief returns t in Candid syntax for an error message.
func (t *Type) brief() string { return t.format(100) }

// maxPrintDepth bounds the nesting printed by Type.String.
const maxPrintDepth = maxParseDepth - 100

type typePrinter struct {
	sb      strings.Builder
	onStack map[*Type]bool
	names   map[*Type]string
	limit   int
	cut     bool
}

func (p *typePrinter) typ(t *Type, depth int) {
	if p.cut {
		return
	}
	if p.sb.Len() > p.limit || depth > maxPrintDepth {
		p.cut = true
		return
	}
	if t == nil {
		p.sb.WriteString("<nil>")
		return
	}
	if t.Kind.IsPrimitive() {
		p.sb.WriteString(t.Kind.String())
		return
	}
	if p.onStack[t] {
		p.sb.WriteString(p.name(t))
		return
	}
	p.onStack[t] = true
	defer delete(p.onStack, t)
	switch t.Kind {
	case KindOpt, KindVec:
		if t.IsBlob() {
			p.sb.WriteString("blob")
			return
		}
		p.sb.WriteString(t.Kind.String())
		p.sb.WriteByte(' ')
		p.typ(t.Elem, depth+1)
	case KindRecord, KindVariant:
		p.sb.WriteString(t.Kind.String())
		p.sb.WriteString(" {")
		tuple := t.IsTuple() && t.Kind == KindRecord
		for i, f := range t.Fields {
			if p.cut {
				return
			}
			if i > 0 {
				p.sb.WriteByte(';')
			}
			p.sb.WriteByte(' ')
			if tuple {
				p.typ(f.Type, depth+1)
				continue
			}
			p.label(f)
			if t.Kind == KindVariant && f.Type != nil && f.Type.Kind == KindNull {
				continue
			}
			p.sb.WriteString(" : ")
			p.typ(f.Type, depth+1)
		}
		if len(t.Fields) > 0 {
			p.sb.WriteByte(' ')
		}
		p.sb.WriteByte('}')
	case KindFunc:
		p.sb.WriteString("func ")
		p.funcSig(t, depth)
	case KindService:
		p.sb.WriteString("service ")
		p.methods(t, depth)
	default:
		p.sb.WriteString(t.Kind.String())
	}
}

func (p *typePrinter) name(t *Type) string {
	if t.Name != "" {
		return t.Name
	}
	if n, ok := p.names[t]; ok {
		return n
	}
	n := "rec_" + strconv.Itoa(len(p.names))
	p.names[t] = n
	return n
}

func (p *typePrinter) label(f Field) {
	if f.Name != "" {
		p.sb.WriteString(quoteIdent(f.Name))
	} else {
		p.sb.WriteString(strconv.FormatUint(uint64(f.ID), 10))
	}
}

func (p *typePrinter) tuple(ts []*Type, depth int) {
	p.sb.WriteByte('(')
	for i, a := range ts {
		if i > 0 {
			p.sb.WriteString(", ")
		}
		p.typ(a, depth+1)
	}
	p.sb.WriteByte(')')
}

func (p *typePrinter) funcSig(t *Type, depth int) {
	p.tuple(t.Args, depth)
	p.sb.WriteString(" -> ")
	p.tuple(t.Results, depth)
	for _, m := range t.Modes {
		p.sb.WriteByte(' ')
		p.sb.WriteString(m.String())
	}
}

func (p *typePrinter) methods(t *Type, depth int) {
	p.sb.WriteByte('{')
	for i, m := range t.Methods {
		if i > 0 {
			p.sb.WriteByte(';')
		}
		p.sb.WriteByte(' ')
		p.sb.WriteString(quoteIdent(m.Name))
		p.sb.WriteString(" : ")
		switch {
		case m.Type == nil:
			p.sb.WriteString("<nil>")
		case m.Type.Kind == KindFunc && !p.onStack[m.Type]:
			p.onStack[m.Type] = true
			p.funcSig(m.Type, depth+1)
			delete(p.onStack, m.Type)
		default:
			p.typ(m.Type, depth+1)
		}
	}
	if len(t.Methods) > 0 {
		p.sb.WriteByte(' ')
	}
	p.sb.WriteByte('}')
}

// keywords are the reserved words of the Candid grammar; a name equal to
// one of them must be quoted.
var keywords = map[string]bool{
	"import": true, "service": true, "func": true, "type": true, "opt": true,
	"vec": true, "record": true, "variant": true, "blob": true, "principal": true,
	"nat": true, "nat8": true, "nat16": true, "nat32": true, "nat64": true,
	"int": true, "int8": true, "int16": true, "int32": true, "int64": true,
	"float32": true, "float64": true, "bool": true, "text": true, "null": true,
	"reserved": true, "empty": true, "oneway": true, "query": true,
	"composite_query": true, "true": true, "false": true,
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

// quoteIdent returns name as a Candid name: an identifier if possible, else
// a quoted text literal.
func quoteIdent(name string) string {
	if isIdent(name) && !keywords[name] {
		return name
	}
	return quoteText(name)
}

// checkType validates the invariants of t and the types reachable from it.
func checkType(t *Type) error {
	seen := map[*Type]bool{}
	var check func(t *Type, depth int) error
	check = func(t *Type, depth int) error {
		if t == nil {
			return fmt.Errorf("nil type")
		}
		if seen[t] {
			return nil
		}
		seen[t] = true
		if depth > maxTypeDepth {
			return fmt.Errorf("type nested deeper than %d", maxTypeDepth)
		}
		switch t.Kind {
		case KindOpt, KindVec:
			return check(t.Elem, depth+1)
		case KindRecord, KindVariant:
			for i, f := range t.Fields {
				if i > 0 && f.ID <= t.Fields[i-1].ID {
					if f.ID == t.Fields[i-1].ID {
						return fmt.Errorf("%s: duplicate field id %d", t.Kind, f.ID)
					}
					return fmt.Errorf("%s: fields not sorted by id", t.Kind)
				}
				if err := check(f.Type, depth+1); err != nil {
					return fmt.Errorf("field %s: %w", f.Label(), err)
				}
			}
		case KindFunc:
			for _, m := range t.Modes {
				if m < ModeQuery || m > ModeCompositeQuery {
					return fmt.Errorf("func: invalid annotation %d", m)
				}
			}
			for _, a := range t.Args {
				if err := check(a, depth+1); err != nil {
					return fmt.Errorf("func argument: %w", err)
				}
			}
			for _, r := range t.Results {
				if err := check(r, depth+1); err != nil {
					return fmt.Errorf("func result: %w", err)
				}
			}
		case KindService:
			for i, m := range t.Methods {
				if i > 0 && m.Name <= t.Methods[i-1].Name {
					if m.Name == t.Methods[i-1].Name {
						return fmt.Errorf("service: duplicate method %q", m.Name)
					}
					return fmt.Errorf("service: methods not sorted by name")
				}
				if m.Type == nil || m.Type.Kind != KindFunc {
					return fmt.Errorf("service: method %q does not have a func type", m.Name)
				}
				if err := check(m.Type, depth+1); err != nil {
					return fmt.Errorf("method %q: %w", m.Name, err)
				}
			}
		default:
			if !t.Kind.IsPrimitive() {
				return fmt.Errorf("invalid kind %d", t.Kind)
			}
		}
		return nil
	}
	return check(t, 0)
}
