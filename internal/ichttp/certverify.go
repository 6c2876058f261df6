package ichttp

import (
	"fmt"

	"github.com/cordon-dev/cordon/internal/certify"
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
	return certify.DecodeTree(v)
}

var treeDecMode = certify.NewStrictDecoder(maxTreeDepth + 1) // one array per node

// VerifyCertificate checks a certificate signed by rootKeyDER directly (no
// subnet delegation: cordon's one subnet is certified by the root key
// itself) and returns its tree.
func VerifyCertificate(rootKeyDER, cert []byte) (*Tree, error) {
	return certify.Verify(rootKeyDER, cert)
}
