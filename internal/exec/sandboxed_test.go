package exec

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sandbox/confine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/internal/worker"
)

// TestMain doubles as the sandbox: sandbox.Start re-executes this test
// binary, which then serves as the worker.
func TestMain(m *testing.M) {
	if os.Getenv(echoEnv) == "1" {
		os.Exit(echoMain())
	}
	if confine.IsSandbox() {
		if mode := hostileMode(); mode != "" {
			os.Exit(hostileMain(mode))
		}
		if slices.Contains(os.Args, spinWhenIdle) {
			go spin() // a thread of the sandbox's own, as native code could start
		}
		if slices.Contains(os.Args, growWhenIdle) {
			go grow() // likewise, taking memory and keeping it
		}
		if slices.ContainsFunc(os.Args, func(a string) bool { return strings.HasPrefix(a, growOnSignal) }) {
			go growOnUSR1() // likewise, when the test says
		}
		os.Exit(worker.Main())
	}
	os.Exit(m.Run())
}

var (
	corpusDir = filepath.Join("..", "..", "..", "shared", "canisters")
	empty     = []byte("DIDL\x00\x00")
)

func wasmFile(t testing.TB, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name+".wasm"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// sim is a minimal host: a canister's state, advanced by applying outputs.
type sim struct {
	t       testing.TB
	x       Executor
	id      string
	m       *Module
	heap    *state.PageMap
	stable  *state.PageMap
	globals []state.Global
}

func newSim(t testing.TB, x Executor, id string, wasm []byte) *sim {
	m, err := x.Prepare(context.Background(), wasm)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	return &sim{t: t, x: x, id: id, m: m, stable: state.NewPageMap(0)}
}

func (s *sim) input(ctx sysapi.Context, entry string, arg []byte) *sysapi.Input {
	return &sysapi.Input{
		Context: ctx, Entry: entry, Arg: arg, Memory64: s.m.Info.Memory64,
		CanisterID: []byte{0, 0, 0, 0, 0, 0, 0, 1, 1, 1}, Caller: []byte{4},
		Balance: cyclesN(1e12), Status: sysapi.StatusRunning, Time: 1,
		Limits: sysapi.Limits{Instructions: 2e9, HeapBytes: 256 << 20, StableBytes: 1 << 30, ReplyBytes: 2 << 20,
			CallArgBytes: 2 << 20, MaxOutgoing: 100, DebugPrintBytes: 1024, MaxLogLines: 100},
		Stable: s.stable,
	}
}

// run executes and, for a committed update, applies the output.
func (s *sim) run(ctx sysapi.Context, entry string, arg []byte) (*sysapi.Output, error) {
	s.t.Helper()
	fresh := s.heap == nil
	req := &Request{Module: s.m, Heap: s.heap, Globals: s.globals, RunStart: fresh, Input: s.input(ctx, entry, arg)}
	out, err := s.x.Execute(context.Background(), s.id, req)
	if err != nil {
		return nil, err
	}
	if out.Trapped || ctx.IsQuery() {
		return out, nil
	}
	if fresh {
		s.heap = state.NewPageMap(0)
	}
	if err := s.heap.Apply(out.Heap); err != nil {
		s.t.Fatal(err)
	}
	if err := s.stable.Apply(out.Stable); err != nil {
		s.t.Fatal(err)
	}
	s.globals = out.Globals
	return out, nil
}

func (s *sim) must(ctx sysapi.Context, entry string, arg []byte) *sysapi.Output {
	s.t.Helper()
	out, err := s.run(ctx, entry, arg)
	if err != nil {
		s.t.Fatalf("%s: %v", entry, err)
	}
	return out
}

func newReal(t testing.TB) *Sandboxed {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	return x
}

// Real processes: one sandbox per canister, reused across messages,
// respawned after kill -9 with the canister's state intact; outputs
// identical to in-process execution.
func TestSandboxedCounter(t *testing.T) {
	x := newReal(t)
	ip, _ := NewInProcess(engine.DefaultModuleLimits())
	wasm := wasmFile(t, corpusDir, "counter")
	sb := newSim(t, x, "counter-1", wasm)
	ref := newSim(t, ip, "counter-1", wasm)
	if !reflect.DeepEqual(sb.m.Info, ref.m.Info) {
		t.Fatalf("info differs:\n%+v\n%+v", sb.m.Info, ref.m.Info)
	}
	step := func(ctx sysapi.Context, entry string) *sysapi.Output {
		t.Helper()
		got := sb.must(ctx, entry, empty)
		want := ref.must(ctx, entry, empty)
		boundary.Normalize(ctx, want)
		if !boundary.Equal(got, want) {
			t.Fatalf("%s: sandboxed and in-process outputs differ:\n%+v\n%+v", entry, got, want)
		}
		return got
	}
	step(sysapi.CtxInit, "canister_init")
	step(sysapi.CtxUpdate, "canister_update inc")
	list := x.List()
	if len(list) != 1 || list[0].CanisterID != "counter-1" || list[0].Pid <= 0 || list[0].Messages != 2 {
		t.Fatalf("list: %+v", list)
	}
	pid := list[0].Pid
	step(sysapi.CtxUpdate, "canister_update inc")
	if l := x.List(); l[0].Pid != pid || l[0].Messages != 3 || l[0].RSS == 0 {
		t.Fatalf("sandbox not reused: %+v (pid was %d)", l, pid)
	}
	// kill -9 between messages: the next message works, on a new sandbox.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	out := step(sysapi.CtxUpdate, "canister_update inc")
	if string(out.Reply) != "DIDL\x00\x01\x7d\x03" {
		t.Fatalf("inc after kill: %x", out.Reply)
	}
	if l := x.List(); len(l) != 1 || l[0].Pid == pid {
		t.Fatalf("not respawned: %+v", l)
	}
	out = step(sysapi.CtxNonReplicatedQuery, "canister_query get")
	if string(out.Reply) != "DIDL\x00\x01\x7d\x03" {
		t.Fatalf("get: %x", out.Reply)
	}
	// kill -9 right before a message, without waiting: the message still
	// works (a dead reused sandbox is retried once on a fresh one).
	pid = x.List()[0].Pid
	syscall.Kill(pid, syscall.SIGKILL)
	step(sysapi.CtxUpdate, "canister_update inc")
	x.Forget("counter-1")
	if l := x.List(); len(l) != 0 {
		t.Fatalf("after Forget: %+v", l)
	}
	waitGone(t, pid)
	st := x.Stats()
	t.Logf("stats: %+v", st)
	if st.Compiles != 1 {
		t.Fatalf("%d compilations, want 1", st.Compiles)
	}
}

func waitGone(t testing.TB, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat("/proc/" + itoa(pid)); errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("process %d still exists", pid)
}

func itoa(n int) string { return strconv.Itoa(n) }

func cyclesN(n uint64) cycles.Amount { return cycles.New(n) }

// Per-message latency of counter inc: in-process vs sandboxed (real
// confined process, reused), state applied after every message.
func BenchmarkCounterInc(b *testing.B) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		b.Run(mode, func(b *testing.B) {
			var x Executor
			if mode == "sandbox" {
				x = newReal(b)
			} else {
				x, _ = NewInProcess(engine.DefaultModuleLimits())
			}
			s := newSim(b, x, "bench", wasmFile(b, corpusDir, "counter"))
			s.must(sysapi.CtxInit, "canister_init", empty)
			s.must(sysapi.CtxUpdate, "canister_update inc", empty)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s.must(sysapi.CtxUpdate, "canister_update inc", empty)
			}
			b.StopTimer()
			b.ReportMetric(float64(len(s.heap.StoredPages())), "heap-pages")
		})
	}
}

// Cold start: spawn a confined sandbox, load the cached artifact, execute.
func BenchmarkCounterIncCold(b *testing.B) {
	x := newReal(b)
	s := newSim(b, x, "bench", wasmFile(b, corpusDir, "counter"))
	s.must(sysapi.CtxInit, "canister_init", empty)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		x.Forget("bench")
		b.StartTimer()
		s.must(sysapi.CtxUpdate, "canister_update inc", empty)
	}
}

// The watchdog kills a real sandbox that runs past its wall-clock
// deadline (here: fuel far beyond the deadline), and the canister's next
// message gets a fresh sandbox.
func TestSandboxedWatchdog(t *testing.T) {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t),
		WatchdogBase: 500 * time.Millisecond, InstructionsPerSecond: 1 << 62})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	s := newSim(t, x, "compute", wasmFile(t, corpusDir, "compute"))
	s.must(sysapi.CtxInit, "canister_init", empty)
	pid := x.List()[0].Pid
	req := &Request{Module: s.m, Heap: s.heap, Globals: s.globals, Input: s.input(sysapi.CtxUpdate, "canister_update spin", empty)}
	req.Input.Limits.Instructions = 1 << 50
	start := time.Now()
	_, err = x.Execute(context.Background(), "compute", req)
	var se *SandboxError
	if !errors.As(err, &se) || se.Fault != FaultTimeout {
		t.Fatalf("want a timeout, got %v", err)
	}
	t.Logf("%v after %v", err, time.Since(start))
	waitGone(t, pid)
	out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query fib", []byte("DIDL\x00\x01\x7d\x0a"))
	if string(out.Reply) != "DIDL\x00\x01\x7d\x37" {
		t.Fatalf("fib(10) after the timeout: %x", out.Reply)
	}
	// A caller that gives up ends the execution too (and the sandbox).
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	pid = x.List()[0].Pid
	if _, err := x.Execute(ctx, "compute", req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled: %v", err)
	}
	waitGone(t, pid)
}

// lineRecorder is a slog handler that keeps every message and attribute.
type lineRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *lineRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *lineRecorder) Handle(_ context.Context, rec slog.Record) error {
	line := rec.Message
	rec.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
	r.mu.Lock()
	r.lines = append(r.lines, line)
	r.mu.Unlock()
	return nil
}
func (r *lineRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *lineRecorder) WithGroup(string) slog.Handler      { return r }

// A real sandbox gets the memories as descriptors and finds written pages
// through the kernel: on a heap of 64 MiB it never falls back to comparing
// pages (it would say so in its log), and its results equal in-process ones.
func TestSandboxMapsMemories(t *testing.T) {
	rec := &lineRecorder{}
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	ip, _ := NewInProcess(engine.DefaultModuleLimits())
	wasm := wasmFile(t, corpusDir, "counter")
	sb, ref := newSim(t, x, "mapped-1", wasm), newSim(t, ip, "mapped-1", wasm)
	for _, s := range []*sim{sb, ref} {
		s.must(sysapi.CtxInit, "canister_init", empty)
		// A large committed heap with data on every 16th page.
		grown := state.Delta{Size: 64 << 20}
		for i := s.heap.NumPages(); i < (64<<20)/state.PageSize; i += 16 {
			p := new(state.Page)
			p[0] = byte(i)
			grown.Pages = append(grown.Pages, state.DirtyPage{Index: i, Data: p})
		}
		if err := s.heap.Apply(grown); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ {
		got := sb.must(sysapi.CtxUpdate, "canister_update inc", empty)
		want := ref.must(sysapi.CtxUpdate, "canister_update inc", empty)
		boundary.Normalize(sysapi.CtxUpdate, want)
		if !boundary.Equal(got, want) {
			t.Fatalf("inc %d: sandboxed and in-process outputs differ", i)
		}
		if len(got.Heap.Pages) == 0 || len(got.Heap.Pages) > 64 {
			t.Fatalf("inc %d: %d dirty pages", i, len(got.Heap.Pages))
		}
	}
	if sb.heap.File() == nil {
		t.Fatal("the heap has no image to hand over")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, l := range rec.lines {
		if strings.Contains(l, "comparing all") {
			t.Fatalf("the sandbox compared pages: %s", l)
		}
	}
}

// A canister sandbox loads one module: once it is loaded, the sandbox can
// make no more memory executable (W^X, PR_SET_MDWE), so a module change
// (upgrade, reinstall) is served by a fresh sandbox, without a fault.
func TestModuleChangeRespawns(t *testing.T) {
	x := newReal(t)
	pidOf := func() int {
		for _, s := range x.List() {
			if s.CanisterID == "upgraded" {
				return s.Pid
			}
		}
		t.Fatal("no sandbox listed")
		return 0
	}
	a := newSim(t, x, "upgraded", wasmFile(t, corpusDir, "counter"))
	a.must(sysapi.CtxInit, "canister_init", empty)
	a.must(sysapi.CtxUpdate, "canister_update inc", empty)
	pid1 := pidOf()
	b := newSim(t, x, "upgraded", wasmFile(t, filepath.Join("..", "..", "examples"), "counter64"))
	b.must(sysapi.CtxInit, "canister_init", empty)
	out := b.must(sysapi.CtxUpdate, "canister_update inc", empty)
	if string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
		t.Fatalf("new module: reply %x", out.Reply)
	}
	pid2 := pidOf()
	if pid2 == pid1 {
		t.Fatalf("the module changed but sandbox %d was reused", pid1)
	}
	waitGone(t, pid1)
	// Same module again: the sandbox is reused.
	b.must(sysapi.CtxUpdate, "canister_update inc", empty)
	if pid3 := pidOf(); pid3 != pid2 {
		t.Fatalf("same module, new sandbox %d (was %d)", pid3, pid2)
	}
	if st := x.Stats(); len(st.Faults) != 0 || st.Spawned-st.Compiles != 2 { // Spawned counts compiler sandboxes too
		t.Fatalf("stats %+v", st)
	}
}

// With a pool of host ids (sandbox.host_ids), every live sandbox of a root
// host is a host user of its own (internal/sandbox TestHostIDsPerSandbox
// shows why: per-user kernel limits).
func TestSandboxHostIDs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only a root host can give sandboxes ids of their own")
	}
	base := uint32(3_800_000 + os.Getpid()%1000*10)
	ids, err := sandbox.NewIDPool(base, base+9)
	if err != nil {
		t.Fatal(err)
	}
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), HostIDs: ids})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	wasm := wasmFile(t, corpusDir, "counter")
	for _, id := range []string{"a", "b"} {
		newSim(t, x, id, wasm).must(sysapi.CtxInit, "canister_init", empty)
	}
	uids := map[int]bool{}
	for _, s := range x.List() {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(s.Pid) + "/status")
		if err != nil {
			t.Fatal(err)
		}
		var uid int
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Uid:"); ok {
				uid, _ = strconv.Atoi(strings.Fields(v)[0])
			}
		}
		if uid < int(base) || uid > int(base+9) {
			t.Fatalf("sandbox %s is uid %d, outside %s", s.CanisterID, uid, ids)
		}
		uids[uid] = true
	}
	if len(uids) != 2 {
		t.Fatalf("two sandboxes, uids %v", uids)
	}
	x.Close()
	if n := ids.InUse(); n != 0 {
		t.Fatalf("%d ids still in use after Close", n)
	}
}
