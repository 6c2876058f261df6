package exec

import (
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// growOnSignal, as a canister id, makes this test binary's worker take
// 96 MiB at once, and keep it, when it receives SIGUSR1: a sandbox whose
// native code grows at a moment of its choosing, here right after an
// exchange has ended (the test sends the signal then, as the worker's own
// code, which sees its socket, could time it without help).
const growOnSignal = "test-grow-on-signal"

var signalSink []byte

func growOnUSR1() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	<-c
	b := make([]byte, 96<<20)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	signalSink = b
}

// The idle memory watch judges growth from what the sandbox held when its
// last exchange ended, not only from its first look after it: memory taken
// in between (up to IdleCPUCheck later, longer when idle sandboxes take
// turns) was part of the mark and never judged, so a sandbox that grew by
// any amount right after each message was never killed as idle_memory.
func TestIdleGrowthRightAfterAnExchangeIsKilled(t *testing.T) {
	// The watch runs only when the test calls it.
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), IdleCPUCheck: time.Hour, IdleCPUPercent: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	wasm := wasmFile(t, corpusDir, "counter")
	hostile := newSim(t, x, growOnSignal, wasm)
	hostile.must(sysapi.CtxInit, "canister_init", empty)
	x.mu.Lock()
	sb := x.pool[growOnSignal]
	x.mu.Unlock()
	if sb == nil || sb.pid == 0 {
		t.Fatal("no sandbox for the canister")
	}
	sb.mu.Lock()
	proc := sb.proc
	sb.mu.Unlock()
	atEnd, err := memoryOf(proc)
	if err != nil {
		t.Fatal(err)
	}
	// The exchange is over; the worker takes 96 MiB before the watch looks.
	if err := syscall.Kill(sb.pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the worker did not grow", func() bool {
		m, err := memoryOf(proc)
		if err == nil && m > atEnd+64<<20 {
			return true
		}
		// Again until it grows: a signal that comes before its goroutine
		// has called signal.Notify is lost (a later one is ignored).
		if err := syscall.Kill(sb.pid, syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		return false
	})
	for range 3 {
		x.watchIdleCPU()
	}
	if x.Stats().Faults["idle_memory"] == 0 {
		now, _ := memoryOf(proc)
		t.Fatalf("a sandbox that grew from %d to %d bytes after its last exchange, idle since, was not killed (IdleMemoryGrowth %d)",
			atEnd, now, x.cfg.IdleMemoryGrowth)
	}
}
