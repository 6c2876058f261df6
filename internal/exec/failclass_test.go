package exec

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// A sandbox the node group's OOM killer takes between its answer's header
// and the last of its pages is seen by the host as a message cut short
// (boundary: "connection closed after n of m pages", a protocol
// violation), and was charged to its canister as one, before the
// kernel's verdict was read: not the canister's doing, it is
// FaultNodeMemory (SYS_TRANSIENT, uncharged), as the same kill at any
// other moment is.
//
// Two canisters' messages each dirty about 200 MiB of a 512 MiB group and
// are held after their headers (their Reserve waits, as a message waits
// for execution memory; their sandboxes are blocked sending pages), and a
// third canister's message grows beside them until the group is full. All
// three execute, so all have the same oom_score_adj, and the kernel takes
// the largest: a held one, holding under half of the group (the node's
// kill, not its own: sandbox.cgroup.oomCause), mid-pages. Each held
// message runs on a fresh sandbox, so none is retried.
func TestNodeOOMMidPagesIsTheNodes(t *testing.T) {
	const nodeLimit = 512 << 20
	// No watchdog ends a held message, however slow the machine; the idle
	// watch and the memory budget never act.
	x, started := nodeGroupSandboxed(t, SandboxConfig{NodeMemoryBytes: nodeLimit, MemoryBytes: 2 << 30,
		IdleCPUCheck: time.Hour, IdleMemoryGrowth: 1 << 40, MaxTotalRSS: 1 << 40, WatchdogBase: time.Hour})
	ended := make(chan struct{})
	t.Cleanup(func() { close(ended) }) // before x.Close, should the test fail

	wasm := wasmFile(t, corpusDir, "memory")
	held := []*sim{newSim(t, x, "held-0", wasm), newSim(t, x, "held-1", wasm)}
	grower := newSim(t, x, "grower", wasm)
	for _, s := range append([]*sim{grower}, held...) {
		s.must(sysapi.CtxInit, "canister_init", empty)
		x.Forget(s.id) // its next message starts a fresh sandbox
	}

	type result struct {
		id  string
		err error
	}
	results := make(chan result, len(held)+1)
	run := func(s *sim, reserve func(uint64) error) {
		go func() {
			_, err := x.Execute(context.Background(), s.id, &Request{Module: s.m, Heap: s.heap, Globals: s.globals,
				Input: s.input(sysapi.CtxUpdate, "canister_update grow", growArg(24)), Reserve: reserve})
			results <- result{s.id, err}
		}()
	}
	release := make(chan struct{})
	var released sync.Once
	t.Cleanup(func() { released.Do(func() { close(release) }) })
	for _, s := range held {
		reached := make(chan struct{})
		run(s, func(uint64) error {
			close(reached)
			select {
			case <-release:
				return nil
			case <-ended:
				return errors.New("the test ended")
			}
		})
		select {
		case <-reached:
		case r := <-results:
			t.Fatalf("%s's message ended before its pages were reserved: %v", r.id, r.err)
		}
	}
	heldProcs := []*sandbox.Process{started.proc("held-0"), started.proc("held-1")}
	for i, p := range heldProcs {
		m, _ := p.MemoryCharge()
		t.Logf("%s, its answer's header sent: %d MiB", held[i].id, m>>20)
	}

	run(grower, nil)
	var dead *sandbox.Process
	var deadID string
	waitFor(t, "no held sandbox was killed while the group filled", func() bool {
		for i, p := range heldProcs {
			if exited(p) {
				dead, deadID = p, held[i].id
				return true
			}
		}
		return false
	})
	if st := dead.Wait(); !errors.Is(st.Err, sandbox.ErrNodeOutOfMemory) {
		t.Fatalf("the test's premise: %s was to be killed for the node group's memory, it ended with %+v", deadID, st)
	}
	released.Do(func() { close(release) })

	for range len(held) + 1 {
		r := <-results
		var se *SandboxError
		switch {
		case r.id == grower.id:
			// The grower may have been a later victim (its sandbox's
			// fate is not what this test is about).
		case r.id == deadID:
			if !errors.As(r.err, &se) || se.Fault != FaultNodeMemory {
				t.Errorf("%s, killed by the node group's OOM killer mid-pages: want FaultNodeMemory, got %v", r.id, r.err)
			}
		case r.err != nil:
			// A later victim, also mid-pages.
			if !errors.As(r.err, &se) || se.Fault != FaultNodeMemory {
				t.Errorf("%s: want success or FaultNodeMemory, got %v", r.id, r.err)
			}
		}
	}
	if st := x.Stats(); len(st.Violations) != 0 {
		t.Errorf("violations counted: %v", st.Violations)
	}
}

// An answer's pages must come within their own deadline after its header
// (Sandboxed.pagesTime), far shorter here than the execution's (its
// instruction limit at one instruction a second). A sandbox that sends
// its header and then nothing is killed when the pages' deadline expires,
// and the error said the execution's had: a deadline of 555555 hours
// where the sandbox was given a few seconds. It names the pages' deadline
// and its value.
func TestPagesDeadlineNamedWhenItExpires(t *testing.T) {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), WatchdogBase: 2 * time.Second, InstructionsPerSecond: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	s := newSim(t, x, hostilePrefix+"stall-pages", wasmFile(t, corpusDir, "counter"))
	var reserved uint64
	req := &Request{Module: s.m, RunStart: true, Input: s.input(sysapi.CtxInit, "canister_init", empty),
		Reserve: func(b uint64) error { reserved = b; return nil }}
	_, err = x.Execute(context.Background(), s.id, req)
	var se *SandboxError
	if !errors.As(err, &se) || se.Fault != FaultTimeout {
		t.Fatalf("a sandbox that never sent its pages: want FaultTimeout, got %v", err)
	}
	if reserved == 0 {
		t.Fatal("the answer's pages were never reserved: the test proves nothing")
	}
	t.Log(err)
	want := x.pagesTime(reserved)
	execution := x.watchdog(req, s.stable)
	if want >= execution {
		t.Fatalf("the test's premise: the pages' deadline %s is not shorter than the execution's %s", want, execution)
	}
	if se.Timeout != want {
		t.Errorf("the error's deadline is %s, want the pages' %s", se.Timeout, want)
	}
	msg := err.Error()
	if !strings.Contains(msg, fmt.Sprintf("%d pages", reserved/4096)) || !strings.Contains(msg, "deadline of "+want.Round(time.Millisecond).String()) {
		t.Errorf("the message does not name the pages' deadline of %s: %q", want.Round(time.Millisecond), msg)
	}
	if strings.Contains(msg, execution.Round(time.Millisecond).String()) {
		t.Errorf("the message names the execution's deadline of %s: %q", execution.Round(time.Millisecond), msg)
	}
}
