package ichttp

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// keptBytes is what h's statuses hold of replies and reject messages.
func keptBytes(h *Handler) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	kept := 0
	for _, st := range h.statuses {
		kept += len(st.Reply) + len(st.RejectMessage)
	}
	return kept
}

// A call refused before it ran (DESTINATION_INVALID) keeps its status
// among the last maxRefused refused calls, bounded by count, outside every
// sender's share, and its reject message echoed the method name the client
// chose, up to the whole body: anonymous calls to aaaaa-aa (which always
// exists; any effective canister id is accepted when the argument names
// none) with ~2 MiB method names made the node hold ~2 MiB each, 10 000 of
// them ~20-30 GiB. The host now clips the name it echoes
// (host.EchoedName), and a refusal keeps at most maxRefusalMessage of
// whatever its message says.
func TestRefusedStatusesHoldNoClientBytes(t *testing.T) {
	node, id, home := counterNode(t)
	key, err := LoadOrCreateRootKey(home)
	if err != nil {
		t.Fatal(err)
	}
	h := New(node, key, testNodeKey(t, home), nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	url := srv.URL + "/api/v2/canister/" + id.String() + "/call"
	for i := range maxReplyBytes/(2<<20) + 4 {
		c := content("call", principal.Anonymous(), principal.Management(), fmt.Sprint(i)+strings.Repeat("m", 2<<20), time.Now(), 0)
		c["canister_id"] = []byte{}
		if code, b := post(t, url, envelope(t, c, nil)); code != 202 {
			t.Fatalf("call %d: %d %.200s", i, code, b)
		}
	}
	if kept := keptBytes(h); kept > maxReplyBytes {
		t.Fatalf("refused calls' statuses hold %d MiB of method names the client chose", kept>>20)
	}

	// Whatever else a refusal says is clipped too.
	req := &Request{ID: [32]byte{1}, IngressExpiry: uint64(time.Now().Add(time.Minute).UnixNano()), Sender: principal.Anonymous(), CanisterID: id}
	if fresh, _, err := h.begin(req); !fresh || err != nil {
		t.Fatalf("begin: %v %v", fresh, err)
	}
	h.finish(req.ID, &requestStatus{Status: "rejected", RejectCode: uint64(host.DestinationInvalid), RejectMessage: strings.Repeat("x", 2<<20)})
	if _, _, code, msg := h.RequestStatus(req.ID); code != uint64(host.DestinationInvalid) || len(msg) > maxRefusalMessage+len("…") {
		t.Fatalf("a refusal keeps a %d-byte reject message (code %d)", len(msg), code)
	}
}
