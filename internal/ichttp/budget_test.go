package ichttp

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/store"
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
	key := testRootKey(t, home)
	h := New(node, key, testNodeKey(t, home), nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	url := srv.URL + "/api/v2/canister/" + id.String() + "/call"
	for i := range maxAnswerBytes/(2<<20) + 4 {
		c := content("call", principal.Anonymous(), principal.Management(), fmt.Sprint(i)+strings.Repeat("m", 2<<20), time.Now(), 0)
		c["canister_id"] = []byte{}
		if code, b := post(t, url, envelope(t, c, nil)); code != 202 {
			t.Fatalf("call %d: %d %.200s", i, code, b)
		}
	}
	if kept := keptBytes(h); kept > maxAnswerBytes {
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

// bigRejectWAT rejects every call with a message of the largest size the
// node allows (2 MiB, Config.ReplyBytes).
const bigRejectWAT = `(module
  (import "ic0" "msg_reject" (func $reject (param i32 i32)))
  (memory 33)
  (func (export "canister_update rej") (call $reject (i32.const 0) (i32.const 2097152))))`

// The statuses kept for request_status hold at most maxAnswerBytes of
// what canisters chose: replies were capped, reject messages, which a
// hostile canister makes as large as replies, were not, neither while
// serving nor when a restart loads them back. Both count now.
func TestRejectMessagesBoundedLikeReplies(t *testing.T) {
	wasm, err := wasmtime.Wat2Wasm(bigRejectWAT)
	if err != nil {
		t.Fatal(err)
	}
	s := newICServer(t, wasm, principal.Anonymous())
	url := s.url + "/api/v2/canister/" + s.id.String() + "/call"
	n := maxAnswerBytes/(2<<20) + 4
	for i := range n {
		c := content("call", principal.Anonymous(), s.id, "rej", time.Now(), 0)
		c["nonce"] = []byte(fmt.Sprint(i))
		if code, b := post(t, url, envelope(t, c, nil)); code != 202 {
			t.Fatalf("call %d: %d %s", i, code, b)
		}
	}
	if kept := keptBytes(s.h); kept > maxAnswerBytes {
		t.Fatalf("statuses hold %d MiB of canister-chosen reject messages, more than the %d MiB replies may hold", kept>>20, maxAnswerBytes>>20)
	}
	if s.h.answerBytes != keptBytes(s.h) {
		t.Fatalf("answerBytes %d, the statuses hold %d", s.h.answerBytes, keptBytes(s.h))
	}

	// As many rejects stored as a node that ran them before the budget
	// counted them kept: a restart reads them all back.
	exp := uint64(time.Now().Add(time.Minute).UnixNano())
	recs := make([]store.IngressRecord, n)
	for i := range recs {
		st := &requestStatus{Status: "rejected", Expiry: exp, Sender: principal.Anonymous(), Canister: s.id,
			RejectCode: uint64(host.CanisterReject), RejectMessage: strings.Repeat("r", 2<<20)}
		recs[i] = store.IngressRecord{Key: append([]byte("stored-reject-"), fmt.Sprintf("%018d", i)...), Value: encodeStatus(st)}
	}
	if err := s.node.PutIngressStatuses(recs); err != nil {
		t.Fatal(err)
	}
	h2 := New(s.node, s.key, testNodeKey(t, t.TempDir()), nil)
	if kept := keptBytes(h2); kept > maxAnswerBytes || h2.answerBytes != kept {
		t.Fatalf("after a restart the statuses hold %d MiB of reject messages (answerBytes %d MiB)", kept>>20, h2.answerBytes>>20)
	}
}
