package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/certify"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// An HTTP gateway's path to an asset: the dfinity/sdk asset canister,
// installed and filled through cordon serve, answers http_request asked
// through the IC HTTP interface's query endpoint, and its IC-Certificate
// header verifies under the root key /api/v2/status publishes (as a
// gateway on a local network fetches it), certifying the body (v1).
func TestAssetCanisterThroughICInterface(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "dfinity-sdk")
	wasm, err := os.ReadFile(filepath.Join(dir, "assetstorage.wasm.gz"))
	if err != nil {
		t.Fatal(err)
	}
	didText, err := os.ReadFile(filepath.Join(dir, "assetstorage.did"))
	if err != nil {
		t.Fatal(err)
	}
	did, err := candid.ParseService(string(didText))
	if err != nil {
		t.Fatal(err)
	}
	encode := func(types []*candid.Type, text string) []byte {
		t.Helper()
		a, err := candid.ParseArgsTyped(text, types)
		if err != nil {
			t.Fatal(err)
		}
		b, err := candid.EncodeArgs(a)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	store, _ := did.Method("store")
	httpRequest, _ := did.Method("http_request")

	s := serve(t)
	ctx := context.Background()
	owner := principal.SelfAuthenticating([]byte("asset owner")).String()
	inst, err := s.client.Install(ctx, InstallRequest{Wasm: wasm, Arg: encode(did.InitArgs, "(null)"), Caller: owner})
	if err != nil {
		t.Fatal(err)
	}
	page := "<!doctype html><p>a certified page</p>"
	if _, err := s.client.Call(ctx, CallRequest{ID: inst.ID, Method: "store", Caller: owner, Arg: encode(store.Args(),
		`(record { key = "/index.html"; content_type = "text/html"; content_encoding = "identity"; content = blob "`+page+`"; sha256 = null })`)}); err != nil {
		t.Fatal(err)
	}

	post := func(path string, body []byte) []byte {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, s.base+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/cbor")
		if s.token != "" {
			req.Header.Set("Authorization", "Bearer "+s.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
		return b
	}
	req, _ := http.NewRequest(http.MethodGet, s.base+"/api/v2/status", nil)
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var status struct {
		RootKey []byte `cbor:"root_key"`
	}
	if err := cbor.Unmarshal(sb, &status); err != nil || len(status.RootKey) == 0 {
		t.Fatalf("status: %v %x", err, sb)
	}

	id := principal.MustFromText(inst.ID)
	env, err := cbor.Marshal(map[string]any{"content": map[string]any{"request_type": "query", "sender": principal.Anonymous().Bytes(),
		"canister_id": id.Bytes(), "method_name": "http_request", "ingress_expiry": uint64(time.Now().Add(time.Minute).UnixNano()),
		"arg": encode(httpRequest.Args(), `(record { method = "GET"; url = "/index.html"; headers = vec {}; body = blob ""; certificate_version = null })`)}})
	if err != nil {
		t.Fatal(err)
	}
	var q struct {
		Status string `cbor:"status"`
		Reply  struct {
			Arg []byte `cbor:"arg"`
		} `cbor:"reply"`
	}
	if err := cbor.Unmarshal(post("/api/v2/canister/"+inst.ID+"/query", env), &q); err != nil || q.Status != "replied" {
		t.Fatalf("query: %v %s", err, q.Status)
	}
	a, err := candid.DecodeAs(q.Reply.Arg, httpRequest.Results())
	if err != nil {
		t.Fatal(err)
	}
	field := func(v candid.Value, name string) candid.Value {
		for _, f := range v.(candid.Record) {
			if f.ID == candid.Hash(name) {
				return f.Value
			}
		}
		return nil
	}
	body := []byte(field(a.Values[0], "body").(candid.Blob))
	if code := field(a.Values[0], "status_code").(candid.Nat16); code != 200 || string(body) != page {
		t.Fatalf("http_request: %d %q", code, body)
	}
	var header string
	for _, h := range field(a.Values[0], "headers").(candid.Vec) {
		kv := h.(candid.Record)
		if strings.EqualFold(string(kv[0].Value.(candid.Text)), "IC-Certificate") {
			header = string(kv[1].Value.(candid.Text))
		}
	}
	parts := map[string][]byte{}
	for _, p := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		b, err := base64.StdEncoding.DecodeString(strings.Trim(v, ":"))
		if err != nil {
			t.Fatalf("IC-Certificate %q: %v", header, err)
		}
		parts[k] = b
	}
	certTree, err := certify.Verify(status.RootKey, parts["certificate"])
	if err != nil {
		t.Fatal(err)
	}
	cd, ok := certTree.Lookup([]byte("canister"), id.Bytes(), []byte("certified_data"))
	if !ok {
		t.Fatal("the certificate does not hold the canister's certified data")
	}
	var tv any
	if err := cbor.Unmarshal(parts["tree"], &tv); err != nil {
		t.Fatal(err)
	}
	tree, err := certify.DecodeTree(tv)
	if err != nil {
		t.Fatal(err)
	}
	if root := tree.Digest(); !bytes.Equal(root[:], cd) {
		t.Fatalf("tree root %x, certified data %x", root, cd)
	}
	h := sha256.Sum256(body)
	if got, ok := tree.Lookup([]byte("http_assets"), []byte("/index.html")); !ok || !bytes.Equal(got, h[:]) {
		t.Fatalf("http_assets/index.html %x, body hash %x", got, h)
	}
}
