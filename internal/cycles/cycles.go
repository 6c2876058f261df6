// Package cycles implements exact 128-bit cycle amounts.
//
// The IC accounts cycles as unsigned 128-bit integers. Every operation here is
// checked: subtraction below zero and addition past 2^128-1 are reported, never
// wrapped, because a silent wrap would mint or destroy cycles.
package cycles

import (
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"strings"
)

// Amount is an unsigned 128-bit number of cycles. The zero value is 0.
type Amount struct {
	Hi, Lo uint64
}

// ErrOverflow is returned when a result does not fit in 128 bits.
var ErrOverflow = errors.New("cycles: overflow")

// ErrUnderflow is returned when a subtraction would go below zero.
var ErrUnderflow = errors.New("cycles: insufficient cycles")

// Max is 2^128-1.
var Max = Amount{Hi: ^uint64(0), Lo: ^uint64(0)}

// New returns an amount that fits in 64 bits.
func New(n uint64) Amount { return Amount{Lo: n} }

// IsZero reports whether a is 0.
func (a Amount) IsZero() bool { return a.Hi == 0 && a.Lo == 0 }

// Cmp returns -1, 0 or +1 as a is less than, equal to or greater than b.
func (a Amount) Cmp(b Amount) int {
	switch {
	case a.Hi < b.Hi:
		return -1
	case a.Hi > b.Hi:
		return 1
	case a.Lo < b.Lo:
		return -1
	case a.Lo > b.Lo:
		return 1
	}
	return 0
}

// Add returns a+b or ErrOverflow.
func (a Amount) Add(b Amount) (Amount, error) {
	lo, c := bits.Add64(a.Lo, b.Lo, 0)
	hi, c := bits.Add64(a.Hi, b.Hi, c)
	if c != 0 {
		return Amount{}, ErrOverflow
	}
	return Amount{Hi: hi, Lo: lo}, nil
}

// SaturatingAdd returns a+b, or Max if the sum does not fit.
func (a Amount) SaturatingAdd(b Amount) Amount {
	s, err := a.Add(b)
	if err != nil {
		return Max
	}
	return s
}

// AddCapped returns a+b capped at Max, and the part of b that did not fit
// (zero unless the sum overflows): a+b = sum+excess exactly, so a caller
// can book the excess elsewhere instead of losing it.
func (a Amount) AddCapped(b Amount) (sum, excess Amount) {
	if s, err := a.Add(b); err == nil {
		return s, Amount{}
	}
	// a+b > Max, so b > Max-a and the excess b-(Max-a) fits.
	return Max, b.SaturatingSub(Max.SaturatingSub(a))
}

// Sub returns a-b or ErrUnderflow.
func (a Amount) Sub(b Amount) (Amount, error) {
	lo, br := bits.Sub64(a.Lo, b.Lo, 0)
	hi, br := bits.Sub64(a.Hi, b.Hi, br)
	if br != 0 {
		return Amount{}, ErrUnderflow
	}
	return Amount{Hi: hi, Lo: lo}, nil
}

// SaturatingSub returns a-b, or 0 if b > a.
func (a Amount) SaturatingSub(b Amount) Amount {
	d, err := a.Sub(b)
	if err != nil {
		return Amount{}
	}
	return d
}

// Min returns the smaller of a and b.
func Min(a, b Amount) Amount {
	if a.Cmp(b) <= 0 {
		return a
	}
	return b
}

// MulUint64 returns a*m or ErrOverflow.
func (a Amount) MulUint64(m uint64) (Amount, error) {
	hiLo, lo := bits.Mul64(a.Lo, m)
	hiHi, hiPart := bits.Mul64(a.Hi, m)
	if hiHi != 0 {
		return Amount{}, ErrOverflow
	}
	hi, c := bits.Add64(hiPart, hiLo, 0)
	if c != 0 {
		return Amount{}, ErrOverflow
	}
	return Amount{Hi: hi, Lo: lo}, nil
}

// MulSat returns a*m, or Max if the product does not fit.
func (a Amount) MulSat(m uint64) Amount {
	p, err := a.MulUint64(m)
	if err != nil {
		return Max
	}
	return p
}

// Big returns a as a big.Int.
func (a Amount) Big() *big.Int {
	b := new(big.Int).SetUint64(a.Hi)
	b.Lsh(b, 64)
	return b.Or(b, new(big.Int).SetUint64(a.Lo))
}

// FromBig converts a non-negative big.Int below 2^128.
func FromBig(b *big.Int) (Amount, error) {
	if b.Sign() < 0 {
		return Amount{}, fmt.Errorf("cycles: negative amount %s", b)
	}
	if b.BitLen() > 128 {
		return Amount{}, ErrOverflow
	}
	lo := new(big.Int).And(b, new(big.Int).SetUint64(^uint64(0))).Uint64()
	hi := new(big.Int).Rsh(b, 64).Uint64()
	return Amount{Hi: hi, Lo: lo}, nil
}

// Parse reads a decimal amount; underscores between digits are allowed
// ("1_000_000").
func Parse(s string) (Amount, error) {
	clean := strings.ReplaceAll(s, "_", "")
	if clean == "" || strings.TrimLeft(clean, "0123456789") != "" {
		return Amount{}, fmt.Errorf("cycles: %q is not a decimal number", s)
	}
	b, ok := new(big.Int).SetString(clean, 10)
	if !ok {
		return Amount{}, fmt.Errorf("cycles: %q is not a decimal number", s)
	}
	return FromBig(b)
}

// String returns the decimal representation.
func (a Amount) String() string {
	if a.Hi == 0 {
		return fmt.Sprint(a.Lo)
	}
	return a.Big().String()
}

// Bytes returns the 16-byte little-endian encoding used by the ic0 *128 calls.
func (a Amount) Bytes() [16]byte {
	var b [16]byte
	for i := 0; i < 8; i++ {
		b[i] = byte(a.Lo >> (8 * i))
		b[8+i] = byte(a.Hi >> (8 * i))
	}
	return b
}

// MarshalText encodes the amount as decimal (used by JSON and the store).
func (a Amount) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText decodes a decimal amount.
func (a *Amount) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}
