package host

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// countingExec counts the executions of each canister in each context.
type countingExec struct {
	exec.Executor
	mu   sync.Mutex
	runs map[string]map[sysapi.Context]int
}

func (x *countingExec) Execute(ctx context.Context, id string, req *exec.Request) (*sysapi.Output, error) {
	x.mu.Lock()
	if x.runs == nil {
		x.runs = map[string]map[sysapi.Context]int{}
	}
	if x.runs[id] == nil {
		x.runs[id] = map[sysapi.Context]int{}
	}
	x.runs[id][req.Input.Context]++
	x.mu.Unlock()
	return x.Executor.Execute(ctx, id, req)
}

func (x *countingExec) count(id principal.Principal, ctx sysapi.Context) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.runs[id.String()][ctx]
}

func (x *countingExec) reset(id principal.Principal) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.runs, id.String())
}

// marginDirtyWat's heartbeat and update "dirty" each write a page of its heap
// and spin: every commit of theirs brings canister data, which the disk
// margin refuses.
const marginDirtyWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "performance_counter" (func $perf (param i32) (result i64)))
  (memory 2)
  (func $dirty
    (i64.store (i32.const 4096) (i64.add (i64.load (i32.const 4096)) (i64.const 1)))
    (loop $l (br_if $l (i64.lt_u (call $perf (i32.const 0)) (i64.const 10000000)))))
  (func (export "canister_heartbeat") (call $dirty))
  (func (export "canister_update dirty") (call $dirty) (call $reply))
)`

// Availability and cycles, from the attacker's side: below the disk
// margin Update refuses a canister's ingress before it runs, because a
// commit the margin refuses is not charged: the canister would run for
// nothing. Its heartbeat (every second, for good) and the calls of other
// canisters (and ingress queued before the disk filled) were not refused:
// they ran their whole instruction limit, uncharged, had their commit
// refused, and each logged an error line on a disk that is nearly full.
// Now they are refused before they run, as ingress is: the heartbeat is
// skipped and a call gets SYS_TRANSIENT, its cycles returned.
func TestDiskMarginRefusesTasksAndCallsBeforeTheyRun(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "inprocess")
	cfg.Fees.GiBStoragePerSecond = 0
	f := openFixture(t, cfg)
	x := &countingExec{Executor: f.node.exec}
	f.node.exec = x // before any canister runs
	id := f.install(mustWat(t, marginDirtyWat), nil)
	c := f.loaded(id)

	// Below the margin from here on. Under c's lock: no execution of c
	// runs meanwhile, so none that started above is counted.
	c.mu.Lock()
	f.node.store.SetDiskMargin(1 << 62)
	x.reset(id)
	c.mu.Unlock()
	if _, err := f.node.Update(context.Background(), Message{Canister: id, Method: "dirty", Caller: user}); !errors.Is(err, ErrDiskNearlyFull) {
		t.Fatalf("ingress below the margin: %v, want it refused (ErrDiskNearlyFull)", err)
	}

	f.node.process(c, &message{kind: kindHeartbeat})
	if got := x.count(id, sysapi.CtxSystemTask); got != 0 {
		t.Errorf("%d heartbeats ran below the disk margin, want none", got)
	}

	answer := make(chan result, 1)
	f.node.process(c, &message{kind: kindRequest, caller: user, method: "dirty", origin: origin{ingress: answer}})
	r := <-answer
	var rej *Reject
	if !errors.As(r.err, &rej) || rej.Code != SysTransient || !errors.Is(r.err, ErrDiskNearlyFull) {
		t.Errorf("a call below the disk margin answered %v, want SYS_TRANSIENT (ErrDiskNearlyFull)", r.err)
	}
	if got := x.count(id, sysapi.CtxUpdate); got != 0 {
		t.Errorf("%d calls ran below the disk margin, want none", got)
	}

	// Room again: both run.
	f.node.store.SetDiskMargin(0)
	f.node.process(c, &message{kind: kindHeartbeat})
	if got := x.count(id, sysapi.CtxSystemTask); got == 0 {
		t.Errorf("no heartbeat ran with room")
	}
	f.node.process(c, &message{kind: kindRequest, caller: user, method: "dirty", origin: origin{ingress: answer}})
	if r := <-answer; r.err != nil {
		t.Errorf("a call with room: %v", r.err)
	}
}
