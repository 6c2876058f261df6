package ichttp

import (
	"bytes"
	"context"
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
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Statuses live in the node's store: a new handler on the node knows
// them; past the expiry they become "done" (reply dropped, in the store
// too), past doneTTL they are forgotten, from the store too. A replay
// while kept runs nothing.
func TestDurableStatusLifecycle(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	handlerAt := func(clock time.Time) *Handler {
		h := New(nil, key, testNodeKey(t, home), quiet)
		// As New does, with the clock set first.
		h.node, h.store, h.now = node, node, func() time.Time { return clock }
		if err := h.load(); err != nil {
			t.Fatal(err)
		}
		return h
	}
	now := time.Now()
	h := handlerAt(now)
	srv := httptest.NewServer(h)
	defer srv.Close()
	me := newIdentity(t)
	c := content("call", me.p, id, "inc", now, 1)
	env := envelope(t, c, &me)
	if code, b := post(t, srv.URL+"/api/v2/canister/"+id.String()+"/call", env); code != http.StatusAccepted {
		t.Fatalf("call: %d %s", code, b)
	}
	rid, _ := RequestID(c)
	stored := func() []byte {
		var v []byte
		_ = node.IngressStatuses(func(k, val []byte) error {
			if bytes.Equal(k, rid[:]) {
				v = append([]byte{}, val...)
			}
			return nil
		})
		return v
	}
	if v := stored(); v == nil {
		t.Fatal("no stored status after the call")
	}
	h2 := handlerAt(now)
	if s, r, _, _ := h2.RequestStatus(rid); s != "replied" || !bytes.Equal(r, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("a new handler: %s %q", s, r)
	}
	srv2 := httptest.NewServer(h2)
	defer srv2.Close()
	if code, _ := post(t, srv2.URL+"/api/v2/canister/"+id.String()+"/call", env); code != http.StatusAccepted {
		t.Fatalf("replay: %d", code)
	}
	r, err := node.Query(t.Context(), host.Message{Canister: id, Method: "get", Arg: noArgs, Caller: principal.Anonymous()})
	if err != nil || !bytes.Equal(r.Data, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("counter after a replay to a new handler: %v %v", r, err)
	}

	// Past the expiry (content's is 2 minutes ahead): done, in the store too.
	h3 := handlerAt(now.Add(2*time.Minute + maxClockDrift + time.Second))
	if s, r, _, _ := h3.RequestStatus(rid); s != "done" || r != nil {
		t.Fatalf("past the expiry: %s %q", s, r)
	}
	st, err := decodeStatus(stored())
	if err != nil || st.Status != "done" || st.Reply != nil || !st.Sender.Equal(me.p) {
		t.Fatalf("stored past the expiry: %+v %v", st, err)
	}
	// Past doneTTL: forgotten, and gone from the store.
	h4 := handlerAt(now.Add(2*time.Minute + maxClockDrift + doneTTL + time.Second))
	if s, _, _, _ := h4.RequestStatus(rid); s != "unknown" {
		t.Fatalf("past doneTTL: %s", s)
	}
	if v := stored(); v != nil {
		t.Fatalf("still stored past doneTTL: %x", v)
	}
}

// A status stored while its call awaited its own calls' responses cannot
// be finished after a restart (calls in flight are lost): it reads as a
// reject, not as processing forever. Unknown or corrupt records are refused.
func TestDecodeStoredStatus(t *testing.T) {
	b := encodeStatus(&requestStatus{Status: statusExecuting, Expiry: 5, Sender: principal.Anonymous(), Canister: principal.Management()})
	st, err := decodeStatus(b)
	if err != nil || st.Status != "rejected" || st.RejectCode != uint64(host.CanisterError) || !st.Canister.IsManagement() {
		t.Fatalf("executing after a restart: %+v %v", st, err)
	}
	if _, err := decodeStatus(encodeStatus(&requestStatus{Status: "processing"})); err == nil {
		t.Fatal("a stored processing status is accepted")
	}
	if _, err := decodeStatus([]byte{0xff}); err == nil {
		t.Fatal("garbage is a status")
	}
}

// An empty reply, stored and loaded (CBOR omits it), is certified as an
// empty blob, never as null, which clients cannot read as a leaf.
func TestEmptyReplyLeaf(t *testing.T) {
	st, err := decodeStatus(encodeStatus(&requestStatus{Status: "replied", Reply: []byte{}, Sender: principal.Anonymous()}))
	if err != nil {
		t.Fatal(err)
	}
	b, err := cbor.Marshal(statusTree(*st))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte{0x82, 0x03, 0xf6}) || !bytes.Contains(b, []byte{0x82, 0x03, 0x40}) {
		t.Fatalf("empty reply leaf encodes as %x", b)
	}
}

// Management calls by ingress that change state are answered from the
// store after the node reopens: a replay of provisional_create_canister_
// with_cycles creates no second canister, of provisional_top_up_canister
// adds no cycles, of install_code (reinstall) does not reset the
// canister's state.
func TestManagementReplayAfterReopen(t *testing.T) {
	wasm, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "canisters", "counter.wasm"))
	if err != nil {
		t.Fatalf("counter module: %v", err)
	}
	cfg := host.DefaultConfig()
	cfg.Home = t.TempDir()
	node, err := host.Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	open := true
	defer func() {
		if open {
			node.Close()
		}
	}()
	ctx := context.Background()
	id, err := node.Create(ctx, host.CreateOptions{Controllers: []principal.Principal{principal.Anonymous()}})
	if err != nil {
		t.Fatal(err)
	}
	key := testRootKey(t, cfg.Home)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc, err := host.ManagementInterface()
	if err != nil {
		t.Fatal(err)
	}
	// Each call is an anonymous envelope to aaaaa-aa, sent to its
	// effective canister id.
	type call struct {
		content map[string]any
		env     []byte
	}
	calls := map[string]call{}
	var order []string
	add := func(name, method, text string) {
		m, _ := svc.Method(method)
		a, err := candid.ParseArgsTyped(text, m.Args())
		if err != nil {
			t.Fatal(err)
		}
		arg, err := candid.EncodeArgs(a)
		if err != nil {
			t.Fatal(err)
		}
		c := content("call", principal.Anonymous(), principal.Management(), method, time.Now(), byte(len(order)))
		c["arg"], c["canister_id"] = arg, []byte{}
		calls[name] = call{content: c, env: envelope(t, c, nil)}
		order = append(order, name)
	}
	var sb strings.Builder
	for _, b := range wasm {
		fmt.Fprintf(&sb, "\\%02x", b)
	}
	blobLiteral := sb.String()
	add("install", "install_code", fmt.Sprintf(`(record { mode = variant { reinstall }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "DIDL\00\00" })`, id, blobLiteral))
	add("top-up", "provisional_top_up_canister", fmt.Sprintf(`(record { canister_id = principal "%s"; amount = 1_000_000_000_000_000 })`, id))
	add("create", "provisional_create_canister_with_cycles", `(record { amount = opt 1_000_000_000_000 })`)
	send := func(srv *httptest.Server) {
		for _, name := range order {
			if code, b := post(t, srv.URL+"/api/v2/canister/"+id.String()+"/call", calls[name].env); code != http.StatusAccepted {
				t.Fatalf("%s: %d %s", name, code, b)
			}
		}
	}
	h := New(node, key, testNodeKey(t, cfg.Home), quiet)
	srv := httptest.NewServer(h)
	send(srv)
	srv.Close()
	// The counter counts once, then the node stops.
	inc := content("call", principal.Anonymous(), id, "inc", time.Now(), 100)
	srv = httptest.NewServer(h)
	if code, b := post(t, srv.URL+"/api/v2/canister/"+id.String()+"/call", envelope(t, inc, nil)); code != http.StatusAccepted {
		t.Fatalf("inc: %d %s", code, b)
	}
	srv.Close()
	st, err := node.Status(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	balance := st.Balance
	ids, err := node.List()
	if err != nil || len(ids) != 2 {
		t.Fatalf("canisters after the create: %v %v", ids, err)
	}
	open = false
	if err := node.Close(); err != nil {
		t.Fatal(err)
	}

	if node, err = host.Open(cfg, nil); err != nil {
		t.Fatal(err)
	}
	open = true
	h = New(node, key, testNodeKey(t, cfg.Home), quiet)
	srv = httptest.NewServer(h)
	defer srv.Close()
	send(srv) // the replays
	for _, name := range order {
		rid, _ := RequestID(calls[name].content)
		if s, _, _, msg := h.RequestStatus(rid); s != "replied" {
			t.Errorf("%s after the reopen: %s %s", name, s, msg)
		}
	}
	if ids, err := node.List(); err != nil || len(ids) != 2 {
		t.Errorf("canisters after the replays: %v %v", ids, err)
	}
	if st, err := node.Status(ctx, id); err != nil || st.Balance.Cmp(balance) > 0 {
		t.Errorf("balance %s after the replays, %s before (a top-up ran again?): %v", st.Balance, balance, err)
	}
	r, err := node.Query(ctx, host.Message{Canister: id, Method: "get", Arg: noArgs, Caller: principal.Anonymous()})
	if err != nil || !bytes.Equal(r.Data, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("counter after the replays (a reinstall ran again?): %v %v", r, err)
	}
}

// A reject message that is not valid UTF-8 (none of the node's is, as
// made; this holds whatever one says) is stored as valid UTF-8, so the
// next start reads its status instead of dropping it as unreadable, and
// answered before the restart as it is certified after it.
func TestHostileRejectMessageSurvivesARestart(t *testing.T) {
	node, id, home := counterNode(t)
	key := testRootKey(t, home)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	now := time.Now()
	hostile := "Error from Canister: \xff\xfe trapped \xc3( mid-rune \xe2\x82 and \x1b[31m"
	rej := &host.Reject{Code: host.CanisterError, Message: hostile}
	req := &Request{ID: [32]byte{7, 7, 7}, Sender: principal.Anonymous(), CanisterID: id, IngressExpiry: uint64(now.Add(time.Minute).UnixNano())}
	rec := ingressStatus(req).Encode(host.Outcome{Reject: rej})
	if err := node.PutIngressStatuses([]store.IngressRecord{{Key: req.ID[:], Value: rec}}); err != nil {
		t.Fatal(err)
	}
	h := New(nil, key, testNodeKey(t, home), quiet)
	h.node, h.store, h.now = node, node, func() time.Time { return now }
	if err := h.load(); err != nil {
		t.Fatal(err)
	}
	s, _, code, msg := h.RequestStatus(req.ID)
	if s != "rejected" || code != uint64(host.CanisterError) || !utf8.ValidString(msg) {
		t.Fatalf("after a restart: %s %d %q", s, code, msg)
	}
	answered, ok := outcome(nil, rej)
	if !ok || answered.RejectMessage != msg {
		t.Fatalf("answered %q before the restart, %q after it", answered.RejectMessage, msg)
	}
	// Whatever status is stored reads back.
	if _, err := decodeStatus(encodeStatus(&requestStatus{Status: "rejected", RejectMessage: hostile, Sender: principal.Anonymous(), Canister: id})); err != nil {
		t.Fatalf("a stored reject does not read back: %v", err)
	}
}
