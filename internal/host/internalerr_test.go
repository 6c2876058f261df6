package host

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
	bolt "go.etcd.io/bbolt"
)

// lockedBuffer is a log destination tests read while the node may write.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// failingPrepare fails every module preparation with err, as an executor
// whose artifact cache cannot be written does.
type failingPrepare struct {
	exec.Executor
	err error
}

func (x *failingPrepare) Prepare(context.Context, []byte) (*exec.Module, error) { return nil, x.err }

// A management call that fails for a reason of the node's own (its store,
// a file) answered its caller, a client or a canister, with the error's
// text (answerManagement's %v), which names files of the host. The caller
// now gets an error id; the node's log has the detail under that id.
func TestInternalErrorReachesOnlyTheLog(t *testing.T) {
	t.Parallel()
	var logs lockedBuffer
	cfg := testConfig(t, "inprocess")
	f := openLoggedFixture(t, cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	n := f.node

	// A real error of the host's file system, naming a path in the home.
	_, perr := os.Open(filepath.Join(cfg.Home, "artifacts", "no-such-artifact"))
	if perr == nil {
		t.Fatal("opened a file that does not exist")
	}
	n.exec = &failingPrepare{Executor: n.exec, err: fmt.Errorf("exec: artifact cache: %w", perr)}

	id, err := n.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ingress(user, "install_code", fmt.Sprintf(`(record { mode = variant { install }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "" })`,
		id, blobText(mustWat(t, `(module)`))))
	checkInternalReject(t, &logs, f.reject(err), cfg.Home, "no such file")
}

// checkInternalReject checks that rej, the reject of an error of the
// node's own, says none of details but gives an error id, and that the
// node's log holds that id with details[0].
func checkInternalReject(t *testing.T, logs *lockedBuffer, rej *Reject, details ...string) {
	t.Helper()
	for _, d := range details {
		if strings.Contains(rej.Message, d) {
			t.Fatalf("the caller reads the node's own error (%q): %q", d, rej.Message)
		}
	}
	i := strings.Index(rej.Message, "internal error ")
	if i < 0 {
		t.Fatalf("reject %q gives no error id", rej.Message)
	}
	errID := strings.Fields(rej.Message[i+len("internal error "):])[0]
	for line := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(line, "error_id="+errID) && strings.Contains(line, details[0]) {
			return
		}
	}
	t.Fatalf("no log record holds error %s and its detail:\n%s", errID, logs.String())
}

// failingExecute fails the executions in the contexts ctxs (of canister
// canister only, when set) with err, as an executor that cannot read a
// module's artifact does.
type failingExecute struct {
	exec.Executor
	canister string
	ctxs     map[sysapi.Context]bool
	err      error
}

func (x *failingExecute) Execute(ctx context.Context, id string, req *exec.Request) (*sysapi.Output, error) {
	if (x.canister == "" || id == x.canister) && x.ctxs[req.Input.Context] {
		return nil, x.err
	}
	return x.Executor.Execute(ctx, id, req)
}

// loggedFixture is an in-process node whose log the test reads.
func loggedFixture(t *testing.T) (*fixture, *lockedBuffer) {
	t.Helper()
	logs := &lockedBuffer{}
	cfg := testConfig(t, "inprocess")
	return openLoggedFixture(t, cfg, slog.New(slog.NewTextHandler(logs, nil))), logs
}

// hostPathError is a real error of the host's file system, naming a path
// in the home, wrapped as the executor wraps what it cannot read.
func hostPathError(t *testing.T, home string) error {
	t.Helper()
	_, err := os.Open(filepath.Join(home, "artifacts", "no-such-artifact"))
	if err == nil {
		t.Fatal("opened a file that does not exist")
	}
	return fmt.Errorf("exec: load artifact: %w", err)
}

// inspectedWat accepts every ingress message in canister_inspect_message
// and answers "u".
const inspectedWat = `(module
  (import "ic0" "accept_message" (func $accept))
  (import "ic0" "msg_reply" (func $reply))
  (func (export "canister_inspect_message") (call $accept))
  (func (export "canister_update u") (call $reply))
  (func (export "canister_query q") (call $reply)))`

// relayWat's composite query "relay" calls query "q" of the canister its
// argument names, and replies with the reject message it gets (nothing
// when answered).
const relayWat = `(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reject_msg_size" (func $rej_size (result i32)))
  (import "ic0" "msg_reject_msg_copy" (func $rej_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 0) $replied $rejected)
  (data (i32.const 100) "q")
  (func $replied (param i32) (call $reply))
  (func $rejected (param i32)
    (call $rej_copy (i32.const 1000) (i32.const 0) (call $rej_size))
    (call $append (i32.const 1000) (call $rej_size))
    (call $reply))
  (func (export "canister_composite_query relay")
    (call $arg_copy (i32.const 0) (i32.const 0) (call $arg_size))
    (call $call_new (i32.const 0) (call $arg_size) (i32.const 100) (i32.const 1)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (drop (call $call_perform))))`

// An execution that fails for a reason of the node's own (its executor
// cannot read an artifact) answered its caller with the error's text,
// which names files of the host: a user's ingress whose
// canister_inspect_message or update execution failed ("Canister %s: %v"),
// and a canister whose composite query called a query that failed (its
// reject callback read it). Each now gets an error id; the node's log has
// the detail.
func TestInternalExecutionErrorReachesOnlyTheLog(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ctx  sysapi.Context
	}{
		{"inspect_message", sysapi.CtxInspect},
		{"update", sysapi.CtxUpdate},
		{"composite query's callee", sysapi.CtxNonReplicatedQuery},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, logs := loggedFixture(t)
			id := f.install(mustWat(t, inspectedWat), nil)
			relay := f.install(mustWat(t, relayWat), nil)
			perr := hostPathError(t, f.home)
			f.node.exec = &failingExecute{Executor: f.node.exec, canister: id.String(), ctxs: map[sysapi.Context]bool{tc.ctx: true}, err: perr}
			var rej *Reject
			if tc.ctx == sysapi.CtxNonReplicatedQuery {
				r, err := f.node.Query(context.Background(), Message{Canister: relay, Method: "relay", Arg: id.Bytes(), Caller: user})
				if err != nil {
					t.Fatalf("relay: %v", err)
				}
				rej = &Reject{Message: string(r.Data)} // what the canister read
			} else {
				_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "u", Caller: user})
				rej = f.reject(err)
			}
			checkInternalReject(t, logs, rej, f.home, "no such file")
		})
	}
}

// create_canister (and provisional_create_canister_with_cycles) answered
// a failure of the node's store with its text ("create_canister: %v"). The
// caller now gets an error id; the node's log has the detail. What a
// caller did wrong (an id that exists) still says so.
func TestCreateInternalErrorReachesOnlyTheLog(t *testing.T) {
	t.Parallel()
	f, logs := loggedFixture(t)
	existing := f.install(mustWat(t, inspectedWat), nil)
	_, err := f.ingress(user, "provisional_create_canister_with_cycles", fmt.Sprintf(`(record { specified_id = opt principal "%s" })`, existing))
	if r := f.reject(err); !strings.Contains(r.Message, "already exists") {
		t.Fatalf("creating an existing id: %v", r)
	}
	f.node.store.Close() // every later commit fails
	_, serr := f.node.store.NextCanisterIndex()
	if serr == nil {
		t.Fatal("a closed store allocated an id")
	}
	_, err = f.ingress(user, "provisional_create_canister_with_cycles", `(record {})`)
	checkInternalReject(t, logs, f.reject(err), serr.Error())
}

// A call to a canister the node could not load for a reason of its own (a
// record of its store it cannot read) was answered DESTINATION_INVALID
// "not found", so the caller took a canister that exists for one that is
// gone. The caller now gets SYS_TRANSIENT with an error id; the node's log
// has the detail. A canister that does not exist is still not found.
func TestRouteStoreErrorIsNotNotFound(t *testing.T) {
	t.Parallel()
	f, logs := loggedFixture(t)
	callee := f.install(module(t, corpusDir, "counter"), noArgs)
	relay := f.install(module(t, corpusDir, "relay"), noArgs)
	f.update(callee, "inc", noArgs)
	path := f.node.store.Path()
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	// Damage the callee's globals, which only loading the canister reads.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("canisters")).Bucket(callee.Bytes()).Put([]byte("globals"), []byte{0, 0, 0, 9})
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(f.cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	f.node = n

	got := f.callText(relay, "tryGet", fmt.Sprintf("(principal %q)", callee))
	if !strings.Contains(got, "rejected #system_transient") || strings.Contains(got, "not found") {
		t.Fatalf("a callee the node could not load: %s", got)
	}
	checkInternalReject(t, logs, &Reject{Message: got}, "globals")
	missing := principal.CanisterID(1_000_000)
	got = f.callText(relay, "tryGet", fmt.Sprintf("(principal %q)", missing))
	if !strings.Contains(got, "rejected #destination_invalid") || !strings.Contains(got, "not found") {
		t.Fatalf("a callee that does not exist: %s", got)
	}
}
