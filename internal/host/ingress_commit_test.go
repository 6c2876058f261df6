package host

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// statusText encodes an outcome for the tests: what the stored record says.
func statusText(o Outcome) []byte {
	switch {
	case o.Replied:
		return []byte("replied:" + string(o.Reply))
	case o.Reject != nil:
		return []byte(fmt.Sprintf("rejected:%d:%s", o.Reject.Code, o.Reject.Message))
	}
	return []byte("executing")
}

// storedStatuses reads every stored ingress status.
func (f *fixture) storedStatuses() map[string]string {
	f.t.Helper()
	got := map[string]string{}
	if err := f.node.IngressStatuses(func(k, v []byte) error { got[string(k)] = string(v); return nil }); err != nil {
		f.t.Fatal(err)
	}
	return got
}

// Every management call that changes state, every trap and every query
// method called as an update commits its ingress status in the
// transaction of its change or charge. The node drops the statuses written
// on their own (noSeparateAnswer), as a crash right after the state commit
// would; after a restart each status is stored, with the reply the caller
// got, and the change happened once. A call that commits nothing
// (canister_status) is not stored: the fault point does drop separate
// writes.
func TestStatusCommitsWithManagementChange(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		f.node.noSeparateAnswer = true
		want := map[string]string{}
		call := func(key string, canister principal.Principal, method string, arg []byte) ([]byte, error) {
			t.Helper()
			st := &IngressStatus{Key: []byte(key), Encode: statusText}
			r, err := f.node.Update(context.Background(), Message{Canister: canister, Method: method, Arg: arg, Caller: user, Status: st})
			if err != nil {
				rej, ok := err.(*Reject)
				if !ok {
					t.Fatalf("%s: %v", key, err)
				}
				want[key] = string(statusText(Outcome{Reject: rej}))
				return nil, err
			}
			want[key] = string(statusText(Outcome{Replied: true, Reply: r.Data}))
			return r.Data, nil
		}
		mgmt := func(key, method, text string) []byte {
			t.Helper()
			r, err := call(key, principal.Management(), method, encodeTyped(t, method, text))
			if err != nil {
				t.Fatalf("%s: %v", key, err)
			}
			return r
		}
		createdID := func(r []byte) principal.Principal {
			t.Helper()
			a, err := candid.Decode(r)
			if err != nil || len(a.Values) != 1 {
				t.Fatalf("create reply %x: %v", r, err)
			}
			rec, _ := a.Values[0].(candid.Record)
			v, _ := rec.GetNamed("canister_id")
			p, ok := v.(candid.Principal)
			if !ok {
				t.Fatalf("create reply: %v", a.Values[0])
			}
			return p.Principal
		}

		a := createdID(mgmt("create", "provisional_create_canister_with_cycles", `(record { amount = opt 5_000_000_000_000 })`))
		b := createdID(mgmt("create-with-settings", "provisional_create_canister_with_cycles",
			`(record { amount = opt 5_000_000_000_000; settings = opt record { freezing_threshold = opt 777 } })`))
		if ft := f.status(b).FreezingThreshold; ft != 777 {
			t.Fatalf("created with freezing threshold %d", ft)
		}
		mgmt("top-up", "provisional_top_up_canister", fmt.Sprintf(`(record { canister_id = principal "%s"; amount = 7_000_000_000_000 })`, a))
		if bal := f.status(a).Balance; bal.Cmp(cycles.New(12_000_000_000_000)) != 0 {
			t.Fatalf("balance after the top-up: %s", bal)
		}
		wasm := mustWat(t, ingressWat)
		mgmt("install", "install_code", fmt.Sprintf(`(record { mode = variant { install }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "" })`, a, blobText(wasm)))
		mgmt("update-settings", "update_settings", fmt.Sprintf(`(record { canister_id = principal "%s"; settings = record { freezing_threshold = opt 1234 } })`, a))
		if _, err := call("upload", principal.Management(), "upload_chunk", uploadArg(t, b, wasm)); err != nil {
			t.Fatal(err)
		}
		mgmt("install-chunked", "install_chunked_code", installChunkedArg("install", b, nil, [][]byte{sha(wasm)}, sha(wasm)))
		mgmt("clear-chunks", "clear_chunk_store", idArg(b))
		mgmt("stop", "stop_canister", idArg(b))
		mgmt("start", "start_canister", idArg(b))
		mgmt("uninstall", "uninstall_code", idArg(b))
		mgmt("stop-again", "stop_canister", idArg(b))
		mgmt("delete", "delete_canister", idArg(b))

		// Traps: an update's, and an install's canister_init, are charged
		// with their reject.
		if _, err := call("trap", a, "boom", nil); err == nil {
			t.Fatal("boom replied")
		}
		trapInit := mustWat(t, `(module (import "ic0" "trap" (func $trap (param i32 i32)))
		  (memory 1) (data (i32.const 0) "no init")
		  (func (export "canister_init") (call $trap (i32.const 0) (i32.const 7))))`)
		c, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
		if err != nil {
			t.Fatal(err)
		}
		before := f.status(c).Balance
		if _, err := call("init-trap", principal.Management(), "install_code", encodeTyped(t, "install_code",
			fmt.Sprintf(`(record { mode = variant { install }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "" })`, c, blobText(trapInit)))); err == nil {
			t.Fatal("an install whose init traps succeeded")
		}
		if f.status(c).Balance.Cmp(before) >= 0 {
			t.Fatal("the trapped install was not charged")
		}
		// A query method called as an update is charged with its reply.
		q, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.node.Install(context.Background(), q, InstallOptions{Mode: ModeInstall, Caller: user, Wasm: mustWat(t, `(module
		  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
		  (import "ic0" "msg_reply" (func $reply))
		  (memory 1) (data (i32.const 0) "read")
		  (func (export "canister_query read") (call $append (i32.const 0) (i32.const 4)) (call $reply)))`)}); err != nil {
			t.Fatal(err)
		}
		if r, err := call("query-as-update", q, "read", nil); err != nil || string(r) != "read" {
			t.Fatalf("query as an update: %q %v", r, err)
		}
		// The control: nothing commits, nothing is stored.
		if _, err := call("status", principal.Management(), "canister_status", encodeTyped(t, "canister_status", idArg(a))); err != nil {
			t.Fatal(err)
		}
		delete(want, "status")

		charged := f.status(c).Balance
		aBal := f.status(a).Balance
		f.restart() // the separate writes never happened
		got := f.storedStatuses()
		if _, ok := got["status"]; ok {
			t.Error("canister_status's status stored: the fault point wrote it")
		}
		for k, w := range want {
			g, ok := got[k]
			switch {
			case !ok:
				t.Errorf("%s: no status stored with the change", k)
			case g != w:
				t.Errorf("%s: stored %q, the caller got %q", k, g, w)
			}
		}
		if w := want["trap"]; w != "rejected:5:Error from Canister "+a.String()+": Canister called `ic0.trap` with message: 'no'" {
			t.Errorf("trap: answered %q", w)
		}
		if w := want["init-trap"]; !strings.HasPrefix(w, "rejected:5:") || !strings.Contains(w, "canister_init trapped") {
			t.Errorf("init-trap: answered %q", w)
		}
		// Each change happened once and survived with its status.
		st := f.status(a)
		if st.ModuleHash != fmt.Sprintf("%x", sha(wasm)) || st.FreezingThreshold != 1234 || st.Balance.Cmp(aBal) != 0 {
			t.Errorf("canister a after the restart: module %s, freezing threshold %d, balance %s (want %s)", st.ModuleHash, st.FreezingThreshold, st.Balance, aBal)
		}
		if r, err := f.node.Update(context.Background(), Message{Canister: a, Method: "ok", Caller: user}); err != nil || string(r.Data) != "ok" {
			t.Errorf("canister a after the restart: %v %v", r, err)
		}
		if _, err := f.node.Status(context.Background(), b); err == nil {
			t.Error("deleted canister b is back")
		}
		if bal := f.status(c).Balance; bal.Cmp(charged) != 0 {
			t.Errorf("trapped install's canister: %s after the restart, %s before", bal, charged)
		}
	})
}

// A management call whose first commit does not finish it stores its
// status as in progress with that commit, so a replay after a crash runs
// nothing (the interface reads it as rejected, the call cannot finish): a
// stop that waits for an open call context (the "stopping" commit), and a
// creation whose settings are refused after the canister is made.
func TestStatusOfUnfinishedManagementCall(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		f.node.noSeparateAnswer = true
		ctx := context.Background()
		wasm := mustWat(t, probeWat)
		a := f.install(wasm, nil)
		b := f.install(wasm, nil)
		mgmt := func(key, method, text string) error {
			st := &IngressStatus{Key: []byte(key), Encode: statusText}
			_, err := f.node.Update(ctx, Message{Canister: principal.Management(), Method: method, Arg: encodeTyped(t, method, text), Caller: user, Status: st})
			return err
		}

		// a awaits b, whose lock the test holds: a cannot stop at once.
		cb, err := f.node.get(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		cb.mu.Lock()
		locked := true
		defer func() {
			if locked {
				cb.mu.Unlock()
			}
		}()
		done := make(chan error, 1)
		go func() {
			_, err := f.node.Update(ctx, Message{Canister: a, Method: "call", Arg: callArg(b, "slow"), Caller: user})
			done <- err
		}()
		waitFor(t, 10*time.Second, func() bool {
			c, _ := f.node.get(ctx, a)
			c.mu.RLock()
			defer c.mu.RUnlock()
			return len(c.contexts) > 0
		})
		stopped := make(chan error, 1)
		go func() { stopped <- mgmt("stop", "stop_canister", idArg(a)) }()
		waitFor(t, 10*time.Second, func() bool {
			c, _ := f.node.get(ctx, a)
			c.mu.RLock()
			defer c.mu.RUnlock()
			return c.meta.Status == "stopping"
		})
		if got := f.storedStatuses()["stop"]; got != "executing" {
			t.Errorf("stop_canister while stopping: stored %q, want it in progress", got)
		}
		cb.mu.Unlock()
		locked = false
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := <-stopped; err != nil {
			t.Fatal(err)
		}

		// Settings refused: they are checked before the canister is
		// created, so nothing was committed (the refusal's own answer is
		// committed separately, which this node does not do).
		before, err := f.node.List()
		if err != nil {
			t.Fatal(err)
		}
		if err := mgmt("create", "provisional_create_canister_with_cycles",
			`(record { settings = opt record { freezing_threshold = opt 9_000_000_000_000_000_000 } })`); err == nil {
			t.Fatal("freezing threshold beyond 2^62 accepted")
		}
		f.restart()
		got := f.storedStatuses()
		if got["stop"] != "executing" {
			t.Errorf("stop after the restart: stored %q, want it in progress", got["stop"])
		}
		if s, ok := got["create"]; ok {
			t.Errorf("create with refused settings: stored %q, want nothing", s)
		}
		if after, err := f.node.List(); err != nil || len(after) != len(before) {
			t.Errorf("create with refused settings: %d canisters before, %d after (%v)", len(before), len(after), err)
		}
		if st := f.status(a); st.Status != "stopped" {
			t.Errorf("a after the restart: %s", st.Status)
		}
		f.counters(b) // b runs on
	})
}
