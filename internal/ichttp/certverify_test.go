package ichttp

import (
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// VerifyCertificate accepts the node's own certificates and refuses any
// change to them, another key's, and malformed trees.
func TestVerifyCertificate(t *testing.T) {
	key, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tree := node{"time": Leaf(leb128(42)), "canister": node{"x": node{"certified_data": Leaf([]byte("cd"))}.tree()}.tree()}.tree()
	cert, err := key.Certify(tree)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyCertificate(key.DER(), cert)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := got.Lookup([]byte("canister"), []byte("x"), []byte("certified_data")); !ok || string(v) != "cd" {
		t.Fatalf("certified_data %q %v", v, ok)
	}
	if _, err := VerifyCertificate(other.DER(), cert); err == nil {
		t.Fatal("a certificate verifies under another root key")
	}
	// A tree changed after signing.
	var c map[string]any
	if err := cbor.Unmarshal(cert, &c); err != nil {
		t.Fatal(err)
	}
	forged, _ := key.Certify(node{"time": Leaf(leb128(43))}.tree())
	var f map[string]any
	_ = cbor.Unmarshal(forged, &f)
	c["signature"] = f["signature"]
	swapped, _ := cbor.Marshal(c)
	if _, err := VerifyCertificate(key.DER(), swapped); err == nil {
		t.Fatal("a certificate with another tree's signature verifies")
	}
	c["delegation"] = map[string]any{"subnet_id": []byte{1}, "certificate": []byte{2}}
	delegated, _ := cbor.Marshal(c)
	if _, err := VerifyCertificate(key.DER(), delegated); err == nil {
		t.Fatal("a delegated certificate verifies")
	}
	for _, bad := range [][]byte{nil, {0xa0}, {0x80}, []byte("garbage")} {
		if _, err := VerifyCertificate(key.DER(), bad); err == nil {
			t.Fatalf("%x verifies", bad)
		}
	}
	// Deep trees are refused before recursion goes far.
	var deep any = []any{uint64(0)}
	for range maxTreeDepth + 2 {
		deep = []any{uint64(2), []byte("l"), deep}
	}
	b, _ := cbor.Marshal(deep)
	if _, err := DecodeTree(b); err == nil {
		t.Fatal("a tree deeper than the bound decodes")
	}
}

func FuzzDecodeTree(f *testing.F) {
	key, err := LoadOrCreateRootKey(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	cert, _ := key.Certify(node{"time": Leaf(leb128(1)), "a": Pruned([32]byte{1})}.tree())
	f.Add(cert)
	b, _ := cbor.Marshal(node{"x": Leaf([]byte("y"))}.tree())
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		if tr, err := DecodeTree(b); err == nil {
			// What decodes re-encodes to a tree with the same digest.
			enc, err := cbor.Marshal(tr)
			if err != nil {
				t.Fatal(err)
			}
			again, err := DecodeTree(enc)
			if err != nil || again.Digest() != tr.Digest() {
				t.Fatalf("round trip: %v", err)
			}
		}
		_, _ = VerifyCertificate(key.DER(), b)
	})
}
