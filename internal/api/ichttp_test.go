package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/ichttp"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// cordon serve answers the IC HTTP interface beside the JSON API, behind
// the same checks: the token, no browser origin; the root key is the one
// in <home>, kept across restarts.
func TestServeICInterface(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	inst, err := s.client.Install(ctx, InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, path string, body []byte, hdr map[string]string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, s.base+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/cbor")
		if s.token != "" {
			req.Header.Set("Authorization", "Bearer "+s.token)
		}
		for k, v := range hdr {
			if v == "" {
				req.Header.Del(k)
			} else {
				req.Header.Set(k, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	key, err := ichttp.LoadOrCreateRootKey(s.home)
	if err != nil {
		t.Fatal(err)
	}
	code, b := do(http.MethodGet, "/api/v2/status", nil, nil)
	var st map[string]any
	if err := cbor.Unmarshal(b, &st); code != 200 || err != nil {
		t.Fatalf("status: %d %v %q", code, err, b)
	}
	if rk, _ := st["root_key"].([]byte); !bytes.Equal(rk, key.DER()) {
		t.Fatalf("root_key %x is not <home>'s %x", st["root_key"], key.DER())
	}

	id := principal.MustFromText(inst.ID)
	call := func(typ, method string, nonce byte) []byte {
		env := map[string]any{"content": map[string]any{"request_type": typ, "sender": principal.Anonymous().Bytes(),
			"canister_id": id.Bytes(), "method_name": method, "arg": noArgs, "nonce": []byte{nonce},
			"ingress_expiry": uint64(time.Now().Add(time.Minute).UnixNano())}}
		b, err := cbor.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if code, b := do(http.MethodPost, "/api/v2/canister/"+inst.ID+"/call", call("call", "inc", 1), nil); code != 202 {
		t.Fatalf("call: %d %s", code, b)
	}
	code, b = do(http.MethodPost, "/api/v2/canister/"+inst.ID+"/query", call("query", "get", 2), nil)
	var q struct {
		Status string `cbor:"status"`
		Reply  struct {
			Arg []byte `cbor:"arg"`
		} `cbor:"reply"`
	}
	if err := cbor.Unmarshal(b, &q); code != 200 || err != nil || q.Status != "replied" {
		t.Fatalf("query: %d %v %q", code, err, b)
	}
	if got := q.Reply.Arg; !bytes.Equal(got, natOne) {
		t.Fatalf("get %q after one inc through the IC interface", got)
	}

	// read_state and the v3 call through the server.
	rs, err := cbor.Marshal(map[string]any{"content": map[string]any{"request_type": "read_state", "sender": principal.Anonymous().Bytes(),
		"paths": []any{[]any{[]byte("time")}}, "ingress_expiry": uint64(time.Now().Add(time.Minute).UnixNano())}})
	if err != nil {
		t.Fatal(err)
	}
	code, b = do(http.MethodPost, "/api/v2/canister/"+inst.ID+"/read_state", rs, nil)
	var cert struct {
		Certificate []byte `cbor:"certificate"`
	}
	if err := cbor.Unmarshal(b, &cert); code != 200 || err != nil || len(cert.Certificate) == 0 {
		t.Fatalf("read_state: %d %v %q", code, err, b)
	}
	code, b = do(http.MethodPost, "/api/v3/canister/"+inst.ID+"/call", call("call", "inc", 5), nil)
	var v3 struct {
		Status      string `cbor:"status"`
		Certificate []byte `cbor:"certificate"`
	}
	if err := cbor.Unmarshal(b, &v3); code != 200 || err != nil || v3.Status != "replied" || len(v3.Certificate) == 0 {
		t.Fatalf("v3 call: %d %v %q", code, err, b)
	}
	for _, v := range []string{"query", "read_state"} { // v3's are v2's
		body := rs
		if v == "query" {
			body = call("query", "get", 6)
		}
		if code, b := do(http.MethodPost, "/api/v3/canister/"+inst.ID+"/"+v, body, nil); code != 200 {
			t.Fatalf("v3 %s: %d %q", v, code, b)
		}
	}
	var natAfter []byte
	// v4's call is v3's; the subnet's read_state answers for the node's
	// subnet (the self-authenticating principal of the root key) only.
	code, b = do(http.MethodPost, "/api/v4/canister/"+inst.ID+"/call", call("call", "inc", 7), nil)
	if err := cbor.Unmarshal(b, &v3); code != 200 || err != nil || v3.Status != "replied" {
		t.Fatalf("v4 call: %d %v %q", code, err, b)
	}
	if _, err := ichttp.VerifyCertificate(key.DER(), v3.Certificate); err != nil {
		t.Fatalf("v4 call's certificate: %v", err)
	}
	sid := principal.SelfAuthenticating(key.DER()).String()
	for _, v := range []string{"v2", "v3"} {
		code, b := do(http.MethodPost, "/api/"+v+"/subnet/"+sid+"/read_state", rs, nil)
		if err := cbor.Unmarshal(b, &cert); code != 200 || err != nil {
			t.Fatalf("%s subnet read_state: %d %v %q", v, code, err, b)
		}
		if _, err := ichttp.VerifyCertificate(key.DER(), cert.Certificate); err != nil {
			t.Fatalf("%s subnet read_state's certificate: %v", v, err)
		}
		if code, b := do(http.MethodPost, "/api/"+v+"/subnet/"+principal.Anonymous().String()+"/read_state", rs, nil); code != 404 {
			t.Fatalf("%s read_state of another subnet: %d %q", v, code, b)
		}
	}
	natAfter = []byte("DIDL\x00\x01\x7d\x03") // inc 1, 5 and 7
	if code, b := do(http.MethodPost, "/api/v2/canister/"+inst.ID+"/read_state", rs[:len(rs)-3], nil); code != 400 {
		t.Fatalf("truncated read_state: %d %q", code, b)
	}

	// The API's checks stand in front: no token, a page's Origin, a
	// rebound Host are refused before the envelope is read.
	if s.token != "" {
		if code, _ := do(http.MethodPost, "/api/v2/canister/"+inst.ID+"/call", call("call", "inc", 3), map[string]string{"Authorization": ""}); code != 401 {
			t.Errorf("without the token: %d", code)
		}
	}
	if code, _ := do(http.MethodPost, "/api/v2/canister/"+inst.ID+"/call", call("call", "inc", 4), map[string]string{"Origin": "https://evil.example"}); code != 403 {
		t.Errorf("with a page's Origin: %d", code)
	}
	r, err := s.client.Call(ctx, CallRequest{ID: inst.ID, Method: "get", Arg: noArgs, Query: true})
	if err != nil || !bytes.Equal(r.Reply, natAfter) {
		t.Fatalf("refused IC calls ran: %v %v", r, err)
	}
	if code, b := do(http.MethodGet, "/api/v2/nothing", nil, nil); code != 404 || !strings.Contains(string(b), "no such endpoint") {
		t.Errorf("unknown IC endpoint: %d %q", code, b)
	}

	// A restart serves the same root key.
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	s2 := serveNode(t, s.node, s.home, nil)
	s.base, s.token = s2.base, s2.token
	code, b = do(http.MethodGet, "/api/v2/status", nil, nil)
	st = nil
	if err := cbor.Unmarshal(b, &st); code != 200 || err != nil || !bytes.Equal(st["root_key"].([]byte), key.DER()) {
		t.Fatalf("status after restart: %d %v", code, err)
	}
}

// pingPongWAT keeps every call to "hang" open: it calls its own "noop",
// and each reply callback calls it again, as a canister awaiting a long
// chain of calls does.
const pingPongWAT = `(module
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 1) $again)
  (data (i32.const 100) "noop")
  (func $ping
    (call $self_copy (i32.const 0) (i32.const 0) (call $self_size))
    (call $call_new (i32.const 0) (call $self_size) (i32.const 100) (i32.const 4)
      (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 0))
    (drop (call $call_perform)))
  (func $again (param i32) (call $ping))
  (func (export "canister_update hang") (call $ping))
  (func (export "canister_update noop") (call $reply)))`

// A call may be answered 202 at any point after it is accepted (the
// spec), and a synchronous one (v3, v4) too once an implementation's
// timeout passes. Waiting for the end of a call that its canister keeps
// open held one of the server's request slots (server.max_requests) for
// up to the request timeout, so a few such calls locked every client out
// of the whole API. A v2 and a v3 call to such a canister now get their
// 202 after at most ichttp's callWait (10 s), and the server answers
// others while the calls stay open. The client's minute is a guard, not
// a measure.
func TestOpenICCallsDoNotHoldRequestSlots(t *testing.T) {
	s := serveWith(t, func(o *ServeOptions) { o.MaxRequests = 2 })
	wasm, err := wasmtime.Wat2Wasm(pingPongWAT)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := s.client.Install(context.Background(), InstallRequest{Wasm: wasm, Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	id := principal.MustFromText(inst.ID)
	send := func(method, path string, body []byte) (int, []byte, error) {
		req, _ := http.NewRequest(method, s.base+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/cbor")
		if s.token != "" {
			req.Header.Set("Authorization", "Bearer "+s.token)
		}
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, nil
	}
	type result struct {
		version string
		code    int
		body    []byte
		err     error
	}
	res := make(chan result, 2)
	for i, version := range []string{"v2", "v3"} {
		env, err := cbor.Marshal(map[string]any{"content": map[string]any{"request_type": "call", "sender": principal.Anonymous().Bytes(),
			"canister_id": id.Bytes(), "method_name": "hang", "arg": noArgs, "nonce": []byte(fmt.Sprint(i)),
			"ingress_expiry": uint64(time.Now().Add(4 * time.Minute).UnixNano())}})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			code, b, err := send(http.MethodPost, "/api/"+version+"/canister/"+inst.ID+"/call", env)
			res <- result{version, code, b, err}
		}()
	}
	for range 2 {
		if r := <-res; r.err != nil || r.code != http.StatusAccepted {
			t.Fatalf("%s call to a canister that keeps its call open: %d %v %q (still waiting: it holds a request slot)", r.version, r.code, r.err, r.body)
		}
	}
	if code, b, err := send(http.MethodGet, "/api/v2/status", nil); err != nil || code != http.StatusOK {
		t.Fatalf("status while two calls stay open: %d %v %q", code, err, b)
	}
}
