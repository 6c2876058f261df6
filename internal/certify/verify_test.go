package certify

import (
	"bytes"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// A canister's data certificate verifies under the root key and witnesses
// /time and /canister/<id>/certified_data; another key, a changed tree, a
// delegation or junk are refused.
func TestCertifyCanisterVerify(t *testing.T) {
	k, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id := []byte{0, 0, 0, 0, 0, 0, 0, 7, 1, 1}
	data := bytes.Repeat([]byte{0xab}, 32)
	cert, err := k.CertifyCanister(id, data, 1_700_000_000_123_456_789)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := Verify(k.DER(), cert)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := tree.Lookup([]byte("canister"), id, []byte("certified_data")); !ok || !bytes.Equal(got, data) {
		t.Fatalf("certified_data %x %v", got, ok)
	}
	tm, ok := tree.Lookup([]byte("time"))
	if !ok {
		t.Fatal("no time")
	}
	if ns, err := ReadLEB128(tm); err != nil || ns != 1_700_000_000_123_456_789 {
		t.Fatalf("time %d %v", ns, err)
	}

	other, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(other.DER(), cert); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("another root key: %v", err)
	}
	// The same signature over another certified value.
	var c map[string]any
	if err := cbor.Unmarshal(cert, &c); err != nil {
		t.Fatal(err)
	}
	forged, _ := k.CertifyCanister(id, []byte("other"), 1_700_000_000_123_456_789)
	var f map[string]any
	if err := cbor.Unmarshal(forged, &f); err != nil {
		t.Fatal(err)
	}
	f["signature"] = c["signature"]
	fb, _ := cbor.Marshal(f)
	if _, err := Verify(k.DER(), fb); err == nil {
		t.Fatal("a tree with another certified value verified under the first signature")
	}
	c["delegation"] = map[string]any{"subnet_id": []byte{1}, "certificate": []byte{2}}
	db, _ := cbor.Marshal(c)
	if _, err := Verify(k.DER(), db); err == nil || !strings.Contains(err.Error(), "delegation") {
		t.Fatalf("delegation: %v", err)
	}
	for _, junk := range [][]byte{nil, {0xa0}, cert[:len(cert)/2], bytes.Repeat([]byte{0x81}, 10000)} {
		if _, err := Verify(k.DER(), junk); err == nil {
			t.Fatalf("junk %x verified", junk)
		}
	}
}

func TestReadLEB128(t *testing.T) {
	for _, x := range []uint64{0, 1, 127, 128, 1 << 35, ^uint64(0)} {
		if got, err := ReadLEB128(LEB128(x)); err != nil || got != x {
			t.Fatalf("%d: %d %v", x, got, err)
		}
	}
	for _, b := range [][]byte{nil, {0x80}, {0x01, 0x02}, bytes.Repeat([]byte{0xff}, 10)} {
		if _, err := ReadLEB128(b); err == nil {
			t.Fatalf("%x decoded", b)
		}
	}
}

// FuzzVerify: no input makes Verify panic, and nothing but the key's own
// certificates verifies.
func FuzzVerify(f *testing.F) {
	k, err := LoadOrCreateRootKey(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	good, _ := k.CertifyCanister([]byte{1}, []byte("x"), 5)
	f.Add(good)
	f.Add([]byte{0xd9, 0xd9, 0xf7, 0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		tree, err := Verify(k.DER(), b)
		if err == nil && tree == nil {
			t.Fatal("no error and no tree")
		}
	})
}

// What a data certificate costs to make (a BLS signature), which the node
// pays once per change of a canister's certified data, not per query.
func BenchmarkCertifyCanister(b *testing.B) {
	k, err := LoadOrCreateRootKey(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	id, data := []byte{0, 0, 0, 0, 0, 0, 0, 1, 1, 1}, bytes.Repeat([]byte{7}, 32)
	for i := 0; b.Loop(); i++ {
		if _, err := k.CertifyCanister(id, data, uint64(i)); err != nil {
			b.Fatal(err)
		}
	}
}

// What a client pays to check one (two pairings).
func BenchmarkVerify(b *testing.B) {
	k, err := LoadOrCreateRootKey(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	cert, _ := k.CertifyCanister([]byte{1}, []byte("x"), 1)
	for b.Loop() {
		if _, err := Verify(k.DER(), cert); err != nil {
			b.Fatal(err)
		}
	}
}
