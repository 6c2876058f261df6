package cycles

import (
	"math/big"
	"testing"
)

func TestArithmetic(t *testing.T) {
	a := Amount{Hi: 1, Lo: ^uint64(0)}
	b := New(1)
	s, err := a.Add(b)
	if err != nil || s != (Amount{Hi: 2}) {
		t.Fatalf("add carry: %v %v", s, err)
	}
	if _, err := Max.Add(b); err != ErrOverflow {
		t.Fatalf("max+1: want overflow, got %v", err)
	}
	if _, err := b.Sub(a); err != ErrUnderflow {
		t.Fatalf("1-big: want underflow, got %v", err)
	}
	d, err := s.Sub(b)
	if err != nil || d != a {
		t.Fatalf("sub borrow: %v %v", d, err)
	}
	if got := Max.SaturatingAdd(b); got != Max {
		t.Fatalf("saturating add: %v", got)
	}
	if got := b.SaturatingSub(a); !got.IsZero() {
		t.Fatalf("saturating sub: %v", got)
	}
	m, err := New(1 << 63).MulUint64(4)
	if err != nil || m != (Amount{Hi: 2}) {
		t.Fatalf("mul: %v %v", m, err)
	}
	if _, err := Max.MulUint64(2); err != ErrOverflow {
		t.Fatalf("mul overflow: %v", err)
	}
}

func TestParseString(t *testing.T) {
	want := new(big.Int).Lsh(big.NewInt(1), 127)
	a, err := FromBig(want)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(a.String())
	if err != nil || p != a {
		t.Fatalf("round trip %v: %v %v", a, p, err)
	}
	if v, err := Parse("1_000_000"); err != nil || v != New(1000000) {
		t.Fatalf("underscores: %v %v", v, err)
	}
	for _, bad := range []string{"", "-1", "1e5", "0x10", "340282366920938463463374607431768211456"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	if Max.String() != "340282366920938463463374607431768211455" {
		t.Fatalf("max: %s", Max)
	}
	b := New(0x0102).Bytes()
	if b[0] != 2 || b[1] != 1 || b[8] != 0 {
		t.Fatalf("bytes: %x", b)
	}
}

func TestAddCapped(t *testing.T) {
	for _, tc := range []struct{ a, b, sum, excess Amount }{
		{New(1), New(2), New(3), Amount{}},
		{Max, Amount{}, Max, Amount{}},
		{Max.SaturatingSub(New(5)), New(5), Max, Amount{}},
		{Max.SaturatingSub(New(5)), New(7), Max, New(2)},
		{Max, Max, Max, Max},
	} {
		sum, excess := tc.a.AddCapped(tc.b)
		if sum != tc.sum || excess != tc.excess {
			t.Fatalf("%s + %s capped: %s and %s over, want %s and %s", tc.a, tc.b, sum, excess, tc.sum, tc.excess)
		}
	}
}
