package exec

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// An execution's output pages are reserved (Request.Reserve) before the
// executor holds them. The host may make an update wait for that memory
// longer than the sandbox's watchdog allows the whole execution: the wait
// is the host's, so the sandbox is not timed out for it. A refusal fails
// the execution with the host's reason and drops the answer, the sandbox
// kept (it did nothing wrong); the next message runs on it as usual. Both
// executors ask for the same bytes.
func TestReserveOutputPages(t *testing.T) {
	const watchdog = 300 * time.Millisecond
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t),
		WatchdogBase: watchdog, InstructionsPerSecond: 1 << 62})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	ip, err := NewInProcess(x.cfg.ModuleLimits)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		x    Executor
	}{{"sandbox", x}, {"inprocess", ip}} {
		t.Run(c.name, func(t *testing.T) {
			s := newSim(t, c.x, "counter-"+c.name, wasmFile(t, corpusDir, "counter"))
			s.must(sysapi.CtxInit, "canister_init", empty)
			pid := func() int {
				if l := x.List(); c.x == x && len(l) == 1 {
					return l[0].Pid
				}
				return 0
			}
			before := pid()
			inc := func(reserve func(uint64) error) (*sysapi.Output, error) {
				req := &Request{Module: s.m, Heap: s.heap, Globals: s.globals, Input: s.input(sysapi.CtxUpdate, "canister_update inc", empty), Reserve: reserve}
				return c.x.Execute(context.Background(), s.id, req)
			}

			// A wait of three times the watchdog (a lower bound: the
			// timer fires no sooner) before the host takes the pages.
			var asked uint64
			out, err := inc(func(b uint64) error {
				asked = b
				<-time.After(3 * watchdog)
				return nil
			})
			if err != nil {
				t.Fatalf("an execution whose output waited for memory: %v", err)
			}
			if want := uint64(len(out.Heap.Pages)+len(out.Stable.Pages)) * state.PageSize; asked != want || want == 0 {
				t.Fatalf("reserved %d bytes for an output of %d", asked, want)
			}

			full := errors.New("no room")
			_, err = inc(func(uint64) error { return full })
			if !errors.Is(err, full) {
				t.Fatalf("a refused output: want %v, got %v", full, err)
			}
			var re *boundary.ReserveError
			if c.x == x && !errors.As(err, &re) {
				t.Fatalf("a refused answer: want a boundary.ReserveError, got %T %v", err, err)
			}
			if after := pid(); after != before {
				t.Fatalf("the sandbox was replaced (pid %d, then %d)", before, after)
			}
			// Nothing was committed: inc goes from where it was.
			out = s.must(sysapi.CtxUpdate, "canister_update inc", empty)
			if string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
				t.Fatalf("inc after a refused one: %x", out.Reply)
			}
			if after := pid(); after != before {
				t.Fatalf("the sandbox was replaced (pid %d, then %d)", before, after)
			}
		})
	}
}
