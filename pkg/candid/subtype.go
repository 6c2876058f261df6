package candid

import "slices"

// IsSubtype reports whether t1 <: t2 in the Candid subtyping relation, that
// is whether a value of type t1 may be read at type t2. Recursive types
// are handled coinductively.
func IsSubtype(t1, t2 *Type) bool {
	st := &state{budget: DefaultBaseCost, maxDepth: DefaultMaxDepth}
	ok, err := newSubtyper(st).sub(t1, t2, 0)
	return ok && err == nil
}

type typePair struct{ a, b *Type }

type subtyper struct {
	*state
	assumed map[typePair]bool // pairs being checked or found to hold
	// added lists the pairs of assumed in the order they were assumed: a
	// pair concluded while an earlier one was being checked may rest on
	// that assumption, so when the earlier one fails, it and every pair
	// after it are forgotten.
	added  []typePair
	failed map[typePair]bool // pairs found not to hold
}

func newSubtyper(st *state) *subtyper {
	return &subtyper{state: st, assumed: map[typePair]bool{}, failed: map[typePair]bool{}}
}

// sub decides t1 <: t2. The error is non-nil only when a resource limit is
// exhausted.
func (s *subtyper) sub(t1, t2 *Type, depth int) (bool, error) {
	if t1 == nil || t2 == nil {
		return false, nil
	}
	if t2.Kind == KindReserved || t1.Kind == KindEmpty && !t1.future {
		return true, nil
	}
	if t2.Kind == KindOpt {
		// By the special opt rules every type is a subtype of an
		// option: null, reserved and opt t go to null when the
		// contents do not fit, and so do other types.
		return true, nil
	}
	if t1.future {
		return false, nil
	}
	if t1.Kind.IsPrimitive() || t2.Kind.IsPrimitive() {
		switch {
		case t1.Kind == t2.Kind:
			return true, nil
		case t1.Kind == KindNat && t2.Kind == KindInt:
			return true, nil
		case t1.Kind == KindService && t2.Kind == KindPrincipal:
			return true, nil
		}
		return false, nil
	}
	if t1.Kind != t2.Kind {
		return false, nil
	}
	key := typePair{t1, t2}
	if s.assumed[key] {
		return true, nil
	}
	if s.failed[key] {
		return false, nil
	}
	if err := s.deeper(depth); err != nil {
		return false, err
	}
	if err := s.charge(1); err != nil {
		return false, err
	}
	mark := len(s.added)
	s.assumed[key] = true
	s.added = append(s.added, key)
	ok, err := s.structural(t1, t2, depth)
	if err != nil {
		return false, err
	}
	if !ok {
		// A failure rests on no assumption (assumed pairs only
		// ever answer true), so failed keeps it for good; what was
		// concluded since this pair was assumed may rest on it.
		for _, p := range s.added[mark:] {
			delete(s.assumed, p)
		}
		s.added = s.added[:mark]
		s.failed[key] = true
	}
	return ok, nil
}

func (s *subtyper) structural(t1, t2 *Type, depth int) (bool, error) {
	switch t1.Kind {
	case KindVec:
		return s.sub(t1.Elem, t2.Elem, depth+1)
	case KindRecord:
		for _, f2 := range t2.Fields {
			if err := s.charge(1); err != nil {
				return false, err
			}
			f1, ok := t1.Field(f2.ID)
			if !ok {
				if !nullable(f2.Type) {
					return false, nil
				}
				continue
			}
			if ok, err := s.sub(f1.Type, f2.Type, depth+1); !ok || err != nil {
				return false, err
			}
		}
		return true, nil
	case KindVariant:
		for _, f1 := range t1.Fields {
			if err := s.charge(1); err != nil {
				return false, err
			}
			f2, ok := t2.Field(f1.ID)
			if !ok {
				return false, nil
			}
			if ok, err := s.sub(f1.Type, f2.Type, depth+1); !ok || err != nil {
				return false, err
			}
		}
		return true, nil
	case KindFunc:
		return s.funcSub(t1, t2, depth)
	case KindService:
		for _, m2 := range t2.Methods {
			if err := s.charge(1); err != nil {
				return false, err
			}
			m1, ok := t1.Method(m2.Name)
			if !ok {
				return false, nil
			}
			if ok, err := s.sub(m1.Type, m2.Type, depth+1); !ok || err != nil {
				return false, err
			}
		}
		return true, nil
	}
	return false, nil
}

// funcSub decides func t1 <: func t2: the annotations are equal, the
// arguments are contravariant and the results covariant, each list treated
// like a tuple record (so optional arguments may be dropped or added).
func (s *subtyper) funcSub(t1, t2 *Type, depth int) (bool, error) {
	m1, m2 := slices.Clone(t1.Modes), slices.Clone(t2.Modes)
	slices.Sort(m1)
	slices.Sort(m2)
	if !slices.Equal(slices.Compact(m1), slices.Compact(m2)) {
		return false, nil
	}
	// record { t2.Args } <: record { t1.Args }
	if ok, err := s.tupleSub(t2.Args, t1.Args, depth); !ok || err != nil {
		return false, err
	}
	// record { t1.Results } <: record { t2.Results }
	return s.tupleSub(t1.Results, t2.Results, depth)
}

// tupleSub decides record { a } <: record { b } for tuple records.
func (s *subtyper) tupleSub(a, b []*Type, depth int) (bool, error) {
	for i, tb := range b {
		if err := s.charge(1); err != nil {
			return false, err
		}
		if i >= len(a) {
			if !nullable(tb) {
				return false, nil
			}
			continue
		}
		if ok, err := s.sub(a[i], tb, depth+1); !ok || err != nil {
			return false, err
		}
	}
	return true, nil
}
