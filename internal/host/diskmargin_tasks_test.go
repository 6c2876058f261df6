package host

import (
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
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

// bigDeltaWat's update "big" writes a byte to each of 2048 pages of its
// heap (8 MiB, counted twice by the margin), spins 10 M instructions and
// replies; "touched" says how many of those pages hold the byte.
const bigDeltaWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "performance_counter" (func $perf (param i32) (result i64)))
  (memory 130)
  (func (export "canister_update big")
    (local $i i32)
    (loop $w
      (i32.store8 (i32.mul (local.get $i) (i32.const 4096)) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $w (i32.lt_u (local.get $i) (i32.const 2048))))
    (loop $l (br_if $l (i64.lt_u (call $perf (i32.const 0)) (i64.const 10000000))))
    (call $reply))
  (func (export "canister_query touched")
    (local $i i32) (local $n i32)
    (loop $r
      (local.set $n (i32.add (local.get $n) (i32.load8_u (i32.mul (local.get $i) (i32.const 4096)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $r (i32.lt_u (local.get $i) (i32.const 2048))))
    (i32.store (i32.const 0) (local.get $n))
    (call $append (i32.const 0) (i32.const 4))
    (call $reply))
)`

// Cycles, from the attacker's side: the disk margin refuses a commit by
// the size of what the execution changed, which the canister chooses (up
// to 2 GiB of each memory an update, 8 GiB an install). Refusals were not
// charged, so on any node with less free than twice that above the
// margin (most: the door before execution only refuses below it) a
// canister ran every update, heartbeat and install at its whole
// instruction limit for nothing, at will. Now a refused execution is
// charged as a trap: its instructions and fees, its state discarded.
func TestDiskMarginRefusalIsCharged(t *testing.T) {
	t.Parallel()
	mnt := durTmpfs(t, 64<<20)
	const margin = 16 << 20
	cfg := DefaultConfig()
	cfg.Home = filepath.Join(mnt, "home")
	cfg.Isolation = "inprocess"
	cfg.Fees.GiBStoragePerSecond = 0
	cfg.DiskMargin = margin
	f := &fixture{t: t, home: cfg.Home, cfg: cfg}
	f.open()
	t.Cleanup(func() { f.node.Close() })
	ctx := context.Background()
	id := f.install(mustWat(t, bigDeltaWat), nil)

	// 4 MiB above the margin: the door lets the update run, and its
	// commit (8 MiB of pages, counted 16) is refused.
	removeFill := ballast(t, mnt, "fill", freeBytes(t, mnt)-margin-4<<20)
	t.Cleanup(removeFill)
	f.node.store.SetDiskMargin(margin) // measured again at the next commit, not up to 250 ms later
	before := f.storedMeta(id)
	_, err := f.node.Update(ctx, Message{Canister: id, Method: "big", Caller: user})
	var rej *Reject
	if !errors.As(err, &rej) || rej.Code != SysTransient || !errors.Is(err, ErrDiskNearlyFull) {
		t.Fatalf("the update: %v, want it refused by the disk margin", err)
	}
	after := f.storedMeta(id)
	if ran := after.Instructions - before.Instructions; ran < 10_000_000 || after.Messages != before.Messages+1 {
		t.Errorf("the refused update was charged %d instructions in %d messages, want its 10 M or more in one", ran, after.Messages-before.Messages)
	}
	if want := f.node.executionFee(10_000_000); after.CyclesBurned.SaturatingSub(before.CyclesBurned).Cmp(want) < 0 {
		t.Errorf("the refused update burned %s cycles, want at least %s", after.CyclesBurned.SaturatingSub(before.CyclesBurned), want)
	}
	if r, err := f.node.Query(ctx, Message{Canister: id, Method: "touched", Caller: user}); err != nil || binary.LittleEndian.Uint32(r.Data) != 0 {
		t.Errorf("after the refusal the canister's heap holds %v pages written (%v), want none", r, err)
	}

	// An install whose canister_init writes as much: charged alike.
	init := strings.Replace(strings.Replace(bigDeltaWat, `(func (export "canister_update big")`, `(func (export "canister_init")`, 1),
		"(i64.const 10000000))))\n    (call $reply))", "(i64.const 10000000)))))", 1)
	fresh, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	before = f.storedMeta(fresh)
	_, err = f.node.Install(ctx, fresh, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, init), Caller: user})
	if !errors.Is(err, ErrDiskNearlyFull) {
		t.Fatalf("the install: %v, want it refused by the disk margin", err)
	}
	after = f.storedMeta(fresh)
	if ran := after.Instructions - before.Instructions; ran < 10_000_000 || after.CyclesBurned.Cmp(before.CyclesBurned) <= 0 {
		t.Errorf("the refused install was charged %d instructions, %s cycles burned before and %s after, want its 10 M or more", ran, before.CyclesBurned, after.CyclesBurned)
	}
	if after.ModuleHash != "" {
		t.Errorf("the refused install left module %s", after.ModuleHash)
	}

	// With room it commits.
	removeFill()
	if _, err := f.node.Update(ctx, Message{Canister: id, Method: "big", Caller: user}); err != nil {
		t.Fatalf("the update with room: %v", err)
	}
	if r, err := f.node.Query(ctx, Message{Canister: id, Method: "touched", Caller: user}); err != nil || binary.LittleEndian.Uint32(r.Data) != 2048 {
		t.Errorf("after the commit: %v (%v), want 2048 pages written", r, err)
	}
}

// marginCleanupWat's update "go" calls its own "pong" with a reply callback
// that writes a byte to each of 2048 pages (8 MiB) and a cleanup that
// writes one byte, which the query "cleaned" reads.
const marginCleanupWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_on_cleanup" (func $on_cleanup (param i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (memory 130)
  (table 2 funcref)
  (elem (i32.const 0) $on_reply $cleanup)
  (data (i32.const 100) "pong")
  (func $on_reply (param i32)
    (local $i i32)
    (loop $w
      (i32.store8 (i32.add (i32.const 65536) (i32.mul (local.get $i) (i32.const 4096))) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $w (i32.lt_u (local.get $i) (i32.const 2048))))
    (call $reply))
  (func $cleanup (param i32)
    (i32.store8 (i32.const 200) (i32.const 1)))
  (func (export "canister_update go")
    (call $self_copy (i32.const 0) (i32.const 0) (call $self_size))
    (call $call_new (i32.const 0) (call $self_size) (i32.const 100) (i32.const 4)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $on_cleanup (i32.const 1) (i32.const 0))
    (drop (call $perform)))
  (func (export "canister_update pong") (call $reply))
  (func (export "canister_query cleaned")
    (call $append (i32.const 200) (i32.const 1))
    (call $reply))
)`

// Integrity, from a neighbour's side: a canister that fills the disk to
// just above the margin has the commit of another canister's callback
// refused (its changes are larger than what is left). The callback's
// changes were dropped and its context answered, but its cleanup did not
// run: what the canister undoes there when a callback fails (a lock held
// across the call) stayed as it was, for good. Now a refused callback
// fails as a trap does, and its cleanup runs and commits.
func TestDiskMarginRefusedCallbackRunsCleanup(t *testing.T) {
	t.Parallel()
	mnt := durTmpfs(t, 64<<20)
	const margin = 16 << 20
	cfg := DefaultConfig()
	cfg.Home = filepath.Join(mnt, "home")
	cfg.Isolation = "inprocess"
	cfg.Fees.GiBStoragePerSecond = 0
	cfg.DiskMargin = margin
	f := &fixture{t: t, home: cfg.Home, cfg: cfg}
	f.open()
	t.Cleanup(func() { f.node.Close() })
	ctx := context.Background()
	id := f.install(mustWat(t, marginCleanupWat), nil)

	// 4 MiB above the margin: the call and "pong" commit, the callback's
	// 8 MiB (counted 16) do not fit, the cleanup's page does.
	t.Cleanup(ballast(t, mnt, "fill", freeBytes(t, mnt)-margin-4<<20))
	f.node.store.SetDiskMargin(margin) // measured again at the next commit
	before := f.storedMeta(id)
	if _, err := f.node.Update(ctx, Message{Canister: id, Method: "go", Caller: user}); err == nil {
		t.Fatal("the call whose callback's commit was refused replied")
	}
	f.quiesce()
	if r, err := f.node.Query(ctx, Message{Canister: id, Method: "cleaned", Caller: user}); err != nil || len(r.Data) != 1 || r.Data[0] != 1 {
		t.Fatalf("cleanup after the refused callback: %v (%v), want it run and committed", r, err)
	}
	if after := f.storedMeta(id); after.Instructions == before.Instructions {
		t.Errorf("the refused callback and its cleanup were not charged")
	}
}

// bigReplyWat's update "reply" replies 1.5 MiB of its heap, changing
// nothing.
const bigReplyWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory 30)
  (func (export "canister_update reply")
    (call $append (i32.const 0) (i32.const 1572864))
    (call $reply))
)`

// Availability, from the attacker's side: an execution's reply is stored
// with its request's status, in its commit. The disk margin counted only
// memory pages, modules and chunks, so a commit of a reply was never
// refused: callbacks answering many held ingress calls (up to the
// node's 15 GiB of response memory, 2 MiB each) at once wrote past the
// margin, to a full disk, whose last sync may fail and stop the node.
// Now a reply stored with its status counts as the canister's data.
func TestDiskMarginCountsStoredReplies(t *testing.T) {
	t.Parallel()
	mnt := durTmpfs(t, 64<<20)
	const margin = 16 << 20
	cfg := DefaultConfig()
	cfg.Home = filepath.Join(mnt, "home")
	cfg.Isolation = "inprocess"
	cfg.Fees.GiBStoragePerSecond = 0
	cfg.DiskMargin = margin
	f := &fixture{t: t, home: cfg.Home, cfg: cfg}
	f.open()
	t.Cleanup(func() { f.node.Close() })
	ctx := context.Background()
	id := f.install(mustWat(t, bigReplyWat), nil)
	call := func(key string) error {
		st := &IngressStatus{Key: []byte(key), Encode: statusText}
		_, err := f.node.Update(ctx, Message{Canister: id, Method: "reply", Caller: user, Status: st})
		return err
	}

	// 1 MiB above the margin: the 1.5 MiB reply does not fit.
	removeFill := ballast(t, mnt, "fill", freeBytes(t, mnt)-margin-1<<20)
	t.Cleanup(removeFill)
	f.node.store.SetDiskMargin(margin) // measured again at the next commit
	if err := call("above"); !errors.Is(err, ErrDiskNearlyFull) {
		t.Fatalf("a 1.5 MiB reply with 1 MiB above the margin: %v, want it refused by the disk margin", err)
	}
	if free := freeBytes(t, mnt); free < margin {
		t.Fatalf("%d bytes free after the refusal: below the margin of %d", free, margin)
	}
	removeFill()
	if err := call("room"); err != nil {
		t.Fatalf("with room: %v", err)
	}
}
