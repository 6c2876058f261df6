package ichttp

import (
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/cborlimit"
	"github.com/cordon-dev/cordon/internal/certify"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Canister signatures (the spec's "canister signatures", how Internet
// Identity signs delegations): the public key names a signing canister and
// a seed; a signature is a certificate of the node's state in which that
// canister's certified_data is the root hash of a tree holding
// sig/<sha256(seed)>/<sha256(message)> (an empty leaf), and that tree.
// The signing canister runs on cordon, so the certificate is cordon's own:
// signed by its root key, without a subnet delegation.
var oidCanisterSig = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 56387, 1, 2}

// maxCanisterSigKey bounds such a key's DER (a canister id of at most 29
// bytes and a seed; Internet Identity's seeds are 32 bytes).
const maxCanisterSigKey = 512

type canisterSigSPKI struct {
	Algorithm struct {
		Algorithm asn1.ObjectIdentifier
	}
	PublicKey asn1.BitString
}

// canisterSigKey reads a canister signature public key: ok false when der
// is not one, err set when it is one but malformed (or the node has no
// root key to check certificates with).
func canisterSigKey(der, rootKey []byte) (v verifier, ok bool, err error) {
	if len(der) > maxCanisterSigKey {
		return nil, false, nil
	}
	var k canisterSigSPKI
	rest, err := asn1.Unmarshal(der, &k)
	if err != nil || !k.Algorithm.Algorithm.Equal(oidCanisterSig) {
		return nil, false, nil
	}
	raw := k.PublicKey.Bytes
	if len(rest) != 0 || k.PublicKey.BitLength != 8*len(raw) || len(raw) == 0 || int(raw[0]) > len(raw)-1 {
		return nil, true, errors.New("is a malformed canister signature key")
	}
	signer, err := principal.FromBytes(raw[1 : 1+int(raw[0])])
	if err != nil {
		return nil, true, fmt.Errorf("is a canister signature key of an invalid canister id: %w", err)
	}
	if rootKey == nil {
		return nil, true, errors.New("is a canister signature key, which this node cannot check")
	}
	seedHash := sha256.Sum256(raw[1+int(raw[0]):])
	return func(msg, sig []byte) bool {
		return verifyCanisterSig(rootKey, signer, seedHash, msg, sig) == nil
	}, true, nil
}

// canisterSigDecMode reads a signature's outer map; the tree inside is
// read by DecodeTree with its own bounds.
var canisterSigDecMode = certify.NewStrictDecoder(maxTreeDepth*2 + 8)

// verifyCanisterSig checks sig as signer's signature of msg under the seed
// whose hash is seedHash.
func verifyCanisterSig(rootKey []byte, signer principal.Principal, seedHash [32]byte, msg, sig []byte) error {
	var s struct {
		Certificate []byte          `cbor:"certificate"`
		Tree        cbor.RawMessage `cbor:"tree"`
	}
	// The signature is one blob of the envelope: its own items are
	// counted here (the tree in it is within them).
	if err := cborlimit.Check(sig, maxCertItems, maxTreeDepth+1+certNesting); err != nil {
		return fmt.Errorf("canister signature: %w", err)
	}
	if err := canisterSigDecMode.Unmarshal(sig, &s); err != nil {
		return fmt.Errorf("canister signature: %w", err)
	}
	if len(s.Certificate) == 0 || len(s.Tree) == 0 {
		return errors.New("canister signature: needs certificate and tree")
	}
	cert, err := VerifyCertificate(rootKey, s.Certificate)
	if err != nil {
		return err
	}
	tree, err := DecodeTree(s.Tree)
	if err != nil {
		return fmt.Errorf("canister signature: %w", err)
	}
	cd, ok := cert.Lookup([]byte("canister"), signer.Bytes(), []byte("certified_data"))
	root := tree.Digest()
	if !ok || string(cd) != string(root[:]) {
		return fmt.Errorf("canister signature: the certificate does not certify the tree as %s's certified data", signer)
	}
	msgHash := sha256.Sum256(msg)
	leaf, ok := tree.Lookup([]byte("sig"), seedHash[:], msgHash[:])
	if !ok || len(leaf) != 0 {
		return errors.New("canister signature: the tree does not sign this message under this seed")
	}
	return nil
}
