package exec

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// While the host makes an answer wait for execution memory (its header
// came, its pages wait for Request.Reserve), the sandbox's watchdog is
// lifted: the wait is the host's. It is not free CPU, though. An honest
// worker is blocked sending its pages then; a sandbox that spins in a
// thread of its own through the wait has what it used taken from what its
// watchdog had left, and one that used more than that is killed as a
// timeout when the wait ends, the execution charged (Op "execute": the
// host charges a watchdog kill as a trap, host.sandboxFault). Before, its
// pages came once the host took them and the execution succeeded, the CPU
// free. An honest sandbox made to wait longer than its whole watchdog is
// not charged.
func TestCPUDuringMemoryWaitIsCharged(t *testing.T) {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t),
		WatchdogBase: 2 * time.Second, InstructionsPerSecond: 1 << 62})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	wasm := wasmFile(t, corpusDir, "counter")

	// cpuOf reads what the canister's sandbox has used, as the host does.
	// Called from Reserve, on the goroutine that holds the sandbox.
	cpuOf := func(id string) (time.Duration, bool) {
		x.mu.Lock()
		sb := x.pool[id]
		x.mu.Unlock()
		if sb == nil || sb.proc == nil {
			return 0, false
		}
		return cpuTime(sb.proc)
	}
	// execute runs canister_init, its answer's pages reserved by hold,
	// which is given the execution's whole watchdog.
	execute := func(s *sim, hold func(deadline time.Duration) error) error {
		req := &Request{Module: s.m, RunStart: true, Input: s.input(sysapi.CtxInit, "canister_init", empty)}
		deadline := x.watchdog(req, s.stable)
		var reserved uint64
		req.Reserve = func(b uint64) error { reserved = b; return hold(deadline) }
		_, err := x.Execute(context.Background(), s.id, req)
		if reserved == 0 {
			t.Fatal("the answer's pages were never reserved: the test proves nothing")
		}
		return err
	}

	t.Run("honest", func(t *testing.T) {
		s := newSim(t, x, "honest-waits", wasm)
		var used time.Duration
		err := execute(s, func(deadline time.Duration) error {
			before, ok := cpuOf(s.id)
			// Longer than the whole watchdog (a lower bound: the timer
			// fires no sooner).
			<-time.After(deadline + time.Second)
			if after, ok2 := cpuOf(s.id); ok && ok2 {
				used = after - before
			}
			return nil
		})
		if err != nil {
			t.Fatalf("an honest sandbox whose answer waited for memory: %v", err)
		}
		t.Logf("the honest sandbox used %s of CPU while it waited", used)
		if n := x.Stats().Faults[FaultTimeout.String()]; n != 0 {
			t.Fatalf("%d timeouts counted", n)
		}
	})

	t.Run("spinning", func(t *testing.T) {
		s := newSim(t, x, hostilePrefix+"spin-after-header", wasm)
		var used time.Duration
		err := execute(s, func(deadline time.Duration) error {
			// Held until the sandbox has used more CPU during the wait
			// than its watchdog had left at its start (at most all of
			// it), the allowance and two of /proc's ticks.
			start, ok := cpuOf(s.id)
			if !ok {
				t.Error("cannot read the sandbox's CPU time")
				return nil
			}
			need := deadline + waitCPUAllowance + 20*time.Millisecond
			for limit := time.Now().Add(2 * time.Minute); used <= need; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(limit) {
					t.Errorf("the spinning sandbox used %s of CPU in two minutes, want over %s", used, need)
					return nil
				}
				now, ok := cpuOf(s.id)
				if !ok {
					t.Error("cannot read the sandbox's CPU time")
					return nil
				}
				used = now - start
			}
			return nil
		})
		var se *SandboxError
		if !errors.As(err, &se) || se.Fault != FaultTimeout || se.Op != "execute" {
			t.Fatalf("a sandbox that spun through the host's wait: want FaultTimeout of execute, got %v", err)
		}
		t.Log(err)
		if se.WaitCPU < used {
			t.Errorf("charged %s of CPU for the wait, it used at least %s", se.WaitCPU, used)
		}
		if se.TimeoutPages != 0 {
			t.Errorf("the error names the pages' deadline (%d pages), not the execution's", se.TimeoutPages)
		}
		if !strings.Contains(err.Error(), "of CPU while its answer waited for the host's memory") {
			t.Errorf("the message does not say the wait's CPU was charged: %q", err)
		}
		if n := x.Stats().Faults[FaultTimeout.String()]; n != 1 {
			t.Fatalf("%d timeouts counted, want 1", n)
		}
		for _, l := range x.List() {
			if l.CanisterID == s.id {
				t.Fatalf("the spinning sandbox is still in the pool (pid %d)", l.Pid)
			}
		}
	})
}
