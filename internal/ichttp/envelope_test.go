package ichttp

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// The interface spec's example: the request id of this call content.
func TestRequestIDSpecExample(t *testing.T) {
	content := map[string]any{
		"request_type":   "call",
		"sender":         []byte{0x04},
		"ingress_expiry": uint64(1685570400000000000),
		"canister_id":    []byte{0, 0, 0, 0, 0, 0, 0x04, 0xD2},
		"method_name":    "hello",
		"arg":            []byte("DIDL\x00\xFD*"),
	}
	id, err := RequestID(content)
	if err != nil {
		t.Fatal(err)
	}
	const want = "1d1091364d6bb8a6c16b203ee75467d59ead468f523eb058880ae8ec80e2b101"
	if got := hex.EncodeToString(id[:]); got != want {
		t.Fatalf("request id %s, want %s", got, want)
	}
}

// The spec's examples of the hash of single values.
func TestHashValueSpecExamples(t *testing.T) {
	for _, c := range []struct {
		v    any
		want string
	}{
		{"hello", "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"},
		{uint64(624485), sha256hex(t, []byte{0xE5, 0x8E, 0x26})}, // the LEB128 example
		{int64(-123456), sha256hex(t, []byte{0xC0, 0xBB, 0x78})}, // the SLEB128 example
		{[]any{"a", "b"}, ""},
	} {
		h, err := hashValue(c.v)
		if err != nil {
			t.Fatalf("%v: %v", c.v, err)
		}
		if c.want != "" && hex.EncodeToString(h[:]) != c.want {
			t.Errorf("hash(%v) = %x, want %s", c.v, h, c.want)
		}
	}
	if _, err := hashValue(1.5); err == nil {
		t.Error("a float was hashed")
	}
	if _, err := hashValue(map[string]any{"x": true}); err == nil {
		t.Error("a boolean was hashed")
	}
}

func sha256hex(t *testing.T, b []byte) string {
	t.Helper()
	h, _ := hashValue(b)
	return hex.EncodeToString(h[:])
}

// Every field that arrives is part of the id: a nonce, an unknown field,
// the argument.
func TestRequestIDCoversAllFields(t *testing.T) {
	base := func() map[string]any {
		return map[string]any{"request_type": "call", "sender": []byte{4}, "ingress_expiry": uint64(1),
			"canister_id": []byte{1}, "method_name": "m", "arg": []byte("a")}
	}
	id0, _ := RequestID(base())
	for name, change := range map[string]func(map[string]any){
		"nonce":   func(m map[string]any) { m["nonce"] = []byte{1} },
		"unknown": func(m map[string]any) { m["x-extra"] = "y" },
		"arg":     func(m map[string]any) { m["arg"] = []byte("b") },
		"expiry":  func(m map[string]any) { m["ingress_expiry"] = uint64(2) },
		"paths":   func(m map[string]any) { m["paths"] = []any{[]any{[]byte("time")}} },
	} {
		m := base()
		change(m)
		id, err := RequestID(m)
		if err != nil {
			t.Fatal(err)
		}
		if id == id0 {
			t.Errorf("changing %s leaves the request id alike", name)
		}
	}
}

// identity is an Ed25519 key and its self-authenticating principal.
type identity struct {
	priv ed25519.PrivateKey
	der  []byte
	p    principal.Principal
}

func newIdentity(t testing.TB) identity {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der := append(append([]byte{}, ed25519DERPrefix...), pub...)
	return identity{priv: priv, der: der, p: principal.SelfAuthenticating(der)}
}

// envelope encodes content signed by id (nil: anonymous, unsigned).
func envelope(t testing.TB, content map[string]any, id *identity) []byte {
	t.Helper()
	env := map[string]any{"content": content}
	if id != nil {
		rid, err := RequestID(content)
		if err != nil {
			t.Fatal(err)
		}
		env["sender_pubkey"] = id.der
		env["sender_sig"] = ed25519.Sign(id.priv, append([]byte(requestDomain), rid[:]...))
	}
	b, err := cbor.Marshal(cbor.Tag{Number: selfDescribeTag, Content: env})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func callContent(sender principal.Principal, now time.Time) map[string]any {
	return map[string]any{
		"request_type":   "call",
		"sender":         sender.Bytes(),
		"ingress_expiry": uint64(now.Add(3 * time.Minute).UnixNano()),
		"canister_id":    principal.CanisterID(7).Bytes(),
		"method_name":    "inc",
		"arg":            []byte("DIDL\x00\x00"),
		"nonce":          []byte{1, 2, 3},
	}
}

func TestParseEnvelopeAccepts(t *testing.T) {
	now := time.Now()
	me := newIdentity(t)
	c := callContent(me.p, now)
	req, err := ParseEnvelope(envelope(t, c, &me), "call", now)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := RequestID(c)
	if req.ID != want || !req.Sender.Equal(me.p) || req.MethodName != "inc" || !req.CanisterID.Equal(principal.CanisterID(7)) ||
		!bytes.Equal(req.Nonce, []byte{1, 2, 3}) || !bytes.Equal(req.Arg, []byte("DIDL\x00\x00")) {
		t.Fatalf("parsed %+v", req)
	}
	anon := callContent(principal.Anonymous(), now)
	if _, err := ParseEnvelope(envelope(t, anon, nil), "call", now); err != nil {
		t.Fatalf("anonymous: %v", err)
	}
	rs := map[string]any{"request_type": "read_state", "sender": principal.Anonymous().Bytes(),
		"ingress_expiry": uint64(now.UnixNano()), "paths": []any{[]any{[]byte("request_status"), want[:]}, []any{[]byte("time")}}}
	req, err = ParseEnvelope(envelope(t, rs, nil), "read_state", now)
	if err != nil {
		t.Fatal(err)
	}
	if len(req.Paths) != 2 || string(req.Paths[1][0]) != "time" || !bytes.Equal(req.Paths[0][1], want[:]) {
		t.Fatalf("paths %q", req.Paths)
	}
	// Without the self-describe tag too.
	b, _ := cbor.Marshal(map[string]any{"content": anon})
	if _, err := ParseEnvelope(b, "call", now); err != nil {
		t.Fatalf("untagged: %v", err)
	}
}

// Hostile and broken envelopes: each is refused with the right status and
// a message that says why.
func TestParseEnvelopeRefuses(t *testing.T) {
	now := time.Now()
	me, other := newIdentity(t), newIdentity(t)
	enc := func(v any) []byte {
		b, err := cbor.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	signedBy := func(c map[string]any, signer identity, pk []byte) []byte {
		rid, _ := RequestID(c)
		return enc(map[string]any{"content": c, "sender_pubkey": pk,
			"sender_sig": ed25519.Sign(signer.priv, append([]byte(requestDomain), rid[:]...))})
	}
	with := func(sender principal.Principal, f func(map[string]any)) map[string]any {
		c := callContent(sender, now)
		f(c)
		return c
	}
	deep := []any{}
	for range 40 {
		deep = []any{deep}
	}
	bigArray := make([]any, 2000) // within maxItems, over the per-array limit
	for i := range bigArray {
		bigArray[i] = []byte("x")
	}
	manyKeys := map[string]any{}
	for i := range 200 {
		manyKeys[strings.Repeat("k", i+1)] = uint64(i)
	}
	rid, _ := RequestID(callContent(me.p, now))
	tampered := signedBy(callContent(me.p, now), me, me.der)
	tampered = bytes.Replace(tampered, []byte("inc"), []byte("dec"), 1)

	for _, c := range []struct {
		name   string
		body   []byte
		typ    string
		status int
		msg    string
	}{
		{"garbage", []byte("not cbor at all"), "call", 400, "Could not parse body"},
		{"empty", nil, "call", 400, "Could not parse body"},
		{"truncated", envelope(t, callContent(me.p, now), &me)[:40], "call", 400, "Could not parse body"},
		{"not a map", enc([]any{1, 2}), "call", 400, "not a map"},
		{"no content", enc(map[string]any{"x": 1}), "call", 400, "content"},
		{"unknown envelope field", enc(map[string]any{"content": callContent(principal.Anonymous(), now), "extra": 1}), "call", 400, "unknown envelope field"},
		{"wrong type", envelope(t, callContent(principal.Anonymous(), now), nil), "query", 400, "request_type"},
		{"no method", envelope(t, with(principal.Anonymous(), func(m map[string]any) { delete(m, "method_name") }), nil), "call", 400, "method_name"},
		{"arg not blob", envelope(t, with(principal.Anonymous(), func(m map[string]any) { m["arg"] = "text" }), nil), "call", 400, "arg"},
		{"bad sender", envelope(t, with(principal.Anonymous(), func(m map[string]any) { m["sender"] = bytes.Repeat([]byte{1}, 40) }), nil), "call", 400, "sender"},
		{"float", envelope(t, with(principal.Anonymous(), func(m map[string]any) { m["x"] = 1.5 }), nil), "call", 400, "hash"},
		{"expired", envelope(t, with(principal.Anonymous(), func(m map[string]any) { m["ingress_expiry"] = uint64(now.Add(-time.Minute).UnixNano()) }), nil), "call", 400, "Invalid request expiry: "},
		{"too far ahead", envelope(t, with(principal.Anonymous(), func(m map[string]any) { m["ingress_expiry"] = uint64(now.Add(time.Hour).UnixNano()) }), nil), "call", 400, "Invalid request expiry: "},
		{"expiry not nat", envelope(t, with(principal.Anonymous(), func(m map[string]any) { m["ingress_expiry"] = int64(-1) }), nil), "call", 400, "ingress_expiry"},
		{"deep nesting", envelope(t, with(principal.Anonymous(), func(m map[string]any) { m["x"] = deep }), nil), "call", 400, "nested"},
		{"huge array", enc(map[string]any{"content": with(principal.Anonymous(), func(m map[string]any) { m["paths"] = bigArray })}), "call", 400, "array"},
		{"many keys", enc(map[string]any{"content": with(principal.Anonymous(), func(m map[string]any) { m["x"] = manyKeys })}), "call", 400, "map"},
		{"duplicate key", append([]byte{0xa2, 0x67}, append([]byte("content"), append([]byte{0xa0, 0x67}, append([]byte("content"), 0xa0)...)...)...), "call", 400, "duplicate"},
		{"million items", func() []byte {
			// 3 MiB of one-byte items in arrays within the per-array limit.
			inner := append([]byte{0x99, 0x03, 0xe8}, make([]byte, 1000)...) // array(1000) of 0
			b := []byte{0xa1, 0x67}
			b = append(b, "content"...)
			b = append(b, 0x99, 0x03, 0xe8)
			for range 1000 {
				b = append(b, inner...)
			}
			return b
		}(), "call", 400, "CBOR data items"},
		{"int map key", enc(map[any]any{1: "x"}), "call", 400, "Could not parse body"},
		{"unsigned non-anonymous", envelope(t, callContent(me.p, now), nil), "call", 403, "needs sender_pubkey and sender_sig"},
		{"anonymous with key", signedBy(callContent(principal.Anonymous(), now), me, me.der), "call", 403, "anonymous request must not"},
		{"key of another", signedBy(callContent(me.p, now), other, other.der), "call", 403, "not the principal of the given sender_pubkey"},
		{"signed by another", signedBy(callContent(me.p, now), other, me.der), "call", 403, "invalid signature"},
		{"content changed after signing", tampered, "call", 403, "invalid signature"},
		{"signature over the bare id", enc(map[string]any{"content": callContent(me.p, now), "sender_pubkey": me.der, "sender_sig": ed25519.Sign(me.priv, rid[:])}), "call", 403, "invalid signature"},
		{"short signature", enc(map[string]any{"content": callContent(me.p, now), "sender_pubkey": me.der, "sender_sig": []byte{1}}), "call", 403, "invalid signature"},
		{"delegation", enc(map[string]any{"content": callContent(me.p, now), "sender_pubkey": me.der, "sender_sig": []byte{1}, "sender_delegation": []any{}}), "call", 403, "invalid signature"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseEnvelope(c.body, c.typ, now)
			if err == nil {
				t.Fatal("accepted")
			}
			st, msg := asRequestError(err)
			if st != c.status || !strings.Contains(msg, c.msg) {
				t.Fatalf("got %d %q, want %d containing %q", st, msg, c.status, c.msg)
			}
		})
	}
}

// countItems agrees with the decoder on what it counts and refuses what
// it cannot.
func TestCountItems(t *testing.T) {
	now := time.Now()
	env := envelope(t, callContent(principal.Anonymous(), now), nil)
	if err := countItems(env, maxItems); err != nil {
		t.Fatalf("a real envelope: %v", err)
	}
	// tag, map(1), "content", map(7), 7 keys and 7 values: 18.
	if err := countItems(env, 18); err != nil {
		t.Fatalf("exact count: %v", err)
	}
	if err := countItems(env, 17); err == nil {
		t.Fatal("one item too many passed")
	}
	for i := range len(env) - 1 {
		if err := countItems(env[:i], maxItems); err == nil {
			t.Fatalf("truncated at %d passed", i)
		}
	}
	for _, b := range [][]byte{
		{0x9f, 0xff}, // indefinite array
		{0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // huge blob length
		{0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // huge array length
		{0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // huge map
		{0x1c}, // reserved
	} {
		if err := countItems(b, maxItems); err == nil {
			t.Errorf("%x passed", b)
		}
	}
}

func TestReadBodyBound(t *testing.T) {
	if _, err := readBody(bytes.NewReader(make([]byte, MaxBody))); err != nil {
		t.Fatalf("a body of exactly MaxBody: %v", err)
	}
	_, err := readBody(bytes.NewReader(make([]byte, MaxBody+1)))
	if st, _ := asRequestError(err); st != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized body: %v", err)
	}
}

// FuzzParseEnvelope: no input panics, and an accepted envelope's id is the
// hash of what it holds.
func FuzzParseEnvelope(f *testing.F) {
	now := time.Unix(1_700_000_000, 0)
	me := newIdentity(f)
	f.Add(envelope(f, callContent(me.p, now), &me))
	f.Add(envelope(f, callContent(principal.Anonymous(), now), nil))
	f.Add([]byte{0xd9, 0xd9, 0xf7, 0xa1, 0x67, 'c', 'o', 'n', 't', 'e', 'n', 't', 0xa0})
	// A secp256k1 sender (secp256k1_test.go's reference signer), and one
	// whose key is off the curve.
	d := big.NewInt(0x5ec9)
	q := k1Mul(d, k1Point{k1Gx, k1Gy})
	for _, point := range [][]byte{k1Uncompressed(q), append([]byte{4}, make([]byte, 64)...)} {
		der := k1DER(f, point, oidSecp256k1)
		c := callContent(principal.SelfAuthenticating(der), now)
		rid, _ := RequestID(c)
		b, _ := cbor.Marshal(map[string]any{"content": c, "sender_pubkey": der,
			"sender_sig": k1Sign(d, big.NewInt(77), append([]byte(requestDomain), rid[:]...))})
		f.Add(b)
	}
	// A delegation with targets on a read_state.
	session := newIdentity(f)
	rs := map[string]any{"request_type": "read_state", "sender": me.p.Bytes(), "ingress_expiry": uint64(now.Add(time.Minute).UnixNano()),
		"paths": []any{[]any{[]byte("request_status"), make([]byte, 32)}}}
	dl := map[string]any{"pubkey": session.der, "expiration": uint64(now.Add(time.Hour).UnixNano()), "targets": []any{principal.CanisterID(1).Bytes()}}
	dh, _ := hashMap(dl)
	rrid, _ := RequestID(rs)
	b, _ := cbor.Marshal(map[string]any{"content": rs, "sender_pubkey": me.der,
		"sender_delegation": []any{map[string]any{"delegation": dl, "signature": ed25519.Sign(me.priv, append([]byte(delegationDomain), dh[:]...))}},
		"sender_sig":        ed25519.Sign(session.priv, append([]byte(requestDomain), rrid[:]...))})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, typ := range []string{"call", "query", "read_state"} {
			req, err := ParseEnvelope(b, typ, now)
			if err != nil {
				if st, _ := asRequestError(err); st != 400 && st != 403 {
					t.Fatalf("status %d for %v", st, err)
				}
				continue
			}
			if req.Type != typ {
				t.Fatalf("accepted a %q for %q", req.Type, typ)
			}
		}
	})
}

// delegate signs a delegation from one identity to another key.
func delegate(t *testing.T, from identity, to identity, exp time.Time, targets []any) map[string]any {
	t.Helper()
	d := map[string]any{"pubkey": to.der, "expiration": uint64(exp.UnixNano())}
	if targets != nil {
		d["targets"] = targets
	}
	h, err := hashMap(d)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]any{"delegation": d, "signature": ed25519.Sign(from.priv, append([]byte(delegationDomain), h[:]...))}
}

// Delegation chains: the sender's key delegates to a session key, which
// signs the request; every link is checked.
func TestDelegations(t *testing.T) {
	now := time.Now()
	root, mid, session, stranger := newIdentity(t), newIdentity(t), newIdentity(t), newIdentity(t)
	c := callContent(root.p, now)
	rid, _ := RequestID(c)
	signBy := func(who identity, chain []any) []byte {
		b, err := cbor.Marshal(map[string]any{"content": c, "sender_pubkey": root.der, "sender_delegation": chain,
			"sender_sig": ed25519.Sign(who.priv, append([]byte(requestDomain), rid[:]...))})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	later := now.Add(time.Hour)
	target := []any{principal.CanisterID(7).Bytes()}
	for _, ok := range []struct {
		name string
		body []byte
	}{
		{"one link", signBy(session, []any{delegate(t, root, session, later, nil)})},
		{"two links", signBy(session, []any{delegate(t, root, mid, later, nil), delegate(t, mid, session, later, nil)})},
		{"target", signBy(session, []any{delegate(t, root, session, later, append([]any{principal.CanisterID(8).Bytes()}, target...))})},
	} {
		req, err := ParseEnvelope(ok.body, "call", now)
		if err != nil {
			t.Fatalf("%s: %v", ok.name, err)
		}
		if !req.Sender.Equal(root.p) {
			t.Fatalf("%s: sender %s", ok.name, req.Sender)
		}
	}
	many := []any{}
	prev := root
	for range maxDelegations + 1 {
		next := newIdentity(t)
		many = append(many, delegate(t, prev, next, later, nil))
		prev = next
	}
	for _, bad := range []struct {
		name string
		body []byte
		msg  string
	}{
		{"signed by the root, not the session key", signBy(root, []any{delegate(t, root, session, later, nil)}), "invalid signature"},
		{"link signed by a stranger", signBy(session, []any{delegate(t, stranger, session, later, nil)}), "invalid delegation 0"},
		{"broken second link", signBy(session, []any{delegate(t, root, mid, later, nil), delegate(t, stranger, session, later, nil)}), "invalid delegation 1"},
		{"expired", signBy(session, []any{delegate(t, root, session, now.Add(-time.Second), nil)}), "expired"},
		{"other target", signBy(session, []any{delegate(t, root, session, later, []any{principal.CanisterID(8).Bytes()})}), "not among the targets"},
		{"too many", signBy(prev, many), "more than 20 delegations"},
	} {
		_, err := ParseEnvelope(bad.body, "call", now)
		st, msg := asRequestError(err)
		if err == nil || st != 403 || !strings.Contains(msg, bad.msg) {
			t.Errorf("%s: %v, want 403 containing %q", bad.name, err, bad.msg)
		}
	}
	// A changed delegation (a later expiry) breaks its signature.
	d := delegate(t, root, session, later, nil)
	d["delegation"].(map[string]any)["expiration"] = uint64(later.Add(time.Hour).UnixNano())
	if _, err := ParseEnvelope(signBy(session, []any{d}), "call", now); err == nil || !strings.Contains(err.Error(), "invalid delegation 0") {
		t.Errorf("extended delegation: %v", err)
	}
}

// ECDSA P-256 senders: r‖s over SHA-256; other curves are refused.
func TestECDSASender(t *testing.T) {
	now := time.Now()
	key := func(c elliptic.Curve) (*ecdsa.PrivateKey, []byte) {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		return k, der
	}
	sign := func(k *ecdsa.PrivateKey, msg []byte) []byte {
		h := sha256.Sum256(msg)
		r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
		if err != nil {
			t.Fatal(err)
		}
		n := (k.Curve.Params().BitSize + 7) / 8
		out := make([]byte, 2*n)
		r.FillBytes(out[:n])
		s.FillBytes(out[n:])
		return out
	}
	env := func(k *ecdsa.PrivateKey, der []byte, tamper bool) []byte {
		c := callContent(principal.SelfAuthenticating(der), now)
		rid, _ := RequestID(c)
		sig := sign(k, append([]byte(requestDomain), rid[:]...))
		if tamper {
			sig[5] ^= 1
		}
		b, err := cbor.Marshal(map[string]any{"content": c, "sender_pubkey": der, "sender_sig": sig})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	k, der := key(elliptic.P256())
	req, err := ParseEnvelope(env(k, der, false), "call", now)
	if err != nil {
		t.Fatal(err)
	}
	if !req.Sender.Equal(principal.SelfAuthenticating(der)) {
		t.Fatalf("sender %s", req.Sender)
	}
	if _, err := ParseEnvelope(env(k, der, true), "call", now); err == nil || !strings.Contains(err.Error(), "invalid signature") {
		t.Fatalf("tampered P-256 signature: %v", err)
	}
	k384, der384 := key(elliptic.P384())
	if _, err := ParseEnvelope(env(k384, der384, false), "call", now); err == nil || !strings.Contains(err.Error(), "Ed25519 or ECDSA P-256") {
		t.Fatalf("P-384 sender: %v", err)
	}
}

// BenchmarkParseEnvelope: decode, hash and verify one signed call.
func BenchmarkParseEnvelope(b *testing.B) {
	now := time.Now()
	me := newIdentity(b)
	env := envelope(b, callContent(me.p, now), &me)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseEnvelope(env, "call", now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCertify: a request_status certificate (BLS signature in G1).
func BenchmarkCertify(b *testing.B) {
	k, err := LoadOrCreateRootKey(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	var id [32]byte
	t := node{"time": Leaf(leb128(1)), "request_status": node{string(id[:]): statusTree(requestStatus{Status: "replied", Reply: []byte("DIDL\x00\x00")})}.tree()}.tree()
	for b.Loop() {
		if _, err := k.Certify(t); err != nil {
			b.Fatal(err)
		}
	}
}
