package certify

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

// Empty, Leaf, Labeled, Fork and Pruned make trees.
func Empty() *Tree                    { return &Tree{kind: treeEmpty} }
func Leaf(v []byte) *Tree             { return &Tree{kind: treeLeaf, value: v} }
func Labeled(l []byte, t *Tree) *Tree { return &Tree{kind: treeLabeled, label: l, left: t} }
func Fork(l, r *Tree) *Tree           { return &Tree{kind: treeFork, left: l, right: r} }
func Pruned(digest [32]byte) *Tree    { return &Tree{kind: treePruned, value: digest[:]} }
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

// maxTreeDepth and maxTreeNodes bound a decoded tree (the IC's trees are a
// few dozen levels deep and pruned to a few hundred nodes; the bounds keep
// recursion and allocation on hostile input short).
const (
	maxTreeDepth = 256
	maxTreeNodes = 1 << 16
)

// DecodeTree reads a hash tree as a client does, from the generic CBOR
// value of its encoding (cbor.Unmarshal into an any).
func DecodeTree(v any) (*Tree, error) {
	nodes := 0
	return decodeTree(v, 0, &nodes)
}

func decodeTree(v any, depth int, nodes *int) (*Tree, error) {
	if *nodes++; depth > maxTreeDepth || *nodes > maxTreeNodes {
		return nil, fmt.Errorf("hash tree deeper than %d or larger than %d nodes", maxTreeDepth, maxTreeNodes)
	}
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return nil, fmt.Errorf("hash tree node is not a tagged array: %T", v)
	}
	tag, _ := a[0].(uint64)
	switch {
	case tag == 0 && len(a) == 1:
		return Empty(), nil
	case tag == 1 && len(a) == 3:
		l, err := decodeTree(a[1], depth+1, nodes)
		if err != nil {
			return nil, err
		}
		r, err := decodeTree(a[2], depth+1, nodes)
		if err != nil {
			return nil, err
		}
		return Fork(l, r), nil
	case tag == 2 && len(a) == 3:
		l, ok := a[1].([]byte)
		if !ok {
			return nil, fmt.Errorf("hash tree label is %T, not bytes", a[1])
		}
		c, err := decodeTree(a[2], depth+1, nodes)
		if err != nil {
			return nil, err
		}
		return Labeled(l, c), nil
	case tag == 3 && len(a) == 2:
		b, ok := a[1].([]byte)
		if !ok {
			return nil, fmt.Errorf("hash tree leaf is %T, not bytes", a[1])
		}
		return Leaf(b), nil
	case tag == 4 && len(a) == 2:
		b, ok := a[1].([]byte)
		if !ok || len(b) != 32 {
			return nil, fmt.Errorf("pruned hash tree node is not 32 bytes")
		}
		return Pruned([32]byte(b)), nil
	}
	// The node is named by its shape, never printed: it may be a large
	// hostile subtree.
	if _, ok := a[0].(uint64); !ok {
		return nil, fmt.Errorf("hash tree node whose tag is a %s, not a number", kindOf(a[0]))
	}
	return nil, fmt.Errorf("hash tree node with tag %d and %d elements", tag, len(a))
}

// kindOf names a decoded CBOR value's kind for an error message.
func kindOf(v any) string {
	switch v.(type) {
	case []any:
		return "array"
	case map[any]any, map[string]any:
		return "map"
	case []byte:
		return "byte string"
	case string:
		return "text string"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
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

// Subtree follows path to the tree below it (any kind), or nil.
func (t *Tree) Subtree(path ...[]byte) *Tree {
	for _, l := range path {
		if t = t.findLabel(l); t == nil {
			return nil
		}
	}
	return t
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

// Node makes the labeled children of one tree node, sorted by label and
// forked into a balanced tree, as the spec lays out the state tree.
type Node map[string]*Tree

// Tree builds the node.
func (n Node) Tree() *Tree {
	if len(n) == 0 {
		return Empty()
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

// LEB128 is the unsigned LEB128 encoding the state tree uses for numbers
// (time, reject codes).
func LEB128(x uint64) []byte {
	var b []byte
	for {
		c := byte(x & 0x7f)
		x >>= 7
		if x == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// ReadLEB128 decodes an unsigned LEB128 number that fills b.
func ReadLEB128(b []byte) (uint64, error) {
	var x uint64
	for i, c := range b {
		if i == 9 && c > 1 || i > 9 {
			return 0, fmt.Errorf("LEB128 number overflows 64 bits")
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			if i != len(b)-1 {
				return 0, fmt.Errorf("LEB128 number followed by %d bytes", len(b)-1-i)
			}
			return x, nil
		}
	}
	return 0, fmt.Errorf("truncated LEB128 number")
}
