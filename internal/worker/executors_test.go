package worker

import (
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
)

// The worker keeps its executor goroutines between executions: many
// executions, one after another and several at once, run on at most
// cap(slots) of them, none ends while the session lasts, and all of them
// end when it does.
func TestWorkerExecutorsAreKeptAndEnd(t *testing.T) {
	m, path := compiledArtifact(t, spinQuickWat)

	// The worker's loop in a goroutine, its struct at hand.
	w, _, h, c, done := loopingWorker(t)
	defer h.Close()

	if err := loadArtifact(t, c, m.Info.Hash, path); err != nil {
		t.Fatal(err)
	}
	infl := boundary.NewInflight(c)
	stable := state.NewPageMap(0)
	id := uint64(1)
	send := func(entry string, instructions uint64) uint64 {
		id++
		sendQuery(t, c, infl, m, id, entry, instructions, stable)
		return id
	}
	next := func(trapped bool) {
		t.Helper()
		_, out, err := infl.Next(nil)
		if err != nil || out.Trapped != trapped {
			t.Fatalf("answer: %v %+v", err, out)
		}
	}

	// One after another: more executions than executors may exist.
	const sequential = 3 * boundary.MaxInFlight
	for range sequential {
		send("canister_query quick", 1_000_000)
		next(false)
	}
	if n := w.started.Load(); n < 1 || n > boundary.MaxInFlight {
		t.Fatalf("%d executions one after another started %d executors (want 1..%d)", sequential, n, boundary.MaxInFlight)
	}
	t.Logf("%d executions one after another ran on %d executors", sequential, w.started.Load())

	// Several at once: each needs an executor of its own.
	const together = 3
	for range together {
		send("canister_query spin", 50_000_000)
	}
	for range together {
		next(true)
	}
	started := w.started.Load()
	if started < together || started > boundary.MaxInFlight {
		t.Fatalf("%d executions at once: %d executors started (want %d..%d)", together, started, together, boundary.MaxInFlight)
	}
	// And they are kept: more executions start none beyond the bound, and
	// none has ended.
	for range sequential {
		send("canister_query quick", 1_000_000)
		next(false)
	}
	if n, live := w.started.Load(), w.live.Load(); n > boundary.MaxInFlight || live != n {
		t.Fatalf("executors: %d started, %d live (want all live, at most %d)", n, live, boundary.MaxInFlight)
	}
	if got := executorGoroutines(); got != int(w.live.Load()) {
		t.Fatalf("%d executor goroutines, the worker counts %d", got, w.live.Load())
	}

	// The session ends: the loop returns only once every executor has.
	h.Close()
	if code := <-done; code != ExitOK {
		t.Fatalf("loop returned %d", code)
	}
	if live := w.live.Load(); live != 0 {
		t.Fatalf("%d executors outlived the session", live)
	}
	// An executor's goroutine counts itself out just before it returns:
	// let those still returning do so.
	got := executorGoroutines()
	for i := 0; got != 0 && i < 1000; i++ {
		runtime.Gosched()
		got = executorGoroutines()
	}
	if got != 0 {
		t.Fatalf("%d executor goroutines outlived the session", got)
	}
}

// loopingWorker is a canister worker whose loop runs in a goroutine over a
// socket pair, with its engine: the host's end of the pair and a Conn on
// it, and the loop's exit code once it returns (after the host's end
// closes).
func loopingWorker(t *testing.T) (w *worker, we *engine.Engine, h *net.UnixConn, c *boundary.Conn, done chan int) {
	t.Helper()
	h, s, err := boundary.Pair()
	if err != nil {
		t.Fatal(err)
	}
	we, err = engine.New(engine.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	w = newWorker(boundary.NewConn(s), boundary.ModeCanister, we)
	done = make(chan int, 1)
	go func() { defer s.Close(); done <- w.loop() }()
	return w, we, h, boundary.NewConn(h), done
}

// executorGoroutines counts the goroutines of this process running a
// worker's executor.
func executorGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "worker.(*worker).executor(") {
			count++
		}
	}
	return count
}
