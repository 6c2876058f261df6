package certify

import (
	"bytes"
	"encoding/hex"
	"testing"

	"github.com/cloudflare/circl/sign/bls"
	"github.com/fxamacker/cbor/v2"
)

// The interface spec's example hash tree: its root hash and its CBOR.
func TestTreeSpecExample(t *testing.T) {
	s := func(v string) []byte { return []byte(v) }
	tree := Fork(
		Fork(
			Labeled(s("a"), Fork(
				Fork(Labeled(s("x"), Leaf(s("hello"))), Empty()),
				Labeled(s("y"), Leaf(s("world"))))),
			Labeled(s("b"), Leaf(s("good")))),
		Fork(
			Labeled(s("c"), Empty()),
			Labeled(s("d"), Leaf(s("morning")))))
	d := tree.Digest()
	if got := hex.EncodeToString(d[:]); got != "eb5c5b2195e62d996b84c9bcc8259d19a83786a2f59e0878cec84c811f669aa0" {
		t.Fatalf("root hash %s", got)
	}
	b, err := cbor.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	const want = "8301830183024161830183018302417882034568656c6c6f810083024179820345776f726c6483024162820344676f6f648301830241638100830241648203476d6f726e696e67"
	if hex.EncodeToString(b) != want {
		t.Fatalf("CBOR %x", b)
	}
	// Pruning a subtree keeps the root hash.
	pruned := Fork(Pruned(tree.left.Digest()), tree.right)
	if pruned.Digest() != d {
		t.Fatal("pruning changed the root hash")
	}
	if v, ok := tree.Lookup(s("a"), s("y")); !ok || string(v) != "world" {
		t.Fatalf("lookup a/y: %q %v", v, ok)
	}
	if _, ok := tree.Lookup(s("c")); ok {
		t.Fatal("lookup c found a leaf in an empty subtree")
	}
	if _, ok := pruned.Lookup(s("a"), s("x")); ok {
		t.Fatal("lookup through a pruned subtree succeeded")
	}
}

// A certificate verifies under the root key, over the domain-separated
// root hash, and not once the tree is changed.
func TestCertify(t *testing.T) {
	k, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tr := Node{"time": Leaf(LEB128(42))}.Tree()
	b, err := k.Certify(tr)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Tree      cbor.RawMessage `cbor:"tree"`
		Signature []byte          `cbor:"signature"`
	}
	if err := cbor.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	pk, _ := PublicKeyFromDER(k.DER())
	root := tr.Digest()
	if !bls.Verify(pk, append([]byte(StateRootDomain), root[:]...), c.Signature) {
		t.Fatal("certificate signature does not verify")
	}
	other := Node{"time": Leaf(LEB128(43))}.Tree().Digest()
	if bls.Verify(pk, append([]byte(StateRootDomain), other[:]...), c.Signature) {
		t.Fatal("signature verifies another tree")
	}
	if bls.Verify(pk, root[:], c.Signature) {
		t.Fatal("signature verifies without the domain separator")
	}
}

// FuzzTree: a tree built from arbitrary labels and values finds each value
// at its path, encodes to CBOR a client decodes back to the same root hash,
// and keeps its root hash when any subtree is pruned.
func FuzzTree(f *testing.F) {
	f.Add([]byte("time\x00\x2a\x00request_status\x00ok"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		parts := bytes.Split(b, []byte{0})
		if len(parts) > 200 {
			parts = parts[:200]
		}
		n := Node{}
		vals := map[string][]byte{}
		for i := 0; i+1 < len(parts); i += 2 {
			n[string(parts[i])] = Leaf(parts[i+1])
			vals[string(parts[i])] = parts[i+1]
		}
		tr := Node{"x": n.Tree()}.Tree()
		for l, v := range vals {
			got, ok := tr.Lookup([]byte("x"), []byte(l))
			if !ok || !bytes.Equal(got, v) {
				t.Fatalf("lookup %q: %q %v, want %q", l, got, ok, v)
			}
		}
		root := tr.Digest()
		enc, err := cbor.Marshal(tr)
		if err != nil {
			t.Fatal(err)
		}
		var dec any
		if err := cbor.Unmarshal(enc, &dec); err != nil {
			t.Fatal(err)
		}
		back, err := DecodeTree(dec)
		if err != nil {
			t.Fatal(err)
		}
		if back.Digest() != root {
			t.Fatal("decoded tree has another root hash")
		}
		var prune func(*Tree) []*Tree // every tree with one subtree pruned
		prune = func(s *Tree) []*Tree {
			out := []*Tree{Pruned(s.Digest())}
			switch s.kind {
			case treeFork:
				for _, l := range prune(s.left) {
					out = append(out, Fork(l, s.right))
				}
				for _, r := range prune(s.right) {
					out = append(out, Fork(s.left, r))
				}
			case treeLabeled:
				for _, c := range prune(s.left) {
					out = append(out, Labeled(s.label, c))
				}
			}
			return out
		}
		for _, p := range prune(tr) {
			if p.Digest() != root {
				t.Fatal("pruning changed the root hash")
			}
		}
	})
}
