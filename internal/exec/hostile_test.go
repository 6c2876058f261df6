package exec

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/internal/worker"
)

// The hostile-sandbox harness: sandboxes are stand-ins running in this
// process over socket pairs. Compilers and neighbours run the real worker;
// the victim canister's stand-in speaks the protocol and misbehaves as each
// test scripts it.

type fakeProc struct {
	host, child *net.UnixConn
	pid         int
	once        sync.Once
	killed      chan struct{}
	done        chan struct{}
}

func (p *fakeProc) Conn() *net.UnixConn { return p.host }
func (p *fakeProc) Pid() int            { return p.pid }
func (p *fakeProc) Kill() error {
	p.once.Do(func() { close(p.killed); p.child.Close() })
	return nil
}
func (p *fakeProc) Wait() sandbox.ExitStatus {
	<-p.done
	return sandbox.ExitStatus{Code: -1, Signal: unix.SIGKILL}
}
func (p *fakeProc) RSS() (uint64, error)  { return 0, nil }
func (p *fakeProc) Done() <-chan struct{} { return p.done }
func (p *fakeProc) wasKilled() bool {
	select {
	case <-p.killed:
		return true
	default:
		return false
	}
}

var fakePids atomic.Int64

func init() { fakePids.Store(1 << 22) }

// standIn is the victim's sandbox side.
type standIn struct {
	c      *boundary.Conn
	raw    *net.UnixConn
	killed <-chan struct{}
	ref    *engine.Engine
	mod    *engine.Module
}

// honest computes the output an honest sandbox would send.
func (s *standIn) honest(q *boundary.Request) *sysapi.Output {
	var g []state.Global
	if q.Exec.HasGlobals {
		g = q.Exec.Globals
	}
	out, err := s.ref.Run(&engine.Request{Module: s.mod, Heap: q.Heap, Globals: g, RunStart: q.Exec.RunStart, Input: q.Exec.Input})
	if err != nil {
		panic(err)
	}
	boundary.Normalize(q.Exec.Input.Context, out)
	return out
}

func (s *standIn) packet(b []byte, oob []byte) error {
	_, _, err := s.raw.WriteMsgUnix(b, oob, nil)
	return err
}

func header(k boundary.Kind, nfds uint32, id, length uint64, body []byte) []byte {
	b := make([]byte, boundary.HeaderSize, boundary.HeaderSize+len(body))
	b[0], b[1] = byte(k), boundary.Version
	binary.LittleEndian.PutUint32(b[4:], nfds)
	binary.LittleEndian.PutUint64(b[8:], id)
	binary.LittleEndian.PutUint64(b[16:], length)
	return append(b, body...)
}

// hang blocks until the host kills the stand-in.
func (s *standIn) hang() { <-s.killed }

// A script handles one Execute. It returns false to end the stand-in
// (the process exits: its socket closes).
type script func(s *standIn, q *boundary.Request) bool

type harness struct {
	t       *testing.T
	x       *Sandboxed
	victim  string
	mu      sync.Mutex
	script  script // nil: the victim is honest too
	onLoad  func(s *standIn) bool
	onStart func(s *standIn) bool
	procs   []*fakeProc
	ref     *engine.Engine
	mod     *engine.Module
}

func (h *harness) launch(ctx context.Context, spec sandbox.Spec) (Process, error) {
	host, child, err := boundary.Pair()
	if err != nil {
		return nil, err
	}
	p := &fakeProc{host: host, child: child, pid: int(fakePids.Add(1)), killed: make(chan struct{}), done: make(chan struct{})}
	h.mu.Lock()
	h.procs = append(h.procs, p)
	sc, onLoad, onStart := h.script, h.onLoad, h.onStart
	h.mu.Unlock()
	if spec.Label != h.victim || (sc == nil && onLoad == nil && onStart == nil) {
		go func() {
			defer close(p.done)
			worker.Serve(child, spec.Args)
		}()
		return p, nil
	}
	s := &standIn{c: boundary.NewConn(child), raw: child, killed: p.killed, ref: h.ref, mod: h.mod}
	go func() {
		defer close(p.done)
		defer child.Close()
		if onStart != nil && !onStart(s) {
			return
		}
		if s.c.Send(&boundary.Msg{Kind: boundary.KindReady, Body: boundary.EncodeReady(boundary.ModeCanister)}) != nil {
			return
		}
		for {
			q, err := s.c.NextRequest()
			if err != nil {
				return
			}
			switch q.Kind {
			case boundary.KindLoad:
				q.File.Close()
				if onLoad != nil && !onLoad(s) {
					return
				}
				s.c.Send(&boundary.Msg{Kind: boundary.KindLoaded, ID: q.ID, Body: boundary.EncodeHash(q.Hash)})
			case boundary.KindExecute:
				if sc == nil {
					s.c.SendOutput(q.ID, s.honest(q))
					continue
				}
				if !sc(s, q) {
					return
				}
			default:
				return
			}
		}
	}()
	return p, nil
}

func (h *harness) set(sc script) {
	h.mu.Lock()
	h.script = sc
	h.mu.Unlock()
}

func (h *harness) lastVictimKilled() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.procs[len(h.procs)-1].wasKilled()
}

func fdList() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+"="+l)
	}
	return strings.Join(out, " ")
}

func openFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// settle waits for goroutines and fds to return to a baseline.
func settle(t *testing.T, goroutines, fds int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Stand-in workers run wasmtime in this process; its modules hold
		// memfds until their finalizers run.
		runtime.GC()
		g, f := runtime.NumGoroutine(), openFDs(t)
		if g <= goroutines && f <= fds {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("leak: %d goroutines (baseline %d), %d fds (baseline %d): %s\n%s", g, goroutines, f, fds, fdList(), buf[:n])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// patientWatchdog is the harness's watchdog for steps that must not time
// out: far longer than any honest execution on a loaded machine.
const patientWatchdog = time.Minute

func TestHostileSandbox(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	ref, err := engine.New(engine.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	mod, err := ref.Compile(wasm, engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	newHarness := func(t *testing.T) *harness {
		h := &harness{t: t, victim: "victim", ref: ref, mod: mod}
		x, err := NewSandboxed(SandboxConfig{Dir: dir, Logger: testLogger(t), Launch: h.launch,
			WatchdogBase: patientWatchdog, InstructionsPerSecond: 1 << 62, StartTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		h.x = x
		return h
	}
	// Warm up (compile into the shared cache, start lazy runtime parts;
	// wasmtime creates a module's memory image on first instantiation).
	{
		h := newHarness(t)
		v := newSim(t, h.x, "victim", wasm)
		v.must(sysapi.CtxInit, "canister_init", empty)
		h.x.Close()
		if _, err := ref.Run(&engine.Request{Module: mod, RunStart: true, Input: v.input(sysapi.CtxInit, "canister_init", empty)}); err != nil {
			t.Fatal(err)
		}
	}

	type tc struct {
		name  string
		query bool // the hostile step is a query
		init  bool // the hostile step is the install (no heap yet)
		hangs bool // the stand-in goes silent: the watchdog must end the step
		sc    script
		check func(t *testing.T, err error)
	}
	violation := func(kind boundary.ViolationKind) func(*testing.T, error) {
		return func(t *testing.T, err error) {
			var se *SandboxError
			if !errors.As(err, &se) || se.Fault != FaultViolation || se.Violation.Kind != kind {
				t.Fatalf("want a %s violation, got %v", kind, err)
			}
			if !strings.HasPrefix(err.Error(), "sandbox protocol violation: ") {
				t.Fatalf("message: %v", err)
			}
		}
	}
	fault := func(f Fault) func(*testing.T, error) {
		return func(t *testing.T, err error) {
			var se *SandboxError
			if !errors.As(err, &se) || se.Fault != f {
				t.Fatalf("want a %s, got %v", f, err)
			}
		}
	}
	tamper := func(f func(q *boundary.Request, o *sysapi.Output)) script {
		return func(s *standIn, q *boundary.Request) bool {
			out := s.honest(q)
			f(q, out)
			s.c.SendOutput(q.ID, out)
			s.hang()
			return false
		}
	}
	cases := []tc{
		{name: "garbage", sc: func(s *standIn, q *boundary.Request) bool {
			s.packet([]byte("\x7fELF garbage garbage garbage garbage"), nil)
			s.hang()
			return false
		}, check: violation(boundary.VFraming)},
		{name: "frame length 2^63", sc: func(s *standIn, q *boundary.Request) bool {
			s.packet(header(boundary.KindOutput, 0, q.ID, 1<<63, []byte{1, 2, 3}), nil)
			s.hang()
			return false
		}, check: violation(boundary.VSize)},
		{name: "truncated frame then EOF", sc: func(s *standIn, q *boundary.Request) bool {
			s.packet(header(boundary.KindOutput, 0, q.ID, 1000, []byte{1, 2, 3}), nil)
			return false
		}, check: violation(boundary.VFraming)},
		{name: "frame cut then silence", sc: func(s *standIn, q *boundary.Request) bool {
			s.packet(header(boundary.KindOutput, 0, q.ID, 1000, []byte{1, 2, 3}), nil)
			s.hang()
			return false
		}, hangs: true, check: fault(FaultTimeout)},
		{name: "silence", hangs: true, sc: func(s *standIn, q *boundary.Request) bool { s.hang(); return false }, check: fault(FaultTimeout)},
		{name: "wrong execution id", sc: func(s *standIn, q *boundary.Request) bool {
			s.c.SendOutput(q.ID+1, s.honest(q))
			s.hang()
			return false
		}, check: violation(boundary.VID)},
		{name: "reply to an earlier execution", sc: func(s *standIn, q *boundary.Request) bool {
			s.c.SendOutput(q.ID-1, s.honest(q))
			s.hang()
			return false
		}, check: violation(boundary.VID)},
		{name: "out-of-order answer kind", sc: func(s *standIn, q *boundary.Request) bool {
			s.c.Send(&boundary.Msg{Kind: boundary.KindLoaded, ID: q.ID, Body: boundary.EncodeHash(q.Exec.Module)})
			s.hang()
			return false
		}, check: violation(boundary.VUnexpected)},
		{name: "instructions over the limit", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Instructions = q.Exec.Input.Limits.Instructions + 1
		}), check: violation(boundary.VInstructions)},
		// Audit: a sandbox reporting no instructions for an output that
		// proves it paid some (its reply: msg_reply and the bytes appended)
		// would be charged nothing, and a composite query's shared budget
		// would never shrink.
		{name: "audit: instructions below what the output proves", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Instructions = 0
		}), check: violation(boundary.VInstructions)},
		{name: "audit: query reports no instructions", query: true, sc: func(s *standIn, q *boundary.Request) bool {
			out := s.honest(q)
			out.Instructions = 0
			s.c.SendOutput(q.ID, out)
			s.hang()
			return false
		}, check: violation(boundary.VInstructions)},
		{name: "dirty page out of range", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Heap.Pages = append(o.Heap.Pages, state.DirtyPage{Index: o.Heap.Size / state.PageSize, Data: new(state.Page)})
			o.Instructions += sysapi.HeapDirtyPageCost // what the extra page costs, so the page itself is judged
		}), check: violation(boundary.VMemory)},
		{name: "duplicate pages", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Heap.Pages = append(o.Heap.Pages, o.Heap.Pages[len(o.Heap.Pages)-1])
			o.Instructions += sysapi.HeapDirtyPageCost
		}), check: violation(boundary.VMemory)},
		{name: "heap bigger than the limit", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Heap.Size = q.Exec.Input.Limits.HeapBytes + state.WasmPageSize
		}), check: violation(boundary.VMemory)},
		{name: "heap shrinks", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Heap.Size, o.Heap.Pages = 0, nil
		}), check: violation(boundary.VMemory)},
		{name: "audit: memory size 0 with pages", init: true, sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Heap.Size = 0
		}), check: violation(boundary.VMemory)},
		{name: "minted cycles", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.CyclesBurned = q.Exec.Input.Balance.SaturatingAdd(cyclesN(1))
		}), check: violation(boundary.VCycles)},
		{name: "audit: accept more cycles than available", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.CyclesAccepted = cyclesN(1)
		}), check: violation(boundary.VCycles)},
		{name: "audit: callback that cannot exist", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Calls = []sysapi.Call{{Callee: []byte{1}, Method: "m", OnReply: sysapi.Callback{Fun: 1 << 40}}}
		}), check: violation(boundary.VCalls)},
		{name: "reply and reject", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.RejectMessage = "also rejected"
		}), check: violation(boundary.VResponse)},
		{name: "reply over the limit", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Reply = make([]byte, q.Exec.Input.Limits.ReplyBytes+1)
		}), check: violation(boundary.VResponse)},
		{name: "query with state changes", query: true, sc: func(s *standIn, q *boundary.Request) bool {
			out := s.honest(q)
			out.Heap = state.Delta{Size: q.Heap.Size(), Pages: []state.DirtyPage{{Index: 0, Data: new(state.Page)}}}
			s.c.SendOutput(q.ID, out)
			s.hang()
			return false
		}, check: violation(boundary.VQueryState)},
		{name: "trap with state changes", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Trapped, o.TrapMessage = true, "boom"
		}), check: violation(boundary.VTrapState)},
		{name: "oversize certified data", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.CertifiedData, o.CertifiedDataSet = make([]byte, 33), true
		}), check: violation(boundary.VCertifiedData)},
		{name: "globals of the wrong type", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Globals = append(o.Globals, state.Global{Type: state.GlobalF64})
		}), check: violation(boundary.VGlobals)},
		{name: "log flood", sc: func(s *standIn, q *boundary.Request) bool {
			for i := 0; i < 100000; i++ {
				if s.c.SendLog(q.ID, boundary.LogInfo, "flood %d", i) != nil {
					return false
				}
			}
			s.hang()
			return false
		}, check: violation(boundary.VLogs)},
		{name: "canister log flood", sc: tamper(func(q *boundary.Request, o *sysapi.Output) {
			o.Logs = make([]sysapi.LogLine, q.Exec.Input.Limits.MaxLogLines+1)
		}), check: violation(boundary.VLogs)},
		{name: "thousands of fds", sc: func(s *standIn, q *boundary.Request) bool {
			f, _ := os.Open("/dev/null")
			defer f.Close()
			fds := make([]int, 250)
			for i := range fds {
				fds[i] = int(f.Fd())
			}
			for i := 0; i < 40; i++ {
				if s.packet(header(boundary.KindOutput, 250, q.ID, 0, nil), unix.UnixRights(fds...)) != nil {
					break
				}
			}
			s.hang()
			return false
		}, check: violation(boundary.VDescriptors)},
		{name: "exit after the request", sc: func(s *standIn, q *boundary.Request) bool { return false }, check: fault(FaultCrash)},
		{name: "exit mid-pages", sc: func(s *standIn, q *boundary.Request) bool {
			out := s.honest(q)
			s.c.Send(&boundary.Msg{Kind: boundary.KindOutput, ID: q.ID, Body: boundary.EncodeOutput(out)})
			s.c.SendPages(q.ID, boundary.HeapMemory, out.Heap.Pages[:len(out.Heap.Pages)-1])
			return false
		}, check: violation(boundary.VFraming)},
		{name: "a remote error", sc: func(s *standIn, q *boundary.Request) bool {
			s.c.SendError(q.ID, boundary.ErrInternal, "engine broke")
			s.hang()
			return false
		}, check: fault(FaultFailed)},
	}
	heapBefore := liveHeap()
	defer func() {
		// No memory is kept for hostile sandboxes once they are gone: the
		// live heap after every case is within a small margin of before.
		grown := int64(liveHeap()) - int64(heapBefore)
		t.Logf("live heap after all hostile cases: %+d bytes", grown)
		if grown > 16<<20 {
			t.Errorf("live heap grew by %d bytes over the hostile cases", grown)
		}
	}()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g0, f0 := runtime.NumGoroutine(), openFDs(t)
			h := newHarness(t)
			x := h.x
			victim := newSim(t, x, "victim", wasm)
			neighbour := newSim(t, x, "neighbour", wasm)
			neighbour.must(sysapi.CtxInit, "canister_init", empty)
			neighbour.must(sysapi.CtxUpdate, "canister_update inc", empty)
			if !c.init {
				victim.must(sysapi.CtxInit, "canister_init", empty)
				victim.must(sysapi.CtxUpdate, "canister_update inc", empty)
			}
			before := memHash(victim)
			h.set(c.sc)
			x.Forget("victim") // the next sandbox is the hostile stand-in
			if c.hangs {
				// Only a silent stand-in waits for the watchdog, so only
				// its step runs with a short one. The others answer, and a
				// short watchdog would race the stand-in's own (honest,
				// in-process) execution on a loaded machine.
				x.cfg.WatchdogBase = 300 * time.Millisecond
			}
			var err error
			if c.query {
				_, err = victim.run(sysapi.CtxNonReplicatedQuery, "canister_query get", empty)
			} else if c.init {
				_, err = victim.run(sysapi.CtxInit, "canister_init", empty)
			} else {
				_, err = victim.run(sysapi.CtxUpdate, "canister_update inc", empty)
			}
			x.cfg.WatchdogBase = patientWatchdog
			c.check(t, err)
			t.Logf("%v", err)
			if !h.lastVictimKilled() {
				t.Fatal("the sandbox was not killed")
			}
			if memHash(victim) != before {
				t.Fatal("the victim's state changed")
			}
			for _, s := range x.List() {
				if s.CanisterID == "victim" {
					t.Fatal("the killed sandbox is still listed")
				}
			}
			// The neighbour never noticed; the victim gets a fresh sandbox.
			out := neighbour.must(sysapi.CtxUpdate, "canister_update inc", empty)
			if string(out.Reply) != "DIDL\x00\x01\x7d\x02" {
				t.Fatalf("neighbour: %x", out.Reply)
			}
			h.set(nil)
			if c.init {
				victim.must(sysapi.CtxInit, "canister_init", empty)
			}
			out = victim.must(sysapi.CtxUpdate, "canister_update inc", empty)
			want := "DIDL\x00\x01\x7d\x02"
			if c.init {
				want = "DIDL\x00\x01\x7d\x01"
			}
			if string(out.Reply) != want {
				t.Fatalf("victim after respawn: %x", out.Reply)
			}
			x.Close()
			settle(t, g0, f0)
		})
	}
	t.Run("exit before ready", func(t *testing.T) {
		g0, f0 := runtime.NumGoroutine(), openFDs(t)
		h := newHarness(t)
		h.onStart = func(s *standIn) bool { return false }
		v := newSim(t, h.x, "victim", wasm)
		_, err := v.run(sysapi.CtxInit, "canister_init", empty)
		fault(FaultCrash)(t, err)
		t.Logf("%v", err)
		h.x.Close()
		settle(t, g0, f0)
	})
	t.Run("exit at load", func(t *testing.T) {
		g0, f0 := runtime.NumGoroutine(), openFDs(t)
		h := newHarness(t)
		h.onLoad = func(s *standIn) bool { return false }
		v := newSim(t, h.x, "victim", wasm)
		_, err := v.run(sysapi.CtxInit, "canister_init", empty)
		fault(FaultCrash)(t, err)
		t.Logf("%v", err)
		h.x.Close()
		settle(t, g0, f0)
	})
	t.Run("silent at start", func(t *testing.T) {
		g0, f0 := runtime.NumGoroutine(), openFDs(t)
		h := newHarness(t)
		h.onStart = func(s *standIn) bool { s.hang(); return false }
		v := newSim(t, h.x, "victim", wasm)
		_, err := v.run(sysapi.CtxInit, "canister_init", empty)
		fault(FaultTimeout)(t, err)
		h.x.Close()
		settle(t, g0, f0)
	})
}

func memHash(s *sim) [32]byte {
	h := state.NewHasher()
	h.Memory("heap", s.heap)
	h.Memory("stable", s.stable)
	h.Globals(s.globals)
	return h.Sum()
}

// liveHeap returns the bytes of live heap objects after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
