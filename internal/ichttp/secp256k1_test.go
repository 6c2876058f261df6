package ichttp

import (
	"crypto/sha256"
	"encoding/asn1"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	secpecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// A reference secp256k1 signer on math/big, independent of the library
// the node verifies with: affine points, y² = x³ + 7.
var (
	k1P, _  = new(big.Int).SetString("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F", 16)
	k1N, _  = new(big.Int).SetString("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141", 16)
	k1Gx, _ = new(big.Int).SetString("79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798", 16)
	k1Gy, _ = new(big.Int).SetString("483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8", 16)
)

type k1Point struct{ x, y *big.Int } // x nil: infinity

func k1Add(a, b k1Point) k1Point {
	switch {
	case a.x == nil:
		return b
	case b.x == nil:
		return a
	}
	var l *big.Int
	if a.x.Cmp(b.x) == 0 {
		if new(big.Int).Add(a.y, b.y).Mod(new(big.Int).Add(a.y, b.y), k1P).Sign() == 0 {
			return k1Point{}
		}
		// λ = 3x² / 2y
		num := new(big.Int).Mul(big.NewInt(3), new(big.Int).Mul(a.x, a.x))
		den := new(big.Int).ModInverse(new(big.Int).Mul(big.NewInt(2), a.y), k1P)
		l = num.Mul(num, den)
	} else {
		num := new(big.Int).Sub(b.y, a.y)
		den := new(big.Int).ModInverse(new(big.Int).Mod(new(big.Int).Sub(b.x, a.x), k1P), k1P)
		l = num.Mul(num, den)
	}
	l.Mod(l, k1P)
	x := new(big.Int).Sub(new(big.Int).Mul(l, l), a.x)
	x.Sub(x, b.x).Mod(x, k1P)
	y := new(big.Int).Sub(a.x, x)
	y.Mul(y, l).Sub(y, a.y).Mod(y, k1P)
	return k1Point{x, y}
}

func k1Mul(k *big.Int, p k1Point) k1Point {
	r := k1Point{}
	for i := k.BitLen() - 1; i >= 0; i-- {
		r = k1Add(r, r)
		if k.Bit(i) == 1 {
			r = k1Add(r, p)
		}
	}
	return r
}

// k1Sign signs sha256(msg) with private key d and nonce k: r‖s.
func k1Sign(d, k *big.Int, msg []byte) []byte {
	h := sha256.Sum256(msg)
	e := new(big.Int).SetBytes(h[:])
	r := new(big.Int).Mod(k1Mul(k, k1Point{k1Gx, k1Gy}).x, k1N)
	s := new(big.Int).Mul(r, d)
	s.Add(s, e).Mul(s, new(big.Int).ModInverse(k, k1N)).Mod(s, k1N)
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out
}

// k1DER is the SubjectPublicKeyInfo of point, with the given curve OID.
func k1DER(t testing.TB, point []byte, curve asn1.ObjectIdentifier) []byte {
	t.Helper()
	var k spki
	k.Algorithm.Algorithm, k.Algorithm.Curve = oidECPublicKey, curve
	k.PublicKey = asn1.BitString{Bytes: point, BitLength: 8 * len(point)}
	b, err := asn1.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func k1Uncompressed(p k1Point) []byte {
	out := make([]byte, 65)
	out[0] = 4
	p.x.FillBytes(out[1:33])
	p.y.FillBytes(out[33:])
	return out
}

// secp256k1 senders: signatures by an independent signer and by the
// library verify; a wrong key, a changed message, out-of-range values and
// malformed keys do not. High s is accepted (see secp256k1.go).
func TestSecp256k1Sender(t *testing.T) {
	now := time.Now()
	d, _ := new(big.Int).SetString("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721", 16)
	q := k1Mul(d, k1Point{k1Gx, k1Gy})
	der := k1DER(t, k1Uncompressed(q), oidSecp256k1)
	sender := principal.SelfAuthenticating(der)
	c := callContent(sender, now)
	rid, _ := RequestID(c)
	msg := append([]byte(requestDomain), rid[:]...)
	nonce, _ := new(big.Int).SetString("a6e3c57dd01abe90086538398355dd4c3b17aa873382b0f24d6129493d8aad60", 16)
	sig := k1Sign(d, nonce, msg)
	env := func(der, sig []byte, c map[string]any) []byte {
		b, err := cbor.Marshal(map[string]any{"content": c, "sender_pubkey": der, "sender_sig": sig})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if req, err := ParseEnvelope(env(der, sig, c), "call", now); err != nil || !req.Sender.Equal(sender) {
		t.Fatalf("reference signature: %v", err)
	}
	// The same key compressed (another principal, the same signature).
	comp := append([]byte{2 + byte(q.y.Bit(0))}, k1Uncompressed(q)[1:33]...)
	cder := k1DER(t, comp, oidSecp256k1)
	cc := callContent(principal.SelfAuthenticating(cder), now)
	crid, _ := RequestID(cc)
	if _, err := ParseEnvelope(env(cder, k1Sign(d, nonce, append([]byte(requestDomain), crid[:]...)), cc), "call", now); err != nil {
		t.Fatalf("compressed key: %v", err)
	}
	// The library's own signer (low s, RFC 6979) verifies too.
	lk := secp256k1.PrivKeyFromBytes(d.Bytes())
	h := sha256.Sum256(msg)
	ls := secpecdsa.Sign(lk, h[:])
	lr, lsS := ls.R(), ls.S()
	rb, sb := lr.Bytes(), lsS.Bytes()
	libSig := append(rb[:], sb[:]...)
	if _, err := ParseEnvelope(env(der, libSig, c), "call", now); err != nil {
		t.Fatalf("library signature: %v", err)
	}
	// High s: (r, n-s) is the same signature's twin.
	s := new(big.Int).SetBytes(libSig[32:])
	high := append([]byte{}, libSig...)
	new(big.Int).Sub(k1N, s).FillBytes(high[32:])
	if _, err := ParseEnvelope(env(der, high, c), "call", now); err != nil {
		t.Fatalf("high-s twin: %v", err)
	}

	otherD := big.NewInt(12345)
	oq := k1Mul(otherD, k1Point{k1Gx, k1Gy})
	changed := callContent(sender, now)
	changed["method_name"] = "other"
	nBytes := k1N.FillBytes(make([]byte, 32))
	badX := k1Uncompressed(q)
	badX[64] ^= 1 // not on the curve
	for _, tc := range []struct {
		name string
		body []byte
		msg  string
	}{
		{"another key's signature", env(der, k1Sign(otherD, nonce, msg), c), "invalid signature"},
		{"signature of another request", env(der, sig, changed), "invalid signature"},
		{"r = n", env(der, append(append([]byte{}, nBytes...), sig[32:]...), c), "invalid signature"},
		{"s = 0", env(der, append(append([]byte{}, sig[:32]...), make([]byte, 32)...), c), "invalid signature"},
		{"63 bytes", env(der, sig[:63], c), "invalid signature"},
		{"DER encoded signature", env(der, append([]byte{0x30, 0x44}, sig...), c), "invalid signature"},
		{"signed key, other sender", env(k1DER(t, k1Uncompressed(oq), oidSecp256k1), sig, c), "is not the principal"},
	} {
		_, err := ParseEnvelope(tc.body, "call", now)
		if st, m := asRequestError(err); err == nil || st != 403 || !strings.Contains(m, tc.msg) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// Malformed keys: refused whatever they sign.
	for _, tc := range []struct {
		name string
		der  []byte
		msg  string
	}{
		{"point off the curve", k1DER(t, badX, oidSecp256k1), "not a point on secp256k1"},
		{"another curve", k1DER(t, k1Uncompressed(q), asn1.ObjectIdentifier{1, 3, 132, 0, 34}), "not a DER Ed25519"},
		{"trailing bytes", append(append([]byte{}, der...), 0), "malformed secp256k1 key"},
		{"truncated", der[:len(der)-1], "not a DER Ed25519"},
		{"empty point", k1DER(t, nil, oidSecp256k1), "not a point on secp256k1"},
	} {
		kc := callContent(principal.SelfAuthenticating(tc.der), now)
		krid, _ := RequestID(kc)
		_, err := ParseEnvelope(env(tc.der, k1Sign(d, nonce, append([]byte(requestDomain), krid[:]...)), kc), "call", now)
		if st, m := asRequestError(err); err == nil || st != 403 || !strings.Contains(m, tc.msg) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
