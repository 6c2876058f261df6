package wasmbin

import (
	"encoding/binary"
	"errors"
	"math"
	"math/big"
	"testing"
)

func rd(b ...byte) *reader { return &reader{b: b, end: len(b), section: "test"} }

func TestLEBUnsigned(t *testing.T) {
	tests := []struct {
		in      []byte
		u32     uint32
		u32Kind error // nil = ok
		u64     uint64
		u64Kind error
	}{
		{[]byte{0x00}, 0, nil, 0, nil},
		{[]byte{0x7f}, 127, nil, 127, nil},
		{[]byte{0x80, 0x01}, 128, nil, 128, nil},
		{[]byte{0x80, 0x00}, 0, nil, 0, nil},                                             // non-minimal but legal
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x00}, 0, nil, 0, nil},                           // 5-byte zero is legal
		{[]byte{0xff, 0xff, 0xff, 0xff, 0x0f}, math.MaxUint32, nil, math.MaxUint32, nil}, // 2^32-1
		{[]byte{0xff, 0xff, 0xff, 0xff, 0x1f}, 0, ErrMalformed, 1<<33 - 1, nil},          // bit 32 set
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, 0, ErrMalformed, 0, nil},            // 6 bytes
		{[]byte{0x80}, 0, ErrTruncated, 0, ErrTruncated},
		{[]byte{}, 0, ErrTruncated, 0, ErrTruncated},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 0, ErrMalformed, math.MaxUint64, nil},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}, 0, ErrMalformed, 0, ErrMalformed}, // bit 64
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, 0, ErrMalformed, 0, ErrMalformed},
	}
	for _, tc := range tests {
		v, err := rd(tc.in...).u32("x")
		if !errors.Is(err, tc.u32Kind) || (err == nil) != (tc.u32Kind == nil) || (err == nil && v != tc.u32) {
			t.Errorf("u32(% x) = %d, %v; want %d, %v", tc.in, v, err, tc.u32, tc.u32Kind)
		}
		w, err := rd(tc.in...).u64("x")
		if !errors.Is(err, tc.u64Kind) || (err == nil) != (tc.u64Kind == nil) || (err == nil && w != tc.u64) {
			t.Errorf("u64(% x) = %d, %v; want %d, %v", tc.in, w, err, tc.u64, tc.u64Kind)
		}
	}
}

func TestLEBSigned(t *testing.T) {
	tests := []struct {
		in   []byte
		s32  int64 // math.MinInt64 = error
		s64  int64
		s64e bool
	}{
		{[]byte{0x00}, 0, 0, false},
		{[]byte{0x7f}, -1, -1, false},
		{[]byte{0x3f}, 63, 63, false},
		{[]byte{0x40}, -64, -64, false},
		{[]byte{0xff, 0x7f}, -1, -1, false}, // non-minimal -1
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x78}, math.MinInt32, -1 << 31, false},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0x07}, math.MaxInt32, math.MaxInt32, false},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0x0f}, math.MinInt64, 1<<32 - 1, false},  // > MaxInt32: bits not sign copies
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x70}, math.MinInt64, -(1 << 32), false}, // < MinInt32
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, math.MinInt64, -1, false},
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f}, math.MinInt64, math.MinInt64, false},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00}, math.MinInt64, math.MaxInt64, false},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, math.MinInt64, 0, true}, // sign bit w/o extension
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, math.MinInt64, 0, true},
		{[]byte{0x80}, math.MinInt64, 0, true},
	}
	for _, tc := range tests {
		v, err := rd(tc.in...).s32("x")
		if tc.s32 == math.MinInt64 {
			if err == nil {
				t.Errorf("s32(% x) = %d, want error", tc.in, v)
			}
		} else if err != nil || int64(v) != tc.s32 {
			t.Errorf("s32(% x) = %d, %v; want %d", tc.in, v, err, tc.s32)
		}
		w, err := rd(tc.in...).s64("x")
		if tc.s64e {
			if err == nil {
				t.Errorf("s64(% x) = %d, want error", tc.in, w)
			}
		} else if err != nil || w != tc.s64 {
			t.Errorf("s64(% x) = %d, %v; want %d", tc.in, w, err, tc.s64)
		}
	}
}

// refLEB decodes an LEB128 of any length exactly, returning its value and length.
func refLEB(b []byte, signed bool) (*big.Int, int, bool) {
	v := new(big.Int)
	for i, c := range b {
		v.Or(v, new(big.Int).Lsh(big.NewInt(int64(c&0x7f)), uint(7*i)))
		if c&0x80 == 0 {
			n := 7 * (i + 1)
			if signed && c&0x40 != 0 {
				v.Sub(v, new(big.Int).Lsh(big.NewInt(1), uint(n)))
			}
			return v, i + 1, true
		}
	}
	return nil, 0, false
}

// FuzzLEB checks the readers against an exact reference: a value is accepted
// iff it terminates within the byte budget and fits the type (which is the
// spec's "unused bits must be zero / sign copies" rule), and u64 agrees with
// encoding/binary.Uvarint.
func FuzzLEB(f *testing.F) {
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x78})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(name string, got *big.Int, err error, signed bool, maxLen int, lo, hi *big.Int) {
			// Only the first maxLen+1 bytes decide acceptance; looking
			// further would make the big.Int reference quadratic in the
			// input and stall the fuzzer on long inputs.
			ref, n, ok := refLEB(b[:min(len(b), maxLen+1)], signed)
			want := ok && n <= maxLen && ref.Cmp(lo) >= 0 && ref.Cmp(hi) <= 0
			if want != (err == nil) {
				t.Fatalf("%s(% x): err=%v, reference accepts=%v", name, b, err, want)
			}
			if want && got.Cmp(ref) != 0 {
				t.Fatalf("%s(% x) = %v, reference %v", name, b, got, ref)
			}
		}
		minI := func(bits uint) *big.Int { return new(big.Int).Neg(new(big.Int).Lsh(big.NewInt(1), bits-1)) }
		maxI := func(bits uint) *big.Int {
			return new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), bits-1), big.NewInt(1))
		}
		maxU := func(bits uint) *big.Int {
			return new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), bits), big.NewInt(1))
		}

		u, err := rd(b...).u32("x")
		check("u32", new(big.Int).SetUint64(uint64(u)), err, false, 5, big.NewInt(0), maxU(32))
		u64, err := rd(b...).u64("x")
		check("u64", new(big.Int).SetUint64(u64), err, false, 10, big.NewInt(0), maxU(64))
		if err == nil {
			if v, n := binary.Uvarint(b); n <= 0 || v != u64 {
				t.Fatalf("u64(% x) = %d, Uvarint = %d, %d", b, u64, v, n)
			}
		}
		s, err := rd(b...).s32("x")
		check("s32", big.NewInt(int64(s)), err, true, 5, minI(32), maxI(32))
		s64, err := rd(b...).s64("x")
		check("s64", big.NewInt(s64), err, true, 10, minI(64), maxI(64))
	})
}

func TestAppendU32(t *testing.T) {
	for _, v := range []uint32{0, 1, 127, 128, 16383, 16384, 1 << 28, math.MaxUint32} {
		b := appendU32(nil, v)
		if len(b) != sizeU32(v) {
			t.Errorf("sizeU32(%d) = %d, encoding is %d bytes", v, sizeU32(v), len(b))
		}
		got, err := rd(b...).u32("x")
		if err != nil || got != v {
			t.Errorf("round trip %d: %d, %v", v, got, err)
		}
	}
}
