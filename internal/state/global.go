package state

import "fmt"

// GlobalType is the value type of a Wasm global.
type GlobalType uint8

// The value types cordon persists.
const (
	GlobalI32 GlobalType = iota + 1
	GlobalI64
	GlobalF32
	GlobalF64
)

// String names the type as Wasm does.
func (t GlobalType) String() string {
	switch t {
	case GlobalI32:
		return "i32"
	case GlobalI64:
		return "i64"
	case GlobalF32:
		return "f32"
	case GlobalF64:
		return "f64"
	}
	return fmt.Sprintf("globaltype(%d)", uint8(t))
}

// Global is the value of one mutable global, bit-exact (floats as their
// IEEE bits, so NaN payloads survive).
type Global struct {
	Type GlobalType
	Bits uint64
}
