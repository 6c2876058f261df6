package ichttp

import (
	"errors"
	"fmt"

	"github.com/cloudflare/circl/sign/bls"
	"github.com/fxamacker/cbor/v2"
)

// Bounds of a certificate read from a client (a canister signature carries
// one): the tree's depth and node count. cordon's own certificates are far
// below them.
const (
	maxTreeDepth = 64
	maxTreeNodes = 4096
)

// DecodeTree reads a hash tree's CBOR form, the inverse of MarshalCBOR.
func DecodeTree(b []byte) (*Tree, error) {
	if err := countItems(b, 4*maxTreeNodes); err != nil {
		return nil, fmt.Errorf("hash tree: %w", err)
	}
	var v any
	if err := treeDecMode.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("hash tree: %w", err)
	}
	nodes := 0
	return treeOf(v, 0, &nodes)
}

var treeDecMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		MaxNestedLevels:  maxTreeDepth*2 + 4,
		MaxArrayElements: 16,
		MaxMapPairs:      16,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
	}.DecMode()
	if err != nil {
		panic(err) // constant options
	}
	return dm
}()

func treeOf(v any, depth int, nodes *int) (*Tree, error) {
	*nodes++
	if depth > maxTreeDepth || *nodes > maxTreeNodes {
		return nil, errors.New("hash tree: too deep or too large")
	}
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return nil, fmt.Errorf("hash tree: a node must be a non-empty array, not %T", v)
	}
	tag, ok := a[0].(uint64)
	if !ok {
		return nil, errors.New("hash tree: a node's tag must be a natural number")
	}
	switch {
	case tag == uint64(treeEmpty) && len(a) == 1:
		return emptyTree(), nil
	case tag == uint64(treeFork) && len(a) == 3:
		l, err := treeOf(a[1], depth+1, nodes)
		if err != nil {
			return nil, err
		}
		r, err := treeOf(a[2], depth+1, nodes)
		if err != nil {
			return nil, err
		}
		return Fork(l, r), nil
	case tag == uint64(treeLabeled) && len(a) == 3:
		l, ok := a[1].([]byte)
		if !ok {
			return nil, errors.New("hash tree: a label must be a blob")
		}
		sub, err := treeOf(a[2], depth+1, nodes)
		if err != nil {
			return nil, err
		}
		return Labeled(l, sub), nil
	case tag == uint64(treeLeaf) && len(a) == 2:
		val, ok := a[1].([]byte)
		if !ok {
			return nil, errors.New("hash tree: a leaf value must be a blob")
		}
		return Leaf(val), nil
	case tag == uint64(treePruned) && len(a) == 2:
		d, ok := a[1].([]byte)
		if !ok || len(d) != 32 {
			return nil, errors.New("hash tree: a pruned digest must be 32 bytes")
		}
		return Pruned([32]byte(d)), nil
	}
	return nil, fmt.Errorf("hash tree: node with tag %d and %d elements", tag, len(a))
}

// VerifyCertificate checks a certificate signed by rootKeyDER directly (no
// subnet delegation: cordon's one subnet is certified by the root key
// itself) and returns its tree.
func VerifyCertificate(rootKeyDER, cert []byte) (*Tree, error) {
	var c struct {
		Tree       cbor.RawMessage `cbor:"tree"`
		Signature  []byte          `cbor:"signature"`
		Delegation any             `cbor:"delegation"`
	}
	if err := certDecMode.Unmarshal(cert, &c); err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	if c.Delegation != nil {
		return nil, errors.New("certificate: a delegated certificate is not one of this node's")
	}
	if len(c.Tree) == 0 || len(c.Signature) == 0 {
		return nil, errors.New("certificate: needs tree and signature")
	}
	tree, err := DecodeTree(c.Tree)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	pk, err := PublicKeyFromDER(rootKeyDER)
	if err != nil {
		return nil, err
	}
	root := tree.Digest()
	if !bls.Verify(pk, append([]byte(stateRootDomain), root[:]...), c.Signature) {
		return nil, errors.New("certificate: the signature does not verify under the root key")
	}
	return tree, nil
}

var certDecMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		MaxNestedLevels:  maxTreeDepth*2 + 8,
		MaxArrayElements: maxArrayElems,
		MaxMapPairs:      16,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
	}.DecMode()
	if err != nil {
		panic(err) // constant options
	}
	return dm
}()
