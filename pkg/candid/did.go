package candid

import (
	"slices"
	"strings"
)

// A Service is a parsed service description (a .did file).
type Service struct {
	// Defs are the named type definitions, in source order.
	Defs []TypeDef
	// InitArgs are the arguments of a service constructor
	// ("service : (init args) -> { ... }"); nil if the service is not
	// a constructor. HasInit distinguishes "() ->" from no constructor.
	InitArgs []*Type
	HasInit  bool
	// Type is the service type (KindService). It is nil if the file
	// has only type definitions.
	Type *Type
}

// A TypeDef is a named type definition "type Name = T".
type TypeDef struct {
	Name string
	Type *Type
}

// Methods returns the methods of the service, sorted by name.
func (s *Service) Methods() []Method {
	if s.Type == nil {
		return nil
	}
	return s.Type.Methods
}

// Method returns the method with the given name.
func (s *Service) Method(name string) (Method, bool) {
	if s.Type == nil {
		return Method{}, false
	}
	return s.Type.Method(name)
}

// Lookup returns the type defined with the given name.
func (s *Service) Lookup(name string) (*Type, bool) {
	for _, d := range s.Defs {
		if d.Name == name {
			return d.Type, true
		}
	}
	return nil, false
}

// ParseService parses a Candid service description: type definitions
// followed by an optional service declaration, such as
//
//	type user = record { name : text; age : nat8 };
//	service : (init : nat) -> {
//	  add : (user) -> (nat64);
//	  get : (nat64) -> (opt user) query;
//	}
//
// Definitions may be mutually recursive; a cycle must go through a type
// constructor ("type A = B; type B = A;" is rejected). Imports are not
// supported.
func ParseService(did string) (*Service, error) {
	p := newParser(did)
	env, err := p.parseDefs()
	if err != nil {
		return nil, err
	}
	s := &Service{}
	t, err := p.peek()
	if err != nil {
		return nil, err
	}
	var actor *typeExpr
	var initArgs []argExpr
	if isKeyword(t, "service") {
		p.next()
		if t2, err := p.peek(); err != nil {
			return nil, err
		} else if t2.kind == tID {
			p.next() // the service name, which is immaterial
		}
		if _, err := p.expect(tColon); err != nil {
			return nil, err
		}
		if t2, err := p.peek(); err != nil {
			return nil, err
		} else if t2.kind == tLParen {
			if initArgs, err = p.parseTupleType(); err != nil {
				return nil, err
			}
			s.HasInit = true
			if _, err := p.expect(tArrow); err != nil {
				return nil, err
			}
		}
		t2, err := p.peek()
		if err != nil {
			return nil, err
		}
		switch {
		case t2.kind == tLBrace:
			ms, err := p.parseActorType()
			if err != nil {
				return nil, err
			}
			actor = &typeExpr{pos: t2.pos, kind: KindService, methods: ms}
		case t2.kind == tID && !keywords[t2.text] && !typeKeywords[t2.text]:
			p.next()
			actor = &typeExpr{pos: t2.pos, ref: t2.text}
		default:
			return nil, p.errorf(t2.pos, "expected a service type, found %s", t2)
		}
		if _, err := p.accept(tSemi); err != nil {
			return nil, err
		}
	}
	if _, err := p.expect(tEOF); err != nil {
		return nil, err
	}
	if s.Defs, err = env.resolveAll(); err != nil {
		return nil, err
	}
	if actor != nil {
		if s.Type, err = env.resolve(actor); err != nil {
			return nil, err
		}
		if s.Type.Kind != KindService {
			return nil, p.errorf(actor.pos, "%s is not a service type", actor.ref)
		}
		for _, a := range initArgs {
			t, err := env.resolve(a.typ)
			if err != nil {
				return nil, err
			}
			s.InitArgs = append(s.InitArgs, t)
		}
		if s.HasInit && s.InitArgs == nil {
			s.InitArgs = []*Type{}
		}
	}
	return s, nil
}

// ParseTypes parses a parenthesized list of types, such as
// "(nat, record { name : text })", optionally preceded by type definitions
// ("type T = vec T; (T, nat)").
func ParseTypes(text string) ([]*Type, error) {
	p := newParser(text)
	env, err := p.parseDefs()
	if err != nil {
		return nil, err
	}
	args, err := p.parseTupleType()
	if err != nil {
		return nil, err
	}
	if _, err := p.expect(tEOF); err != nil {
		return nil, err
	}
	if _, err := env.resolveAll(); err != nil {
		return nil, err
	}
	return env.resolveArgs(args)
}

// ParseType parses a single type, which may refer to the definitions of s
// (s may be nil).
func ParseType(text string, s *Service) (*Type, error) {
	p := newParser(text)
	e, err := p.parseType()
	if err != nil {
		return nil, err
	}
	if _, err := p.expect(tEOF); err != nil {
		return nil, err
	}
	env := newTypeEnv(text)
	if s != nil {
		for _, d := range s.Defs {
			env.resolved[d.Name] = d.Type
		}
	}
	return env.resolve(e)
}

// typeEnv resolves type syntax trees into Types, with named definitions.
type typeEnv struct {
	src      string
	order    []string
	defs     map[string]*typeExpr
	resolved map[string]*Type
	methods  []methodRef // methods whose type was not yet built (resolveAll)
}

// methodRef is a service method whose type is a reference to a definition.
type methodRef struct {
	pos       int
	name, ref string
	t         *Type
}

func newTypeEnv(src string) *typeEnv {
	return &typeEnv{
		src:      src,
		defs:     map[string]*typeExpr{},
		resolved: map[string]*Type{},
	}
}

// parseDefs parses "type Name = T;" definitions (and rejects imports).
func (p *parser) parseDefs() (*typeEnv, error) {
	env := newTypeEnv(p.lx.src)
	for {
		t, err := p.peek()
		if err != nil {
			return nil, err
		}
		switch {
		case isKeyword(t, "import"):
			return nil, p.errorf(t.pos, "imports are not supported")
		case isKeyword(t, "type"):
			p.next()
			name, err := p.expect(tID)
			if err != nil {
				return nil, err
			}
			if keywords[name.text] || typeKeywords[name.text] {
				return nil, p.errorf(name.pos, "cannot define a type named %q: it is a keyword", name.text)
			}
			if _, dup := env.defs[name.text]; dup {
				return nil, p.errorf(name.pos, "duplicate definition of type %q", name.text)
			}
			if _, err := p.expect(tEq); err != nil {
				return nil, err
			}
			e, err := p.parseType()
			if err != nil {
				return nil, err
			}
			env.defs[name.text] = e
			env.order = append(env.order, name.text)
			if _, err := p.accept(tSemi); err != nil {
				return nil, err
			}
		default:
			return env, nil
		}
	}
}

func (env *typeEnv) errorf(pos int, format string, args ...any) error {
	return syntaxErr(env.src, pos, format, args...)
}

// resolveAll resolves every definition without recursing from one
// definition into another: a .did file may hold a chain of a million
// definitions (type a0 = opt a1; type a1 = opt a2; ...), and a Go stack
// frame per link overflowed the stack, a fatal error. So every definition
// that is not an alias first gets its *Type, empty, then each alias the
// *Type of its target, then each body is built in turn, its references to
// names being those *Types. Later traversals of the result are bounded by
// checkType's depth limit.
func (env *typeEnv) resolveAll() ([]TypeDef, error) {
	for _, name := range env.order {
		if env.defs[name].kind != KindInvalid {
			env.resolved[name] = &Type{Name: name}
		}
	}
	for _, name := range env.order {
		if err := env.resolveAlias(name); err != nil {
			return nil, err
		}
	}
	for _, name := range env.order {
		if e := env.defs[name]; e.kind != KindInvalid {
			if err := env.build(e, env.resolved[name], 0); err != nil {
				return nil, err
			}
		}
	}
	// A method's type may be a definition built after the service that
	// names it: checked once all are built.
	for _, m := range env.methods {
		if m.t.Kind != KindFunc {
			return nil, env.errorf(m.pos, "method %q: %s is not a function type", m.name, m.ref)
		}
	}
	env.methods = nil
	defs := make([]TypeDef, 0, len(env.order))
	for _, name := range env.order {
		defs = append(defs, TypeDef{name, env.resolved[name]})
	}
	return defs, nil
}

// resolveAlias gives name, if it is an alias (type A = B), the *Type of the
// first definition down its chain of aliases that is not one. Every alias
// on the chain is resolved on the way, so each is followed once.
func (env *typeEnv) resolveAlias(name string) error {
	var chain []string
	onChain := map[string]bool{}
	for n := name; ; {
		if t, ok := env.resolved[n]; ok {
			for _, a := range chain {
				env.resolved[a] = t
			}
			return nil
		}
		e, ok := env.defs[n]
		if !ok {
			last := env.defs[chain[len(chain)-1]]
			return env.errorf(last.pos, "undefined type %q", n)
		}
		if onChain[n] {
			return env.errorf(e.pos, "type %q is defined in terms of itself only (a cycle of aliases)", n)
		}
		onChain[n] = true
		chain = append(chain, n)
		n = e.ref
	}
}

func (env *typeEnv) resolveArgs(args []argExpr) ([]*Type, error) {
	ts := make([]*Type, len(args))
	for i, a := range args {
		t, err := env.resolve(a.typ)
		if err != nil {
			return nil, err
		}
		ts[i] = t
	}
	return ts, nil
}

// lookup returns the type named name; every definition is resolved
// (resolveAll) before a reference is looked up.
func (env *typeEnv) lookup(name string, pos int) (*Type, error) {
	if t, ok := env.resolved[name]; ok {
		return t, nil
	}
	return nil, env.errorf(pos, "undefined type %q", name)
}

// resolve converts a syntax tree into a Type.
func (env *typeEnv) resolve(e *typeExpr) (*Type, error) {
	if e.kind == KindInvalid {
		return env.lookup(e.ref, e.pos)
	}
	t := &Type{}
	if err := env.build(e, t, 0); err != nil {
		return nil, err
	}
	return t, nil
}

func (env *typeEnv) sub(e *typeExpr, depth int) (*Type, error) {
	if e.kind == KindInvalid {
		return env.lookup(e.ref, e.pos)
	}
	t := &Type{}
	return t, env.build(e, t, depth+1)
}

// build fills t (which may already be referenced, for recursion) from e.
func (env *typeEnv) build(e *typeExpr, t *Type, depth int) error {
	if depth > maxParseDepth {
		return env.errorf(e.pos, "type nested too deeply")
	}
	t.Kind = e.kind
	var err error
	switch e.kind {
	case KindOpt, KindVec:
		t.Elem, err = env.sub(e.elem, depth)
	case KindRecord, KindVariant:
		t.Fields = make([]Field, len(e.fields))
		for i, f := range e.fields {
			ft, err := env.sub(f.typ, depth)
			if err != nil {
				return err
			}
			t.Fields[i] = Field{ID: f.id, Name: f.name, Type: ft}
		}
		sortFields(t.Fields)
		for i := 1; i < len(t.Fields); i++ {
			if t.Fields[i].ID == t.Fields[i-1].ID {
				a, b := t.Fields[i-1].Label(), t.Fields[i].Label()
				if a != b {
					return env.errorf(e.pos, "fields %q and %q have the same id %d (hash collision)", a, b, t.Fields[i].ID)
				}
				return env.errorf(e.pos, "duplicate field %s", a)
			}
		}
	case KindFunc:
		if t.Args, err = env.subArgs(e.args, depth); err != nil {
			return err
		}
		if t.Results, err = env.subArgs(e.results, depth); err != nil {
			return err
		}
		t.Modes = slices.Clone(e.modes)
	case KindService:
		t.Methods = make([]Method, len(e.methods))
		for i, m := range e.methods {
			mt, err := env.sub(m.typ, depth)
			if err != nil {
				return err
			}
			switch mt.Kind {
			case KindFunc:
			case KindInvalid: // a definition not built yet
				env.methods = append(env.methods, methodRef{m.pos, m.name, m.typ.ref, mt})
			default:
				return env.errorf(m.pos, "method %q: %s is not a function type", m.name, m.typ.ref)
			}
			t.Methods[i] = Method{Name: m.name, Type: mt}
		}
		slices.SortFunc(t.Methods, func(a, b Method) int { return strings.Compare(a.Name, b.Name) })
		for i := 1; i < len(t.Methods); i++ {
			if t.Methods[i].Name == t.Methods[i-1].Name {
				return env.errorf(e.pos, "duplicate method %q", t.Methods[i].Name)
			}
		}
	}
	return err
}

func (env *typeEnv) subArgs(args []argExpr, depth int) ([]*Type, error) {
	ts := make([]*Type, len(args))
	for i, a := range args {
		t, err := env.sub(a.typ, depth)
		if err != nil {
			return nil, err
		}
		ts[i] = t
	}
	return ts, nil
}
