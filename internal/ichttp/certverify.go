package ichttp

import (
	"fmt"

	"github.com/cordon-dev/cordon/internal/cborlimit"
	"github.com/cordon-dev/cordon/internal/certify"
)

// maxTreeDepth bounds the depth of a hash tree read from a client (a
// canister signature carries one, and a certificate); its size is bounded
// by maxCertItems. The IC's state trees are a few dozen levels deep.
const maxTreeDepth = 64

// DecodeTree reads a hash tree's CBOR form, the inverse of MarshalCBOR.
func DecodeTree(b []byte) (*Tree, error) {
	if err := cborlimit.Check(b, maxCertItems, maxTreeDepth+1); err != nil {
		return nil, fmt.Errorf("hash tree: %w", err)
	}
	var v any
	if err := treeDecMode.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("hash tree: %w", err)
	}
	return certify.DecodeTree(v)
}

var treeDecMode = certify.NewStrictDecoder(maxTreeDepth + 1) // one array per node

// certNesting is a certificate's nesting above its tree: the
// self-describing tag and the certificate's map.
const certNesting = 2

// VerifyCertificate checks a certificate signed by rootKeyDER directly (no
// subnet delegation: cordon's one subnet is certified by the root key
// itself) and returns its tree. The certificate comes from a client, so
// its items and nesting are counted first, within the bounds of a real
// one (maxCertItems, maxTreeDepth).
func VerifyCertificate(rootKeyDER, cert []byte) (*Tree, error) {
	if err := cborlimit.Check(cert, maxCertItems, maxTreeDepth+1+certNesting); err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return certify.Verify(rootKeyDER, cert)
}
