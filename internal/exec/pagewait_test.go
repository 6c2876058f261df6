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

// pagesSandboxed is an executor whose answers' pages are bounded by their
// own deadline (pagesTime, from a WatchdogBase of 1 s), the execution's
// being practically unbounded (one instruction a second).
func pagesSandboxed(t *testing.T) *Sandboxed {
	t.Helper()
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), WatchdogBase: time.Second, InstructionsPerSecond: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	return x
}

// growOneMiB runs the memory canister's init and then grow(1) (an answer of
// a few hundred pages) on s, reserve given the latter's pages.
func growOneMiB(t *testing.T, x *Sandboxed, s *sim, reserve func(uint64) error) (*sysapi.Output, error) {
	t.Helper()
	s.must(sysapi.CtxInit, "canister_init", empty)
	return x.Execute(context.Background(), s.id, &Request{Module: s.m, Heap: s.heap, Globals: s.globals,
		Input: s.input(sysapi.CtxUpdate, "canister_update grow", growArg(1)), Reserve: reserve})
}

// The host paces an answer's pages as much as the sandbox does: it reads,
// checks and files each packet, and under load, the race detector or
// while waiting for memory it is slow. Their deadline was the clock's, so
// an honest sandbox behind a slow host was killed, charged as a timeout
// (CI under -race killed an honest 256 MiB answer). Only the time the
// host's reader waits on an empty socket counts now: here the host takes
// twice the pages' whole deadline to file them, the sandbox sending
// each packet as soon as there is room, and the answer succeeds.
func TestSlowHostDoesNotMakeHonestPagesLate(t *testing.T) {
	x := pagesSandboxed(t)
	s := newSim(t, x, "honest-behind-slow-host", wasmFile(t, corpusDir, "memory"))
	var pause time.Duration
	x.afterPagePacket = func() { time.Sleep(pause) }
	var reserved uint64
	out, err := growOneMiB(t, x, s, func(b uint64) error {
		reserved = b
		pages := b / state.PageSize
		packets := (pages + boundary.PagesPerPacket - 1) / boundary.PagesPerPacket
		pause = 2 * x.pagesTime(b) / time.Duration(packets)
		return nil
	})
	if reserved == 0 {
		t.Fatal("the answer's pages were never reserved: the test proves nothing")
	}
	if err != nil {
		t.Fatalf("an honest sandbox behind a slow host (%d pages, their deadline %s, the host %s a packet): %v",
			reserved/state.PageSize, x.pagesTime(reserved), pause, err)
	}
	if got := uint64(len(out.Heap.Pages)+len(out.Stable.Pages)) * state.PageSize; got != reserved {
		t.Fatalf("%d bytes of pages received, %d reserved", got, reserved)
	}
}

// A sandbox that sends its pages one at a time, each after a pause far
// shorter than their deadline (hostile-dribble-pages), keeps the host
// waiting as long as it likes pause by pause; the waits add up, and it is
// killed once their sum reaches the pages' deadline, charged as a timeout
// of that deadline. Sending them all would take several times as long.
func TestDribbledPagesEndAtTheirDeadline(t *testing.T) {
	x := pagesSandboxed(t)
	s := newSim(t, x, hostilePrefix+"dribble-pages", wasmFile(t, corpusDir, "memory"))
	var reserved uint64
	start := time.Now()
	_, err := growOneMiB(t, x, s, func(b uint64) error { reserved = b; return nil })
	var se *SandboxError
	if !errors.As(err, &se) || se.Fault != FaultTimeout {
		t.Fatalf("a sandbox that dribbled its pages: want FaultTimeout, got %v", err)
	}
	t.Log(err)
	if reserved == 0 {
		t.Fatal("the answer's pages were never reserved: the test proves nothing")
	}
	want := x.pagesTime(reserved)
	if all := time.Duration(reserved/state.PageSize) * dribblePause; all < 2*want {
		t.Fatalf("the test's premise: dribbling %d pages takes %s, not well beyond their deadline of %s", reserved/state.PageSize, all, want)
	}
	if se.TimeoutPages != reserved/state.PageSize || se.Timeout != want {
		t.Errorf("the error names %d pages and %s, want %d and the pages' deadline of %s", se.TimeoutPages, se.Timeout, reserved/state.PageSize, want)
	}
	if took := time.Since(start); took > 2*time.Minute {
		t.Errorf("the dribbling sandbox was killed after %s", took)
	}
}
