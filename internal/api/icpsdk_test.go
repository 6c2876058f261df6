package api

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// icpSDKScript drives cordon serve with @icp-sdk/core, the successor of
// @dfinity/agent, as a deployment tool would: it creates a canister, uploads
// the counter's module in chunks and installs it with install_chunked_code,
// calls it (update, query with the node's signature verified, a reject)
// with an Ed25519 identity and anonymously, reads canister_status by update
// and by query and the certified module hash and controllers, installs a
// gzipped module with install_code, changes settings, tops up, stops and
// deletes. It prints one JSON line of what it saw.
//
//go:embed testdata/icpsdk.mjs
var icpSDKScript string

// The package's version is pinned: the test is about this client.
const icpSDKVersion = "6.1.0"

func TestICPSDKCore(t *testing.T) {
	node, npm := nodeTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := npmInstall(ctx, t, npm, "@icp-sdk/core@"+icpSDKVersion)
	s := serve(t)
	wasm, err := filepath.Abs(wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	// A canister that prints in canister_init, for fetch_canister_logs.
	printer, err := wasmtime.Wat2Wasm(`(module (import "ic0" "debug_print" (func $print (param i32 i32))) (memory 1)
  (data (i32.const 0) "hello from init") (func (export "canister_init") (call $print (i32.const 0) (i32.const 15))))`)
	if err != nil {
		t.Fatal(err)
	}
	printerPath := filepath.Join(t.TempDir(), "printer.wasm")
	if err := os.WriteFile(printerPath, printer, 0o644); err != nil {
		t.Fatal(err)
	}
	line := runNode(ctx, t, node, dir, "icpsdk.mjs", icpSDKScript, s.base, s.token, wasm, printerPath)
	var got struct {
		Canister, WrongHash, Inc1, Inc2, Get, Rejected, AnonInc, AnonGet, AnonUpload           string
		StatusModuleHash, StatusChunkStore, StatusControllers, QueryModuleHash, CertModuleHash string
		CertControllers, Me, GzInc, BFreezing, BCycles, BStopped, Deleted, Logs                string
		ChunkHashesOk                                                                          bool
		Stored, StoredAfterClear                                                               int
	}
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatalf("script output %q: %v", line, err)
	}
	t.Logf("@icp-sdk/core saw %+v", got)
	sum := sha256.Sum256(counterWasm(t))
	moduleHash := hex.EncodeToString(sum[:])
	checks := []struct {
		what string
		ok   bool
	}{
		{"upload_chunk returns each chunk's SHA-256", got.ChunkHashesOk},
		{"stored_chunks lists the 3 chunks", got.Stored == 3},
		{"a wrong wasm_module_hash is refused with the IC's message", strings.Contains(got.WrongHash, "Error from Wasm chunk store: Wasm module hash [") && strings.Contains(got.WrongHash, "does not match given hash WasmHash([")},
		{"the chunked counter counts", got.Inc1 == "1" && got.Inc2 == "2" && got.Get == "2"},
		{"a missing method is rejected", strings.Contains(got.Rejected, "nope")},
		{"anonymous calls", got.AnonInc == "3" && got.AnonGet == "3"},
		{"anonymous cannot upload into the store", strings.Contains(got.AnonUpload, "Only controllers of canister "+got.Canister)},
		{"canister_status (update) module hash", got.StatusModuleHash == moduleHash},
		{"canister_status counts 3 chunks of 1 MiB", got.StatusChunkStore == fmt.Sprint(3<<20)},
		{"the creator controls the canister", got.StatusControllers == got.Me && got.CertControllers == got.Me},
		{"canister_status (query) module hash", got.QueryModuleHash == moduleHash},
		{"the certified module hash", got.CertModuleHash == moduleHash},
		{"fetch_canister_logs (query) has what canister_init printed", got.Logs == "hello from init"},
		{"install_code with a gzipped module", got.GzInc == "1"},
		{"update_settings", got.BFreezing == "2000"},
		{"provisional top-up", got.BCycles != "" && got.BCycles != "0"},
		{"stop_canister", got.BStopped == "stopped"},
		{"delete_canister", strings.Contains(got.Deleted, "not found")},
		{"clear_chunk_store", got.StoredAfterClear == 0},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s: not so (%+v)", c.what, got)
		}
	}
	// The node agrees with what the client saw.
	st, err := s.client.Status(ctx, got.Canister)
	if err != nil {
		t.Fatal(err)
	}
	if st.ModuleHash != moduleHash || st.WasmChunkStoreBytes != 0 {
		t.Fatalf("node: module %s, chunk store %d bytes", st.ModuleHash, st.WasmChunkStoreBytes)
	}
	r, err := s.client.Call(ctx, CallRequest{ID: got.Canister, Method: "get", Arg: noArgs, Query: true})
	if err != nil || string(r.Reply) != "DIDL\x00\x01\x7d\x03" {
		t.Fatalf("get through the JSON API: %v %v", r, err)
	}
}
