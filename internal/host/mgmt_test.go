package host

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// envWat reads its environment variables (list, get), reports
// ic0.canister_version (version), and calls the management canister's
// canister_status with its argument as the call's argument (status),
// replying with the response's bytes.
const envWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reject_code" (func $reject_code (result i32)))
  (import "ic0" "env_var_count" (func $count (result i32)))
  (import "ic0" "env_var_name_size" (func $name_size (param i32) (result i32)))
  (import "ic0" "env_var_name_copy" (func $name_copy (param i32 i32 i32 i32)))
  (import "ic0" "env_var_name_exists" (func $exists (param i32 i32) (result i32)))
  (import "ic0" "env_var_value_size" (func $value_size (param i32 i32) (result i32)))
  (import "ic0" "env_var_value_copy" (func $value_copy (param i32 i32 i32 i32 i32)))
  (import "ic0" "canister_version" (func $version (result i64)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $call_data (param i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory (export "memory") 1)
  (table (export "table") 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (data (i32.const 16) "=;<none>canister_statusrejected:")
  (func $list
    (local $i i32) (local $n i32) (local $len i32) (local $vlen i32)
    (local.set $n (call $count))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $len (call $name_size (local.get $i)))
      (call $name_copy (local.get $i) (i32.const 1024) (i32.const 0) (local.get $len))
      (call $append (i32.const 1024) (local.get $len))
      (call $append (i32.const 16) (i32.const 1))
      (local.set $vlen (call $value_size (i32.const 1024) (local.get $len)))
      (call $value_copy (i32.const 1024) (local.get $len) (i32.const 2048) (i32.const 0) (local.get $vlen))
      (call $append (i32.const 2048) (local.get $vlen))
      (call $append (i32.const 17) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (call $reply))
  (func $get
    (local $len i32) (local $vlen i32)
    (local.set $len (call $arg_size))
    (call $arg_copy (i32.const 1024) (i32.const 0) (local.get $len))
    (if (call $exists (i32.const 1024) (local.get $len))
      (then
        (local.set $vlen (call $value_size (i32.const 1024) (local.get $len)))
        (call $value_copy (i32.const 1024) (local.get $len) (i32.const 2048) (i32.const 0) (local.get $vlen))
        (call $append (i32.const 2048) (local.get $vlen)))
      (else (call $append (i32.const 18) (i32.const 6))))
    (call $reply))
  (func $ver
    (i64.store (i32.const 4096) (call $version))
    (call $append (i32.const 4096) (i32.const 8))
    (call $reply))
  (func $status
    (local $n i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 8192) (i32.const 0) (local.get $n))
    (call $call_new (i32.const 0) (i32.const 0) (i32.const 24) (i32.const 15)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (call $call_data (i32.const 8192) (local.get $n))
    (drop (call $call_perform)))
  (func $on_reply (param i32)
    (local $n i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 16384) (i32.const 0) (local.get $n))
    (call $append (i32.const 16384) (local.get $n))
    (call $reply))
  (func $on_reject (param i32)
    (i32.store8 (i32.const 3000) (i32.add (i32.const 48) (call $reject_code)))
    (call $append (i32.const 39) (i32.const 9))
    (call $append (i32.const 3000) (i32.const 1))
    (call $reply))
  (func $boom (call $trap (i32.const 18) (i32.const 6)))
  (export "canister_query list" (func $list))
  (export "canister_update list_update" (func $list))
  (export "canister_query get" (func $get))
  (export "canister_query version" (func $ver))
  (export "canister_update version_update" (func $ver))
  (export "canister_update status" (func $status))
  (export "canister_update boom" (func $boom))
)`

// statusResultDid is canister_status_result as the IC interface
// specification's ic.did declares it, written out here on its own so that
// the test checks the host's reply against the spec, not against itself.
const statusResultDid = `(record {
  status : variant { running; stopping; stopped };
  ready_for_migration : bool;
  version : nat64;
  settings : record {
    controllers : vec principal;
    compute_allocation : nat;
    memory_allocation : nat;
    freezing_threshold : nat;
    reserved_cycles_limit : nat;
    log_visibility : variant { controllers; public; allowed_viewers : vec principal };
    wasm_memory_limit : nat;
    wasm_memory_threshold : nat;
    environment_variables : vec record { name : text; value : text };
  };
  module_hash : opt blob;
  memory_size : nat;
  memory_metrics : record {
    wasm_memory_size : nat;
    stable_memory_size : nat;
    global_memory_size : nat;
    wasm_binary_size : nat;
    custom_sections_size : nat;
    canister_history_size : nat;
    wasm_chunk_store_size : nat;
    snapshots_size : nat;
  };
  cycles : nat;
  reserved_cycles : nat;
  idle_cycles_burned_per_day : nat;
  query_stats : record {
    num_calls_total : nat;
    num_instructions_total : nat;
    request_payload_bytes_total : nat;
    response_payload_bytes_total : nat;
  };
})`

func (f *fixture) ingress(caller principal.Principal, method, arg string) ([]byte, error) {
	f.t.Helper()
	r, err := f.node.Update(context.Background(), Message{Canister: principal.Management(), Method: method, Arg: encodeTyped(f.t, method, arg), Caller: caller})
	if err != nil {
		return nil, err
	}
	return r.Data, nil
}

// managementMethod is the management interface's method name, if it has
// one.
func managementMethod(t testing.TB, name string) (candid.Method, bool) {
	t.Helper()
	svc, err := ManagementInterface()
	if err != nil {
		t.Fatal(err)
	}
	return svc.Method(name)
}

// encodeTyped encodes Candid text typed by the management interface, as
// `cordon call aaaaa-aa` does.
func encodeTyped(t testing.TB, method, text string) []byte {
	t.Helper()
	m, ok := managementMethod(t, method)
	if !ok {
		return encodeText(t, text)
	}
	a, err := candid.ParseArgsTyped(text, m.Args())
	if err != nil {
		t.Fatalf("parse %s: %v", text, err)
	}
	b, err := candid.EncodeArgs(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func field(t *testing.T, r candid.Record, path ...string) candid.Value {
	t.Helper()
	var v candid.Value = r
	for _, name := range path {
		rec, ok := v.(candid.Record)
		if !ok {
			t.Fatalf("%v: not a record: %v", path, v)
		}
		if v, ok = rec.GetNamed(name); !ok {
			t.Fatalf("%v: no field %s", path, name)
		}
	}
	return v
}

func natOf(t *testing.T, v candid.Value) uint64 {
	t.Helper()
	n, ok := v.(candid.Nat)
	if !ok || n.Int == nil || !n.Int.IsUint64() {
		t.Fatalf("not a small nat: %#v", v)
	}
	return n.Int.Uint64()
}

// decodeStatus decodes a canister_status reply with the spec's type.
func decodeStatus(t *testing.T, b []byte) candid.Record {
	t.Helper()
	types, err := candid.ParseTypes(statusResultDid)
	if err != nil {
		t.Fatal(err)
	}
	a, err := candid.DecodeAs(b, types)
	if err != nil {
		t.Fatalf("canister_status reply does not decode with the spec's type: %v\n%x", err, b)
	}
	// Every field of the spec's record is in the reply itself, not filled
	// in by subtyping: decoded without expected types, it has them all.
	raw, err := candid.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	rr, _ := raw.Values[0].(candid.Record)
	for _, name := range []string{"status", "ready_for_migration", "version", "settings", "module_hash", "memory_size",
		"memory_metrics", "cycles", "reserved_cycles", "idle_cycles_burned_per_day", "query_stats"} {
		if _, ok := rr.Get(candid.Hash(name)); !ok {
			t.Errorf("reply lacks %s", name)
		}
	}
	return a.Values[0].(candid.Record)
}

func idArg(id principal.Principal) string {
	return fmt.Sprintf(`(record { canister_id = principal "%s" })`, id)
}

// A canister asks the management canister for its own status; the reply
// decodes with the spec's canister_status_result and every field says what
// is true: version, settings with environment variables and log
// visibility, memory metrics, and query stats counted from real queries.
func TestCanisterStatusHasEveryField(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wasm := mustWat(t, envWat)
	id := f.install(wasm, nil)
	if _, err := f.ingress(user, "update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record {
		environment_variables = opt vec { record { name = "B"; value = "2" }; record { name = "A"; value = "1" } };
		log_visibility = opt variant { public }; wasm_memory_threshold = opt 4096 } })`, id)); err != nil {
		t.Fatalf("update_settings: %v", err)
	}
	// Queries of known sizes: three calls, 1 + 1 + 3 bytes in, replies out.
	var reqBytes, respBytes uint64
	for _, name := range []string{"A", "B", "nope"} {
		r := f.query(id, "get", []byte(name))
		reqBytes += uint64(len(name))
		respBytes += uint64(len(r))
	}
	// The query method run as an update is not a query (and is a message).
	f.update(id, "list_update", nil)

	b := f.update(id, "status", encodeTyped(t, "canister_status", idArg(id)))
	if strings.HasPrefix(string(b), "rejected:") {
		t.Fatalf("canister_status: %s", b)
	}
	st := decodeStatus(t, b)
	if v := field(t, st, "status").(candid.Variant); v.ID != candid.Hash("running") {
		t.Errorf("status %v", v)
	}
	// install 1, update_settings 2, list_update 3, the status call's
	// execution 4 (committed before its call leaves); its callback is
	// still to come.
	if v := field(t, st, "version").(candid.Nat64); v != 4 {
		t.Errorf("version %d, want 4", v)
	}
	env := field(t, st, "settings", "environment_variables").(candid.Vec)
	if len(env) != 2 {
		t.Fatalf("environment_variables %v", env)
	}
	for i, want := range [][2]string{{"A", "1"}, {"B", "2"}} {
		e := env[i].(candid.Record)
		if field(t, e, "name").(candid.Text) != candid.Text(want[0]) || field(t, e, "value").(candid.Text) != candid.Text(want[1]) {
			t.Errorf("environment variable %d: %v", i, e)
		}
	}
	if v := field(t, st, "settings", "log_visibility").(candid.Variant); v.ID != candid.Hash("public") {
		t.Errorf("log_visibility %v", v)
	}
	if n := natOf(t, field(t, st, "settings", "wasm_memory_threshold")); n != 4096 {
		t.Errorf("wasm_memory_threshold %d", n)
	}
	ctrls := field(t, st, "settings", "controllers").(candid.Vec)
	if len(ctrls) != 1 || ctrls[0].(candid.Principal).Principal != user {
		t.Errorf("controllers %v", ctrls)
	}
	if n := natOf(t, field(t, st, "memory_metrics", "wasm_binary_size")); n != uint64(len(wasm)) {
		t.Errorf("wasm_binary_size %d, module is %d bytes", n, len(wasm))
	}
	if n := natOf(t, field(t, st, "memory_metrics", "wasm_memory_size")); n != 65536 {
		t.Errorf("wasm_memory_size %d", n)
	}
	if n := natOf(t, field(t, st, "memory_size")); n < uint64(len(wasm))+65536 {
		t.Errorf("memory_size %d", n)
	}
	qs := []uint64{natOf(t, field(t, st, "query_stats", "num_calls_total")), natOf(t, field(t, st, "query_stats", "num_instructions_total")),
		natOf(t, field(t, st, "query_stats", "request_payload_bytes_total")), natOf(t, field(t, st, "query_stats", "response_payload_bytes_total"))}
	if qs[0] != 3 || qs[1] == 0 || qs[2] != reqBytes || qs[3] != respBytes {
		t.Errorf("query_stats %v, want 3 calls, some instructions, %d bytes in, %d out", qs, reqBytes, respBytes)
	}
	if _, ok := field(t, st, "module_hash").(candid.Opt); !ok {
		t.Error("module_hash is not an opt")
	}

	// The counts survive a restart, and canister_status by ingress (update
	// and query) reports the same record.
	f.restart()
	for _, query := range []bool{false, true} {
		msg := Message{Canister: principal.Management(), Method: "canister_status", Arg: encodeTyped(t, "canister_status", idArg(id)), Caller: user}
		var r *Reply
		var err error
		if query {
			r, err = f.node.Query(context.Background(), msg)
		} else {
			r, err = f.node.Update(context.Background(), msg)
		}
		if err != nil {
			t.Fatalf("canister_status by ingress (query %v): %v", query, err)
		}
		st := decodeStatus(t, r.Data)
		if n := natOf(t, field(t, st, "query_stats", "num_calls_total")); n != 3 {
			t.Errorf("num_calls_total after restart %d", n)
		}
		if v := field(t, st, "version").(candid.Nat64); v != 5 { // and the callback
			t.Errorf("version after restart %d, want 5", v)
		}
	}
}

// canister_version grows with every successful update-like execution (and
// settings and code changes), not with queries or traps, and is persisted.
func TestCanisterVersionGrows(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newModeFixture(t, mode)
			id := f.install(mustWat(t, envWat), nil)
			version := func() uint64 {
				t.Helper()
				v := binary.LittleEndian.Uint64(f.query(id, "version", nil))
				st, err := f.node.Status(context.Background(), id)
				if err != nil {
					t.Fatal(err)
				}
				if st.Version != v {
					t.Fatalf("ic0.canister_version %d, status says %d", v, st.Version)
				}
				return v
			}
			if v := version(); v != 1 {
				t.Fatalf("after install: %d", v)
			}
			// The update sees the version before its own execution.
			if v := binary.LittleEndian.Uint64(f.update(id, "version_update", nil)); v != 1 {
				t.Fatalf("version_update saw %d", v)
			}
			if v := version(); v != 2 {
				t.Fatalf("after an update: %d", v)
			}
			f.query(id, "list", nil)
			if _, err := f.node.Update(context.Background(), Message{Canister: id, Method: "boom", Caller: user}); err == nil {
				t.Fatal("boom did not trap")
			}
			if v := version(); v != 2 {
				t.Fatalf("a query and a trap changed the version: %d", v)
			}
			if _, err := f.ingress(user, "update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { freezing_threshold = opt 100 } })`, id)); err != nil {
				t.Fatal(err)
			}
			if v := version(); v != 3 {
				t.Fatalf("after update_settings: %d", v)
			}
			f.restart()
			if v := version(); v != 3 {
				t.Fatalf("after restart: %d", v)
			}
			f.upgrade(id, mustWat(t, envWat))
			if v := version(); v != 4 {
				t.Fatalf("after upgrade: %d", v)
			}
		})
	}
}

func newModeFixture(t *testing.T, mode string) *fixture {
	return openFixture(t, testConfig(t, mode))
}

// Environment variables set through the management canister reach the
// canister's ic0.env_var_* in both isolation modes (in the sandbox, through
// the boundary), sorted by name; the IC's limits are enforced and a refused
// change leaves the variables as they were.
func TestEnvironmentVariables(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newModeFixture(t, mode)
			id := f.install(mustWat(t, envWat), nil)
			eq(t, "none", f.query(id, "list", nil), nil)
			set := func(caller principal.Principal, vars string) error {
				_, err := f.ingress(caller, "update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { environment_variables = opt vec { %s } } })`, id, vars))
				return err
			}
			if err := set(user, `record { name = "ZED"; value = "last" }; record { name = "API"; value = "https://example.org/x=y" }`); err != nil {
				t.Fatal(err)
			}
			want := []byte("API=https://example.org/x=y;ZED=last;")
			eq(t, "list", f.query(id, "list", nil), want)
			eq(t, "list as update", f.update(id, "list_update", nil), want)
			eq(t, "get", f.query(id, "get", []byte("ZED")), []byte("last"))
			eq(t, "get missing", f.query(id, "get", []byte("zed")), []byte("<none>"))

			many := make([]string, 21)
			for i := range many {
				many[i] = fmt.Sprintf(`record { name = "V%d"; value = "x" }`, i)
			}
			other := principal.SelfAuthenticating([]byte("not a controller"))
			for what, err := range map[string]error{
				"21 variables":     set(user, strings.Join(many, ";")),
				"a 129-byte name":  set(user, fmt.Sprintf(`record { name = "%s"; value = "v" }`, strings.Repeat("n", 129))),
				"a 129-byte value": set(user, fmt.Sprintf(`record { name = "N"; value = "%s" }`, strings.Repeat("v", 129))),
				"a duplicate":      set(user, `record { name = "N"; value = "1" }; record { name = "N"; value = "2" }`),
				"a non-controller": set(other, `record { name = "N"; value = "1" }`),
			} {
				var rej *Reject
				if !errors.As(err, &rej) {
					t.Errorf("%s accepted: %v", what, err)
				}
			}
			eq(t, "list after refusals", f.query(id, "list", nil), want)
			// 20 variables of the longest names and values are fine.
			max := make([]string, 20)
			for i := range max {
				max[i] = fmt.Sprintf(`record { name = "%s%02d"; value = "%s" }`, strings.Repeat("n", 126), i, strings.Repeat("v", 128))
			}
			if err := set(user, strings.Join(max, ";")); err != nil {
				t.Fatalf("20 variables at the limits: %v", err)
			}
			if got := f.query(id, "list", nil); len(got) != 20*(128+1+128+1) {
				t.Fatalf("list of 20: %d bytes", len(got))
			}
			f.restart()
			if got := f.query(id, "get", []byte(strings.Repeat("n", 126)+"19")); string(got) != strings.Repeat("v", 128) {
				t.Fatalf("after restart: %q", got)
			}
			if err := set(user, ""); err != nil {
				t.Fatal(err)
			}
			eq(t, "cleared", f.query(id, "list", nil), nil)
		})
	}
}

// Ingress messages to aaaaa-aa: the methods a user may call work with the
// user as the caller (controllers checked); the canister-only ones are
// refused with the IC's reject.
func TestManagementByIngress(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(mustWat(t, envWat), nil)
	other := principal.SelfAuthenticating([]byte("not a controller"))
	for m, arg := range map[string]string{"raw_rand": "()", "deposit_cycles": idArg(id), "create_canister": "(record {})"} {
		_, err := f.ingress(user, m, arg)
		var rej *Reject
		if !errors.As(err, &rej) || rej.Code != CanisterReject || rej.Message != "Only canisters can call ic00 method "+m {
			t.Errorf("%s by ingress: %v", m, err)
		}
	}
	if _, err := f.ingress(user, "no_such_method", "()"); err == nil || !strings.Contains(err.Error(), "no method") {
		t.Errorf("unknown method: %v", err)
	}
	if _, err := f.ingress(other, "canister_status", idArg(id)); err == nil || !strings.Contains(err.Error(), "Only controllers") {
		t.Errorf("canister_status by a non-controller: %v", err)
	}
	if _, err := f.node.Query(context.Background(), Message{Canister: principal.Management(), Method: "stop_canister", Arg: encodeTyped(t, "stop_canister", idArg(id)), Caller: user}); err == nil {
		t.Error("stop_canister as a query accepted")
	}
	if _, err := f.ingress(other, "stop_canister", idArg(id)); err == nil {
		t.Error("stop_canister by a non-controller accepted")
	}
	if _, err := f.ingress(user, "stop_canister", idArg(id)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.Query(context.Background(), Message{Canister: id, Method: "list", Caller: user}); err == nil {
		t.Error("stopped canister answered")
	}
	if _, err := f.ingress(user, "start_canister", idArg(id)); err != nil {
		t.Fatal(err)
	}
	f.query(id, "list", nil)
	// Controllers are changed by ingress, and then the old one is refused.
	if _, err := f.ingress(user, "update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { controllers = opt vec { principal "%s" } } })`, id, other)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ingress(user, "canister_status", idArg(id)); err == nil {
		t.Error("former controller still allowed")
	}
	b, err := f.ingress(other, "canister_status", idArg(id))
	if err != nil {
		t.Fatal(err)
	}
	decodeStatus(t, b)
	// Code changes by ingress: uninstall, then install again.
	if _, err := f.ingress(other, "uninstall_code", idArg(id)); err != nil {
		t.Fatal(err)
	}
	if st := f.status(id); st.ModuleHash != "" {
		t.Fatalf("module after uninstall_code: %s", st.ModuleHash)
	}
	var blob strings.Builder
	for _, c := range mustWat(t, envWat) {
		fmt.Fprintf(&blob, "\\%02x", c)
	}
	if _, err := f.ingress(user, "install_code", fmt.Sprintf(`(record { mode = variant { install }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "" })`, id, blob.String())); err == nil {
		t.Fatal("install_code by a former controller accepted")
	}
	if _, err := f.ingress(other, "install_code", fmt.Sprintf(`(record { mode = variant { install }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "" })`, id, blob.String())); err != nil {
		t.Fatalf("install_code: %v", err)
	}
	if _, err := f.node.Query(context.Background(), Message{Canister: id, Method: "list", Caller: other}); err != nil {
		t.Fatalf("query after install_code by ingress: %v", err)
	}
	for _, m := range []string{"stop_canister", "delete_canister"} {
		if _, err := f.ingress(other, m, idArg(id)); err != nil {
			t.Fatalf("%s: %v", m, err)
		}
	}
	if _, err := f.node.Status(context.Background(), id); err == nil {
		t.Fatal("deleted canister still there")
	}
}

// Query stats are exact under concurrent queries interleaved with updates
// (whose commits fold the pending counts in) and survive a restart.
func TestQueryStatsConcurrent(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(mustWat(t, envWat), nil)
	if _, err := f.ingress(user, "update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { environment_variables = opt vec { record { name = "K"; value = "value" } } } })`, id)); err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 25
	errs := make(chan error, workers+1)
	for w := 0; w < workers; w++ {
		go func() {
			for i := 0; i < each; i++ {
				r, err := f.node.Query(context.Background(), Message{Canister: id, Method: "get", Arg: []byte("K"), Caller: user})
				if err == nil && string(r.Data) != "value" {
					err = fmt.Errorf("get K: %q", r.Data)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	go func() {
		for i := 0; i < 10; i++ {
			if _, err := f.node.Update(context.Background(), Message{Canister: id, Method: "list_update", Caller: user}); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	for i := 0; i < workers+1; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Queries after the last update: only Close can save these.
	const after = 3
	for i := 0; i < after; i++ {
		f.query(id, "get", []byte("K"))
	}
	const n = workers*each + after
	check := func(when string) {
		t.Helper()
		qs := f.status(id).QueryStats
		if qs.Calls != n || qs.RequestBytes != n || qs.ResponseBytes != n*5 || qs.Instructions == 0 {
			t.Fatalf("%s: query stats %+v, want %d calls, %d bytes in, %d out", when, qs, n, n, n*5)
		}
	}
	check("before restart")
	f.restart()
	check("after restart")
}

// env64Wat is envWat's get for a 64-bit memory: the ic0.env_var_* pointers
// and sizes are i64 there.
const env64Wat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i64)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i64 i64 i64)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i64 i64)))
  (import "ic0" "env_var_count" (func $count (result i64)))
  (import "ic0" "env_var_name_size" (func $name_size (param i64) (result i64)))
  (import "ic0" "env_var_name_copy" (func $name_copy (param i64 i64 i64 i64)))
  (import "ic0" "env_var_value_size" (func $value_size (param i64 i64) (result i64)))
  (import "ic0" "env_var_value_copy" (func $value_copy (param i64 i64 i64 i64 i64)))
  (memory i64 1)
  (func (export "canister_query get")
    (local $len i64) (local $vlen i64)
    (local.set $len (call $arg_size))
    (call $arg_copy (i64.const 1024) (i64.const 0) (local.get $len))
    (local.set $vlen (call $value_size (i64.const 1024) (local.get $len)))
    (call $value_copy (i64.const 1024) (local.get $len) (i64.const 2048) (i64.const 0) (local.get $vlen))
    (call $append (i64.const 2048) (local.get $vlen))
    (call $reply))
  (func (export "canister_query last_name")
    (local $i i64) (local $len i64)
    (local.set $i (i64.sub (call $count) (i64.const 1)))
    (local.set $len (call $name_size (local.get $i)))
    (call $name_copy (local.get $i) (i64.const 4096) (i64.const 0) (local.get $len))
    (call $append (i64.const 4096) (local.get $len))
    (call $reply))
)`

func TestEnvironmentVariables64(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newModeFixture(t, mode)
			id, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user},
				EnvVars: []store.EnvVar{{Name: "ZZ", Value: "last"}, {Name: "AA", Value: "first"}}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, env64Wat), Caller: user}); err != nil {
				t.Fatal(err)
			}
			eq(t, "get AA", f.query(id, "get", []byte("AA")), []byte("first"))
			eq(t, "last name", f.query(id, "last_name", nil), []byte("ZZ"))
			if st := f.status(id); st.Version != 1 {
				t.Fatalf("environment variables given at creation changed the version: %d", st.Version)
			}
		})
	}
}
