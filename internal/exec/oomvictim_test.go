package exec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sandbox/confine"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Past the node group's memory limit the kernel OOM-kills the sandbox in
// the group with the highest badness: its memory plus oom_score_adj/1000 of
// the group's limit. Every sandbox has oom_score_adj 1000 while idle, and
// the host lowers it (sandbox.BusyOOMScoreAdj, 500) while it executes, so a
// busy sandbox is taken before idle ones only if it is larger by half the
// group's limit. Here four hostile sandboxes hold about 70 MiB each while
// idle (never evicted: no budget; their growth allowed, as growth during
// their own messages always is), and an honest canister's message that
// alone peaks at about 200 MiB of the 512 MiB group runs beside them
// (less than half the group: were it killed, the kill would be the node's,
// cgroup.oomCause). By size alone the honest sandbox was the victim, its
// message failed (FaultNodeMemory, uncharged, but failed) and failed again
// on the retry, while the holders lived. Now a holder is killed, as a node-memory kill of
// an idle sandbox, and the honest message succeeds on its own sandbox,
// charged exactly what it costs alone.
func TestNodeMemoryOOMSparesTheNeighbour(t *testing.T) {
	const nodeLimit = 512 << 20
	x, started := nodeGroupSandboxed(t, SandboxConfig{NodeMemoryBytes: nodeLimit, MemoryBytes: 2 << 30,
		IdleCPUCheck: time.Hour, IdleMemoryGrowth: 1 << 40, MaxTotalRSS: 1 << 40})
	// Alone, an honest canister's first message fits the group.
	alone := newSim(t, x, "alone", wasmFile(t, corpusDir, "memory"))
	alone.must(sysapi.CtxInit, "canister_init", empty)
	cost := alone.must(sysapi.CtxUpdate, "canister_update grow", growArg(24)).Instructions
	peak, _ := x.group.MemoryPeak()
	t.Logf("the group's peak after that message: %d MiB of %d", peak>>20, nodeLimit>>20)
	x.Forget("alone")
	honest := newSim(t, x, "honest", wasmFile(t, corpusDir, "memory"))
	honest.must(sysapi.CtxInit, "canister_init", empty)
	honestProc := started.proc("honest")
	hostOOMScore(t)
	var (
		holders  []*sandbox.Process
		hostiles []*sim
	)
	for i := range 4 {
		id := fmt.Sprintf("%s-%d", growOnSignal, i)
		hostile := newSim(t, x, id, wasmFile(t, corpusDir, "counter"))
		hostile.must(sysapi.CtxInit, "canister_init", empty)
		holder := started.proc(id)
		before, err := memoryOf(holder)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the holder did not grow", func() bool {
			m, err := memoryOf(holder)
			select {
			case <-holder.Done():
				t.Fatalf("the holder died: %+v", holder.Wait())
			default:
			}
			if err == nil && m > before+64<<20 {
				return true
			}
			// Again until it grows: a signal that comes before its goroutine
			// has called signal.Notify is lost (a later one is ignored).
			if err := syscall.Kill(holder.Pid(), syscall.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			return false
		})
		held, _ := memoryOf(holder)
		t.Logf("holder %d: %d MiB, was %d MiB", i, held>>20, before>>20)
		holders = append(holders, holder)
		hostiles = append(hostiles, hostile)
	}

	// The same message in another canister, beside the holders.
	out, err := honest.run(sysapi.CtxUpdate, "canister_update grow", growArg(24))
	if err != nil || out.Trapped {
		t.Fatalf("the honest canister's message, which fits the group alone, failed beside idle holders: %v %+v", err, out)
	}
	if out.Instructions != cost {
		t.Fatalf("the honest message cost %d instructions beside the holders, %d alone", out.Instructions, cost)
	}
	// The group ran out while it executed (the holders' memory and the
	// message's peak do not fit together), and the kernel took an idle
	// holder: its end may be seen a little after the message's.
	var dead *sandbox.Process
	waitFor(t, "every idle holder lives beside the honest message", func() bool {
		for _, h := range holders {
			if exited(h) {
				dead = h
				return true
			}
		}
		return false
	})
	if st := dead.Wait(); !errors.Is(st.Err, sandbox.ErrNodeOutOfMemory) {
		t.Fatalf("the holder ended, not for the node's memory: %+v", st)
	}
	if p := started.proc("honest"); p != honestProc {
		// The kernel's second victim: a holder's exit marks its memory
		// freed (MMF_OOM_SKIP) before it frees the last of it, and an
		// allocation that fails in between takes the largest sandbox
		// left by badness. The message then ran on a fresh sandbox (the
		// one retry), where the holder's memory is free (RATIONALE.md).
		t.Log("the honest sandbox was a later victim, after a holder; its message ran again on a fresh one")
	}
	// The host is fine: every canister runs on.
	honest.must(sysapi.CtxUpdate, "canister_update grow", growArg(1))
	for i, hostile := range hostiles {
		hostile.must(sysapi.CtxUpdate, "canister_update inc", empty)
		if exited(holders[i]) && started.proc(fmt.Sprintf("%s-%d", growOnSignal, i)) == holders[i] {
			t.Fatal("a hostile canister ran on its dead sandbox")
		}
	}
}

// A canister that alone takes the node group past its limit is killed for
// what it took, not for the node's memory: its sandbox's own limit (here
// the default, 8 GiB) is above the group's, so it never reaches it, but it
// held nearly all of the group. Reported as FaultNodeMemory it went
// uncharged (SYS_TRANSIENT) and was run again: any canister could make its
// messages' instructions free by allocating until the kernel killed it.
// It is FaultCrash for its own limit (sandbox.ErrOutOfMemory), charged.
func TestSandboxAloneFillingTheGroupIsCharged(t *testing.T) {
	const nodeLimit = 160 << 20
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), NodeMemoryBytes: nodeLimit,
		IdleCPUCheck: time.Hour, IdleMemoryGrowth: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	if x.group == nil {
		t.Skip("no cgroup layer here: no node group")
	}
	s := newSim(t, x, "grower", wasmFile(t, corpusDir, "memory"))
	s.must(sysapi.CtxInit, "canister_init", empty)
	out, err := s.run(sysapi.CtxUpdate, "canister_update grow", growArg(24)) // about 200 MiB
	var se *SandboxError
	if !errors.As(err, &se) || se.Fault != FaultCrash || se.Exit == nil || !errors.Is(se.Exit.Err, sandbox.ErrOutOfMemory) {
		t.Fatalf("a canister that alone filled the node group: want FaultCrash for its own memory, got %v %v", err, out)
	}
}

// startedSandboxes launches real sandboxes and keeps each by its label, so
// that a test can watch the process behind a canister's messages.
type startedSandboxes struct {
	mu    sync.Mutex
	procs map[string]*sandbox.Process
}

func (r *startedSandboxes) launch(ctx context.Context, s sandbox.Spec) (Process, error) {
	p, err := sandbox.Start(ctx, s)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.procs == nil {
		r.procs = map[string]*sandbox.Process{}
	}
	r.procs[s.Label] = p
	return p, nil
}

// proc is the sandbox last started for label, nil if none was.
func (r *startedSandboxes) proc(label string) *sandbox.Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.procs[label]
}

// nodeGroupSandboxed is a Sandboxed of cfg, in a test directory and logging
// to the test, whose sandboxes are kept by label; it skips where there is
// no cgroup layer, so no node group.
func nodeGroupSandboxed(t *testing.T, cfg SandboxConfig) (*Sandboxed, *startedSandboxes) {
	t.Helper()
	started := &startedSandboxes{}
	cfg.Dir, cfg.Logger, cfg.Launch = t.TempDir(), testLogger(t), started.launch
	x, err := NewSandboxed(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	if x.group == nil {
		t.Skip("no cgroup layer here: no node group")
	}
	return x, started
}

// growArg is the Candid argument (nat) of the memory canister's grow.
func growArg(mib byte) []byte { return append([]byte("DIDL\x00\x01\x7d"), mib) }

// hostOOMScore is the test's (the host's) own oom_score_adj; it skips where
// a sandbox cannot be steered: no value lies between it and 1000.
func hostOOMScore(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		t.Skipf("no oom_score_adj: %v", err)
	}
	own, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if own >= confine.OOMScoreAdj-1 {
		t.Skipf("the host's own oom_score_adj is %d: sandboxes cannot be steered below 1000 and above it", own)
	}
	return own
}

// While a sandbox executes, its oom_score_adj is lowered (the kernel takes
// idle sandboxes first), and it is back at 1000 when the message has
// returned; Verify accepts either as the host set them. Messages are held
// mid-execution by their output's reservation (Request.Reserve), which the
// host makes before it takes the pages: the sandbox has run and the
// exchange is still in flight (composite queries: their outputs carry
// pages, a plain query's none). Concurrent queries share one sandbox: the
// first of two to end must leave it lowered while the other is in flight.
func TestOOMScoreLoweredWhileExecuting(t *testing.T) {
	var (
		mu   sync.Mutex
		proc *sandbox.Process
	)
	launch := func(ctx context.Context, s sandbox.Spec) (Process, error) {
		p, err := sandbox.Start(ctx, s)
		if err == nil && s.Label == "steered" {
			mu.Lock()
			proc = p
			mu.Unlock()
		}
		return p, err
	}
	// No watchdog can end a message the test holds, however slow the machine.
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), Launch: launch, QueryThreads: 4, Strict: true,
		WatchdogBase: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	s, c := twoWordsSim(t, x, "steered")
	mu.Lock()
	p := proc
	mu.Unlock()
	score := func() int {
		t.Helper()
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid()) + "/oom_score_adj")
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Verify(); err != nil {
			t.Fatalf("Verify at oom_score_adj %d: %v", n, err)
		}
		return n
	}
	own := hostOOMScore(t)
	lowered := func(what string) {
		t.Helper()
		if n := score(); n >= confine.OOMScoreAdj || n <= own {
			t.Fatalf("%s: oom_score_adj %d, want below %d and above the host's %d", what, n, confine.OOMScoreAdj, own)
		}
	}
	idle := func(what string) {
		t.Helper()
		if n := score(); n != confine.OOMScoreAdj {
			t.Fatalf("%s: oom_score_adj %d, want %d", what, n, confine.OOMScoreAdj)
		}
	}
	idle("idle after init")

	// gate returns a Reserve that says when it is called and waits to be
	// let go (or for the test's end: Close waits for what is in flight).
	ended := make(chan struct{})
	t.Cleanup(func() { close(ended) }) // before x.Close
	gate := func() (reserve func(uint64) error, reached, release chan struct{}) {
		reached, release = make(chan struct{}), make(chan struct{})
		return func(uint64) error {
			close(reached)
			select {
			case <-release:
				return nil
			case <-ended:
				return errors.New("the test ended")
			}
		}, reached, release
	}
	run := func(kind sysapi.Context, entry string, reserve func(uint64) error) <-chan error {
		done := make(chan error, 1)
		go func() {
			in := s.input(kind, entry, empty)
			in.Stable = c.stable
			out, err := x.Execute(context.Background(), s.id, &Request{Module: s.m, Heap: c.heap, Globals: c.globals, Input: in, Reserve: reserve})
			if err == nil && out.Trapped {
				err = errors.New(out.TrapMessage)
			}
			done <- err
		}()
		return done
	}

	// reach waits until a message is held at its gate.
	reach := func(reached chan struct{}, done <-chan error) {
		t.Helper()
		select {
		case <-reached:
		case err := <-done:
			t.Fatalf("the message ended without reserving its output's pages: %v", err)
		}
	}

	// An update, alone on its sandbox.
	reserve, reached, release := gate()
	done := run(sysapi.CtxUpdate, "canister_update bump", reserve)
	reach(reached, done)
	lowered("an update in flight")
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	idle("after the update")

	// Two queries in one session.
	reserveA, reachedA, releaseA := gate()
	doneA := run(sysapi.CtxCompositeQuery, "canister_query check", reserveA)
	reach(reachedA, doneA)
	lowered("a query in flight")
	reserveB, reachedB, releaseB := gate()
	doneB := run(sysapi.CtxCompositeQuery, "canister_query check", reserveB)
	waitFor(t, "the second query did not join the first's session", func() bool { return inFlight(x, s.id) == 2 })
	close(releaseA)
	if err := <-doneA; err != nil {
		t.Fatal(err)
	}
	lowered("the first query answered, the second in flight")
	reach(reachedB, doneB)
	lowered("the second query in flight")
	close(releaseB)
	if err := <-doneB; err != nil {
		t.Fatal(err)
	}
	idle("after both queries")
	if st := x.Stats(); st.JoinedQueries == 0 {
		t.Fatalf("no query joined a session: %+v", st)
	}
}
