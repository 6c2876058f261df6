package candid

import (
	"bytes"
	"math"
	"math/big"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// A Value is a Candid value. The concrete types are Null, Bool, Nat, Int,
// Nat8, Nat16, Nat32, Nat64, Int8, Int16, Int32, Int64, Float32, Float64,
// Text, Reserved, Principal, Opt, Vec, Blob, Record, Variant, FuncRef and
// ServiceRef. A value does not carry its type: Args pairs values with types.
type Value interface {
	isValue()
}

type (
	// Null is the value of type null.
	Null struct{}
	// Bool is a value of type bool.
	Bool bool
	// Nat is a value of type nat. A nil Int stands for zero.
	Nat struct{ *big.Int }
	// Int is a value of type int. A nil Int stands for zero.
	Int struct{ *big.Int }
	// Nat8 is a value of type nat8.
	Nat8 uint8
	// Nat16 is a value of type nat16.
	Nat16 uint16
	// Nat32 is a value of type nat32.
	Nat32 uint32
	// Nat64 is a value of type nat64.
	Nat64 uint64
	// Int8 is a value of type int8.
	Int8 int8
	// Int16 is a value of type int16.
	Int16 int16
	// Int32 is a value of type int32.
	Int32 int32
	// Int64 is a value of type int64.
	Int64 int64
	// Float32 is a value of type float32.
	Float32 float32
	// Float64 is a value of type float64.
	Float64 float64
	// Text is a value of type text, valid UTF-8.
	Text string
	// Reserved is the value of type reserved (which carries no information).
	Reserved struct{}
	// Principal is a value of type principal.
	Principal struct{ principal.Principal }
	// Opt is a value of an opt type: Value is nil for null (none).
	Opt struct{ Value Value }
	// Vec is a value of a vec type.
	Vec []Value
	// Blob is a value of type vec nat8 (blob), stored compactly.
	Blob []byte
	// Record is a value of a record type: its fields sorted by ID.
	Record []FieldValue
	// Variant is a value of a variant type: the chosen case and its value.
	Variant struct {
		ID    uint32
		Value Value
	}
	// FuncRef is a value of a func type: a public method of a service.
	FuncRef struct {
		Service principal.Principal
		Method  string
	}
	// ServiceRef is a value of a service type.
	ServiceRef struct{ principal.Principal }
)

// A FieldValue is a field of a record value.
type FieldValue struct {
	ID    uint32
	Value Value
}

func (Null) isValue()       {}
func (Bool) isValue()       {}
func (Nat) isValue()        {}
func (Int) isValue()        {}
func (Nat8) isValue()       {}
func (Nat16) isValue()      {}
func (Nat32) isValue()      {}
func (Nat64) isValue()      {}
func (Int8) isValue()       {}
func (Int16) isValue()      {}
func (Int32) isValue()      {}
func (Int64) isValue()      {}
func (Float32) isValue()    {}
func (Float64) isValue()    {}
func (Text) isValue()       {}
func (Reserved) isValue()   {}
func (Principal) isValue()  {}
func (Opt) isValue()        {}
func (Vec) isValue()        {}
func (Blob) isValue()       {}
func (Record) isValue()     {}
func (Variant) isValue()    {}
func (FuncRef) isValue()    {}
func (ServiceRef) isValue() {}

// NatOf returns the nat value n.
func NatOf(n uint64) Nat { return Nat{new(big.Int).SetUint64(n)} }

// IntOf returns the int value n.
func IntOf(n int64) Int { return Int{big.NewInt(n)} }

// big returns the number, with nil as zero.
func (n Nat) big() *big.Int {
	if n.Int == nil {
		return new(big.Int)
	}
	return n.Int
}

func (i Int) big() *big.Int {
	if i.Int == nil {
		return new(big.Int)
	}
	return i.Int
}

// Get returns the value of the field with the given id.
func (r Record) Get(id uint32) (Value, bool) {
	for _, f := range r {
		if f.ID == id {
			return f.Value, true
		}
	}
	return nil, false
}

// GetNamed returns the value of the field with the given name.
func (r Record) GetNamed(name string) (Value, bool) { return r.Get(Hash(name)) }

// Equal reports whether two values are equal. Blob and a Vec of Nat8 with
// the same bytes are equal, as are Null and Opt{nil}; floats compare by
// value, except that NaN equals NaN.
func Equal(a, b Value) bool {
	return equal(a, b, 0)
}

func equal(a, b Value, depth int) bool {
	if depth > maxEqualDepth {
		return false
	}
	switch a := a.(type) {
	case Null:
		switch b := b.(type) {
		case Null:
			return true
		case Opt:
			return b.Value == nil
		}
		return false
	case Opt:
		if b, ok := b.(Null); ok {
			return a.Value == nil && b == Null{}
		}
		b, ok := b.(Opt)
		if !ok || (a.Value == nil) != (b.Value == nil) {
			return false
		}
		return a.Value == nil || equal(a.Value, b.Value, depth+1)
	case Nat:
		b, ok := b.(Nat)
		return ok && a.big().Cmp(b.big()) == 0
	case Int:
		b, ok := b.(Int)
		return ok && a.big().Cmp(b.big()) == 0
	case Float32:
		b, ok := b.(Float32)
		return ok && (a == b || a != a && b != b)
	case Float64:
		b, ok := b.(Float64)
		return ok && (a == b || math.IsNaN(float64(a)) && math.IsNaN(float64(b)))
	case Blob:
		switch b := b.(type) {
		case Blob:
			return bytes.Equal(a, b)
		case Vec:
			return equalBlobVec(a, b)
		}
		return false
	case Vec:
		switch b := b.(type) {
		case Blob:
			return equalBlobVec(b, a)
		case Vec:
			if len(a) != len(b) {
				return false
			}
			for i := range a {
				if !equal(a[i], b[i], depth+1) {
					return false
				}
			}
			return true
		}
		return false
	case Record:
		b, ok := b.(Record)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if a[i].ID != b[i].ID || !equal(a[i].Value, b[i].Value, depth+1) {
				return false
			}
		}
		return true
	case Variant:
		b, ok := b.(Variant)
		return ok && a.ID == b.ID && equal(a.Value, b.Value, depth+1)
	case FuncRef:
		b, ok := b.(FuncRef)
		return ok && a.Service.Equal(b.Service) && a.Method == b.Method
	case nil:
		return b == nil
	}
	// The remaining types are comparable.
	return a == b
}

const maxEqualDepth = 10000

func equalBlobVec(a Blob, b Vec) bool {
	if len(a) != len(b) {
		return false
	}
	for i, v := range b {
		if n, ok := v.(Nat8); !ok || byte(n) != a[i] {
			return false
		}
	}
	return true
}
