package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/api"
	"github.com/cordon-dev/cordon/internal/ichttp"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// ed25519SPKI is the DER header of an Ed25519 public key, as IC clients
// send sender_pubkey.
var ed25519SPKI = []byte{0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00}

// A call's status survives a SIGKILL of `cordon serve`: after the restart
// read_state answers the reply in a certificate of the node's root key,
// and the same request sent again (v2 and v3) runs nothing: the counter
// was incremented once.
func TestICRequestStatusSurvivesKill(t *testing.T) {
	bin := cordonBinary(t)
	home := t.TempDir()
	ctx := context.Background()
	s, c, inst := serveInstalled(t, bin, home, counterWasm(t))
	c.Close()
	tok, err := os.ReadFile(api.TokenPath(home))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der := append(append([]byte{}, ed25519SPKI...), pub...)
	sender := principal.SelfAuthenticating(der)
	id := principal.MustFromText(inst.ID)
	sign := func(content map[string]any) ([]byte, [32]byte) {
		rid, err := ichttp.RequestID(content)
		if err != nil {
			t.Fatal(err)
		}
		env, err := cbor.Marshal(map[string]any{"content": content, "sender_pubkey": der,
			"sender_sig": ed25519.Sign(priv, append([]byte("\x0Aic-request"), rid[:]...))})
		if err != nil {
			t.Fatal(err)
		}
		return env, rid
	}
	post := func(addr, path string, body []byte) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, "http://"+addr+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/cbor")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	call, rid := sign(map[string]any{"request_type": "call", "sender": sender.Bytes(), "canister_id": id.Bytes(),
		"method_name": "inc", "arg": noArgs, "nonce": []byte("once"), "ingress_expiry": uint64(time.Now().Add(4 * time.Minute).UnixNano())})
	// v2 answers 202 once the call has run and its status is stored.
	if code, b := post(s.addr, "/api/v2/canister/"+inst.ID+"/call", call); code != http.StatusAccepted {
		t.Fatalf("call: %d %s", code, b)
	}
	if err := s.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	s.wait(t)

	s = startServe(t, bin, home)
	key, err := ichttp.LoadOrCreateRootKey(home)
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := sign(map[string]any{"request_type": "read_state", "sender": sender.Bytes(),
		"paths":          []any{[]any{[]byte("request_status"), rid[:]}},
		"ingress_expiry": uint64(time.Now().Add(4 * time.Minute).UnixNano())})
	code, b := post(s.addr, "/api/v2/canister/"+inst.ID+"/read_state", rs)
	var resp struct {
		Certificate []byte `cbor:"certificate"`
		Status      string `cbor:"status"`
	}
	if err := cbor.Unmarshal(b, &resp); code != 200 || err != nil {
		t.Fatalf("read_state after the restart: %d %v %q", code, err, b)
	}
	tree, err := ichttp.VerifyCertificate(key.DER(), resp.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := tree.Lookup([]byte("request_status"), rid[:], []byte("status"))
	reply, _ := tree.Lookup([]byte("request_status"), rid[:], []byte("reply"))
	if string(st) != "replied" || !bytes.Equal(reply, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("status after the restart: %q %x", st, reply)
	}

	// The same request again: v2 accepts it, v3 answers the stored
	// status; neither runs it.
	if code, b := post(s.addr, "/api/v2/canister/"+inst.ID+"/call", call); code != http.StatusAccepted {
		t.Fatalf("replayed call: %d %s", code, b)
	}
	code, b = post(s.addr, "/api/v3/canister/"+inst.ID+"/call", call)
	if err := cbor.Unmarshal(b, &resp); code != 200 || err != nil || resp.Status != "replied" {
		t.Fatalf("replayed v3 call: %d %v %q", code, err, b)
	}
	if tree, err = ichttp.VerifyCertificate(key.DER(), resp.Certificate); err != nil {
		t.Fatal(err)
	}
	if reply, _ := tree.Lookup([]byte("request_status"), rid[:], []byte("reply")); !bytes.Equal(reply, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("replayed v3 call's reply %x", reply)
	}
	c, err = api.Dial(ctx, home)
	if err != nil || c == nil {
		t.Fatalf("Dial: %v %v", c, err)
	}
	defer c.Close()
	r, err := c.Call(ctx, api.CallRequest{ID: inst.ID, Method: "get", Arg: noArgs, Query: true})
	if err != nil || !bytes.Equal(r.Reply, []byte("DIDL\x00\x01\x7d\x01")) {
		t.Fatalf("counter after the call, the kill and two replays: %v %x", err, r)
	}
}
