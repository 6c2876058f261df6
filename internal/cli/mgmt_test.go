package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// watFile compiles WAT into a .wasm file in a test directory.
func watFile(t *testing.T, src string) string {
	t.Helper()
	b, err := wasmtime.Wat2Wasm(src)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "c.wasm")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// emptyArgWat traps in canister_init unless its argument is empty; its
// query get replies with the value of the environment variable named by
// its (raw) argument, or traps.
const emptyArgWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "env_var_value_size" (func $value_size (param i32 i32) (result i32)))
  (import "ic0" "env_var_value_copy" (func $value_copy (param i32 i32 i32 i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory 1)
  (data (i32.const 0) "argument is not empty")
  (func (export "canister_init")
    (if (call $arg_size) (then (call $trap (i32.const 0) (i32.const 21)))))
  (func (export "canister_query get")
    (local $len i32) (local $vlen i32)
    (local.set $len (call $arg_size))
    (call $arg_copy (i32.const 1024) (i32.const 0) (local.get $len))
    (local.set $vlen (call $value_size (i32.const 1024) (local.get $len)))
    (call $value_copy (i32.const 1024) (local.get $len) (i32.const 2048) (i32.const 0) (local.get $vlen))
    (call $append (i32.const 2048) (local.get $vlen))
    (call $reply))
)`

// install --type raw --arg "" sends no bytes at all.
func TestInstallRawEmptyArg(t *testing.T) {
	home := t.TempDir()
	wasm := watFile(t, emptyArgWat)
	must(t, cordon(t, home, "install", "--type", "raw", "--arg", "", wasm))
	r := cordon(t, home, "install", "--type", "raw", "--arg", "4449444c0000", wasm)
	if r.code == 0 || !strings.Contains(r.stderr, "argument is not empty") {
		t.Fatalf("DIDL\\0\\0 as init argument: %+v", r)
	}
}

func getEnv(t *testing.T, home, id, name string) run {
	t.Helper()
	return cordon(t, home, "query", "--type", "raw", "--output", "raw", id, "get", hex.EncodeToString([]byte(name)))
}

// testManagementCLI drives the management canister through cordon call and
// cordon query, typed by its interface, and environment variables through
// install --env.
func testManagementCLI(t *testing.T, home string) {
	wasm := watFile(t, emptyArgWat)
	id := must(t, cordon(t, home, "install", "--type", "raw", "--env", "GREETING=hello", "--env", "URL=https://x.org/?a=b", wasm))
	if got := must(t, getEnv(t, home, id, "URL")); got != hex.EncodeToString([]byte("https://x.org/?a=b")) {
		t.Fatalf("URL: %s", got)
	}
	idArg := fmt.Sprintf(`(record { canister_id = principal "%s" })`, id)
	st := must(t, cordon(t, home, "call", "aaaaa-aa", "canister_status", idArg))
	for _, want := range []string{`name = "GREETING"`, `value = "hello"`, "query_stats = record", "num_calls_total = 1 : nat",
		"memory_metrics = record", "version = 1 : nat64", "status = variant { running }", "log_visibility = variant { controllers }"} {
		if !strings.Contains(st, want) {
			t.Errorf("canister_status lacks %s:\n%s", want, st)
		}
	}
	if got := must(t, cordon(t, home, "query", "aaaaa-aa", "canister_status", idArg)); !strings.Contains(got, "query_stats") {
		t.Errorf("canister_status as a query: %s", got)
	}
	must(t, cordon(t, home, "call", "aaaaa-aa", "update_settings", fmt.Sprintf(
		`(record { canister_id = principal "%s"; settings = record { environment_variables = opt vec { record { name = "GREETING"; value = "bye" } } } })`, id)))
	if got := must(t, getEnv(t, home, id, "GREETING")); got != hex.EncodeToString([]byte("bye")) {
		t.Fatalf("GREETING after update_settings: %s", got)
	}
	if r := getEnv(t, home, id, "URL"); r.code != ExitRejected {
		t.Fatalf("URL after update_settings replaced the variables: %+v", r)
	}
	if st := must(t, cordon(t, home, "status", id, "--output", "json")); !strings.Contains(st, `"version": 2`) || !strings.Contains(st, `"name": "GREETING"`) {
		t.Errorf("status: %s", st)
	}
	if st := must(t, cordon(t, home, "status", id)); !strings.Contains(st, "GREETING=bye") || !strings.Contains(st, "3 calls") {
		t.Errorf("status text: %s", st)
	}
	// An upgrade with --env replaces them before post_upgrade.
	must(t, cordon(t, home, "install", "--id", id, "--mode", "upgrade", "--type", "raw", "--env", "AFTER=upgrade", wasm))
	if got := must(t, getEnv(t, home, id, "AFTER")); got != hex.EncodeToString([]byte("upgrade")) {
		t.Fatalf("AFTER: %s", got)
	}
	r := cordon(t, home, "call", "aaaaa-aa", "raw_rand")
	if r.code != ExitRejected || !strings.Contains(r.stderr, "Only canisters can call ic00 method raw_rand") || !strings.Contains(r.stderr, "code 4") {
		t.Fatalf("raw_rand: %+v", r)
	}
	r = cordon(t, home, "call", "--caller", "2vxsx-fae", "aaaaa-aa", "stop_canister", idArg)
	must(t, r)
	if r := getEnv(t, home, id, "AFTER"); r.code != ExitRejected || !strings.Contains(r.stderr, "stopped") {
		t.Fatalf("query to a canister stopped by ingress: %+v", r)
	}
	must(t, cordon(t, home, "call", "aaaaa-aa", "start_canister", idArg))
	must(t, getEnv(t, home, id, "AFTER"))
	if r := cordon(t, home, "install", "--env", "NOEQUALS", wasm); r.code != ExitUsage {
		t.Fatalf("--env without =: %+v", r)
	}
	must(t, cordon(t, home, "call", "aaaaa-aa", "stop_canister", idArg))
	must(t, cordon(t, home, "call", "aaaaa-aa", "delete_canister", idArg))
	if r := cordon(t, home, "status", id); r.code != ExitRejected {
		t.Fatalf("status after delete_canister: %+v", r)
	}
}

func TestManagementThroughCLI(t *testing.T) { testManagementCLI(t, t.TempDir()) }

// The same through a running `cordon serve` (the CLI speaks HTTP to it).
func TestManagementThroughServe(t *testing.T) {
	home := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"--home", home, "serve", "--listen", "127.0.0.1:0"}, strings.NewReader(""), io.Discard, io.Discard)
	}()
	waitUntil(t, "serve.json", func() bool { _, err := os.Stat(filepath.Join(home, "serve.json")); return err == nil })
	testManagementCLI(t, home)
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve: exit %d", code)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("serve did not stop")
	}
}

// A chunked install with nothing but `cordon call aaaaa-aa`: create a
// canister, upload counter.wasm in three chunks, list them, install from
// them, call the counter, clear the store.
func TestChunkedInstallThroughCLI(t *testing.T) {
	home := t.TempDir()
	out := must(t, cordon(t, home, "call", "aaaaa-aa", "provisional_create_canister_with_cycles", "(record { })"))
	id := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(strings.ReplaceAll(out, "\n", " ")), `(record { canister_id = principal "`), `" })`)
	if !strings.HasSuffix(id, "-cai") {
		t.Fatalf("provisional_create_canister_with_cycles: %q", out)
	}
	wasm, err := os.ReadFile(filepath.Join(corpus, "counter.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	blob := func(b []byte) string {
		var sb strings.Builder
		for _, x := range b {
			fmt.Fprintf(&sb, "\\%02x", x)
		}
		return sb.String()
	}
	size := (len(wasm) + 2) / 3
	var hashes []string
	for i := 0; i < len(wasm); i += size {
		chunk := wasm[i:min(i+size, len(wasm))]
		out := must(t, cordon(t, home, "call", "aaaaa-aa", "upload_chunk", fmt.Sprintf(`(record { canister_id = principal %q; chunk = blob "%s" })`, id, blob(chunk))))
		sum := sha256.Sum256(chunk)
		if !strings.Contains(out, blob(sum[:])) {
			t.Fatalf("upload_chunk printed %q, the chunk's SHA-256 is %x", out, sum)
		}
		hashes = append(hashes, fmt.Sprintf(`record { hash = blob "%s" }`, blob(sum[:])))
	}
	if out := must(t, cordon(t, home, "call", "aaaaa-aa", "stored_chunks", fmt.Sprintf(`(record { canister_id = principal %q })`, id))); strings.Count(out, "hash =") != 3 {
		t.Fatalf("stored_chunks: %q", out)
	}
	sum := sha256.Sum256(wasm)
	must(t, cordon(t, home, "call", "aaaaa-aa", "install_chunked_code", fmt.Sprintf(
		`(record { mode = variant { install }; target_canister = principal %q; chunk_hashes_list = vec { %s }; wasm_module_hash = blob "%s"; arg = blob "" })`,
		id, strings.Join(hashes, "; "), blob(sum[:]))))
	if out := must(t, cordon(t, home, "call", id, "inc")); out != "(1 : nat)" {
		t.Fatalf("inc after install_chunked_code: %q", out)
	}
	if out := must(t, cordon(t, home, "status", id, "--output", "json")); !strings.Contains(out, `"wasm_chunk_store_bytes": 3145728`) || !strings.Contains(out, hex.EncodeToString(sum[:])) {
		t.Fatalf("status: %s", out)
	}
	must(t, cordon(t, home, "call", "aaaaa-aa", "clear_chunk_store", fmt.Sprintf(`(record { canister_id = principal %q })`, id)))
	if out := must(t, cordon(t, home, "call", "aaaaa-aa", "stored_chunks", fmt.Sprintf(`(record { canister_id = principal %q })`, id))); strings.Contains(out, "hash") {
		t.Fatalf("stored_chunks after clear_chunk_store: %q", out)
	}
}
