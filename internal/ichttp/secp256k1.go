package ichttp

import (
	"crypto/sha256"
	"encoding/asn1"
	"errors"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	secpecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// secp256k1 senders: ECDSA over secp256k1 (the IC's, for keys held by
// Ethereum/Bitcoin-style wallets). The key is a DER SubjectPublicKeyInfo
// with algorithm id-ecPublicKey and curve secp256k1; the signature r‖s,
// 32 bytes each big-endian, over SHA-256 of the signed message. The
// curve arithmetic is decred's (a constant-time, long-fuzzed
// implementation used by btcd and go-ethereum), not written here.
//
// High-s signatures are accepted: the spec does not require the low-s
// form, and malleability does not matter to requests (their id is the
// hash of their content, never of their signature).
var (
	oidECPublicKey = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidSecp256k1   = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
)

// maxECKeyDER bounds the DER of an EC public key (an uncompressed point
// under a short header is 88 bytes).
const maxECKeyDER = 128

type spki struct {
	Algorithm struct {
		Algorithm asn1.ObjectIdentifier
		Curve     asn1.ObjectIdentifier
	}
	PublicKey asn1.BitString
}

// secp256k1Key reads a DER secp256k1 public key; ok is false when der is
// not an EC key on secp256k1 at all (another kind of key), err set when it
// is one but malformed.
func secp256k1Key(der []byte) (v verifier, ok bool, err error) {
	if len(der) > maxECKeyDER {
		return nil, false, nil
	}
	var k spki
	rest, err := asn1.Unmarshal(der, &k)
	if err != nil || !k.Algorithm.Algorithm.Equal(oidECPublicKey) || !k.Algorithm.Curve.Equal(oidSecp256k1) {
		return nil, false, nil
	}
	if len(rest) != 0 || k.PublicKey.BitLength != 8*len(k.PublicKey.Bytes) {
		return nil, true, errors.New("is a malformed secp256k1 key (trailing data or a partial byte)")
	}
	pub, err := secp256k1.ParsePubKey(k.PublicKey.Bytes)
	if err != nil {
		return nil, true, errors.New("is not a point on secp256k1: " + err.Error())
	}
	return func(msg, sig []byte) bool {
		if len(sig) != 64 {
			return false
		}
		var r, s secp256k1.ModNScalar
		// Out of range (≥ n) or zero values are not signatures.
		if r.SetByteSlice(sig[:32]) || s.SetByteSlice(sig[32:]) || r.IsZero() || s.IsZero() {
			return false
		}
		h := sha256.Sum256(msg)
		return secpecdsa.NewSignature(&r, &s).Verify(h[:], pub)
	}, true, nil
}
