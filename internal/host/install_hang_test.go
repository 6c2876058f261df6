package host

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// hangInitWat is a module whose canister_init writes a page: honest in
// itself; the tests make its sandbox stop answering.
const hangInitWat = `(module
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func (export "canister_init") (i32.store (i32.const 0) (i32.const 1)))
  (func (export "canister_query q") (call $reply)))`

// hangFixture is a sandboxed node with a canister a (mgmtSeqWat) that
// controls b, which runs hangInitWat.
func hangFixture(t *testing.T, tweak func(*Config)) (f *fixture, a, b principal.Principal, wasm []byte) {
	t.Helper()
	cfg := testConfig(t, "sandbox")
	if tweak != nil {
		tweak(&cfg)
	}
	f = openFixture(t, cfg)
	a = f.install(mustWat(t, mgmtSeqWat), nil)
	ctx := context.Background()
	var err error
	if b, err = f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user, a}}); err != nil {
		t.Fatal(err)
	}
	wasm = mustWat(t, hangInitWat)
	if _, err := f.node.Install(ctx, b, InstallOptions{Mode: ModeInstall, Wasm: wasm, Caller: user}); err != nil {
		t.Fatal(err)
	}
	return f, a, b, wasm
}

// stopSandbox stops (SIGSTOP) the sandbox of id, which a query gives it if
// it has none: a sandbox that stops answering, as one whose canister hangs
// in native code does. The next execution of id is sent to it.
func (f *fixture) stopSandbox(id principal.Principal) {
	f.t.Helper()
	f.query(id, "q", nil)
	f.quiesce()
	pid := f.canisterPid(id)
	if pid == 0 {
		f.t.Fatalf("%s has no sandbox", id)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		f.t.Fatalf("stop the sandbox of %s: %v", id, err)
	}
	waitFor(f.t, 30*time.Second, func() bool { return allStopped(f.t, pid) })
	// Killed by the watchdog or a deadline; if neither came, not left stopped.
	f.t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
}

func reinstallArg(id principal.Principal, wasm []byte) string {
	return fmt.Sprintf(`(record { mode = variant { reinstall }; canister_id = principal "%s"; wasm_module = blob "%s"; arg = blob "" })`, id, blobText(wasm))
}

// A reinstall whose canister_init hangs natively (its sandbox stops
// answering) holds its canister's lock, and the calling canister's queue
// to aaaaa-aa, only until the watchdog, which its instruction limit sets
// (10 s plus the limit at 100 M instructions/s; the install limit is small
// here): the install fails as a sandbox timeout, charged at its whole
// limit, the canister keeps its state, and the caller's next management
// call (sent after the install) takes effect.
func TestInstallHangEndsAtItsWatchdog(t *testing.T) {
	t.Parallel()
	const limit = 50_000_000 // 0.5 s of watchdog beyond its base
	f, a, b, wasm := hangFixture(t, func(cfg *Config) { cfg.InstallInstructions = limit })
	mem := f.memoryHash(b)
	meta := f.storedMeta(b)
	f.stopSandbox(b)
	f.update(a, "go", mgmtSeq(t, "install_code", reinstallArg(b, wasm), "update_settings", freezingArg(b, 4242)))
	f.quiesce() // both answered
	st := f.status(b)
	if st.FreezingThreshold != 4242 {
		t.Fatalf("the call after the hung install did not take effect: freezing threshold %d", st.FreezingThreshold)
	}
	after := f.storedMeta(b)
	if after.Instructions-meta.Instructions != limit {
		t.Fatalf("the hung install was charged %d instructions; want its whole limit %d", after.Instructions-meta.Instructions, limit)
	}
	if f.memoryHash(b) != mem || after.ModuleHash != meta.ModuleHash {
		t.Fatal("the hung install changed the canister's memory or module")
	}
	// The same through ingress: a CANISTER_ERROR naming the sandbox's deadline.
	f.stopSandbox(b)
	_, err := f.ingress(user, "install_code", reinstallArg(b, wasm))
	if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "wall-clock deadline") {
		t.Fatalf("a hung install through ingress: %v", r)
	}
}

// Where the management call's own deadline comes before the watchdog (at
// the default limits: 5 minutes, against 50 for 300 B instructions), it
// ends the hang: the sandbox is killed, the install is given up and says
// after how long (SYS_TRANSIENT, not charged: a deadline is the node's,
// which cannot tell a hang from a slow canister), and the caller's next
// management call takes effect.
func TestInstallHangEndsAtTheCallsDeadline(t *testing.T) {
	t.Parallel()
	f, a, b, wasm := hangFixture(t, nil)
	// Far more than the reinstall needs before its execution starts (its
	// module is compiled already), so the deadline ends the execution.
	f.node.mgmtTimeout = 8 * time.Second
	meta := f.storedMeta(b)
	f.stopSandbox(b)
	_, err := f.ingress(user, "install_code", reinstallArg(b, wasm))
	r := f.reject(err)
	if r.Code != SysTransient || !strings.Contains(r.Message, "within 8s") {
		t.Fatalf("a hung install past its call's deadline: %v; want SYS_TRANSIENT saying after how long", r)
	}
	if pid := f.canisterPid(b); pid != 0 {
		t.Fatalf("the hung sandbox %d is still live", pid)
	}
	// Through a canister's queue to aaaaa-aa.
	f.stopSandbox(b)
	f.update(a, "go", mgmtSeq(t, "install_code", reinstallArg(b, wasm), "update_settings", freezingArg(b, 4243)))
	f.quiesce()
	if st := f.status(b); st.FreezingThreshold != 4243 {
		t.Fatalf("the call after the hung install did not take effect: freezing threshold %d", st.FreezingThreshold)
	}
	if after := f.storedMeta(b); after.Instructions != meta.Instructions || after.ModuleHash != meta.ModuleHash {
		t.Fatalf("the given-up installs were charged %d instructions (module %s, was %s); want none, and the module kept",
			after.Instructions-meta.Instructions, after.ModuleHash, meta.ModuleHash)
	}
}

// allStopped reports whether every thread of process pid is stopped: a
// signal's stop takes effect in each thread as it next leaves the kernel.
func allStopped(t *testing.T, pid int) bool {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
		if err != nil {
			return false
		}
		// pid (comm) state ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

// faultRecorder counts what the node records of failed executions.
type faultRecorder struct {
	metrics.Nop
	mu         sync.Mutex
	watchdog   int
	crashes    map[string]int
	executions map[string]int // "context outcome"
}

func (r *faultRecorder) WatchdogKill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.watchdog++
}

func (r *faultRecorder) SandboxCrashed(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.crashes[reason]++
}

func (r *faultRecorder) Execution(context, outcome string, _ uint64, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.executions[context+" "+outcome]++
}

func (r *faultRecorder) counts(ctx sysapi.Context) (watchdog, crashes, failed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.watchdog, r.crashes["watchdog"], r.executions[contextLabels[ctx]+" "+metrics.OutcomeError]
}

// A query or inspect_message whose sandbox hangs is ended by its watchdog,
// like any execution, and shows: the node's metrics count the watchdog's
// kill and the failed execution, by context. A query so ended counted in
// its canister's query stats (canister_status) as a call of 0
// instructions, as if it had cost nothing; it now counts at the whole
// instruction limit it was given, as an update so ended is charged, so a
// canister whose queries hold the node's sandboxes until their watchdogs
// shows what it took. Queries and inspect_message stay free; inspect_message
// is not a query call and is not in the query stats.
func TestHungQueryAndInspectAreVisible(t *testing.T) {
	t.Parallel()
	const queryLimit = 50_000_000 // a watchdog of 10.5 s
	for _, ctx := range []sysapi.Context{sysapi.CtxNonReplicatedQuery, sysapi.CtxInspect} {
		t.Run(ctx.String(), func(t *testing.T) {
			t.Parallel()
			rec := &faultRecorder{crashes: map[string]int{}, executions: map[string]int{}}
			cfg := testConfig(t, "sandbox")
			cfg.QueryInstructions = queryLimit
			cfg.Metrics = rec
			f := openFixture(t, cfg)
			id := f.install(mustWat(t, inspectedWat), nil)
			meta := f.storedMeta(id)
			stats := f.status(id).QueryStats
			f.stopSandbox(id) // after its query, counted in stats below
			var err error
			if ctx == sysapi.CtxInspect {
				_, err = f.node.Update(context.Background(), Message{Canister: id, Method: "u", Caller: user})
			} else {
				_, err = f.node.Query(context.Background(), Message{Canister: id, Method: "q", Caller: user})
			}
			if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "wall-clock deadline") {
				t.Fatalf("a hung %s: %v", ctx, r)
			}
			if w, c, e := rec.counts(ctx); w != 1 || c != 1 || e != 1 {
				t.Fatalf("metrics of a hung %s: %d watchdog kills, %d watchdog crashes, %d failed executions; want 1 each", ctx, w, c, e)
			}
			now := f.status(id).QueryStats
			after := f.storedMeta(id)
			if after.Instructions != meta.Instructions || after.Balance != meta.Balance {
				t.Fatalf("a hung %s was charged (%d instructions, balance %s → %s); queries and inspect_message are free",
					ctx, after.Instructions-meta.Instructions, meta.Balance, after.Balance)
			}
			if ctx == sysapi.CtxInspect {
				if now.Calls != stats.Calls+1 || now.Instructions-stats.Instructions >= queryLimit {
					t.Fatalf("query stats %+v after a hung inspect_message, were %+v: want only stopSandbox's query", now, stats)
				}
				return
			}
			if now.Calls != stats.Calls+2 || now.Instructions-stats.Instructions < queryLimit {
				t.Fatalf("query stats %+v after a hung query, were %+v: want its call at its whole limit (%d)", now, stats, queryLimit)
			}
		})
	}
}
