// Package certify is the node's certification core: the BLS12-381 root
// key kept in the node's home, the IC's hash trees, and certificates (a
// tree and the root key's signature of its root hash). The IC HTTP
// interface (internal/ichttp) certifies read_state answers with it, the
// node (internal/host) the data certificates canisters read in queries.
// Nothing here speaks HTTP.
package certify

import (
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/cloudflare/circl/sign/bls"
	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/cborlimit"
	"github.com/cordon-dev/cordon/internal/homedir"
)

// RootKeyFile is the node's BLS12-381 root key in <home>, the secret scalar
// (mode 0600). The IC's clients pin the public half (fetchRootKey on a
// local network): a new key on every start would make them distrust
// certificates they kept, so it is made once and reused.
const RootKeyFile = "ic_root_key"

// blsDERPrefix is the DER header the IC puts before a 96-byte compressed G2
// public key (algorithm 1.3.6.1.4.1.44668.5.3.1.2.1, curve
// 1.3.6.1.4.1.44668.5.3.2.1).
var blsDERPrefix = []byte{
	0x30, 0x81, 0x82, 0x30, 0x1d, 0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05,
	0x03, 0x01, 0x02, 0x01, 0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03,
	0x02, 0x01, 0x03, 0x61, 0x00,
}

// RootKey signs the node's certificates: public key in G2, signatures in
// G1, as on the IC.
type RootKey struct {
	sk  *bls.PrivateKey[bls.KeyG2SigG1]
	der []byte
}

// DER is the public key as /api/v2/status gives it.
func (k *RootKey) DER() []byte { return k.der }

// Sign signs msg (the caller adds the domain separator).
func (k *RootKey) Sign(msg []byte) []byte { return bls.Sign(k.sk, msg) }

// PublicKeyFromDER parses a root key as the IC encodes it.
func PublicKeyFromDER(der []byte) (*bls.PublicKey[bls.KeyG2SigG1], error) {
	if len(der) != len(blsDERPrefix)+96 || string(der[:len(blsDERPrefix)]) != string(blsDERPrefix) {
		return nil, fmt.Errorf("not an IC BLS12-381 public key (%d bytes)", len(der))
	}
	pk := new(bls.PublicKey[bls.KeyG2SigG1])
	if err := pk.UnmarshalBinary(der[len(blsDERPrefix):]); err != nil {
		return nil, fmt.Errorf("BLS public key: %w", err)
	}
	return pk, nil
}

func newRootKey(sk *bls.PrivateKey[bls.KeyG2SigG1]) (*RootKey, error) {
	pub, err := sk.PublicKey().MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode BLS public key: %w", err)
	}
	der := append(append([]byte{}, blsDERPrefix...), pub...)
	return &RootKey{sk: sk, der: der}, nil
}

// LoadOrCreateRootKey reads <home>/ic_root_key, making it (0600, durably,
// complete or not at all: homedir.ReadOrCreateSecret) the first time.
func LoadOrCreateRootKey(home string) (*RootKey, error) {
	path := filepath.Join(home, RootKeyFile)
	// Whoever reads it can forge the node's certificates; whoever
	// chose it, too.
	b, _, err := homedir.ReadOrCreateSecret(home, RootKeyFile, func() ([]byte, error) {
		ikm := make([]byte, 32)
		if _, err := rand.Read(ikm); err != nil {
			return nil, fmt.Errorf("root key entropy: %w", err)
		}
		sk, err := bls.KeyGen[bls.KeyG2SigG1](ikm, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("generate root key: %w", err)
		}
		raw, err := sk.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("encode root key: %w", err)
		}
		return raw, nil
	})
	if err != nil {
		return nil, fmt.Errorf("root key: %w", err)
	}
	sk := new(bls.PrivateKey[bls.KeyG2SigG1])
	if err := sk.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("%s is not a BLS root key (%w); remove it to make a new one (clients must then fetch the new root key)", path, err)
	}
	return newRootKey(sk)
}

// StateRootDomain separates the root key's certificate signatures.
const StateRootDomain = "\x0Dic-state-root"

// SelfDescribeTag marks CBOR documents (the IC writes and accepts it).
const SelfDescribeTag = 55799

// certificate is the spec's Certificate: the tree and the root key's
// signature of its root hash. cordon has one subnet and no delegations.
type certificate struct {
	Tree      *Tree  `cbor:"tree"`
	Signature []byte `cbor:"signature"`
}

// Certify signs a tree's root hash and encodes the certificate
// (self-described CBOR).
func (k *RootKey) Certify(t *Tree) ([]byte, error) {
	root := t.Digest()
	sig := k.Sign(append([]byte(StateRootDomain), root[:]...))
	return cbor.Marshal(cbor.Tag{Number: SelfDescribeTag, Content: certificate{Tree: t, Signature: sig}})
}

// CertifyCanister is the certificate ic0.data_certificate_copy gives a
// canister: a tree with /time and /canister/<id>/certified_data, the rest
// of the state tree left out (as the IC prunes it).
func (k *RootKey) CertifyCanister(id, certifiedData []byte, timeNanos uint64) ([]byte, error) {
	t := Node{
		"time":     Leaf(LEB128(timeNanos)),
		"canister": Node{string(id): Node{"certified_data": Leaf(certifiedData)}.Tree()}.Tree(),
	}.Tree()
	return k.Certify(t)
}

// maxCertificate bounds a certificate Verify decodes (the IC's, with a
// delegation, are a few KiB), and maxCertItems its CBOR data items, counted
// before it is decoded: a real certificate is a tree pruned to the paths it
// certifies (at most three items a node), a signature and an optional
// delegation, a few hundred items. The size alone would let a 1 MiB
// certificate of one-byte items decode into a million Go values.
const (
	maxCertificate = 1 << 20
	maxCertItems   = 4096
)

// certDecMode decodes a certificate from outside: a tree node is an array
// of at most 3 items, a certificate a map of at most 3 pairs, no duplicate
// keys, no indefinite lengths.
var certDecMode = NewStrictDecoder(maxTreeDepth + 8)

// StrictDecoder is the CBOR decoding of certificates, hash trees and
// signatures from outside: at most a given nesting (within the 4 to 65535
// the cbor package accepts), arrays of at most 16 items (a tree node has
// 3), maps of at most 16 pairs, no duplicate keys, no indefinite lengths.
type StrictDecoder struct {
	mode func() (cbor.DecMode, error)
}

// NewStrictDecoder returns the StrictDecoder of at most maxNested levels. Its
// decoding mode is built on first use; an error building it (none of
// these options can cause one) is every Unmarshal's error.
func NewStrictDecoder(maxNested int) *StrictDecoder {
	return &StrictDecoder{mode: sync.OnceValues(func() (cbor.DecMode, error) {
		return cbor.DecOptions{
			MaxNestedLevels:  min(max(maxNested, 4), 65535),
			MaxArrayElements: 16,
			MaxMapPairs:      16,
			DupMapKey:        cbor.DupMapKeyEnforcedAPF,
			IndefLength:      cbor.IndefLengthForbidden,
		}.DecMode()
	})}
}

// Unmarshal decodes data into v within the decoder's bounds.
func (d *StrictDecoder) Unmarshal(data []byte, v any) error {
	dm, err := d.mode()
	if err != nil {
		return fmt.Errorf("cbor decoding mode: %w", err)
	}
	return dm.Unmarshal(data, v)
}

// Verify checks a certificate as a client does: its signature over the
// reconstructed root hash under the root key given (DER), with no
// delegation (cordon's certificates have none); it returns the tree.
func Verify(rootKeyDER, cert []byte) (*Tree, error) {
	if len(cert) > maxCertificate {
		return nil, fmt.Errorf("certificate of %d bytes (at most %d)", len(cert), maxCertificate)
	}
	if err := cborlimit.Check(cert, maxCertItems, maxTreeDepth+8); err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	var c struct {
		Tree       any             `cbor:"tree"`
		Signature  []byte          `cbor:"signature"`
		Delegation cbor.RawMessage `cbor:"delegation"`
	}
	if err := certDecMode.Unmarshal(cert, &c); err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	if c.Delegation != nil {
		return nil, errors.New("certificate: delegations are not supported")
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
	if !bls.Verify(pk, append([]byte(StateRootDomain), root[:]...), c.Signature) {
		return nil, errors.New("certificate: the signature does not verify under the root key")
	}
	return tree, nil
}
