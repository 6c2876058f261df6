package exec

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// blankPids lists the pids of the warm pool's blank sandboxes, as cordon ps
// sees them.
func blankPids(x *Sandboxed) []int {
	var out []int
	for _, s := range x.Sandboxes() {
		if s.Kind == "blank" {
			if s.Canister != "" {
				panic("a blank sandbox names a canister: " + s.Canister)
			}
			out = append(out, s.PID)
		}
	}
	return out
}

// waitBlanks waits until the pool holds n blank sandboxes none of which is
// in not, and returns their pids.
func waitBlanks(t *testing.T, x *Sandboxed, n int, not ...int) []int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		pids := blankPids(x)
		ok := len(pids) == n
		for _, p := range pids {
			for _, q := range not {
				ok = ok && p != q
			}
		}
		if ok {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("blank sandboxes %v, want %d (none of %v); stats %+v", pids, n, not, x.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newPooled(t *testing.T, cfg SandboxConfig) (*Sandboxed, *countingMetrics) {
	m := &countingMetrics{}
	cfg.Dir, cfg.Logger, cfg.Metrics = t.TempDir(), testLogger(t), m
	x, err := NewSandboxed(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	return x, m
}

const counterReply = "DIDL\x00\x01\x7d"

// A new canister and an evicted one are both served by a blank sandbox
// from the warm pool (the same process cordon ps listed as blank), never by
// a cold start; the state carries over the eviction; the pool refills.
func TestEvictedCanisterServedFromWarmPool(t *testing.T) {
	x, m := newPooled(t, SandboxConfig{WarmPool: 1})
	s := newSim(t, x, "a", wasmFile(t, corpusDir, "counter"))
	b1 := waitBlanks(t, x, 1)[0]
	s.must(sysapi.CtxInit, "canister_init", empty)
	if p := sandboxPid(x, "a"); p != b1 {
		t.Fatalf("canister a runs in %d, not in the blank sandbox %d", p, b1)
	}
	if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("inc: %x", out.Reply)
	}
	b2 := waitBlanks(t, x, 1, b1)[0] // refilled
	if !x.evictColdest(nil, "pool") {
		t.Fatal("nothing evicted")
	}
	waitGone(t, b1)
	if p := sandboxPid(x, "a"); p != 0 {
		t.Fatalf("a still has sandbox %d after eviction", p)
	}
	if out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("get after eviction: %x (state lost?)", out.Reply)
	}
	if p := sandboxPid(x, "a"); p != b2 {
		t.Fatalf("evicted canister a came back in %d, not in the blank sandbox %d", p, b2)
	}
	if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x02" {
		t.Fatalf("inc after eviction: %x", out.Reply)
	}
	waitBlanks(t, x, 1, b1, b2)
	st := x.Stats()
	if st.PoolTakes != 2 || m.get("spawned canister") != 0 || m.get("spawned blank") != 3 || len(st.Faults) != 0 {
		t.Fatalf("stats %+v, metrics %v: want 2 takes, 3 blank spawns, no cold canister spawn", st, m.n)
	}
}

// A blank sandbox is as confined as any: taken over by its code (the test
// worker's hostile proxy), it sends while no request is pending or makes a
// forbidden system call; it is killed at once, counted and replaced, with
// nothing left on the host; a canister then gets the replacement and works.
func TestHostileBlankSandboxKilledAndReplaced(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	counted := map[string]string{
		"idle-packet": "violation unsolicited message", "idle-fds": "violation unsolicited message",
		"idle-seccomp": "seccomp socket",
	}
	for _, mode := range []string{"idle-packet", "idle-fds", "idle-seccomp"} {
		t.Run(mode, func(t *testing.T) {
			fds0 := openFDs(t)
			x, m := newPooled(t, SandboxConfig{WarmPool: 1, blankLabel: hostilePrefix + mode})
			pid := waitBlanks(t, x, 1)[0]
			fds1 := openFDs(t) // with one blank sandbox
			if fds1 <= fds0 {
				t.Fatal("the blank sandbox holds no host descriptor: the baseline proves nothing")
			}
			if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			waitGone(t, pid)
			repl := waitBlanks(t, x, 1, pid)[0]
			// What it queued on its socket went with it: the host holds what
			// one blank sandbox costs, no more.
			for deadline := time.Now().Add(30 * time.Second); openFDs(t) > fds1; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("host descriptors %d > %d with the replacement: %s", openFDs(t), fds1, fdList())
				}
			}
			if n := m.get(counted[mode]); n != 1 {
				t.Fatalf("%q counted %d times: %v", counted[mode], n, m.n)
			}
			s := newSim(t, x, "c", wasm)
			s.must(sysapi.CtxInit, "canister_init", empty)
			if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
				t.Fatalf("inc: %x", out.Reply)
			}
			if p := sandboxPid(x, "c"); p != repl {
				t.Fatalf("canister in %d, not the replacement blank %d", p, repl)
			}
		})
	}
}

// A blank sandbox that computes while it waits for work (a thread of its
// own) is killed by the idle CPU check, as an idle canister sandbox is.
// The check is strict and slow here (1% over 2 s, the floor being 50 ms of
// CPU) so that a spinner starved by a saturated machine still exceeds it.
func TestBlankSandboxBurningCPUKilled(t *testing.T) {
	x, m := newPooled(t, SandboxConfig{WarmPool: 1, IdleCPUCheck: 2 * time.Second, IdleCPUPercent: 1, blankLabel: spinWhenIdle})
	pid := waitBlanks(t, x, 1)[0]
	for deadline := time.Now().Add(2 * time.Minute); x.Stats().Faults["idle_cpu"] == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a blank sandbox spinning before it had work was not killed")
		}
	}
	waitGone(t, pid)
	if m.get("crashed idle_cpu") == 0 {
		t.Fatalf("not counted: %v", m.n)
	}
}

// The pool is bounded by the live-sandbox limit and gives way to
// canisters: with room for two sandboxes and a pool of three, there are
// never more than two; canisters take the blanks, and a third canister
// evicts the coldest as without a pool.
func TestWarmPoolBounded(t *testing.T) {
	x, _ := newPooled(t, SandboxConfig{WarmPool: 3, MaxSandboxes: 2})
	wasm := wasmFile(t, corpusDir, "counter")
	blanks := waitBlanks(t, x, 2)
	live := func() int { return len(x.Sandboxes()) }
	sims := map[string]*sim{}
	for _, id := range []string{"a", "b", "c"} {
		sims[id] = newSim(t, x, id, wasm)
		sims[id].must(sysapi.CtxInit, "canister_init", empty)
		if n := live(); n > 2 {
			t.Fatalf("%d live sandboxes after %s, limit 2: %+v", n, id, x.Sandboxes())
		}
	}
	if st := x.Stats(); st.PoolTakes != 2 || st.Evicted == 0 {
		t.Fatalf("stats %+v: want the two blanks taken, then an eviction", st)
	}
	for _, p := range blanks {
		if p != sandboxPid(x, "a") && p != sandboxPid(x, "b") && p != sandboxPid(x, "c") {
			waitGone(t, p)
		}
	}
	for _, id := range []string{"a", "b", "c"} {
		if out := sims[id].must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
			t.Fatalf("%s: %x", id, out.Reply)
		}
		if n := live(); n > 2 {
			t.Fatalf("%d live sandboxes, limit 2", n)
		}
	}
}

// Close kills the blank sandboxes and gives back their host ids; on a root
// host with sandbox.host_ids each blank sandbox already runs as a host uid
// of its own.
func TestWarmPoolCloseAndHostIDs(t *testing.T) {
	var ids *sandbox.IDPool
	base := uint32(3_900_000 + os.Getpid()%1000*10)
	if os.Geteuid() == 0 {
		var err error
		if ids, err = sandbox.NewIDPool(base, base+9); err != nil {
			t.Fatal(err)
		}
	}
	x, _ := newPooled(t, SandboxConfig{WarmPool: 2, HostIDs: ids})
	pids := waitBlanks(t, x, 2)
	if ids != nil {
		uids := map[int]bool{}
		for _, pid := range pids {
			b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
			if err != nil {
				t.Fatal(err)
			}
			uid := -1
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "Uid:"); ok {
					uid, _ = strconv.Atoi(strings.Fields(v)[0])
				}
			}
			if uid < int(base) || uid > int(base+9) {
				t.Fatalf("blank sandbox %d is uid %d, outside %s", pid, uid, ids)
			}
			uids[uid] = true
		}
		if len(uids) != 2 {
			t.Fatalf("two blank sandboxes, uids %v", uids)
		}
	}
	x.Close()
	for _, pid := range pids {
		if err := unix.Kill(pid, 0); err != unix.ESRCH {
			t.Fatalf("blank sandbox %d outlived Close (kill 0: %v)", pid, err)
		}
	}
	if len(blankPids(x)) != 0 {
		t.Fatal("blank sandboxes listed after Close")
	}
	if ids != nil && ids.InUse() != 0 {
		t.Fatalf("%d host ids in use after Close", ids.InUse())
	}
}

// A blank sandbox gives back what its start-up left resident while it
// waits (the worker's idle trim, after the host's one ping), and then
// serves the canister that takes it, its code faulting back in.
func TestBlankSandboxTrimsWhileWaiting(t *testing.T) {
	x, _ := newPooled(t, SandboxConfig{WarmPool: 1})
	pid := waitBlanks(t, x, 1)[0]
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if trimmed, _ := exeTrimmed(t, pid, exe); trimmed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the blank sandbox never trimmed")
		}
	}
	s := newSim(t, x, "a", wasmFile(t, corpusDir, "counter"))
	s.must(sysapi.CtxInit, "canister_init", empty)
	if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("inc: %x", out.Reply)
	}
	if p := sandboxPid(x, "a"); p != pid {
		t.Fatalf("canister in %d, not the trimmed blank %d", p, pid)
	}
	if st := x.Stats(); len(st.Faults) != 0 {
		t.Fatalf("faults %v", st.Faults)
	}
}

// Blank sandboxes count in the memory budget: over it, the pool is not
// refilled, and a canister that finds no blank sandbox makes room by
// eviction as without a pool. (What happens when sandboxes start; the idle
// look, which keeps the budget between starts too and would trim the blank
// that alone fills this one-byte budget, is off here.)
func TestWarmPoolWithinMemoryBudget(t *testing.T) {
	x, _ := newPooled(t, SandboxConfig{WarmPool: 3, MaxTotalRSS: 1, IdleCPUCheck: time.Hour})
	b1 := waitBlanks(t, x, 1)[0] // the first fits an empty budget; it fills it
	if x.blankWanted() {
		t.Fatal("the pool wants another blank sandbox over the memory budget")
	}
	wasm := wasmFile(t, corpusDir, "counter")
	a := newSim(t, x, "a", wasm)
	a.must(sysapi.CtxInit, "canister_init", empty)
	if p := sandboxPid(x, "a"); p != b1 {
		t.Fatalf("a runs in %d, not the blank sandbox %d", p, b1)
	}
	if x.blankWanted() {
		t.Fatal("the pool wants a blank sandbox over the memory budget")
	}
	// A blank sandbox whose start began before the budget filled up is
	// still taken by the next canister.
	x.mu.Lock()
	x.filling++
	x.mu.Unlock()
	if err := x.addBlank(context.Background()); err != nil {
		t.Fatal(err)
	}
	b2 := waitBlanks(t, x, 1, b1)[0]
	st0 := x.Stats()
	b := newSim(t, x, "b", wasm)
	b.must(sysapi.CtxInit, "canister_init", empty)
	if p := sandboxPid(x, "b"); p != b2 {
		t.Fatalf("b runs in %d, not the blank sandbox %d", p, b2)
	}
	if st := x.Stats(); st.PoolTakes != st0.PoolTakes+1 {
		t.Fatalf("stats %+v", st)
	}
	// c finds no blank sandbox: room is made by evicting the coldest canister.
	c := newSim(t, x, "c", wasm)
	c.must(sysapi.CtxInit, "canister_init", empty)
	if st := x.Stats(); st.Evicted == st0.Evicted {
		t.Fatalf("no eviction over the memory budget: %+v", st)
	}
	for _, s := range []*sim{a, b, c} {
		if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
			t.Fatalf("%s: %x", s.id, out.Reply)
		}
	}
}
