package ichttp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// withCustom appends a custom section to a module.
func withCustom(wasm []byte, name string, data []byte) []byte {
	body := binary.AppendUvarint(nil, uint64(len(name)))
	body = append(append(body, name...), data...)
	out := append(append([]byte{}, wasm...), 0)
	out = binary.AppendUvarint(out, uint64(len(body)))
	return append(out, body...)
}

// icServer is a real node (default isolation: sandboxed) behind the
// interface, with a WAT canister controlled by ctrl.
type icServer struct {
	node *host.Node
	key  *RootKey
	h    *Handler
	url  string
	id   principal.Principal
}

func newICServer(t *testing.T, wasm []byte, ctrl principal.Principal) *icServer {
	t.Helper()
	n, id, home := installedNode(t, wasm, ctrl)
	key := testRootKey(t, home)
	h := New(n, key, testNodeKey(t, home), slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &icServer{node: n, key: key, h: h, url: srv.URL, id: id}
}

func pathsOf(paths ...[][]byte) []any {
	ps := make([]any, len(paths))
	for i, p := range paths {
		ls := make([]any, len(p))
		for j, l := range p {
			ls[j] = l
		}
		ps[i] = ls
	}
	return ps
}

func readStateContent(sender principal.Principal, paths ...[][]byte) map[string]any {
	return map[string]any{"request_type": "read_state", "sender": sender.Bytes(), "paths": pathsOf(paths...),
		"ingress_expiry": uint64(time.Now().Add(time.Minute).UnixNano())}
}

func (s *icServer) certOf(t *testing.T, url string, body []byte) *Tree {
	t.Helper()
	code, b := post(t, url, body)
	if code != 200 {
		t.Fatalf("read_state: %d %s", code, b)
	}
	var m struct {
		Certificate []byte `cbor:"certificate"`
	}
	if err := cbor.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	tr, err := VerifyCertificate(s.key.DER(), m.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

const metaWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func (export "canister_update inc") (call $reply)))`

// canister/<id>/metadata/<name>: icp:public sections for anyone,
// icp:private ones for controllers only (403 for others), absent names
// absent from the tree. The sections reach the host through the compiler
// sandbox's answer.
func TestMetadata(t *testing.T) {
	wasm, err := wasmtime.Wat2Wasm(metaWAT)
	if err != nil {
		t.Fatal(err)
	}
	wasm = withCustom(wasm, "icp:public pub", []byte("hello"))
	wasm = withCustom(wasm, "icp:private secret", []byte("s3cret"))
	wasm = withCustom(wasm, "other", []byte("not metadata"))
	ctrl, stranger := newIdentity(t), newIdentity(t)
	s := newICServer(t, wasm, ctrl.p)
	base := s.url + "/api/v2/canister/" + s.id.String() + "/read_state"
	md := func(name string) [][]byte {
		return [][]byte{[]byte("canister"), s.id.Bytes(), []byte("metadata"), []byte(name)}
	}
	// Public: anyone, anonymous included.
	tr := s.certOf(t, base, envelope(t, readStateContent(principal.Anonymous(), md("pub")), nil))
	if v, ok := tr.Lookup(md("pub")...); !ok || string(v) != "hello" {
		t.Fatalf("public metadata %q %v", v, ok)
	}
	if _, ok := tr.Lookup(md("secret")...); ok {
		t.Fatal("a private section is in a tree nobody asked it for")
	}
	// Private: refused to a stranger and to anonymous, nothing certified.
	for _, who := range []*identity{&stranger, nil} {
		p := principal.Anonymous()
		if who != nil {
			p = who.p
		}
		code, b := post(t, base, envelope(t, readStateContent(p, md("secret")), who))
		if code != http.StatusForbidden || bytes.Contains(b, []byte("s3cret")) || !strings.Contains(string(b), "private to its controllers") {
			t.Fatalf("private metadata for %s: %d %q", p, code, b)
		}
	}
	// ...given to the controller.
	tr = s.certOf(t, base, envelope(t, readStateContent(ctrl.p, md("secret"), md("pub")), &ctrl))
	if v, ok := tr.Lookup(md("secret")...); !ok || string(v) != "s3cret" {
		t.Fatalf("private metadata for the controller %q %v", v, ok)
	}
	// Absent names (and a non-icp section) are absent.
	for _, name := range []string{"nope", "other"} {
		tr = s.certOf(t, base, envelope(t, readStateContent(principal.Anonymous(), md(name)), nil))
		if _, ok := tr.Lookup(md(name)...); ok {
			t.Fatalf("metadata %q is in the tree", name)
		}
	}
}

// Modules whose icp: sections break the IC's rules are refused at install.
func TestMetadataRules(t *testing.T) {
	wasm, err := wasmtime.Wat2Wasm(metaWAT)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := openNode(t)
	ctx := context.Background()
	many := wasm
	for i := range 17 {
		many = withCustom(many, "icp:public m"+string(rune('a'+i)), []byte("x"))
	}
	for name, bad := range map[string][]byte{
		"twice":          withCustom(withCustom(wasm, "icp:public a", nil), "icp:private a", nil),
		"bad visibility": withCustom(wasm, "icp:secret a", nil),
		"no name":        withCustom(wasm, "icp:public", nil),
		"too many":       many,
		"too much":       withCustom(wasm, "icp:public big", make([]byte, 2<<20+1)),
	} {
		id, err := n.Create(ctx, host.CreateOptions{Controllers: []principal.Principal{principal.Anonymous()}})
		if err != nil {
			t.Fatal(err)
		}
		_, err = n.Install(ctx, id, host.InstallOptions{Mode: host.ModeInstall, Wasm: bad, Arg: noArgs, Caller: principal.Anonymous()})
		if err == nil || !(strings.Contains(err.Error(), "icp:") || strings.Contains(err.Error(), "metadata")) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// The subnet forms of read_state: time, subnet/… and canister_ranges for
// the node's subnet; another subnet is 404, a malformed id 400, canister
// and request paths are not served there.
func TestSubnetReadState(t *testing.T) {
	wasm, err := wasmtime.Wat2Wasm(metaWAT)
	if err != nil {
		t.Fatal(err)
	}
	s := newICServer(t, wasm, principal.Anonymous())
	sid := s.h.SubnetID()
	env := func(paths ...[][]byte) []byte {
		return envelope(t, readStateContent(principal.Anonymous(), paths...), nil)
	}
	for _, v := range []string{"v2", "v3"} {
		base := s.url + "/api/" + v + "/subnet/"
		tr := s.certOf(t, base+sid.String()+"/read_state", env([][]byte{[]byte("time")}, [][]byte{[]byte("canister_ranges"), sid.Bytes()},
			[][]byte{[]byte("subnet"), sid.Bytes(), []byte("public_key")}))
		if pk, ok := tr.Lookup([]byte("subnet"), sid.Bytes(), []byte("public_key")); !ok || !bytes.Equal(pk, s.key.DER()) {
			t.Fatalf("%s: subnet public key %x", v, pk)
		}
		first := principal.CanisterID(0).Bytes()
		rb, ok := tr.Lookup([]byte("canister_ranges"), sid.Bytes(), first)
		var ranges [][][]byte
		if err := cbor.Unmarshal(rb, &ranges); !ok || err != nil || len(ranges) != 1 {
			t.Fatalf("%s: canister_ranges %x %v", v, rb, err)
		}
		lo, _ := principal.FromBytes(ranges[0][0])
		hi, _ := principal.FromBytes(ranges[0][1])
		if string(lo.Bytes()) > string(s.id.Bytes()) || string(hi.Bytes()) < string(s.id.Bytes()) {
			t.Fatalf("%s: the canister %s is outside the ranges %s…%s", v, s.id, lo, hi)
		}
		for _, tc := range []struct {
			name, sid string
			body      []byte
			code      int
		}{
			{"another subnet", principal.SelfAuthenticating([]byte("x")).String(), env([][]byte{[]byte("time")}), 404},
			{"a malformed subnet id", "not-a-principal", env([][]byte{[]byte("time")}), 400},
			{"canister paths", sid.String(), env([][]byte{[]byte("canister"), s.id.Bytes(), []byte("module_hash")}), 404},
			{"request status", sid.String(), env([][]byte{[]byte("request_status"), make([]byte, 32)}), 404},
		} {
			if code, b := post(t, base+tc.sid+"/read_state", tc.body); code != tc.code {
				t.Errorf("%s %s: %d %q, want %d", v, tc.name, code, b, tc.code)
			}
		}
	}
}

// /api/v4/canister/<ecid>/call answers as v3 does: a certificate of the
// call's status, verified under the root key without a delegation.
func TestV4Call(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	srv := httptest.NewServer(New(node, key, testNodeKey(t, home), nil))
	defer srv.Close()
	me := newIdentity(t)
	c := content("call", me.p, id, "inc", time.Now(), 1)
	code, b := post(t, srv.URL+"/api/v4/canister/"+id.String()+"/call", envelope(t, c, &me))
	var m struct {
		Status      string `cbor:"status"`
		Certificate []byte `cbor:"certificate"`
	}
	if err := cbor.Unmarshal(b, &m); code != 200 || err != nil || m.Status != "replied" {
		t.Fatalf("v4 call: %d %v %q", code, err, b)
	}
	tr, err := VerifyCertificate(key.DER(), m.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	rid, _ := RequestID(c)
	if r, _ := tr.Lookup([]byte("request_status"), rid[:], []byte("reply")); !bytes.Equal(r, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("v4 reply %x", r)
	}
	// A call to another canister's endpoint is refused, nothing runs.
	c2 := content("call", me.p, id, "inc", time.Now(), 2)
	if code, _ := post(t, srv.URL+"/api/v4/canister/"+principal.CanisterID(77).String()+"/call", envelope(t, c2, &me)); code != 400 {
		t.Fatalf("misdirected v4 call: %d", code)
	}
	r, err := node.Query(context.Background(), host.Message{Canister: id, Method: "get", Arg: noArgs, Caller: principal.Anonymous()})
	if err != nil || !bytes.Equal(r.Data, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("counter %v %v", r, err)
	}
}

// delegated signs content as root through a delegation to session with
// the given targets.
func delegated(t *testing.T, content map[string]any, root, session identity, targets []any) []byte {
	t.Helper()
	rid, err := RequestID(content)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cbor.Marshal(map[string]any{"content": content, "sender_pubkey": root.der,
		"sender_delegation": []any{delegate(t, root, session, time.Now().Add(time.Hour), targets)},
		"sender_sig":        ed25519.Sign(session.priv, append([]byte(requestDomain), rid[:]...))})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Delegation targets restrict every request: a call or query to a canister
// not among them is 403 and runs nothing; read_state at such a canister's
// endpoint is 403; request_status of a request for a canister outside the
// targets is 403 even for its sender.
func TestDelegationTargets(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	h := New(node, key, testNodeKey(t, home), slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := httptest.NewServer(h)
	defer srv.Close()
	base := srv.URL + "/api/v2/canister/" + id.String()
	root, session := newIdentity(t), newIdentity(t)
	elsewhere := []any{principal.CanisterID(500).Bytes()}
	here := []any{id.Bytes()}

	// The sender's call through an unrestricted delegation runs.
	c := content("call", root.p, id, "inc", time.Now(), 1)
	if code, b := post(t, base+"/call", delegated(t, c, root, session, nil)); code != 202 {
		t.Fatalf("call: %d %s", code, b)
	}
	rid, _ := RequestID(c)
	// Refused: a call and a query outside the targets; nothing ran.
	c2 := content("call", root.p, id, "inc", time.Now(), 2)
	if code, b := post(t, base+"/call", delegated(t, c2, root, session, elsewhere)); code != 403 || !strings.Contains(string(b), "not among the targets") {
		t.Fatalf("call outside the targets: %d %s", code, b)
	}
	rid2, _ := RequestID(c2)
	if s, _, _, _ := h.RequestStatus(rid2); s != "unknown" {
		t.Fatalf("refused call's status %s", s)
	}
	q := content("query", root.p, id, "get", time.Now(), 3)
	if code, _ := post(t, base+"/query", delegated(t, q, root, session, elsewhere)); code != 403 {
		t.Fatalf("query outside the targets: %d", code)
	}
	r, err := node.Query(context.Background(), host.Message{Canister: id, Method: "get", Arg: noArgs, Caller: principal.Anonymous()})
	if err != nil || !bytes.Equal(r.Data, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("counter after a refused call: %v %v", r, err)
	}
	rsPath := [][]byte{[]byte("request_status"), rid[:]}
	// read_state: refused at an endpoint outside the targets (even for
	// time), and for a status whose request was for a canister outside
	// them; answered inside them.
	for _, tc := range []struct {
		name    string
		targets []any
		paths   [][][]byte
		code    int
	}{
		{"time, canister outside the targets", elsewhere, [][][]byte{{[]byte("time")}}, 403},
		{"status, canister outside the targets", elsewhere, [][][]byte{rsPath}, 403},
		{"status, two delegations' targets do not meet", nil, [][][]byte{rsPath}, 403},
		{"status, canister among the targets", append(append([]any{}, elsewhere...), here...), [][][]byte{rsPath}, 200},
	} {
		body := delegated(t, readStateContent(root.p, tc.paths...), root, session, tc.targets)
		if tc.targets == nil {
			// root → mid (here) → session (elsewhere): the intersection is empty.
			mid := newIdentity(t)
			rc := readStateContent(root.p, tc.paths...)
			rrid, _ := RequestID(rc)
			body, _ = cbor.Marshal(map[string]any{"content": rc, "sender_pubkey": root.der,
				"sender_delegation": []any{delegate(t, root, mid, time.Now().Add(time.Hour), here), delegate(t, mid, session, time.Now().Add(time.Hour), elsewhere)},
				"sender_sig":        ed25519.Sign(session.priv, append([]byte(requestDomain), rrid[:]...))})
		}
		code, b := post(t, base+"/read_state", body)
		if code != tc.code {
			t.Errorf("%s: %d %q, want %d", tc.name, code, b, tc.code)
			continue
		}
		if code == 200 {
			var m struct {
				Certificate []byte `cbor:"certificate"`
			}
			_ = cbor.Unmarshal(b, &m)
			tr, err := VerifyCertificate(key.DER(), m.Certificate)
			if err != nil {
				t.Fatal(err)
			}
			if st, _ := tr.Lookup(append(rsPath, []byte("status"))...); string(st) != "replied" {
				t.Errorf("%s: status %q", tc.name, st)
			}
		} else if bytes.Contains(b, []byte("DIDL")) {
			t.Errorf("%s: the refusal carries the reply", tc.name)
		}
	}
}

// Envelopes addressed to the management canister as IC clients encode
// them: canister_id the empty byte string (CBOR 0x40), which cordon's own
// encoding of principal.Management() is too.
func TestManagementCanisterEnvelope(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	h := New(node, key, testNodeKey(t, home), slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := httptest.NewServer(h)
	defer srv.Close()
	if b, _ := cbor.Marshal(principal.Management().Bytes()); !bytes.Equal(b, []byte{0x40}) {
		t.Fatalf("aaaaa-aa encodes as %x, not an empty byte string", b)
	}
	arg, err := candid.EncodeArgs(candid.Args{
		Types:  []*candid.Type{candid.RecordOf(candid.NamedField("canister_id", candid.Prim(candid.KindPrincipal)))},
		Values: []candid.Value{candid.Record{{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: id}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The anonymous principal controls the counter: canister_status works.
	c := content("call", principal.Anonymous(), principal.Management(), "canister_status", time.Now(), 1)
	c["arg"] = arg
	raw, err := cbor.Marshal(map[string]any{"content": c})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, append([]byte("kcanister_id"), 0x40)) {
		t.Fatalf("the envelope does not carry canister_id as an empty blob: %x", raw)
	}
	code, b := post(t, srv.URL+"/api/v3/canister/"+id.String()+"/call", raw)
	var m struct {
		Status      string `cbor:"status"`
		Certificate []byte `cbor:"certificate"`
	}
	if err := cbor.Unmarshal(b, &m); code != 200 || err != nil {
		t.Fatalf("management call: %d %v %q", code, err, b)
	}
	tr, err := VerifyCertificate(key.DER(), m.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	rid, _ := RequestID(c)
	st, _ := tr.Lookup([]byte("request_status"), rid[:], []byte("status"))
	reply, _ := tr.Lookup([]byte("request_status"), rid[:], []byte("reply"))
	if string(st) != "replied" || !bytes.HasPrefix(reply, []byte("DIDL")) {
		msg, _ := tr.Lookup([]byte("request_status"), rid[:], []byte("reject_message"))
		t.Fatalf("canister_status through the interface: %q %q", st, msg)
	}
	// And a query to aaaaa-aa in the same encoding.
	q := content("query", principal.Anonymous(), principal.Management(), "canister_status", time.Now(), 2)
	q["arg"] = arg
	code, b = post(t, srv.URL+"/api/v2/canister/"+id.String()+"/query", envelope(t, q, nil))
	if code != 200 {
		t.Fatalf("management query: %d %q", code, b)
	}
}
