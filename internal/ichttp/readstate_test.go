package ichttp

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/circl/sign/bls"
	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// decodeTree is a client's reading of a hash tree's CBOR.
func decodeTree(t *testing.T, v any) *Tree {
	t.Helper()
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		t.Fatalf("hash tree node %v", v)
	}
	tag, _ := a[0].(uint64)
	switch {
	case tag == 0 && len(a) == 1:
		return emptyTree()
	case tag == 1 && len(a) == 3:
		return Fork(decodeTree(t, a[1]), decodeTree(t, a[2]))
	case tag == 2 && len(a) == 3:
		return Labeled(a[1].([]byte), decodeTree(t, a[2]))
	case tag == 3 && len(a) == 2:
		return Leaf(a[1].([]byte))
	case tag == 4 && len(a) == 2:
		return Pruned([32]byte(a[1].([]byte)))
	}
	t.Fatalf("hash tree node %v", v)
	return nil
}

// verifyCert checks a certificate as a client does: the signature over the
// reconstructed root hash under the status's root key; it returns the tree.
func verifyCert(t *testing.T, rootKeyDER, certBytes []byte) *Tree {
	t.Helper()
	var c struct {
		Tree      any    `cbor:"tree"`
		Signature []byte `cbor:"signature"`
	}
	if err := cbor.Unmarshal(certBytes, &c); err != nil {
		t.Fatalf("certificate: %v", err)
	}
	tree := decodeTree(t, c.Tree)
	pk, err := PublicKeyFromDER(rootKeyDER)
	if err != nil {
		t.Fatal(err)
	}
	root := tree.Digest()
	if !bls.Verify(pk, append([]byte(stateRootDomain), root[:]...), c.Signature) {
		t.Fatal("certificate signature does not verify under the root key")
	}
	tm, ok := tree.Lookup([]byte("time"))
	if !ok {
		t.Fatal("certificate without time")
	}
	var ns, shift uint64
	for _, b := range tm {
		ns |= uint64(b&0x7f) << shift
		shift += 7
	}
	if d := time.Since(time.Unix(0, int64(ns))); d < -time.Minute || d > time.Minute {
		t.Fatalf("certified time %v is off by %v", time.Unix(0, int64(ns)), d)
	}
	return tree
}

// A call's status is read back through read_state (and answered by a v3
// call) in certificates a client verifies; only its sender may read it.
func TestReadStateAndSyncCall(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	srv := httptest.NewServer(New(node, key, testNodeKey(t, home), slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()
	base := srv.URL + "/api/v2/canister/" + id.String()
	now := time.Now()
	me, other := newIdentity(t), newIdentity(t)

	readState := func(sender *identity, paths ...[][]byte) (int, []byte) {
		t.Helper()
		ps := make([]any, len(paths))
		for i, p := range paths {
			ls := make([]any, len(p))
			for j, l := range p {
				ls[j] = l
			}
			ps[i] = ls
		}
		p := principal.Anonymous()
		if sender != nil {
			p = sender.p
		}
		c := map[string]any{"request_type": "read_state", "sender": p.Bytes(), "paths": ps,
			"ingress_expiry": uint64(time.Now().Add(time.Minute).UnixNano())}
		return post(t, base+"/read_state", envelope(t, c, sender))
	}
	certOf := func(b []byte) *Tree {
		t.Helper()
		var m struct {
			Certificate []byte `cbor:"certificate"`
		}
		if err := cbor.Unmarshal(b, &m); err != nil {
			t.Fatalf("read_state response: %v", err)
		}
		return verifyCert(t, key.DER(), m.Certificate)
	}

	c := content("call", me.p, id, "inc", now, 1)
	rid, _ := RequestID(c)
	// Before the call: unknown, i.e. absent from a valid certificate.
	code, b := readState(&me, [][]byte{[]byte("request_status"), rid[:]}, [][]byte{[]byte("time")})
	if code != 200 {
		t.Fatalf("read_state: %d %s", code, b)
	}
	if _, ok := certOf(b).Lookup([]byte("request_status"), rid[:], []byte("status")); ok {
		t.Fatal("an unknown request has a status")
	}
	if code, b := post(t, base+"/call", envelope(t, c, &me)); code != 202 {
		t.Fatalf("call: %d %s", code, b)
	}
	code, b = readState(&me, [][]byte{[]byte("request_status"), rid[:]})
	if code != 200 {
		t.Fatalf("read_state: %d %s", code, b)
	}
	tree := certOf(b)
	if st, _ := tree.Lookup([]byte("request_status"), rid[:], []byte("status")); string(st) != "replied" {
		t.Fatalf("status %q", st)
	}
	if rep, _ := tree.Lookup([]byte("request_status"), rid[:], []byte("reply")); !bytes.Equal(rep, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("reply %q", rep)
	}

	// Someone else may not read it; nor two requests at once; nor paths
	// this node does not serve.
	for _, tc := range []struct {
		name   string
		sender *identity
		paths  [][][]byte
		code   int
		msg    string
	}{
		{"another sender", &other, [][][]byte{{[]byte("request_status"), rid[:]}}, 403, "is not the sender"},
		{"anonymous", nil, [][][]byte{{[]byte("request_status"), rid[:], []byte("reply")}}, 403, "is not the sender"},
		{"two ids", &me, [][][]byte{{[]byte("request_status"), rid[:]}, {[]byte("request_status"), make([]byte, 32)}}, 400, "single request ID"},
		{"short id", &me, [][][]byte{{[]byte("request_status"), rid[:5]}}, 400, "32 bytes"},
		// (subnet/<id>/… and canister/<id>/metadata/<name> are served now:
		// readstate_test's TestSubnetReadState and TestMetadata.)
		{"canister_ranges at a canister's endpoint", &me, [][][]byte{{[]byte("canister_ranges")}}, 404, "not served"},
		{"an unknown path", &me, [][][]byte{{[]byte("api_boundary_nodes"), []byte("x")}}, 404, "not served"},
		{"private metadata, not a controller", &me, [][][]byte{{[]byte("canister"), id.Bytes(), []byte("metadata"), []byte("candid:service")}}, 403, "private to its controllers"},
		{"another canister", &me, [][][]byte{{[]byte("canister"), principal.CanisterID(99).Bytes(), []byte("module_hash")}}, 400, "does not match requested canister id"},
	} {
		code, b := readState(tc.sender, tc.paths...)
		if code != tc.code || !strings.Contains(string(b), tc.msg) {
			t.Errorf("%s: %d %q, want %d containing %q", tc.name, code, b, tc.code, tc.msg)
		}
	}

	// subnet: the root key, the ranges holding the canister, the node's key
	// (what a client verifies query signatures with).
	code, b = readState(nil, [][]byte{[]byte("subnet")})
	if code != 200 {
		t.Fatalf("read_state subnet: %d %s", code, b)
	}
	tree = certOf(b)
	nk := testNodeKey(t, home)
	sid := principal.SelfAuthenticating(key.DER()).Bytes()
	if pk, _ := tree.Lookup([]byte("subnet"), sid, []byte("node"), nk.ID().Bytes(), []byte("public_key")); !bytes.Equal(pk, nk.der) {
		t.Fatalf("node key %x, want %x", pk, nk.der)
	}
	if pk, _ := tree.Lookup([]byte("subnet"), sid, []byte("public_key")); !bytes.Equal(pk, key.DER()) {
		t.Fatalf("subnet key %x", pk)
	}
	rb, _ := tree.Lookup([]byte("subnet"), sid, []byte("canister_ranges"))
	var ranges [][][]byte
	if err := cbor.Unmarshal(rb, &ranges); err != nil || len(ranges) != 1 ||
		bytes.Compare(ranges[0][0], id.Bytes()) > 0 || bytes.Compare(ranges[0][1], id.Bytes()) < 0 {
		t.Fatalf("canister ranges %x (%v) do not hold %s", ranges, err, id)
	}

	// canister/<id>: module hash, controllers, certified data, as the node
	// reports them.
	code, b = readState(nil, [][]byte{[]byte("canister"), id.Bytes(), []byte("module_hash")}, [][]byte{[]byte("canister"), id.Bytes(), []byte("controllers")})
	if code != 200 {
		t.Fatalf("read_state canister: %d %s", code, b)
	}
	tree = certOf(b)
	cst, err := node.Status(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	mh, _ := hex.DecodeString(cst.ModuleHash)
	if got, _ := tree.Lookup([]byte("canister"), id.Bytes(), []byte("module_hash")); len(mh) != 32 || !bytes.Equal(got, mh) {
		t.Fatalf("module_hash %x, want %s", got, cst.ModuleHash)
	}
	cb, _ := tree.Lookup([]byte("canister"), id.Bytes(), []byte("controllers"))
	var ctrl [][]byte
	if err := cbor.Unmarshal(cb, &ctrl); err != nil || len(ctrl) != 1 || !bytes.Equal(ctrl[0], principal.Anonymous().Bytes()) {
		t.Fatalf("controllers %x: %v", cb, err)
	}

	// v3: the call answers with its certificate, rejects included.
	sync := func(c map[string]any, who *identity) *Tree {
		t.Helper()
		code, b := post(t, srv.URL+"/api/v3/canister/"+id.String()+"/call", envelope(t, c, who))
		if code != 200 {
			t.Fatalf("v3 call: %d %s", code, b)
		}
		var m struct {
			Status      string `cbor:"status"`
			Certificate []byte `cbor:"certificate"`
		}
		if err := cbor.Unmarshal(b, &m); err != nil || m.Status != "replied" {
			t.Fatalf("v3 call response %v %+v", err, m)
		}
		return verifyCert(t, key.DER(), m.Certificate)
	}
	c2 := content("call", me.p, id, "inc", now, 2)
	rid2, _ := RequestID(c2)
	tree = sync(c2, &me)
	if rep, _ := tree.Lookup([]byte("request_status"), rid2[:], []byte("reply")); !bytes.Equal(rep, []byte("DIDL\x00\x01\x7d\x02")) {
		t.Fatalf("v3 reply %q", rep)
	}
	// A replay is answered from the kept status, without running again.
	tree = sync(c2, &me)
	if rep, _ := tree.Lookup([]byte("request_status"), rid2[:], []byte("reply")); !bytes.Equal(rep, []byte("DIDL\x00\x01\x7d\x02")) {
		t.Fatalf("v3 replay reply %q", rep)
	}
	c3 := content("call", principal.Anonymous(), id, "nope", now, 3)
	rid3, _ := RequestID(c3)
	tree = sync(c3, nil)
	st, _ := tree.Lookup([]byte("request_status"), rid3[:], []byte("status"))
	code3, _ := tree.Lookup([]byte("request_status"), rid3[:], []byte("reject_code"))
	msg, _ := tree.Lookup([]byte("request_status"), rid3[:], []byte("reject_message"))
	if string(st) != "rejected" || len(code3) != 1 || code3[0] == 0 || !strings.Contains(string(msg), "nope") {
		t.Fatalf("v3 reject: %q %x %q", st, code3, msg)
	}
}

// A refused read_state named the path it refused, each label in full (hex
// when long): a 1 MiB label came back as a 2 MiB error, and a path of
// 1 000 labels of 60 bytes as a 61 KB one. The envelope's own errors clip
// what they repeat; these now do too (hexLabel, pathText).
func TestReadStateRefusalDoesNotEchoLabels(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	srv := httptest.NewServer(New(node, key, testNodeKey(t, home), nil))
	defer srv.Close()
	big := make([]byte, 1<<20)
	many := [][]byte{[]byte("nosuch")}
	for range 1000 { // CBOR arrays hold at most 1024
		many = append(many, bytes.Repeat([]byte("l"), 60))
	}
	for _, p := range [][][]byte{
		{[]byte("nosuch"), big},                          // 404: not served
		{[]byte("canister"), big, []byte("module_hash")}, // 400: not the effective canister
		many, // 404: not served
	} {
		body := envelope(t, readStateContent(principal.Anonymous(), p), nil)
		code, b := post(t, srv.URL+"/api/v2/canister/"+id.String()+"/read_state", body)
		if code/100 != 4 {
			t.Fatalf("%s: %d %.200s", p[0], code, b)
		}
		if len(b) > 4096 {
			t.Errorf("%s: a %d-byte error (%d) for a %d-byte path", p[0], len(b), code, len(body))
		}
	}
}
