package ichttp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/asn1"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// sigWAT is a signing canister: set makes its argument its certified data.
const sigWAT = `(module
  (import "ic0" "msg_arg_data_size" (func $size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $copy (param i32 i32 i32)))
  (import "ic0" "certified_data_set" (func $cds (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func (export "canister_update set")
    (call $copy (i32.const 0) (i32.const 0) (call $size))
    (call $cds (i32.const 0) (call $size))
    (call $reply)))`

// canisterSigDER is the public key of canister signer's signatures under seed.
func canisterSigDER(t testing.TB, signer principal.Principal, seed []byte) []byte {
	t.Helper()
	raw := append([]byte{byte(signer.Len())}, signer.Bytes()...)
	raw = append(raw, seed...)
	var k canisterSigSPKI
	k.Algorithm.Algorithm = oidCanisterSig
	k.PublicKey = asn1.BitString{Bytes: raw, BitLength: 8 * len(raw)}
	b, err := asn1.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sigTree is the tree in which a canister signs msgs under seed.
func sigTree(seed []byte, msgs ...[]byte) *Tree {
	sh := sha256.Sum256(seed)
	leaves := node{}
	for _, m := range msgs {
		mh := sha256.Sum256(m)
		leaves[string(mh[:])] = Leaf([]byte{})
	}
	return node{"sig": node{string(sh[:]): leaves.tree()}.tree()}.tree()
}

// End to end: a WAT canister on the node makes a tree's root hash its
// certified data; a certificate of it, fetched with read_state, and the
// tree are the signature of a request whose sender is the canister's
// signature key: the request runs. Tampered signatures are 403 and run
// nothing. As Internet Identity does, the canister signature also signs
// a delegation to a session key, which then signs the request.
func TestCanisterSignature(t *testing.T) {
	node, counter, home := counterNode(t)
	ctx := context.Background()
	wasm, err := wasmtime.Wat2Wasm(sigWAT)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := node.Create(ctx, host.CreateOptions{Controllers: []principal.Principal{principal.Anonymous()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.Install(ctx, signer, host.InstallOptions{Mode: host.ModeInstall, Wasm: wasm, Arg: noArgs, Caller: principal.Anonymous()}); err != nil {
		t.Fatal(err)
	}
	key := testRootKey(t, home)
	srv := httptest.NewServer(New(node, key, testNodeKey(t, home), slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()

	// certify makes tr the signer's certified data and returns the node's
	// certificate of it (what the canister would get as its data
	// certificate in a query).
	certify := func(tr *Tree) []byte {
		t.Helper()
		root := tr.Digest()
		if _, err := node.Update(ctx, host.Message{Canister: signer, Method: "set", Arg: root[:], Caller: principal.Anonymous()}); err != nil {
			t.Fatal(err)
		}
		path := [][]byte{[]byte("canister"), signer.Bytes(), []byte("certified_data")}
		code, b := post(t, srv.URL+"/api/v2/canister/"+signer.String()+"/read_state", envelope(t, readStateContent(principal.Anonymous(), path), nil))
		var m struct {
			Certificate []byte `cbor:"certificate"`
		}
		if err := cbor.Unmarshal(b, &m); code != 200 || err != nil {
			t.Fatalf("read_state: %d %v", code, err)
		}
		return m.Certificate
	}
	sigOf := func(cert []byte, tr *Tree) []byte {
		b, err := cbor.Marshal(cbor.Tag{Number: selfDescribeTag, Content: map[string]any{"certificate": cert, "tree": tr}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	counterValue := func() []byte {
		r, err := node.Query(ctx, host.Message{Canister: counter, Method: "get", Arg: noArgs, Caller: principal.Anonymous()})
		if err != nil {
			t.Fatal(err)
		}
		return r.Data
	}
	call := func(env map[string]any) (int, string) {
		b, err := cbor.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		code, body := post(t, srv.URL+"/api/v3/canister/"+counter.String()+"/call", b)
		return code, string(body)
	}

	seed := []byte("anchor 10000")
	der := canisterSigDER(t, signer, seed)
	sender := principal.SelfAuthenticating(der)
	c := content("call", sender, counter, "inc", time.Now(), 1)
	rid, _ := RequestID(c)
	msg := append([]byte(requestDomain), rid[:]...)
	tr := sigTree(seed, msg)
	cert := certify(tr)
	if code, b := call(map[string]any{"content": c, "sender_pubkey": der, "sender_sig": sigOf(cert, tr)}); code != 200 || !strings.Contains(b, "replied") {
		t.Fatalf("canister-signed call: %d %q", code, b)
	}
	if got := counterValue(); !bytes.Equal(got, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("counter after the canister-signed call %x", got)
	}

	// Refused, nothing runs.
	other, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var certMap map[string]any
	_ = cbor.Unmarshal(cert, &certMap)
	ct, err := DecodeTree(mustCBOR(t, certMap["tree"]))
	if err != nil {
		t.Fatal(err)
	}
	foreignCert, _ := other.Certify(ct)
	c2 := content("call", sender, counter, "inc", time.Now(), 2)
	otherSeed := canisterSigDER(t, signer, []byte("anchor 10001"))
	c3 := content("call", principal.SelfAuthenticating(otherSeed), counter, "inc", time.Now(), 3)
	wrongSigner := canisterSigDER(t, counter, seed)
	c4 := content("call", principal.SelfAuthenticating(wrongSigner), counter, "inc", time.Now(), 4)
	grown := sigTree(seed, msg, []byte("another message"))
	for _, tc := range []struct {
		name string
		env  map[string]any
	}{
		{"the signature of another request", map[string]any{"content": c2, "sender_pubkey": der, "sender_sig": sigOf(cert, tr)}},
		{"another seed's key", map[string]any{"content": c3, "sender_pubkey": otherSeed, "sender_sig": sigOf(cert, tr)}},
		{"another canister's key", map[string]any{"content": c4, "sender_pubkey": wrongSigner, "sender_sig": sigOf(cert, tr)}},
		{"a certificate of another root key", map[string]any{"content": c, "sender_pubkey": der, "sender_sig": sigOf(foreignCert, tr)}},
		{"a tree other than the certified one", map[string]any{"content": c, "sender_pubkey": der, "sender_sig": sigOf(cert, grown)}},
		{"not CBOR", map[string]any{"content": c, "sender_pubkey": der, "sender_sig": []byte("garbage")}},
	} {
		if code, b := call(tc.env); code != 403 {
			t.Errorf("%s: %d %q", tc.name, code, b)
		}
	}
	if got := counterValue(); !bytes.Equal(got, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("counter after refused calls %x", got)
	}

	// Internet Identity's flow: the canister signs a delegation to a
	// session key; the session key signs the request.
	session := newIdentity(t)
	d := map[string]any{"pubkey": session.der, "expiration": uint64(time.Now().Add(time.Hour).UnixNano())}
	dh, _ := hashMap(d)
	dtr := sigTree(seed, append([]byte(delegationDomain), dh[:]...))
	dcert := certify(dtr)
	c5 := content("call", sender, counter, "inc", time.Now(), 5)
	rid5, _ := RequestID(c5)
	env := map[string]any{"content": c5, "sender_pubkey": der,
		"sender_delegation": []any{map[string]any{"delegation": d, "signature": sigOf(dcert, dtr)}},
		"sender_sig":        ed25519.Sign(session.priv, append([]byte(requestDomain), rid5[:]...))}
	if code, b := call(env); code != 200 || !strings.Contains(b, "replied") {
		t.Fatalf("delegated call: %d %q", code, b)
	}
	if got := counterValue(); !bytes.Equal(got, []byte("DIDL\x00\x01\x7d\x02")) {
		t.Fatalf("counter after the delegated call %x", got)
	}
	// A delegation the canister did not sign (a later expiry) is refused.
	d2 := map[string]any{"pubkey": session.der, "expiration": uint64(time.Now().Add(2 * time.Hour).UnixNano())}
	c6 := content("call", sender, counter, "inc", time.Now(), 6)
	rid6, _ := RequestID(c6)
	env = map[string]any{"content": c6, "sender_pubkey": der,
		"sender_delegation": []any{map[string]any{"delegation": d2, "signature": sigOf(dcert, dtr)}},
		"sender_sig":        ed25519.Sign(session.priv, append([]byte(requestDomain), rid6[:]...))}
	if code, b := call(env); code != 403 {
		t.Fatalf("extended delegation: %d %q", code, b)
	}
	if got := counterValue(); !bytes.Equal(got, []byte("DIDL\x00\x01\x7d\x02")) {
		t.Fatalf("counter after a refused delegation %x", got)
	}
}

func mustCBOR(t *testing.T, v any) []byte {
	t.Helper()
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Canister signature keys: malformed ones are refused; without a root
// key (ParseEnvelope) they cannot be checked and are refused.
func TestCanisterSigKeys(t *testing.T) {
	key, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	good := canisterSigDER(t, principal.CanisterID(5), []byte("seed"))
	if _, ok, err := canisterSigKey(good, key.DER()); !ok || err != nil {
		t.Fatalf("good key: %v %v", ok, err)
	}
	if _, ok, err := canisterSigKey(good, nil); !ok || err == nil {
		t.Fatal("a canister signature key is accepted without a root key")
	}
	raw := func(b []byte) []byte {
		var k canisterSigSPKI
		k.Algorithm.Algorithm = oidCanisterSig
		k.PublicKey = asn1.BitString{Bytes: b, BitLength: 8 * len(b)}
		out, _ := asn1.Marshal(k)
		return out
	}
	for name, der := range map[string][]byte{
		"empty":          raw(nil),
		"length beyond":  raw([]byte{10, 1, 2}),
		"id too long":    raw(append([]byte{30}, make([]byte, 31)...)),
		"trailing bytes": append(append([]byte{}, good...), 0),
	} {
		if _, ok, err := canisterSigKey(der, key.DER()); ok && err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzCanisterSignature feeds signatures to the verifier: nothing but the
// seeded valid signature (and what encodes the same) verifies, and nothing
// panics.
func FuzzCanisterSignature(f *testing.F) {
	key, err := LoadOrCreateRootKey(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	signer := principal.CanisterID(3)
	seed, msg := []byte("seed"), []byte("\x0Aic-request message")
	tr := sigTree(seed, msg)
	root := tr.Digest()
	cert, err := key.Certify(node{"canister": node{string(signer.Bytes()): node{"certified_data": Leaf(root[:])}.tree()}.tree()}.tree())
	if err != nil {
		f.Fatal(err)
	}
	good, _ := cbor.Marshal(map[string]any{"certificate": cert, "tree": tr})
	if err := verifyCanisterSig(key.DER(), signer, sha256.Sum256(seed), msg, good); err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, sig []byte) {
		if verifyCanisterSig(key.DER(), signer, sha256.Sum256(seed), []byte("another message"), sig) == nil {
			t.Fatal("a signature of another message verifies")
		}
		_ = verifyCanisterSig(key.DER(), signer, sha256.Sum256(seed), msg, sig)
	})
}
