package ichttp

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"

	"github.com/fxamacker/cbor/v2"
)

// Tree is the spec's hash tree: Empty, Fork, Labeled, Leaf or Pruned.
type Tree struct {
	kind        byte // treeEmpty…treePruned, the tags of its CBOR form
	left, right *Tree
	label       []byte
	value       []byte // leaf value, or pruned digest
}

const (
	treeEmpty byte = iota
	treeFork
	treeLabeled
	treeLeaf
	treePruned
)

// Leaf, Labeled, Fork and Pruned make trees.
func Leaf(v []byte) *Tree             { return &Tree{kind: treeLeaf, value: v} }
func Labeled(l []byte, t *Tree) *Tree { return &Tree{kind: treeLabeled, label: l, left: t} }
func Fork(l, r *Tree) *Tree           { return &Tree{kind: treeFork, left: l, right: r} }
func Pruned(digest [32]byte) *Tree    { return &Tree{kind: treePruned, value: digest[:]} }
func emptyTree() *Tree                { return &Tree{kind: treeEmpty} }
func domainSep(s string) []byte       { return append([]byte{byte(len(s))}, s...) }
func hashOf(parts ...[]byte) (h [32]byte) {
	d := sha256.New()
	for _, p := range parts {
		d.Write(p)
	}
	copy(h[:], d.Sum(nil))
	return h
}

// Digest is the spec's reconstruct: the root hash the tree stands for,
// each kind of node hashed with its own domain separator.
func (t *Tree) Digest() [32]byte {
	switch t.kind {
	case treeFork:
		l, r := t.left.Digest(), t.right.Digest()
		return hashOf(domainSep("ic-hashtree-fork"), l[:], r[:])
	case treeLabeled:
		c := t.left.Digest()
		return hashOf(domainSep("ic-hashtree-labeled"), t.label, c[:])
	case treeLeaf:
		return hashOf(domainSep("ic-hashtree-leaf"), t.value)
	case treePruned:
		return [32]byte(t.value)
	}
	return hashOf(domainSep("ic-hashtree-empty"))
}

// MarshalCBOR writes the spec's encoding: [0], [1 l r], [2 label t],
// [3 value], [4 digest].
func (t *Tree) MarshalCBOR() ([]byte, error) {
	var v []any
	switch t.kind {
	case treeEmpty:
		v = []any{uint64(0)}
	case treeFork:
		v = []any{uint64(1), t.left, t.right}
	case treeLabeled:
		v = []any{uint64(2), t.label, t.left}
	case treeLeaf:
		v = []any{uint64(3), t.value}
	case treePruned:
		v = []any{uint64(4), t.value}
	default:
		return nil, fmt.Errorf("hash tree node of kind %d", t.kind)
	}
	return cbor.Marshal(v)
}

// Lookup follows path, returning the leaf's value, or false if the path
// is absent (or pruned, or ends elsewhere than at a leaf).
func (t *Tree) Lookup(path ...[]byte) ([]byte, bool) {
	if len(path) == 0 {
		if t.kind == treeLeaf {
			return t.value, true
		}
		return nil, false
	}
	sub := t.findLabel(path[0])
	if sub == nil {
		return nil, false
	}
	return sub.Lookup(path[1:]...)
}

func (t *Tree) findLabel(l []byte) *Tree {
	switch t.kind {
	case treeLabeled:
		if bytes.Equal(t.label, l) {
			return t.left
		}
	case treeFork:
		if s := t.left.findLabel(l); s != nil {
			return s
		}
		return t.right.findLabel(l)
	}
	return nil
}

// node makes the labeled children of one tree node, sorted by label and
// forked into a balanced tree, as the spec lays out the state tree.
type node map[string]*Tree

func (n node) tree() *Tree {
	if len(n) == 0 {
		return emptyTree()
	}
	labels := make([]string, 0, len(n))
	for l := range n {
		labels = append(labels, l)
	}
	slices.Sort(labels)
	var build func(ls []string) *Tree
	build = func(ls []string) *Tree {
		if len(ls) == 1 {
			return Labeled([]byte(ls[0]), n[ls[0]])
		}
		m := len(ls) / 2
		return Fork(build(ls[:m]), build(ls[m:]))
	}
	return build(labels)
}

// stateRootDomain separates the root key's certificate signatures.
const stateRootDomain = "\x0Dic-state-root"

// certificate is the spec's Certificate: the tree and the root key's
// signature of its root hash.
type certificate struct {
	Tree      *Tree  `cbor:"tree"`
	Signature []byte `cbor:"signature"`
}

// Certify signs a tree's root hash and encodes the certificate
// (self-described CBOR).
func (k *RootKey) Certify(t *Tree) ([]byte, error) {
	root := t.Digest()
	sig := k.Sign(append([]byte(stateRootDomain), root[:]...))
	return cbor.Marshal(cbor.Tag{Number: selfDescribeTag, Content: certificate{Tree: t, Signature: sig}})
}
