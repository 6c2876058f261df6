package ichttp

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

var noArgs = []byte("DIDL\x00\x00")

// counterNode is a real node (default isolation: sandboxed) with the
// shared counter canister installed.
func counterNode(t *testing.T) (*host.Node, principal.Principal, string) {
	t.Helper()
	wasm, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "canisters", "counter.wasm"))
	if err != nil {
		t.Fatalf("counter module: %v", err)
	}
	return installedNode(t, wasm, principal.Anonymous())
}

// openNode opens a node of the default configuration on a new home, closed
// when the test ends; it returns the node and its home.
func openNode(t *testing.T) (*host.Node, string) {
	t.Helper()
	cfg := host.DefaultConfig()
	cfg.Home = t.TempDir()
	n, err := host.Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n, cfg.Home
}

// installedNode is openNode with wasm installed (no arguments) in a new
// canister ctrl controls; it returns the node, the canister and the home.
func installedNode(t *testing.T, wasm []byte, ctrl principal.Principal) (*host.Node, principal.Principal, string) {
	t.Helper()
	n, home := openNode(t)
	ctx := context.Background()
	id, err := n.Create(ctx, host.CreateOptions{Controllers: []principal.Principal{ctrl}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Install(ctx, id, host.InstallOptions{Mode: host.ModeInstall, Wasm: wasm, Arg: noArgs, Caller: ctrl}); err != nil {
		t.Fatal(err)
	}
	return n, id, home
}

// counterServer is counterNode served by a Handler (the home's root key,
// its log discarded) on a test server closed when the test ends.
func counterServer(t *testing.T) (h *Handler, srv *httptest.Server, id principal.Principal) {
	t.Helper()
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	h = New(node, key, testNodeKey(t, home), slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv = httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv, id
}

func post(t *testing.T, url string, body []byte) (int, []byte) {
	t.Helper()
	return postAs(t, url, "application/cbor", body)
}

func postAs(t *testing.T, url, contentType string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url, contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// decodeTagged decodes a response, which must carry the self-describe tag.
func decodeTagged(t *testing.T, b []byte) map[string]any {
	t.Helper()
	if !bytes.HasPrefix(b, []byte{0xd9, 0xd9, 0xf7}) {
		t.Fatalf("response is not self-described CBOR: %x", b)
	}
	var m map[string]any
	if err := decMode.Unmarshal(b, &m); err != nil {
		t.Fatalf("response: %v", err)
	}
	return m
}

func content(typ string, sender, canister principal.Principal, method string, now time.Time, nonce byte) map[string]any {
	return map[string]any{"request_type": typ, "sender": sender.Bytes(), "canister_id": canister.Bytes(),
		"method_name": method, "arg": noArgs, "ingress_expiry": uint64(now.Add(2 * time.Minute).UnixNano()), "nonce": []byte{nonce}}
}

// Status, query and call against a real node running the counter in a
// sandbox: signed and anonymous requests work, forged ones change nothing.
func TestHandlerCounter(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	srv := httptest.NewServer(New(node, key, testNodeKey(t, home), slog.New(slog.NewTextHandler(io.Discard, nil))))
	defer srv.Close()
	base := srv.URL + "/api/v2/canister/" + id.String()

	// status
	resp, err := http.Get(srv.URL + "/api/v2/status")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/cbor" {
		t.Fatalf("status: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	st := decodeTagged(t, b)
	if rk, _ := st["root_key"].([]byte); !bytes.Equal(rk, key.DER()) {
		t.Fatalf("root_key %x, want %x", st["root_key"], key.DER())
	}
	if st["replica_health_status"] != "healthy" || st["impl_version"] == "" {
		t.Fatalf("status %v", st)
	}

	now := time.Now()
	me := newIdentity(t)
	h := srv.Config.Handler.(*Handler)
	get := func() []byte {
		t.Helper()
		c := content("query", principal.Anonymous(), id, "get", time.Now(), 0)
		code, b := post(t, base+"/query", envelope(t, c, nil))
		if code != 200 {
			t.Fatalf("query: %d %s", code, b)
		}
		m := decodeTagged(t, b)
		if m["status"] != "replied" {
			t.Fatalf("query: %v", m)
		}
		verifyQuerySig(t, h.nodeKey, m, c)
		return m["reply"].(map[string]any)["arg"].([]byte)
	}
	if got := get(); !bytes.Equal(got, []byte("DIDL\x00\x01\x7d\x00")) {
		t.Fatalf("initial get %q", got)
	}

	// A signed call runs; its status is kept; a replay does not run again.
	c := content("call", me.p, id, "inc", now, 1)
	env := envelope(t, c, &me)
	if code, b := post(t, base+"/call", env); code != http.StatusAccepted {
		t.Fatalf("call: %d %s", code, b)
	}
	rid, _ := RequestID(c)
	// The status is the node's, stored with the execution: a fresh
	// handler on the same node knows it (before statuses were durable, it
	// did not).
	if s, reply, _, _ := New(node, key, testNodeKey(t, home), nil).RequestStatus(rid); s != "replied" || !bytes.Equal(reply, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("a fresh handler on the node: status %s %q", s, reply)
	}
	if s, reply, _, _ := h.RequestStatus(rid); s != "replied" || !bytes.Equal(reply, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("request status %s %q", s, reply)
	}
	if code, _ := post(t, base+"/call", env); code != http.StatusAccepted {
		t.Fatalf("replay: %d", code)
	}
	if got := get(); !bytes.Equal(got, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("get after one call and its replay %q", got)
	}

	// Forged and misdirected calls: refused, nothing runs.
	other := newIdentity(t)
	forged := map[string]any{"content": content("call", me.p, id, "inc", now, 2), "sender_pubkey": me.der, "sender_sig": make([]byte, 64)}
	fb, _ := cbor.Marshal(forged)
	for _, c := range []struct {
		name string
		url  string
		body []byte
		code int
		msg  string
	}{
		{"forged signature", base + "/call", fb, 403, "invalid signature"},
		{"another's key", base + "/call", envelope(t, content("call", me.p, id, "inc", now, 3), &other), 403, "not the principal"},
		{"expired", base + "/call", envelope(t, content("call", principal.Anonymous(), id, "inc", now.Add(-10*time.Minute), 4), nil), 400, "Invalid request expiry: "},
		{"other canister in path", srv.URL + "/api/v2/canister/" + principal.CanisterID(99).String() + "/call", envelope(t, content("call", principal.Anonymous(), id, "inc", now, 5), nil), 400, "does not match effective canister id"},
		{"bad ecid", srv.URL + "/api/v2/canister/not-a-principal/call", envelope(t, content("call", principal.Anonymous(), id, "inc", now, 6), nil), 400, "Invalid effective canister id"},
		{"query to call", base + "/call", envelope(t, content("query", principal.Anonymous(), id, "inc", now, 7), nil), 400, "request_type"},
		{"too large", base + "/call", make([]byte, MaxBody+1), 413, "larger than"},
		{"a form's text/plain", base + "/call", envelope(t, content("call", principal.Anonymous(), id, "inc", now, 11), nil), 415, "application/cbor"},
	} {
		ct := "application/cbor"
		if c.code == 415 {
			ct = "text/plain"
		}
		code, b := postAs(t, c.url, ct, c.body)
		if code != c.code || !strings.Contains(string(b), c.msg) {
			t.Errorf("%s: %d %q, want %d containing %q", c.name, code, b, c.code, c.msg)
		}
	}
	if got := get(); !bytes.Equal(got, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("get after refused calls %q: a refused call ran", got)
	}

	// An anonymous call runs too; a reject is a reply, not an HTTP error.
	if code, b := post(t, base+"/call", envelope(t, content("call", principal.Anonymous(), id, "inc", now, 8), nil)); code != 202 {
		t.Fatalf("anonymous call: %d %s", code, b)
	}
	if got := get(); !bytes.Equal(got, []byte("DIDL\x00\x01\x7d\x02")) {
		t.Fatalf("get after anonymous call %q", got)
	}
	nq := content("query", me.p, id, "nope", now, 9)
	code, b := post(t, base+"/query", envelope(t, nq, &me))
	m := decodeTagged(t, b)
	verifyQuerySig(t, h.nodeKey, m, nq)
	if code != 200 || m["status"] != "rejected" || m["reject_code"] != uint64(host.DestinationInvalid) || !strings.Contains(m["reject_message"].(string), "nope") {
		t.Fatalf("query of a missing method: %d %v", code, m)
	}
	bad := content("call", me.p, id, "nope", now, 10)
	if code, _ := post(t, base+"/call", envelope(t, bad, &me)); code != 202 {
		t.Fatalf("call of a missing method: %d", code)
	}
	bid, _ := RequestID(bad)
	if s, _, rc, msg := h.RequestStatus(bid); s != "rejected" || rc == 0 || msg == "" {
		t.Fatalf("missing method's status %s %d %q", s, rc, msg)
	}
}

// gated holds updates until released: the node under it is real.
type gated struct {
	*host.Node
	entered chan struct{}
	release chan struct{}
}

func (g *gated) Update(ctx context.Context, msg host.Message) (*host.Reply, error) {
	g.entered <- struct{}{}
	<-g.release
	return g.Node.Update(ctx, msg)
}

// A call whose client goes away is still the node's to finish: it runs,
// and its status is recorded for read_state.
func TestCallOutlivesClient(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	g := &gated{Node: node, entered: make(chan struct{}, 1), release: make(chan struct{})}
	h := New(g, key, testNodeKey(t, home), slog.New(slog.NewTextHandler(io.Discard, nil)))
	c := content("call", principal.Anonymous(), id, "inc", time.Now(), 1)
	req, err := ParseEnvelope(envelope(t, c, nil), "call", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { h.run(ctx, req); close(ran) }()
	<-g.entered
	cancel() // the client hangs up while the call waits
	<-ran
	if s, _, _, _ := h.RequestStatus(req.ID); s != "processing" {
		t.Fatalf("status %q while the call waits", s)
	}
	close(g.release)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s, reply, _, _ := h.RequestStatus(req.ID)
		if s == "replied" {
			if !bytes.Equal(reply, []byte("DIDL\x00\x01\x7d\x01")) {
				t.Fatalf("reply %q", reply)
			}
			break
		}
		if s != "processing" || time.Now().After(deadline) {
			t.Fatalf("status %q", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	r, err := node.Query(context.Background(), host.Message{Canister: id, Method: "get", Arg: noArgs, Caller: principal.Anonymous()})
	if err != nil || !bytes.Equal(r.Data, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("get: %v %v", r, err)
	}
}

// A management canister call is sent to the canister its argument names.
func TestManagementEffectiveCanister(t *testing.T) {
	h, srv, id := counterServer(t)
	arg, err := candid.EncodeArgs(candid.Args{
		Types:  []*candid.Type{candid.RecordOf(candid.NamedField("canister_id", candid.Prim(candid.KindPrincipal)))},
		Values: []candid.Value{candid.Record{{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: id}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := content("call", principal.Anonymous(), principal.Management(), "canister_status", time.Now(), 1)
	c["arg"] = arg
	c["canister_id"] = []byte{} // aaaaa-aa: the empty blob (Bytes() is nil, CBOR null)
	env := envelope(t, c, nil)
	other := principal.CanisterID(99)
	code, b := post(t, srv.URL+"/api/v2/canister/"+other.String()+"/call", env)
	if code != 400 || !strings.Contains(string(b), "does not match effective canister id") {
		t.Fatalf("misdirected management call: %d %q", code, b)
	}
	rid, _ := RequestID(c)
	if s, _, _, _ := h.RequestStatus(rid); s != "unknown" {
		t.Fatalf("a refused call has status %q", s)
	}
	if code, b := post(t, srv.URL+"/api/v2/canister/"+id.String()+"/call", env); code != 202 {
		t.Fatalf("management call: %d %q", code, b)
	}
	// It reached the node. (host.Node.Update does not take management
	// canister calls from ingress yet: it answers that aaaaa-aa is not
	// found; the status records whatever the node answered.)
	s, _, _, msg := h.RequestStatus(rid)
	if s != "replied" && s != "rejected" {
		t.Fatalf("canister_status through the interface: %q %q", s, msg)
	}
	t.Logf("canister_status through the interface: %s %s", s, msg)
}

// install_chunked_code names its canister target_canister (it has no
// canister_id): that is its effective canister id, as for the IC and its
// agents. Sent to another canister's URL it is refused before the node.
func TestInstallChunkedEffectiveCanister(t *testing.T) {
	h, srv, id := counterServer(t)
	svc, err := host.ManagementInterface()
	if err != nil {
		t.Fatal(err)
	}
	m, _ := svc.Method("install_chunked_code")
	a, err := candid.ParseArgsTyped(fmt.Sprintf(`(record { mode = variant { upgrade }; target_canister = principal "%s"; chunk_hashes_list = vec {}; wasm_module_hash = blob ""; arg = blob "" })`, id), m.Args())
	if err != nil {
		t.Fatal(err)
	}
	arg, err := candid.EncodeArgs(a)
	if err != nil {
		t.Fatal(err)
	}
	c := content("call", principal.Anonymous(), principal.Management(), "install_chunked_code", time.Now(), 1)
	c["arg"] = arg
	c["canister_id"] = []byte{}
	env := envelope(t, c, nil)
	other := principal.CanisterID(99)
	if code, b := post(t, srv.URL+"/api/v2/canister/"+other.String()+"/call", env); code != 400 || !strings.Contains(string(b), "does not match effective canister id") {
		t.Fatalf("install_chunked_code sent to another canister: %d %q", code, b)
	}
	if code, b := post(t, srv.URL+"/api/v2/canister/"+id.String()+"/call", env); code != 202 {
		t.Fatalf("install_chunked_code sent to its target: %d %q", code, b)
	}
	// It reached the node's management canister, which refused it: no
	// chunks make a module whose hash is not the (empty) one given.
	rid, _ := RequestID(c)
	if s, _, _, msg := h.RequestStatus(rid); s != "rejected" || !strings.Contains(msg, "Error from Wasm chunk store: Wasm module hash") {
		t.Fatalf("install_chunked_code by anonymous: %q %q", s, msg)
	}
}

// A management call whose argument should name its canister but cannot
// be read for it (not Candid, no such field, a field of another type) is
// refused before the node, 400, whatever canister its URL names: it used
// to skip the effective canister id check and reach the management
// canister, which decodes the argument on its own. Methods about no
// canister still go to any URL.
func TestUnreadableManagementTargetRefused(t *testing.T) {
	h, srv, id := counterServer(t)
	encode := func(text string) []byte {
		a, err := candid.ParseArgs(text)
		if err != nil {
			t.Fatal(err)
		}
		b, err := candid.EncodeArgs(a)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	other := principal.CanisterID(99)
	cases := []struct {
		name, typ, method string
		arg               []byte
	}{
		{"not candid", "call", "stop_canister", []byte("DIDL\xff\xff\xff\xff")},
		{"truncated", "call", "delete_canister", encode(fmt.Sprintf(`(record { canister_id = principal "%s" })`, id))[:12]},
		{"empty", "call", "install_code", []byte{}},
		{"no such field", "call", "update_settings", encode(fmt.Sprintf(`(record { canister = principal "%s" })`, id))},
		{"field of another type", "call", "uninstall_code", encode(fmt.Sprintf(`(record { canister_id = "%s" })`, id))},
		{"chunked install's other field", "call", "install_chunked_code", encode(fmt.Sprintf(`(record { canister_id = principal "%s" })`, id))},
		{"no arguments", "query", "canister_status", encode("()")},
	}
	for i, c := range cases {
		ct := content(c.typ, principal.Anonymous(), principal.Management(), c.method, time.Now(), byte(i))
		ct["arg"], ct["canister_id"] = c.arg, []byte{}
		env := envelope(t, ct, nil)
		for _, ecid := range []principal.Principal{id, other} {
			code, b := post(t, srv.URL+"/api/v2/canister/"+ecid.String()+"/"+c.typ, env)
			if code != http.StatusBadRequest || !strings.Contains(string(b), "cannot be checked against the effective canister id") {
				t.Errorf("%s: %s to %s: %d %q", c.name, c.method, ecid, code, b)
			}
		}
		rid, _ := RequestID(ct)
		if s, _, _, _ := h.RequestStatus(rid); s != "unknown" {
			t.Errorf("%s: a refused call has status %q", c.name, s)
		}
	}

	// provisional_create_canister_with_cycles names no canister: any URL.
	ct := content("call", principal.Anonymous(), principal.Management(), "provisional_create_canister_with_cycles", time.Now(), 100)
	ct["arg"], ct["canister_id"] = encode("(record { amount = opt 1_000_000 })"), []byte{}
	if code, b := post(t, srv.URL+"/api/v2/canister/"+other.String()+"/call", envelope(t, ct, nil)); code != http.StatusAccepted {
		t.Fatalf("provisional_create_canister_with_cycles: %d %q", code, b)
	}
}

// testRootKey is the root key of the node at home.
func testRootKey(t *testing.T, home string) *RootKey {
	t.Helper()
	k, err := LoadOrCreateRootKey(home)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testNodeKey(t *testing.T, home string) *NodeKey {
	t.Helper()
	k, err := LoadOrCreateNodeKey(home)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// verifyQuerySig checks a query answer's node signature as a client does:
// over "\x0Bic-response" and the hash of the answer with its timestamp and
// request id; and that it covers the answer (a changed reply fails).
func verifyQuerySig(t *testing.T, nk *NodeKey, m map[string]any, content map[string]any) {
	t.Helper()
	sigs, ok := m["signatures"].([]any)
	if !ok || len(sigs) != 1 {
		t.Fatalf("signatures %v", m["signatures"])
	}
	s := sigs[0].(map[string]any)
	if !bytes.Equal(s["identity"].([]byte), nk.ID().Bytes()) {
		t.Fatalf("signed by %x, not the node", s["identity"])
	}
	rid, _ := RequestID(content)
	signed := map[string]any{"timestamp": s["timestamp"], "request_id": rid[:]}
	for k, v := range m {
		if k != "signatures" {
			signed[k] = v
		}
	}
	hash, err := hashMap(signed)
	if err != nil {
		t.Fatal(err)
	}
	pub := ed25519.PublicKey(nk.der[len(ed25519DERPrefix):])
	if !ed25519.Verify(pub, append([]byte(responseDomain), hash[:]...), s["signature"].([]byte)) {
		t.Fatal("query signature does not verify")
	}
	signed["status"] = "tampered"
	hash, _ = hashMap(signed)
	if ed25519.Verify(pub, append([]byte(responseDomain), hash[:]...), s["signature"].([]byte)) {
		t.Fatal("query signature verifies a changed answer")
	}
}

// The bookkeeping of request statuses: kept until their expiry (a replay
// within it is recognized), a full window refused rather than evicted,
// replies beyond the byte budget dropped oldest first ("done").
func TestStatusBookkeeping(t *testing.T) {
	key, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h := New(nil, key, nil, nil)
	clock := time.Now()
	h.now = func() time.Time { return clock }
	exp := uint64(clock.Add(time.Minute).UnixNano())
	mk := func(i int) *Request {
		var id [32]byte
		binary.BigEndian.PutUint64(id[:], uint64(i))
		// Eight senders: one may hold only maxStatusesPerSender.
		return &Request{ID: id, IngressExpiry: exp, Sender: principal.SelfAuthenticating([]byte{byte(i % 8)}), CanisterID: principal.CanisterID(1)}
	}
	for i := range maxStatuses {
		if fresh, _, err := h.begin(mk(i)); !fresh || err != nil {
			t.Fatalf("begin %d: %v %v", i, fresh, err)
		}
		if i > 0 { // the first stays processing
			h.finish(mk(i).ID, &requestStatus{Status: "replied", Reply: make([]byte, 4<<10)})
		}
	}
	if fresh, _, err := h.begin(mk(0)); fresh || err != nil {
		t.Fatalf("replay of a kept id: %v %v", fresh, err)
	}
	_, _, err = h.begin(mk(maxStatuses))
	if st, _ := asRequestError(err); st != http.StatusServiceUnavailable {
		t.Fatalf("a call beyond a full window: %v", err)
	}
	// 100 000 replies of 4 KiB exceed the budget: the oldest were dropped.
	if h.answerBytes > maxAnswerBytes {
		t.Fatalf("%d reply bytes kept", h.answerBytes)
	}
	if s, _, _, _ := h.RequestStatus(mk(1).ID); s != "done" {
		t.Fatalf("oldest reply's status %q, want done", s)
	}
	if s, r, _, _ := h.RequestStatus(mk(maxStatuses - 1).ID); s != "replied" || len(r) != 4<<10 {
		t.Fatalf("newest reply's status %q (%d bytes)", s, len(r))
	}
	// Past the expiry, the finished statuses are done and give way, though
	// the first call, before them, is still processing: it stays (its call
	// may still end, and a replay of it runs nothing) until it too is past
	// maxCallWait. A replay of it is refused by its expiry.
	first := exp
	clock = clock.Add(2 * time.Minute)
	exp = uint64(clock.Add(time.Minute).UnixNano()) // calls made now
	if fresh, _, err := h.begin(mk(maxStatuses)); !fresh || err != nil {
		t.Fatalf("done statuses behind a processing call kept the window full: %v %v", fresh, err)
	}
	h.finish(mk(maxStatuses).ID, &requestStatus{Status: "replied", Reply: []byte("DIDL\x00\x00")})
	if s, _, _, _ := h.RequestStatus(mk(0).ID); s != "processing" {
		t.Fatalf("the processing call's status: %s", s)
	}
	replay := mk(0)
	replay.IngressExpiry = first
	if fresh, _, err := h.begin(replay); fresh || err == nil {
		t.Fatalf("replay of the processing call past its expiry: %v %v", fresh, err)
	}
	clock = clock.Add(maxCallWait)
	exp = uint64(clock.Add(time.Minute).UnixNano())
	if fresh, _, err := h.begin(mk(maxStatuses + 1)); !fresh || err != nil {
		t.Fatalf("after expiry: %v %v", fresh, err)
	}
	if len(h.statuses) != 1 || h.answerBytes != 0 {
		t.Fatalf("%d statuses, %d reply bytes kept after expiry", len(h.statuses), h.answerBytes)
	}
}
