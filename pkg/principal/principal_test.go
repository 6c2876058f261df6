package principal

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func TestKnownVectors(t *testing.T) {
	tests := []struct {
		name string
		p    Principal
		text string
		hex  string
	}{
		{"management", Management(), "aaaaa-aa", ""},
		{"anonymous", Anonymous(), "2vxsx-fae", "04"},
		{"canister 0", CanisterID(0), "rwlgt-iiaaa-aaaaa-aaaaa-cai", "00000000000000000101"},
		{"canister 1", CanisterID(1), "rrkah-fqaaa-aaaaa-aaaaq-cai", "00000000000000010101"},
		{"canister 2", CanisterID(2), "ryjl3-tyaaa-aaaaa-aaaba-cai", "00000000000000020101"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.String(); got != tt.text {
				t.Errorf("String() = %q, want %q", got, tt.text)
			}
			if got := hex.EncodeToString(tt.p.Bytes()); got != tt.hex {
				t.Errorf("Bytes() = %s, want %s", got, tt.hex)
			}
			q, err := FromText(tt.text)
			if err != nil {
				t.Fatalf("FromText(%q): %v", tt.text, err)
			}
			if !q.Equal(tt.p) {
				t.Errorf("FromText(%q) = %x, want %x", tt.text, q.Bytes(), tt.p.Bytes())
			}
		})
	}
}

func TestSelfAuthenticating(t *testing.T) {
	// An Ed25519 SubjectPublicKeyInfo with an all-zero key.
	der, _ := hex.DecodeString("302a300506032b6570032100" + strings.Repeat("00", 32))
	p := SelfAuthenticating(der)
	if p.Len() != 29 || p.Bytes()[28] != 0x02 {
		t.Fatalf("SelfAuthenticating: got %x, want 28 hash bytes and 0x02", p.Bytes())
	}
	q, err := FromText(p.String())
	if err != nil || !q.Equal(p) {
		t.Fatalf("round trip of %s failed: %v", p, err)
	}
}

func TestCanisterIndex(t *testing.T) {
	for _, n := range []uint64{0, 1, 2, 1 << 40, ^uint64(0)} {
		got, ok := CanisterID(n).CanisterIndex()
		if !ok || got != n {
			t.Errorf("CanisterID(%d).CanisterIndex() = %d, %v", n, got, ok)
		}
	}
	if _, ok := Anonymous().CanisterIndex(); ok {
		t.Error("Anonymous().CanisterIndex() reported ok")
	}
}

func TestFromBytes(t *testing.T) {
	for n := 0; n <= MaxLength; n++ {
		b := bytes.Repeat([]byte{0xab}, n)
		p, err := FromBytes(b)
		if err != nil {
			t.Fatalf("FromBytes(%d bytes): %v", n, err)
		}
		if !bytes.Equal(p.Bytes(), b) {
			t.Fatalf("Bytes() = %x, want %x", p.Bytes(), b)
		}
		q, err := FromText(p.String())
		if err != nil || !q.Equal(p) {
			t.Fatalf("round trip of %d bytes (%s): %v", n, p, err)
		}
	}
	if _, err := FromBytes(make([]byte, 30)); !errors.Is(err, ErrTooLong) {
		t.Errorf("FromBytes(30 bytes) error = %v, want ErrTooLong", err)
	}
}

func TestFromTextErrors(t *testing.T) {
	long, _ := FromBytes(bytes.Repeat([]byte{1}, 29))
	tests := []struct {
		name, text string
		want       error
	}{
		{"empty", "", ErrSyntax},
		{"bad checksum", "aaaaa-ba", ErrChecksum},
		{"bad checksum anonymous", "2vxsx-faf", ErrChecksum},
		{"bad checksum canister", "rwlgt-iiaaa-aaaaa-aaaaa-caa", ErrChecksum},
		{"bad char 1", "2vxsx-fa1", ErrSyntax},
		{"bad char 8", "2vxsx-fa8", ErrSyntax},
		{"bad char punct", "2vxsx-fa!", ErrSyntax},
		{"non-ascii", "2vxsx-fé", ErrSyntax},
		{"uppercase", "2VXSX-FAE", ErrSyntax},
		{"missing dash", "2vxsxfae", ErrSyntax},
		{"extra dash", "2vxsx--fae", ErrSyntax},
		{"misplaced dash", "2vxs-xfae", ErrSyntax},
		{"leading dash", "-2vxsx-fae", ErrSyntax},
		{"trailing dash", "2vxsx-fae-", ErrSyntax},
		{"trailing dash after group", "aaaaa-", ErrSyntax},
		{"whitespace", " 2vxsx-fae", ErrSyntax},
		{"too short", "aaaaa", ErrSyntax},
		{"too long", long.String() + "-aaaaa", ErrTooLong},
		{"very long", strings.Repeat("aaaaa-", 100), ErrTooLong},
		{"non-canonical trailing bits", "aaaaa-ab", ErrSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := FromText(tt.text)
			if err == nil {
				t.Fatalf("FromText(%q) = %s, want error", tt.text, p)
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("FromText(%q) error = %v, want %v", tt.text, err, tt.want)
			}
		})
	}
}

func TestTextMarshaling(t *testing.T) {
	var p Principal
	if err := p.UnmarshalText([]byte("ryjl3-tyaaa-aaaaa-aaaba-cai")); err != nil {
		t.Fatal(err)
	}
	if !p.Equal(CanisterID(2)) {
		t.Errorf("UnmarshalText = %s", p)
	}
	b, _ := p.MarshalText()
	if string(b) != "ryjl3-tyaaa-aaaaa-aaaba-cai" {
		t.Errorf("MarshalText = %s", b)
	}
	if Anonymous().Compare(Management()) <= 0 || !Management().IsManagement() || !Anonymous().IsAnonymous() {
		t.Error("Compare/IsManagement/IsAnonymous inconsistent")
	}
}

func FuzzFromText(f *testing.F) {
	for _, s := range []string{"aaaaa-aa", "2vxsx-fae", "rwlgt-iiaaa-aaaaa-aaaaa-cai", "ryjl3-tyaaa-aaaaa-aaaba-cai", "", "-", "aaaaa-ab", "2vxsx-faf"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := FromText(s)
		if err != nil {
			return
		}
		if p.String() != s {
			t.Fatalf("FromText(%q) accepted, but String() = %q", s, p.String())
		}
		q, err := FromBytes(p.Bytes())
		if err != nil || !q.Equal(p) {
			t.Fatalf("FromBytes(Bytes()) of %q: %v", s, err)
		}
	})
}

// Bytes is never nil: the management canister's bytes are an empty slice,
// so that encoders write an empty byte string (as IC clients send
// aaaaa-aa), not null; and a copy, so callers cannot change a principal.
func TestBytesNeverNil(t *testing.T) {
	if b := Management().Bytes(); b == nil || len(b) != 0 {
		t.Fatalf("Management().Bytes() = %#v", b)
	}
	p := MustFromText("rwlgt-iiaaa-aaaaa-aaaaa-cai")
	b := p.Bytes()
	b[0] ^= 0xff
	if p.Bytes()[0] == b[0] {
		t.Fatal("Bytes aliases the principal")
	}
}
