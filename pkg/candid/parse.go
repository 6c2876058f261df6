package candid

import (
	"math"
	"strconv"
	"unicode/utf8"
)

// maxParseDepth bounds the nesting of parsed types and values.
const maxParseDepth = 2000

// parser is a recursive-descent parser for the Candid textual syntax. It
// produces syntax trees (typeExpr, valueExpr) that are resolved and
// converted separately.
type parser struct {
	lx    lexer
	ahead []token
	depth int
}

func newParser(src string) *parser { return &parser{lx: lexer{src: src}} }

func (p *parser) peekN(i int) (token, error) {
	for len(p.ahead) <= i {
		t, err := p.lx.next()
		if err != nil {
			return token{}, err
		}
		p.ahead = append(p.ahead, t)
	}
	return p.ahead[i], nil
}

func (p *parser) peek() (token, error) { return p.peekN(0) }

func (p *parser) next() (token, error) {
	t, err := p.peekN(0)
	if err != nil {
		return t, err
	}
	p.ahead = p.ahead[1:]
	return t, nil
}

func (p *parser) errorf(pos int, format string, args ...any) error {
	return syntaxErr(p.lx.src, pos, format, args...)
}

func (p *parser) expect(k tokKind) (token, error) {
	t, err := p.next()
	if err != nil {
		return t, err
	}
	if t.kind != k {
		return t, p.errorf(t.pos, "expected %s, found %s", k, t)
	}
	return t, nil
}

// accept consumes the next token if it is of kind k.
func (p *parser) accept(k tokKind) (bool, error) {
	t, err := p.peek()
	if err != nil {
		return false, err
	}
	if t.kind == k {
		p.ahead = p.ahead[1:]
		return true, nil
	}
	return false, nil
}

// seq parses open, then items separated by sep (one after the last is
// allowed) up to close: the shape of every Candid list, from record fields
// to argument tuples. item parses one item at the parser's position.
func (p *parser) seq(open, sep, close tokKind, item func(t token) error) error {
	if _, err := p.expect(open); err != nil {
		return err
	}
	for {
		t, err := p.peek()
		if err != nil {
			return err
		}
		if t.kind == close {
			p.ahead = p.ahead[1:]
			return nil
		}
		if err := item(t); err != nil {
			return err
		}
		if ok, err := p.accept(sep); err != nil {
			return err
		} else if !ok {
			_, err := p.expect(close)
			return err
		}
	}
}

// checkName checks that a name given as a text literal is valid UTF-8
// (escapes such as \ff can make it invalid; only blobs may be).
func (p *parser) checkName(t token) error {
	if t.kind == tText && !utf8.ValidString(t.text) {
		return p.errorf(t.pos, "name %q is not valid UTF-8", t.text)
	}
	return nil
}

// isKeyword reports whether t is the identifier kw.
func isKeyword(t token, kw string) bool { return t.kind == tID && t.text == kw }

func (p *parser) enter(pos int) error {
	p.depth++
	if p.depth > maxParseDepth {
		return p.errorf(pos, "nesting deeper than %d", maxParseDepth)
	}
	return nil
}

func (p *parser) leave() { p.depth-- }

// ---- types ----

// typeExpr is the syntax tree of a type.
type typeExpr struct {
	pos     int
	kind    Kind   // KindInvalid for a reference to a named type
	ref     string // the referenced name
	elem    *typeExpr
	fields  []fieldExpr
	args    []argExpr
	results []argExpr
	modes   []Mode
	methods []methodExpr
}

type fieldExpr struct {
	id   uint32
	name string
	typ  *typeExpr
}

type argExpr struct {
	name string
	typ  *typeExpr
}

type methodExpr struct {
	pos  int
	name string
	typ  *typeExpr // a func type or a reference
}

// typeKeywords are the words that start a type constructor.
var typeKeywords = map[string]bool{
	"opt": true, "vec": true, "blob": true, "record": true, "variant": true,
	"func": true, "service": true, "principal": true, "null": true,
}

func (p *parser) parseType() (*typeExpr, error) {
	t, err := p.next()
	if err != nil {
		return nil, err
	}
	if t.kind != tID {
		return nil, p.errorf(t.pos, "expected a type, found %s", t)
	}
	if err := p.enter(t.pos); err != nil {
		return nil, err
	}
	defer p.leave()
	e := &typeExpr{pos: t.pos}
	if k, ok := primByName[t.text]; ok {
		e.kind = k
		return e, nil
	}
	switch t.text {
	case "null":
		e.kind = KindNull
	case "principal":
		e.kind = KindPrincipal
	case "opt", "vec":
		e.kind = KindOpt
		if t.text == "vec" {
			e.kind = KindVec
		}
		if e.elem, err = p.parseType(); err != nil {
			return nil, err
		}
	case "blob":
		e.kind = KindVec
		e.elem = &typeExpr{pos: t.pos, kind: KindNat8}
	case "record", "variant":
		e.kind = KindRecord
		if t.text == "variant" {
			e.kind = KindVariant
		}
		if e.fields, err = p.parseFieldTypes(e.kind == KindVariant); err != nil {
			return nil, err
		}
	case "func":
		e.kind = KindFunc
		if err := p.parseFuncType(e); err != nil {
			return nil, err
		}
	case "service":
		e.kind = KindService
		if e.methods, err = p.parseActorType(); err != nil {
			return nil, err
		}
	default:
		if keywords[t.text] || typeKeywords[t.text] {
			return nil, p.errorf(t.pos, "unexpected keyword %q where a type is expected", t.text)
		}
		e.ref = t.text
	}
	return e, nil
}

// parseFieldID parses a numeric field id.
func (p *parser) parseFieldID(t token) (uint32, error) {
	base := 10
	if t.kind == tHex {
		base = 16
	}
	n, err := strconv.ParseUint(t.text, base, 32)
	if err != nil {
		return 0, p.errorf(t.pos, "field id %s out of the 32-bit range", t.text)
	}
	return uint32(n), nil
}

// label parses an optional field label followed by sep (':' in types, '='
// in values): a number, an identifier or a text. It reports whether a label
// was present.
func (p *parser) label(sep tokKind) (id uint32, name string, ok bool, err error) {
	t, err := p.peek()
	if err != nil {
		return 0, "", false, err
	}
	t2, err := p.peekN(1)
	if err != nil {
		return 0, "", false, err
	}
	if t2.kind != sep {
		return 0, "", false, nil
	}
	switch t.kind {
	case tDecimal, tHex:
		id, err = p.parseFieldID(t)
	case tID:
		name, id = t.text, Hash(t.text)
	case tText:
		name, id = t.text, Hash(t.text)
		err = p.checkName(t)
	default:
		return 0, "", false, nil
	}
	if err != nil {
		return 0, "", false, err
	}
	p.ahead = p.ahead[2:]
	return id, name, true, nil
}

func (p *parser) parseFieldTypes(variant bool) ([]fieldExpr, error) {
	var fields []fieldExpr
	next := uint64(0) // id of an unnamed record field
	err := p.seq(tLBrace, tSemi, tRBrace, func(t token) error {
		id, name, ok, err := p.label(tColon)
		if err != nil {
			return err
		}
		var f fieldExpr
		switch {
		case ok:
			typ, err := p.parseType()
			if err != nil {
				return err
			}
			f = fieldExpr{id: id, name: name, typ: typ}
		case variant:
			// A bare label is a case of type null.
			t, err := p.next()
			if err != nil {
				return err
			}
			f.typ = &typeExpr{pos: t.pos, kind: KindNull}
			switch t.kind {
			case tDecimal, tHex:
				if f.id, err = p.parseFieldID(t); err != nil {
					return err
				}
			case tID, tText:
				if err := p.checkName(t); err != nil {
					return err
				}
				f.name, f.id = t.text, Hash(t.text)
			default:
				return p.errorf(t.pos, "expected a variant case, found %s", t)
			}
		default:
			if next > math.MaxUint32 {
				return p.errorf(t.pos, "field id overflows 32 bits")
			}
			typ, err := p.parseType()
			if err != nil {
				return err
			}
			f = fieldExpr{id: uint32(next), typ: typ}
		}
		next = uint64(f.id) + 1
		fields = append(fields, f)
		return nil
	})
	return fields, err
}

// parseTupleType parses "( argtype, ... )", where an argtype may be named.
func (p *parser) parseTupleType() ([]argExpr, error) {
	var args []argExpr
	names := map[string]bool{}
	err := p.seq(tLParen, tComma, tRParen, func(t token) error {
		var a argExpr
		t2, err := p.peekN(1)
		if err != nil {
			return err
		}
		if (t.kind == tID || t.kind == tText) && t2.kind == tColon {
			if err := p.checkName(t); err != nil {
				return err
			}
			a.name = t.text
			if names[a.name] {
				return p.errorf(t.pos, "duplicate argument name %q", a.name)
			}
			names[a.name] = true
			p.ahead = p.ahead[2:]
		}
		if a.typ, err = p.parseType(); err != nil {
			return err
		}
		args = append(args, a)
		return nil
	})
	return args, err
}

// parseFuncType parses "(args) -> (results) modes*" into e.
func (p *parser) parseFuncType(e *typeExpr) error {
	var err error
	if e.args, err = p.parseTupleType(); err != nil {
		return err
	}
	if _, err := p.expect(tArrow); err != nil {
		return err
	}
	if e.results, err = p.parseTupleType(); err != nil {
		return err
	}
	for {
		t, err := p.peek()
		if err != nil {
			return err
		}
		var m Mode
		switch {
		case isKeyword(t, "query"):
			m = ModeQuery
		case isKeyword(t, "oneway"):
			m = ModeOneway
		case isKeyword(t, "composite_query"):
			m = ModeCompositeQuery
		default:
			sortModes(e.modes)
			if containsMode(e.modes, ModeOneway) && len(e.results) > 0 {
				return p.errorf(e.pos, "a oneway function cannot have results")
			}
			return nil
		}
		p.next()
		if containsMode(e.modes, m) {
			return p.errorf(t.pos, "duplicate annotation %s", m)
		}
		e.modes = append(e.modes, m)
	}
}

func containsMode(ms []Mode, m Mode) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

// parseActorType parses "{ name : functype-or-id; ... }".
func (p *parser) parseActorType() ([]methodExpr, error) {
	var ms []methodExpr
	err := p.seq(tLBrace, tSemi, tRBrace, func(t token) error {
		if t.kind != tID && t.kind != tText {
			return p.errorf(t.pos, "expected a method name, found %s", t)
		}
		if err := p.checkName(t); err != nil {
			return err
		}
		p.next()
		m := methodExpr{pos: t.pos, name: t.text}
		if _, err := p.expect(tColon); err != nil {
			return err
		}
		t2, err := p.peek()
		if err != nil {
			return err
		}
		switch {
		case t2.kind == tLParen:
			m.typ = &typeExpr{pos: t2.pos, kind: KindFunc}
			if err := p.enter(t2.pos); err != nil {
				return err
			}
			err := p.parseFuncType(m.typ)
			p.leave()
			if err != nil {
				return err
			}
		case t2.kind == tID && !keywords[t2.text] && !typeKeywords[t2.text]:
			p.next()
			m.typ = &typeExpr{pos: t2.pos, ref: t2.text}
		default:
			return p.errorf(t2.pos, "expected a function type or a type name, found %s", t2)
		}
		ms = append(ms, m)
		return nil
	})
	return ms, err
}

// ---- values ----

type valueKind uint8

const (
	vNull valueKind = iota
	vBool
	vNumber // integer literal: neg, digits, hex
	vFloat
	vText
	vBlob
	vOpt
	vVec
	vRecord
	vVariant
	vPrincipal
	vService
	vFunc
	vAnnot // elem : typ
)

// valueExpr is the syntax tree of a value.
type valueExpr struct {
	pos    int
	kind   valueKind
	b      bool
	neg    bool
	hex    bool
	text   string // digits, text bytes, principal text
	method string // vFunc
	elem   *valueExpr
	elems  []*valueExpr
	fields []fieldValueExpr
	typ    *typeExpr // vAnnot
}

type fieldValueExpr struct {
	id    uint32
	name  string
	value *valueExpr
}

// parseArgValues parses "( annval, ... )".
func (p *parser) parseArgValues() ([]*valueExpr, error) {
	return p.values(tLParen, tComma, tRParen)
}

// values parses a sequence of annotated values (seq).
func (p *parser) values(open, sep, close tokKind) ([]*valueExpr, error) {
	var vs []*valueExpr
	err := p.seq(open, sep, close, func(token) error {
		v, err := p.parseAnnValue()
		if err != nil {
			return err
		}
		vs = append(vs, v)
		return nil
	})
	return vs, err
}

func (p *parser) parseAnnValue() (*valueExpr, error) {
	v, err := p.parseValue()
	if err != nil {
		return nil, err
	}
	ok, err := p.accept(tColon)
	if err != nil || !ok {
		return v, err
	}
	typ, err := p.parseType()
	if err != nil {
		return nil, err
	}
	return &valueExpr{pos: v.pos, kind: vAnnot, elem: v, typ: typ}, nil
}

func (p *parser) textLiteral() (token, error) {
	return p.expect(tText)
}

func (p *parser) parseValue() (*valueExpr, error) {
	t, err := p.next()
	if err != nil {
		return nil, err
	}
	if err := p.enter(t.pos); err != nil {
		return nil, err
	}
	defer p.leave()
	v := &valueExpr{pos: t.pos}
	switch t.kind {
	case tLParen:
		inner, err := p.parseAnnValue()
		if err != nil {
			return nil, err
		}
		_, err = p.expect(tRParen)
		return inner, err
	case tText:
		v.kind, v.text = vText, t.text
		return v, nil
	case tSign, tDecimal, tHex, tFloat:
		if t.kind == tSign {
			v.neg = t.text == "-"
			if t, err = p.next(); err != nil {
				return nil, err
			}
		}
		switch t.kind {
		case tID:
			if t.text != "inf" {
				return nil, p.errorf(t.pos, "expected a number after the sign, found %s", t)
			}
			v.kind, v.text = vFloat, t.text
		case tDecimal:
			v.kind, v.text = vNumber, t.text
		case tHex:
			v.kind, v.text, v.hex = vNumber, t.text, true
		case tFloat:
			v.kind, v.text = vFloat, t.text
		default:
			return nil, p.errorf(t.pos, "expected a number after the sign, found %s", t)
		}
		return v, nil
	case tID:
	default:
		return nil, p.errorf(t.pos, "expected a value, found %s", t)
	}
	switch t.text {
	case "true", "false":
		v.kind, v.b = vBool, t.text == "true"
	case "nan", "NaN", "inf":
		// An extension: Candid has no syntax for these floats.
		v.kind, v.text = vFloat, t.text
	case "null":
		v.kind = vNull
	case "opt":
		v.kind = vOpt
		if v.elem, err = p.parseValue(); err != nil {
			return nil, err
		}
	case "vec":
		v.kind = vVec
		if v.elems, err = p.parseVecValues(); err != nil {
			return nil, err
		}
	case "record":
		v.kind = vRecord
		if v.fields, err = p.parseRecordValues(); err != nil {
			return nil, err
		}
	case "variant":
		v.kind = vVariant
		if v.fields, err = p.parseVariantValue(); err != nil {
			return nil, err
		}
	case "blob":
		s, err := p.textLiteral()
		if err != nil {
			return nil, err
		}
		v.kind, v.text = vBlob, s.text
	case "principal", "service":
		s, err := p.textLiteral()
		if err != nil {
			return nil, err
		}
		v.kind, v.text = vPrincipal, s.text
		if t.text == "service" {
			v.kind = vService
		}
	case "func":
		s, err := p.textLiteral()
		if err != nil {
			return nil, err
		}
		if _, err := p.expect(tDot); err != nil {
			return nil, err
		}
		m, err := p.next()
		if err != nil {
			return nil, err
		}
		if m.kind != tID && m.kind != tText {
			return nil, p.errorf(m.pos, "expected a method name, found %s", m)
		}
		if err := p.checkName(m); err != nil {
			return nil, err
		}
		v.kind, v.text, v.method = vFunc, s.text, m.text
	default:
		return nil, p.errorf(t.pos, "unexpected identifier %q where a value is expected", t.text)
	}
	return v, nil
}

func (p *parser) parseVecValues() ([]*valueExpr, error) {
	return p.values(tLBrace, tSemi, tRBrace)
}

func (p *parser) parseRecordValues() ([]fieldValueExpr, error) {
	var fs []fieldValueExpr
	next := uint64(0) // id of an unnamed field
	err := p.seq(tLBrace, tSemi, tRBrace, func(t token) error {
		id, name, ok, err := p.label(tEq)
		if err != nil {
			return err
		}
		if !ok {
			if next > math.MaxUint32 {
				return p.errorf(t.pos, "field id overflows 32 bits")
			}
			id = uint32(next)
		}
		v, err := p.parseAnnValue()
		if err != nil {
			return err
		}
		fs = append(fs, fieldValueExpr{id: id, name: name, value: v})
		next = uint64(id) + 1
		return nil
	})
	return fs, err
}

func (p *parser) parseVariantValue() ([]fieldValueExpr, error) {
	if _, err := p.expect(tLBrace); err != nil {
		return nil, err
	}
	id, name, ok, err := p.label(tEq)
	if err != nil {
		return nil, err
	}
	var f fieldValueExpr
	if ok {
		v, err := p.parseAnnValue()
		if err != nil {
			return nil, err
		}
		f = fieldValueExpr{id: id, name: name, value: v}
	} else {
		t, err := p.next()
		if err != nil {
			return nil, err
		}
		f.value = &valueExpr{pos: t.pos, kind: vNull}
		switch t.kind {
		case tDecimal, tHex:
			if f.id, err = p.parseFieldID(t); err != nil {
				return nil, err
			}
		case tID, tText:
			if err := p.checkName(t); err != nil {
				return nil, err
			}
			f.name, f.id = t.text, Hash(t.text)
		default:
			return nil, p.errorf(t.pos, "a variant value needs exactly one case, found %s", t)
		}
	}
	if _, err := p.accept(tSemi); err != nil {
		return nil, err
	}
	if _, err := p.expect(tRBrace); err != nil {
		return nil, err
	}
	return []fieldValueExpr{f}, nil
}
