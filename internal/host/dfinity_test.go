package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/certify"
	"github.com/cordon-dev/cordon/internal/cycles"

	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// The canisters dfinity/sdk ships (testdata/dfinity-sdk/README.md).
var sdkDir = filepath.Join("..", "..", "testdata", "dfinity-sdk")

// sdkCanister is a dfinity/sdk canister's module and Candid service.
type sdkCanister struct {
	wasm []byte
	did  *candid.Service
}

func loadSDK(t *testing.T, wasmFile, didFile string) sdkCanister {
	t.Helper()
	wasm, err := os.ReadFile(filepath.Join(sdkDir, wasmFile))
	if err != nil {
		t.Fatal(err)
	}
	did, err := os.ReadFile(filepath.Join(sdkDir, didFile))
	if err != nil {
		t.Fatal(err)
	}
	s, err := candid.ParseService(string(did))
	if err != nil {
		t.Fatalf("%s: %v", didFile, err)
	}
	return sdkCanister{wasm: wasm, did: s}
}

// encode types Candid text as the method's arguments.
func (s sdkCanister) encode(t *testing.T, method, text string) []byte {
	t.Helper()
	var types []*candid.Type
	if method == "" {
		types = s.did.InitArgs
	} else {
		m, ok := s.did.Method(method)
		if !ok {
			t.Fatalf("no method %s", method)
		}
		types = m.Args()
	}
	a, err := candid.ParseArgsTyped(text, types)
	if err != nil {
		t.Fatalf("%s %s: %v", method, text, err)
	}
	b, err := candid.EncodeArgs(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decode reads a method's reply as its results.
func (s sdkCanister) decode(t *testing.T, method string, b []byte) candid.Args {
	t.Helper()
	m, _ := s.did.Method(method)
	a, err := candid.DecodeAs(b, m.Results())
	if err != nil {
		t.Fatalf("%s reply: %v", method, err)
	}
	return a
}

// sdkField is a record's field by name (nil if absent).
func sdkField(v candid.Value, name string) candid.Value {
	r, _ := v.(candid.Record)
	for _, f := range r {
		if f.ID == candid.Hash(name) {
			return f.Value
		}
	}
	return nil
}

// sdkUser is a non-anonymous principal: the asset canister gives its
// installer the permission to commit, and never to the anonymous one.
var sdkUser = principal.SelfAuthenticating([]byte("cordon test user key"))

func (f *fixture) installAs(caller principal.Principal, wasm, arg []byte) principal.Principal {
	f.t.Helper()
	id, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{caller}})
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeInstall, Wasm: wasm, Arg: arg, Caller: caller}); err != nil {
		f.t.Fatalf("install: %v", err)
	}
	return id
}

func (f *fixture) updateAs(caller, id principal.Principal, method string, arg []byte) []byte {
	f.t.Helper()
	r, err := f.node.Update(context.Background(), Message{Canister: id, Method: method, Arg: arg, Caller: caller})
	if err != nil {
		f.t.Fatalf("update %s: %v", method, err)
	}
	return r.Data
}

// httpResponse is an http_request answer as a gateway reads it.
type httpResponse struct {
	status  uint16
	headers [][2]string
	body    []byte
}

func asHTTPResponse(t *testing.T, v candid.Value) httpResponse {
	t.Helper()
	var r httpResponse
	st, ok := sdkField(v, "status_code").(candid.Nat16)
	if !ok {
		t.Fatalf("http response without status_code: %v", v)
	}
	r.status = uint16(st)
	body, _ := sdkField(v, "body").(candid.Blob)
	r.body = body
	hs, _ := sdkField(v, "headers").(candid.Vec)
	for _, h := range hs {
		rec, _ := h.(candid.Record)
		if len(rec) != 2 {
			t.Fatalf("header %v", h)
		}
		k, _ := rec[0].Value.(candid.Text)
		val, _ := rec[1].Value.(candid.Text)
		r.headers = append(r.headers, [2]string{string(k), string(val)})
	}
	return r
}

func (r httpResponse) header(name string) (string, bool) {
	for _, h := range r.headers {
		if strings.EqualFold(h[0], name) {
			return h[1], true
		}
	}
	return "", false
}

// verifyAssetResponse checks an http_request answer as an HTTP gateway
// does (the IC's HTTP gateway protocol, response verification v1 and v2):
// the IC-Certificate header's certificate verifies under the root key, is
// recent, and certifies this canister's data; that data is the root hash
// of the header's tree; and the tree witnesses the body (v1: its sha256 at
// http_assets/<path>) or the whole response (v2: the expression path, the
// expression's hash, no request certification, and the hash of the status,
// the certified headers and the body).
func verifyAssetResponse(rootKey []byte, id principal.Principal, r httpResponse, path string, version int) error {
	hv, ok := r.header("IC-Certificate")
	if !ok {
		return errors.New("no IC-Certificate header")
	}
	fields := map[string][]byte{}
	for _, part := range strings.Split(hv, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return fmt.Errorf("IC-Certificate field %q", part)
		}
		if strings.HasPrefix(v, ":") && strings.HasSuffix(v, ":") && len(v) >= 2 {
			b, err := base64.StdEncoding.DecodeString(v[1 : len(v)-1])
			if err != nil {
				return fmt.Errorf("IC-Certificate %s: %w", k, err)
			}
			fields[k] = b
		} else {
			fields[k] = []byte(v)
		}
	}
	if version == 2 && string(fields["version"]) != "2" {
		return fmt.Errorf("IC-Certificate version %q, want 2", fields["version"])
	}
	certTree, err := certify.Verify(rootKey, fields["certificate"])
	if err != nil {
		return err
	}
	tm, _ := certTree.Lookup([]byte("time"))
	ns, err := certify.ReadLEB128(tm)
	if err != nil {
		return fmt.Errorf("certificate time: %w", err)
	}
	if d := time.Since(time.Unix(0, int64(ns))); d < -5*time.Minute || d > 5*time.Minute {
		return fmt.Errorf("certificate time is %v off", d)
	}
	cd, ok := certTree.Lookup([]byte("canister"), id.Bytes(), []byte("certified_data"))
	if !ok {
		return errors.New("the certificate does not certify this canister's data")
	}
	var treeCBOR any
	if err := cbor.Unmarshal(fields["tree"], &treeCBOR); err != nil {
		return fmt.Errorf("tree: %w", err)
	}
	tree, err := certify.DecodeTree(treeCBOR)
	if err != nil {
		return fmt.Errorf("tree: %w", err)
	}
	if root := tree.Digest(); !bytes.Equal(root[:], cd) {
		return fmt.Errorf("the tree's root hash %x is not the certified data %x", root, cd)
	}
	bodyHash := sha256.Sum256(r.body)
	if version == 1 {
		got, ok := tree.Lookup([]byte("http_assets"), []byte(path))
		if !ok || !bytes.Equal(got, bodyHash[:]) {
			return fmt.Errorf("http_assets%s is %x (%v), the body's hash %x", path, got, ok, bodyHash)
		}
		return nil
	}
	var exprPath []string
	if err := cbor.Unmarshal(fields["expr_path"], &exprPath); err != nil || len(exprPath) == 0 || exprPath[0] != "http_expr" {
		return fmt.Errorf("expr_path %q: %v", exprPath, err)
	}
	expr, ok := r.header("IC-CertificateExpression")
	if !ok {
		return errors.New("no IC-CertificateExpression header")
	}
	exprHash := sha256.Sum256([]byte(expr))
	labels := make([][]byte, 0, len(exprPath)+3)
	for _, l := range exprPath {
		labels = append(labels, []byte(l))
	}
	labels = append(labels, exprHash[:])
	if strings.Contains(expr, "ValidationArgs{no_certification:Empty{}}") {
		// The canister certifies that this response is not certified.
		if v, ok := tree.Lookup(labels...); !ok || len(v) != 0 {
			return fmt.Errorf("the tree does not witness skipping certification at %q + expression hash", exprPath)
		}
		return nil
	}
	// The expression names the certified headers:
	// ResponseHeaderList{headers: ["content-type", ...]}.
	_, list, ok := strings.Cut(expr, "certified_response_headers: ResponseHeaderList{headers: [")
	if !ok {
		return fmt.Errorf("expression %q does not list certified headers", expr)
	}
	list, _, _ = strings.Cut(list, "]")
	var certified []string
	for _, h := range strings.Split(list, ",") {
		if h = strings.Trim(strings.TrimSpace(h), `"`); h != "" {
			certified = append(certified, strings.ToLower(h))
		}
	}
	// Representation-independent hash of the certified headers, the
	// expression header and the :ic-cert-status pseudo-header.
	var pairs [][]byte
	add := func(k string, v []byte) {
		hk, hv := sha256.Sum256([]byte(k)), sha256.Sum256(v)
		pairs = append(pairs, append(hk[:], hv[:]...))
	}
	for _, h := range r.headers {
		name := strings.ToLower(h[0])
		if name == "ic-certificateexpression" || (slices.Contains(certified, name) && name != "ic-certificate") {
			add(name, []byte(h[1]))
		}
	}
	add(":ic-cert-status", certify.LEB128(uint64(r.status)))
	slices.SortFunc(pairs, bytes.Compare)
	headersHash := sha256.Sum256(bytes.Join(pairs, nil))
	responseHash := sha256.Sum256(append(headersHash[:], bodyHash[:]...))
	labels = append(labels, []byte{}, responseHash[:])
	if v, ok := tree.Lookup(labels...); !ok || len(v) != 0 {
		return fmt.Errorf("the tree does not witness the response at %q + expression hash + response hash", exprPath)
	}
	return nil
}

// The asset canister dfinity/sdk ships stores an asset (with store, and
// with a batch), and serves it through http_request with an IC-Certificate
// header a gateway accepts, v1 and v2, in both isolation modes: the
// certificate comes from ic0.data_certificate_copy, signed by the node's
// root key over the canister's certified data.
func TestAssetCanister(t *testing.T) {
	t.Parallel()
	asset := loadSDK(t, "assetstorage.wasm.gz", "assetstorage.did")
	forIsolations(t, func(t *testing.T, f *fixture) {
		key, err := certify.LoadOrCreateRootKey(f.home)
		if err != nil {
			t.Fatal(err)
		}
		id := f.installAs(sdkUser, asset.wasm, asset.encode(t, "", "(null)"))
		page := "<!doctype html><h1>served by cordon</h1>"
		f.updateAs(sdkUser, id, "store", asset.encode(t, "store", fmt.Sprintf(`(record { key = "/index.html"; content_type = "text/html"; content_encoding = "identity"; content = blob %q; sha256 = null })`, page)))
		// A batch: create_batch, create_chunk, commit_batch.
		script := "console.log('cordon');"
		b := asset.decode(t, "create_batch", f.updateAs(sdkUser, id, "create_batch", asset.encode(t, "create_batch", "(record {})")))
		batch := sdkField(b.Values[0], "batch_id").(candid.Nat)
		c := asset.decode(t, "create_chunk", f.updateAs(sdkUser, id, "create_chunk", asset.encode(t, "create_chunk", fmt.Sprintf(`(record { batch_id = %s; content = blob %q })`, batch, script))))
		chunk := sdkField(c.Values[0], "chunk_id").(candid.Nat)
		f.updateAs(sdkUser, id, "commit_batch", asset.encode(t, "commit_batch", fmt.Sprintf(`(record { batch_id = %s; operations = vec {
			variant { CreateAsset = record { key = "/app.js"; content_type = "text/javascript" } };
			variant { SetAssetContent = record { key = "/app.js"; content_encoding = "identity"; chunk_ids = vec { %s } } } } })`, batch, chunk)))
		// Only a principal with the permission may store.
		_, err = f.node.Update(context.Background(), Message{Canister: id, Method: "store", Caller: principal.Anonymous(),
			Arg: asset.encode(t, "store", `(record { key = "/evil.html"; content_type = "text/html"; content_encoding = "identity"; content = blob "x"; sha256 = null })`)})
		if err == nil {
			t.Fatal("the anonymous principal stored an asset")
		}

		for _, tc := range []struct{ path, body string }{{"/index.html", page}, {"/app.js", script}} {
			for _, version := range []int{1, 2} {
				cv := "null"
				if version == 2 {
					cv = "opt 2"
				}
				raw := f.query(id, "http_request", asset.encode(t, "http_request", fmt.Sprintf(`(record { method = "GET"; url = %q; headers = vec {}; body = blob ""; certificate_version = %s })`, tc.path, cv)))
				r := asHTTPResponse(t, asset.decode(t, "http_request", raw).Values[0])
				if r.status != 200 || string(r.body) != tc.body {
					t.Fatalf("%s v%d: %d %q", tc.path, version, r.status, r.body)
				}
				if err := verifyAssetResponse(key.DER(), id, r, tc.path, version); err != nil {
					t.Fatalf("%s v%d: %v", tc.path, version, err)
				}
				// The verification is not vacuous: another body, another
				// root key, another canister fail it.
				forged := r
				forged.body = []byte(strings.ToUpper(tc.body))
				if verifyAssetResponse(key.DER(), id, forged, tc.path, version) == nil {
					t.Fatalf("%s v%d: a forged body verified", tc.path, version)
				}
				other, err := certify.LoadOrCreateRootKey(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				if verifyAssetResponse(other.DER(), id, r, tc.path, version) == nil {
					t.Fatalf("%s v%d: verified under another root key", tc.path, version)
				}
				if verifyAssetResponse(key.DER(), principal.CanisterID(999), r, tc.path, version) == nil {
					t.Fatalf("%s v%d: verified for another canister", tc.path, version)
				}
			}
		}
		// An upgrade keeps the assets (stable memory) and certifies them
		// again in post_upgrade.
		if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: asset.wasm,
			Arg: asset.encode(t, "", "(opt variant { Upgrade = record { set_permissions = null } })"), Caller: sdkUser}); err != nil {
			t.Fatalf("upgrade: %v", err)
		}
		for _, version := range []int{1, 2} {
			cv := map[int]string{1: "null", 2: "opt 2"}[version]
			raw := f.query(id, "http_request", asset.encode(t, "http_request", `(record { method = "GET"; url = "/app.js"; headers = vec {}; body = blob ""; certificate_version = `+cv+` })`))
			r := asHTTPResponse(t, asset.decode(t, "http_request", raw).Values[0])
			if r.status != 200 || string(r.body) != script {
				t.Fatalf("after upgrade, v%d: %d %q", version, r.status, r.body)
			}
			if err := verifyAssetResponse(key.DER(), id, r, "/app.js", version); err != nil {
				t.Fatalf("after upgrade, v%d: %v", version, err)
			}
		}

		// A path with no asset gets the index page (the canister's
		// single-page-app fallback), certified as /index.html only.
		raw := f.query(id, "http_request", asset.encode(t, "http_request", `(record { method = "GET"; url = "/missing.css"; headers = vec {}; body = blob ""; certificate_version = null })`))
		r := asHTTPResponse(t, asset.decode(t, "http_request", raw).Values[0])
		if r.status != 200 || string(r.body) != page || verifyAssetResponse(key.DER(), id, r, "/index.html", 1) != nil {
			t.Fatalf("fallback: %d %q", r.status, r.body)
		}
		if verifyAssetResponse(key.DER(), id, r, "/missing.css", 1) == nil {
			t.Fatal("the fallback is certified as /missing.css")
		}
	})
}

// The Candid UI canister dfinity/sdk ships answers http_request for "/"
// with its page and an IC-Certificate header (v2, certification skipped by
// the canister's own certified decision), in both isolation modes. Before
// ic0.data_certificate_* it trapped: data_certificate() returned None.
func TestCandidUI(t *testing.T) {
	t.Parallel()
	asset := loadSDK(t, "assetstorage.wasm.gz", "assetstorage.did") // its HttpRequest is the UI's, plus an opt field
	ui, err := os.ReadFile(filepath.Join(sdkDir, "ui.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	forIsolations(t, func(t *testing.T, f *fixture) {
		key, err := certify.LoadOrCreateRootKey(f.home)
		if err != nil {
			t.Fatal(err)
		}
		id := f.installAs(sdkUser, ui, []byte("DIDL\x00\x00"))
		for _, p := range []string{"/", "/?id=" + id.String(), "/index.js"} {
			raw := f.query(id, "http_request", asset.encode(t, "http_request", fmt.Sprintf(`(record { method = "GET"; url = %q; headers = vec {}; body = blob ""; certificate_version = null })`, p)))
			r := asHTTPResponse(t, asset.decode(t, "http_request", raw).Values[0])
			if n, _ := r.header("Content-Length"); r.status != 200 || n != fmt.Sprint(len(r.body)) || len(r.body) == 0 {
				t.Fatalf("%s: %d, %d bytes, Content-Length %s", p, r.status, len(r.body), n)
			}
			if ct, _ := r.header("Content-Type"); (p == "/index.js") != (ct == "application/javascript") {
				t.Fatalf("%s: Content-Type %s", p, ct)
			}
			if err := verifyAssetResponse(key.DER(), id, r, p, 2); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
		}
	})
}

// held is what a canister's cycles came to: its balance plus what it
// burned (fees, storage). Moving cycles changes it by exactly the amount
// moved; paying fees does not.
func (f *fixture) held(id principal.Principal) cycles.Amount {
	st := f.status(id)
	return st.Balance.SaturatingAdd(st.CyclesBurned)
}

// The cycles wallet dfinity/sdk ships: wallet_balance is the canister's
// balance; wallet_call forwards calls with cycles (its callbacks are Rust
// closures behind table 0, not exported), and what the callee accepts
// moves exactly, the rest comes back; wallet_send pays another wallet's
// wallet_receive; only its controller may spend. Both isolation modes.
func TestCyclesWallet(t *testing.T) {
	t.Parallel()
	wallet := loadSDK(t, "wallet.wasm.gz", "wallet.did")
	forIsolationsWith(t, func(c *Config) { c.StorageChargeInterval = 0 }, func(t *testing.T, f *fixture) {
		a := f.installAs(sdkUser, wallet.wasm, nil)
		b := f.installAs(sdkUser, wallet.wasm, nil)
		counter := f.install(module(t, corpusDir, "counter"), noArgs)
		holder := f.install(module(t, corpusDir, "wallet"), noArgs) // Motoko: deposit accepts half
		f.checkConservation()

		balance := func(id principal.Principal) uint64 {
			q, err := f.node.Query(context.Background(), Message{Canister: id, Method: "wallet_balance", Caller: sdkUser, Arg: wallet.encode(t, "wallet_balance", "()")})
			if err != nil {
				t.Fatalf("wallet_balance: %v", err)
			}
			r := wallet.decode(t, "wallet_balance", q.Data)
			return uint64(sdkField(r.Values[0], "amount").(candid.Nat64))
		}
		if got, want := balance(a), f.status(a).Balance; cycles.New(got) != want {
			t.Fatalf("wallet_balance %d, status %s", got, want)
		}
		// ok decodes a WalletResultCall's Ok.return, failing on Err.
		ok := func(method string, reply []byte) []byte {
			t.Helper()
			r := wallet.decode(t, method, reply)
			v, _ := r.Values[0].(candid.Variant)
			if v.ID != candid.Hash("Ok") {
				t.Fatalf("%s: %s", method, r)
			}
			ret, _ := sdkField(v.Value, "return").(candid.Blob)
			return ret
		}
		call := func(callee principal.Principal, method string, arg []byte, amount uint64) []byte {
			t.Helper()
			return f.updateAs(sdkUser, a, "wallet_call", wallet.encode(t, "wallet_call",
				fmt.Sprintf(`(record { canister = principal %q; method_name = %q; args = blob "%s"; cycles = %d })`, callee, method, blobText(arg), amount)))
		}

		// A call with cycles the counter does not accept: all come back.
		heldA, heldC := f.held(a), f.held(counter)
		eq(t, "counter inc through wallet_call", ok("wallet_call", call(counter, "inc", noArgs, 1_000_000)), natReply(1))
		eq(t, "counter get", f.query(counter, "get", noArgs), natReply(1))
		if f.held(a) != heldA || f.held(counter) != heldC {
			t.Fatalf("refused cycles moved: wallet %s -> %s, counter %s -> %s", heldA, f.held(a), heldC, f.held(counter))
		}

		// deposit accepts half of 1 000 000: exactly 500 000 move.
		heldA, heldH := f.held(a), f.held(holder)
		eq(t, "deposit through wallet_call", ok("wallet_call", call(holder, "deposit", noArgs, 1_000_000)), natReply(500_000))
		if d, _ := heldA.Sub(f.held(a)); d != cycles.New(500_000) {
			t.Fatalf("the wallet gave %s, want 500000", d)
		}
		if d, _ := f.held(holder).Sub(heldH); d != cycles.New(500_000) {
			t.Fatalf("the holder got %s, want 500000", d)
		}
		eq(t, "holder total", f.query(holder, "total", noArgs), natReply(500_000))

		// wallet_call128 through the 128-bit API, a call to a missing
		// method: an Err, and the cycles come back.
		heldA = f.held(a)
		r := wallet.decode(t, "wallet_call128", f.updateAs(sdkUser, a, "wallet_call128", wallet.encode(t, "wallet_call128",
			fmt.Sprintf(`(record { canister = principal %q; method_name = "nope"; args = blob "DIDL\00\00"; cycles = 7_000 })`, counter))))
		if v, _ := r.Values[0].(candid.Variant); v.ID != candid.Hash("Err") {
			t.Fatalf("a call to a missing method: %s", r)
		}
		if f.held(a) != heldA {
			t.Fatalf("a failed call kept cycles: %s -> %s", heldA, f.held(a))
		}

		// wallet_send pays b's wallet_receive, which accepts everything.
		heldA, heldB, balB := f.held(a), f.held(b), balance(b)
		r = wallet.decode(t, "wallet_send", f.updateAs(sdkUser, a, "wallet_send", wallet.encode(t, "wallet_send",
			fmt.Sprintf(`(record { canister = principal %q; amount = 2_000_000 })`, b))))
		if v, _ := r.Values[0].(candid.Variant); v.ID != candid.Hash("Ok") {
			t.Fatalf("wallet_send: %s", r)
		}
		if d, _ := heldA.Sub(f.held(a)); d != cycles.New(2_000_000) {
			t.Fatalf("wallet_send gave %s, want 2000000", d)
		}
		if d, _ := f.held(b).Sub(heldB); d != cycles.New(2_000_000) {
			t.Fatalf("wallet_receive got %s, want 2000000", d)
		}
		// b paid the fee of its wallet_receive from what it held.
		if got := balance(b); got <= balB || got > balB+2_000_000 {
			t.Fatalf("b's wallet_balance %d after receiving 2000000 on %d", got, balB)
		}

		// Only the wallet's controller or custodians spend its cycles.
		heldA = f.held(a)
		_, err := f.node.Update(context.Background(), Message{Canister: a, Method: "wallet_send", Caller: principal.Anonymous(),
			Arg: wallet.encode(t, "wallet_send", fmt.Sprintf(`(record { canister = principal %q; amount = 1_000 })`, b))})
		if r := f.reject(err); r.Code != CanisterReject || !strings.Contains(r.Message, "Only a controller or custodian") {
			t.Fatalf("anonymous wallet_send: %v", r)
		}
		if d, _ := heldA.Sub(f.held(a)); !d.IsZero() {
			t.Fatalf("a refused wallet_send moved %s", d)
		}
		f.checkConservation()
	})
}
