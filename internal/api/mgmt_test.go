package api

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/candid"
)

// mgmtArgs encodes Candid text typed by the management canister's interface.
func mgmtArgs(t testing.TB, method, text string) []byte {
	t.Helper()
	svc, err := host.ManagementInterface()
	if err != nil {
		t.Fatal(err)
	}
	m, ok := svc.Method(method)
	if !ok {
		t.Fatalf("no management method %s", method)
	}
	a, err := candid.ParseArgsTyped(text, m.Args())
	if err != nil {
		t.Fatal(err)
	}
	b, err := candid.EncodeArgs(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestManagementOverHTTP: plain JSON clients install with environment
// variables, and call aaaaa-aa by POST /api/v1/call (and /query) like any
// canister; canister-only methods come back as the IC's reject.
func TestManagementOverHTTP(t *testing.T) {
	s := serve(t)
	post := func(path string, body any) (int, []byte) {
		code, _, b := rawRequest(t, nil, "POST", s.base+path, body, s.token)
		return code, b
	}
	env := []map[string]string{{"name": "B", "value": "2"}, {"name": "A", "value": "1"}}
	code, b := post("/api/v1/install", map[string]any{"wasm": corpusWasm(t, "kv.wasm"), "arg": noArgs, "environment_variables": env})
	var inst InstallResponse
	if code != 200 || json.Unmarshal(b, &inst) != nil {
		t.Fatalf("install: %d %s", code, b)
	}
	id := inst.ID
	var st statusBody
	code, _, b = rawRequest(t, nil, "GET", s.base+"/api/v1/canisters/"+id, nil, s.token)
	if code != 200 || json.Unmarshal(b, &st) != nil {
		t.Fatalf("status: %d %s", code, b)
	}
	if want := []store.EnvVar{{Name: "A", Value: "1"}, {Name: "B", Value: "2"}}; fmt.Sprint(st.EnvVars) != fmt.Sprint(want) {
		t.Fatalf("environment_variables %+v, want %+v", st.EnvVars, want)
	}

	statusArg := mgmtArgs(t, "canister_status", fmt.Sprintf(`(record { canister_id = principal "%s" })`, id))
	for _, path := range []string{"/api/v1/call", "/api/v1/query"} {
		code, b = post(path, map[string]any{"id": "aaaaa-aa", "method": "canister_status", "arg": statusArg})
		var r CallResponse
		if code != 200 || json.Unmarshal(b, &r) != nil {
			t.Fatalf("%s canister_status: %d %s", path, code, b)
		}
		a, err := candid.Decode(r.Reply)
		if err != nil {
			t.Fatal(err)
		}
		rec, _ := a.Values[0].(candid.Record)
		if _, ok := rec.GetNamed("query_stats"); !ok || !strings.Contains(a.String(), `"A"`) {
			t.Fatalf("%s canister_status reply: %s", path, a.String())
		}
	}
	code, b = post("/api/v1/call", map[string]any{"id": "aaaaa-aa", "method": "update_settings", "arg": mgmtArgs(t, "update_settings",
		fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { environment_variables = opt vec {} } })`, id))})
	if code != 200 {
		t.Fatalf("update_settings: %d %s", code, b)
	}
	code, _, b = rawRequest(t, nil, "GET", s.base+"/api/v1/canisters/"+id, nil, s.token)
	if code != 200 || json.Unmarshal(b, &st) != nil || len(st.EnvVars) != 0 {
		t.Fatalf("status after clearing: %d %s", code, b)
	}

	code, b = post("/api/v1/call", map[string]any{"id": "aaaaa-aa", "method": "raw_rand", "arg": noArgs})
	var eb errorBody
	if code != 422 || json.Unmarshal(b, &eb) != nil || eb.RejectCode != 4 || eb.Error != "Only canisters can call ic00 method raw_rand" {
		t.Fatalf("raw_rand by ingress: %d %s", code, b)
	}
	// Environment variables beyond the IC's limits are a client error.
	long := []map[string]string{{"name": strings.Repeat("n", 129), "value": ""}}
	if code, b = post("/api/v1/install", map[string]any{"wasm": corpusWasm(t, "kv.wasm"), "arg": noArgs, "environment_variables": long}); code != 400 {
		t.Fatalf("install with a 129-byte name: %d %s", code, b)
	}
}

// The chunk store by POST /api/v1/call to aaaaa-aa: upload, list, install
// from chunks, the wrong hash refused as the IC refuses it (a reject, 422).
func TestChunkedInstallOverHTTP(t *testing.T) {
	s := serve(t)
	post := func(method string, arg []byte) (int, []byte) {
		code, _, b := rawRequest(t, nil, "POST", s.base+"/api/v1/call", map[string]any{"id": "aaaaa-aa", "method": method, "arg": arg}, s.token)
		return code, b
	}
	code, b := post("provisional_create_canister_with_cycles", mgmtArgs(t, "provisional_create_canister_with_cycles", "(record { })"))
	var r CallResponse
	if code != 200 || json.Unmarshal(b, &r) != nil {
		t.Fatalf("create: %d %s", code, b)
	}
	a, err := candid.Decode(r.Reply)
	if err != nil {
		t.Fatal(err)
	}
	idv, _ := a.Values[0].(candid.Record).GetNamed("canister_id")
	id := idv.(candid.Principal).Principal.String()
	wasm := counterWasm(t)
	var hashes []string
	for i := 0; i < len(wasm); i += 100 << 10 {
		chunk := wasm[i:min(i+100<<10, len(wasm))]
		code, b := post("upload_chunk", mgmtArgs(t, "upload_chunk", fmt.Sprintf(`(record { canister_id = principal "%s"; chunk = blob "%s" })`, id, blobText(chunk))))
		if code != 200 {
			t.Fatalf("upload_chunk: %d %s", code, b)
		}
		sum := sha256.Sum256(chunk)
		hashes = append(hashes, fmt.Sprintf(`record { hash = blob "%s" }`, blobText(sum[:])))
	}
	sum := sha256.Sum256(wasm)
	install := func(moduleHash []byte) (int, []byte) {
		return post("install_chunked_code", mgmtArgs(t, "install_chunked_code", fmt.Sprintf(
			`(record { mode = variant { install }; target_canister = principal "%s"; chunk_hashes_list = vec { %s }; wasm_module_hash = blob "%s"; arg = blob "" })`,
			id, strings.Join(hashes, "; "), blobText(moduleHash))))
	}
	bad := append([]byte{}, sum[:]...)
	bad[31] ^= 0x80
	var eb errorBody
	if code, b := install(bad); code != 422 || json.Unmarshal(b, &eb) != nil || eb.RejectCode != 5 || !strings.HasPrefix(eb.Error, "Error from Wasm chunk store: Wasm module hash [") {
		t.Fatalf("install_chunked_code with a wrong hash: %d %s", code, b)
	}
	if code, b := install(sum[:]); code != 200 {
		t.Fatalf("install_chunked_code: %d %s", code, b)
	}
	rr, err := s.client.Call(context.Background(), CallRequest{ID: id, Method: "inc", Arg: noArgs})
	if err != nil || string(rr.Reply) != string(natOne) {
		t.Fatalf("inc: %v %v", rr, err)
	}
}

func blobText(b []byte) string {
	var sb strings.Builder
	for _, x := range b {
		fmt.Fprintf(&sb, "\\%02x", x)
	}
	return sb.String()
}
