package ichttp

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Statuses live in the node's store: a new handler on the node knows
// them; past the expiry they become "done" (reply dropped, in the store
// too), past doneTTL they are forgotten, from the store too. A replay
// while kept runs nothing.
func TestDurableStatusLifecycle(t *testing.T) {
	node, id, home := counterNode(t)
	key, err := LoadOrCreateRootKey(home)
	if err != nil {
		t.Fatal(err)
	}
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
