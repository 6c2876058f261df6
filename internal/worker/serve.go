package worker

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// MaxArtifactBytes bounds an artifact the worker reads from its descriptor.
const MaxArtifactBytes = 1 << 30

// Serve runs the worker's request loop on an IPC socket, in the mode named
// by args[0] ("compile" or "canister"), and returns the process exit code.
// It is Main without confinement, so tests can run a worker in a goroutine
// over a socket pair.
func Serve(conn *net.UnixConn, args []string) int {
	defer conn.Close()
	c := boundary.NewConn(conn)
	opts, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cordon sandbox: %v\n", err)
		return ExitUsage
	}
	mode := opts.mode
	e, err := engine.New(opts.engineConfig())
	if err != nil {
		_ = c.SendError(0, boundary.ErrInternal, "create engine: %v", err)
		return ExitProtocol
	}
	if engineMade != nil {
		engineMade(e)
	}
	w := newWorker(c, mode, e)
	if trimWhenIdle && mode == boundary.ModeCanister {
		w.trim = &trimmer{drop: func() { e.DropKept() }}
	}
	if err := c.Send(&boundary.Msg{Kind: boundary.KindReady, Body: boundary.EncodeReady(mode)}); err != nil {
		return ExitProtocol
	}
	if mode == boundary.ModeCanister {
		// Most canisters are 32-bit: build that linker while the host
		// checks the artifact and sends the load (or while the sandbox
		// waits in the warm pool). load waits for it before W^X.
		w.prelink = make(chan struct{})
		go func() {
			defer close(w.prelink)
			_, _ = e.Linker(false)
		}()
	}
	return w.loop()
}

// options are what the worker's arguments say: the mode, then (canister
// mode) a label (the canister id, only there to name the process for
// operators) and how many queries may run at once.
type options struct {
	mode         boundary.Mode
	queryThreads int // 0: not given
}

func parseArgs(args []string) (options, error) {
	if len(args) < 1 || len(args) > 3 {
		return options{}, fmt.Errorf("want a mode (compile or canister), an optional label and %sN, got %q", boundary.QueryThreadsArg, args)
	}
	mode, ok := boundary.ParseMode(args[0])
	if !ok {
		return options{}, fmt.Errorf("unknown mode %q", args[0])
	}
	o := options{mode: mode}
	if len(args) == 3 {
		v, ok := strings.CutPrefix(args[2], boundary.QueryThreadsArg)
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 1 || n > boundary.MaxInFlight {
			return options{}, fmt.Errorf("want %sN with N from 1 to %d, got %q", boundary.QueryThreadsArg, boundary.MaxInFlight, args[2])
		}
		o.queryThreads = n
	}
	return o, nil
}

// engineConfig is the engine a worker runs. A canister sandbox only
// deserializes (no compiler threads), and keeps as many reset query
// instances as queries may run in it at once (at least the engine's
// default): fewer, and each query beyond them would instantiate a fresh
// instance and tear it down again.
func (o options) engineConfig() engine.Config {
	cfg := engine.DefaultConfig()
	cfg.ParallelCompilation = o.mode == boundary.ModeCompile
	cfg.KeepInstances = max(cfg.KeepInstances, o.queryThreads)
	return cfg
}

// engineMade, if set (tests), sees the engine Serve made.
var engineMade func(*engine.Engine)

func newWorker(c *boundary.Conn, mode boundary.Mode, e *engine.Engine) *worker {
	return &worker{c: c, mode: mode, e: e, slots: make(chan struct{}, boundary.MaxInFlight),
		jobs: make(chan *boundary.Request), quit: make(chan struct{})}
}

type worker struct {
	c    *boundary.Conn
	mode boundary.Mode
	e    *engine.Engine
	mod  *engine.Module // canister mode: the loaded module
	// codeLocked: no memory can become executable any more (after the
	// first load), so no other module can be loaded.
	codeLocked bool
	// warned: the engine's fallback warning was sent (once per sandbox).
	warned atomic.Bool
	// trim gives memory back between requests (nil: never; see trimIdle).
	trim *trimmer
	// prelink, if set, closes when the speculative 32-bit linker build
	// that Serve started after Ready has ended.
	prelink chan struct{}

	// Executions run concurrently (the host may have several queries of
	// the canister in flight), each on its own store over its own private
	// mapping of the memory its request brought; every other request waits
	// for them. slots bounds them; sendMu keeps each answer (Output and its
	// Pages) in one piece on the socket.
	slots   chan struct{}
	running sync.WaitGroup
	// Executions run on executor goroutines that are kept between
	// requests: one is started only when every executor already started
	// is busy, so there are never more than the most executions that were
	// ever in flight at once (at most cap(slots)). jobs hands a request to
	// an idle executor; quit ends them all when the loop returns.
	// executors is the loop's count of executors started; execs waits for
	// them to end.
	jobs      chan *boundary.Request
	quit      chan struct{}
	executors int
	execs     sync.WaitGroup
	// idle counts executors done with their execution (or Warm's
	// executor, done with Warm) that no job was handed to since: each
	// counts itself, dispatch uncounts the one it handed a job to.
	idle atomic.Int32
	// started and live count executors (tests).
	started, live atomic.Int32
	sendMu        sync.Mutex
	active        atomic.Int32 // requests being served (trim when none)
	// exit: an execution ended the connection; the loop returns this code.
	exit atomic.Int32
}

// fatal ends the connection from an execution: the loop, blocked reading
// the next request, returns code.
func (w *worker) fatal(code int) {
	w.exit.CompareAndSwap(0, int32(code))
	_ = w.c.Raw().Close()
}

// send sends under sendMu: f's messages reach the host in one piece.
func (w *worker) send(f func(c *boundary.Conn) error) error {
	w.sendMu.Lock()
	defer w.sendMu.Unlock()
	return f(w.c)
}

func (w *worker) loop() (code int) {
	var cur uint64
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "cordon sandbox: panic: %v\n%s", r, debug.Stack())
			_ = w.c.SendError(cur, boundary.ErrInternal, "sandbox panic: %v", r)
			code = ExitPanic
		}
	}()
	defer w.stopExecutors()
	for {
		q, err := w.c.NextRequest()
		if code := w.exit.Load(); code != 0 {
			return int(code)
		}
		if errors.Is(err, boundary.ErrClosed) || errors.Is(err, net.ErrClosed) {
			return ExitOK
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "cordon sandbox: %v\n", err)
			return ExitProtocol
		}
		cur = q.ID
		w.start()
		if q.Kind == boundary.KindExecute && w.mode == boundary.ModeCanister {
			w.trim.executing()
			w.slots <- struct{}{}
			w.running.Add(1)
			w.dispatch(q)
			continue
		}
		// Anything else is served alone, in order.
		w.running.Wait()
		if err := w.serve(q); err != nil {
			fmt.Fprintf(os.Stderr, "cordon sandbox: %v\n", err)
			return ExitProtocol
		}
		if q.Kind == boundary.KindShutdown {
			return ExitOK
		}
		w.done()
	}
}

// start and done bracket serving a request: memory is trimmed only when
// none is being served.
func (w *worker) start() {
	if w.active.Add(1) == 1 {
		w.trim.busy()
	}
}

func (w *worker) done() {
	if w.active.Add(-1) == 0 {
		w.trim.idle()
	}
}

// dispatch hands an execution (its slot taken) to an idle executor, or to
// a new one while fewer than cap(slots) exist. With all of them started,
// one is finishing its execution (this one's slot was free, so fewer than
// cap(slots) run) and takes it as soon as it has.
func (w *worker) dispatch(q *boundary.Request) {
	select {
	case w.jobs <- q:
		w.idle.Add(-1)
		return
	default:
	}
	// An idle executor that has not reached its receive yet (the one
	// Warm left) takes it as soon as it has.
	if w.idle.Load() == 0 && w.executors < cap(w.slots) {
		w.executors++
		w.execs.Add(1)
		w.started.Add(1)
		w.live.Add(1)
		go w.executor(q)
		return
	}
	w.jobs <- q
	w.idle.Add(-1)
}

// executor runs executions beside the loop until the loop ends: its first,
// then every one handed to it. Its goroutine (and the stack the engine's
// host calls grew) serves the sandbox's next executions instead of a new
// goroutine per execution.
func (w *worker) executor(q *boundary.Request) {
	defer w.execs.Done()
	defer w.live.Add(-1)
	for {
		if q != nil {
			w.executeAsync(q)
			w.idle.Add(1)
		}
		select {
		case q = <-w.jobs:
		case <-w.quit:
			return
		}
	}
}

// warmExecutor runs f (engine.Warm) on a new executor and waits for it (the
// loop, no execution in flight). That executor then serves executions like
// any other, and the first one finds its goroutine as a later one would:
// its stack already grown (growStack) and run on, instead of started and
// grown, copied and faulted in page by page while the caller waits.
func (w *worker) warmExecutor(f func()) {
	done := make(chan struct{})
	var panicked any
	w.executors++
	w.execs.Add(1)
	w.started.Add(1)
	w.live.Add(1)
	go func() {
		func() {
			defer close(done)
			defer w.idle.Add(1)
			defer func() { panicked = recover() }()
			growStack(0)
			f()
		}()
		w.executor(nil)
	}()
	<-done
	if panicked != nil {
		panic(panicked) // the loop's, as when it ran f itself
	}
}

// executionStack is about what an execution's deepest path (the engine, a
// host call made from Wasm, the System API) uses of its goroutine's stack.
const executionStack = 32 << 10

// growStack grows its goroutine's stack to hold executionStack at once
// (the runtime doubles a stack until a frame fits), the goroutine's stack
// then being that size until a garbage collection finds most of it unused.
//
//go:noinline
func growStack(i int) byte {
	var frame [executionStack]byte
	frame[i] = 1
	return frame[(i+1)%executionStack]
}

// stopExecutors waits for the executions in flight, then ends the
// executors; the loop calls it when it returns.
func (w *worker) stopExecutors() {
	w.running.Wait()
	close(w.quit)
	w.execs.Wait()
}

// executeAsync runs one execution beside the loop. A failure to send means
// the connection is unusable: it is closed, which ends the loop.
func (w *worker) executeAsync(q *boundary.Request) {
	defer w.running.Done()
	defer func() { <-w.slots }()
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "cordon sandbox: panic: %v\n%s", r, debug.Stack())
			_ = w.send(func(c *boundary.Conn) error {
				return c.SendError(q.ID, boundary.ErrInternal, "sandbox panic: %v", r)
			})
			w.fatal(ExitPanic)
		}
	}()
	defer q.Release()
	err := w.execute(q)
	w.done()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cordon sandbox: %v\n", err)
		w.fatal(ExitProtocol)
	}
}

// serve answers one request; an error means the connection is unusable.
func (w *worker) serve(q *boundary.Request) error {
	switch {
	case q.Kind == boundary.KindPing:
		return w.c.Send(&boundary.Msg{Kind: boundary.KindPong, ID: q.ID})
	case q.Kind == boundary.KindShutdown:
		return nil
	case q.Kind == boundary.KindCompile && w.mode == boundary.ModeCompile:
		return w.compile(q)
	case q.Kind == boundary.KindLoad && w.mode == boundary.ModeCanister:
		return w.load(q, false)
	case q.Kind == boundary.KindWarm && w.mode == boundary.ModeCanister:
		return w.load(q, true)
	}
	if q.File != nil {
		q.File.Close()
	}
	q.Release()
	return w.c.SendError(q.ID, boundary.ErrBadRequest, "%s request in %s mode", q.Kind, w.mode)
}

func (w *worker) compile(q *boundary.Request) error {
	m, err := w.e.Compile(q.Compile.Wasm, q.Compile.Limits)
	if err != nil {
		if errors.Is(err, engine.ErrInvalidModule) {
			// The host wraps engine.ErrInvalidModule again.
			msg := strings.TrimPrefix(err.Error(), engine.ErrInvalidModule.Error()+": ")
			return w.c.SendError(q.ID, boundary.ErrInvalidModule, "%s", msg)
		}
		return w.c.SendError(q.ID, boundary.ErrInternal, "compile: %v", err)
	}
	art, err := m.Serialize()
	if err != nil {
		return w.c.SendError(q.ID, boundary.ErrInternal, "%v", err)
	}
	body := boundary.EncodeCompiled(&boundary.Compiled{Info: m.Info, GlobalTypes: m.GlobalTypes(), Artifact: art})
	return w.c.Send(&boundary.Msg{Kind: boundary.KindCompiled, ID: q.ID, Body: body})
}

// load loads the module of a Load or Warm request. Warm (a primed sandbox,
// loaded ahead of its canister's next message) also makes the module ready
// for its first execution (engine.Warm); its instance is thrown away, and
// a failure there is only logged: the execution will meet it.
func (w *worker) load(q *boundary.Request, warm bool) error {
	if w.codeLocked {
		q.File.Close()
		return w.c.SendError(q.ID, boundary.ErrBadRequest, "module %x already loaded: a canister sandbox loads one module", w.mod.Info.Hash[:8])
	}
	data, unmap, err := mapArtifact(q.File)
	q.File.Close()
	if err != nil {
		return w.c.SendError(q.ID, boundary.ErrArtifact, "read artifact: %v", err)
	}
	m, err := w.e.Deserialize(data)
	unmap()
	if err != nil {
		return w.c.SendError(q.ID, boundary.ErrArtifact, "%v", err)
	}
	if m.Info.Hash != q.Hash {
		return w.c.SendError(q.ID, boundary.ErrArtifact, "artifact is for module %x, not %x", m.Info.Hash[:8], q.Hash[:8])
	}
	// The ic0 linker of the module's width, built now (the engine builds
	// it on first use): before W^X below, and not on the first message.
	if _, err := w.e.Linker(m.Info.Memory64); err != nil {
		return w.c.SendError(q.ID, boundary.ErrInternal, "%v", err)
	}
	if w.prelink != nil {
		<-w.prelink // no engine work may be under way when W^X applies
	}
	w.mod = m
	// W^X from here on: wasmtime published the module's code (mapped
	// writable, then executable); nothing else may become executable, so
	// code the canister writes into memory can never run.
	if forbidNewCode != nil {
		if err := forbidNewCode(); err != nil {
			if wxRequired {
				// The host planned W^X and reports it applied: a canister
				// must not run without it. The sandbox ends here.
				_ = w.c.SendError(q.ID, boundary.ErrInternal, "confinement: layer wx: PR_SET_MDWE: %v", err)
				w.fatal(ExitConfine)
				return nil
			}
			// The host did not plan the layer (old kernel, no PR_SET_MDWE:
			// cordon doctor reports it missing).
			_ = w.c.SendLog(q.ID, boundary.LogWarn, "cannot forbid new executable memory: %v", err)
		}
		w.codeLocked = true
	}
	if warm {
		var err error
		w.warmExecutor(func() { err = w.e.Warm(m) })
		if err != nil {
			_ = w.c.SendLog(q.ID, boundary.LogWarn, "warm: %v", err)
		}
		w.trim.warmed()
	}
	return w.c.Send(&boundary.Msg{Kind: boundary.KindLoaded, ID: q.ID, Body: boundary.EncodeHash(q.Hash)})
}

// mapArtifact maps an artifact read-only instead of reading it into the Go
// heap: wasmtime copies what it keeps, and the heap would otherwise hold the
// artifact's size in garbage (and, once collected, in free pages) for as long
// as the sandbox lives.
func mapArtifact(f *os.File) (data []byte, unmap func(), err error) {
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if st.Size() > MaxArtifactBytes {
		return nil, nil, fmt.Errorf("artifact of %d bytes", st.Size())
	}
	if st.Size() == 0 {
		return nil, func() {}, nil
	}
	data, err = unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return nil, nil, fmt.Errorf("map: %w", err)
	}
	return data, func() { _ = unix.Munmap(data) }, nil
}

func (w *worker) execute(q *boundary.Request) error {
	x := q.Exec
	if w.mod == nil || w.mod.Info.Hash != x.Module {
		return w.send(func(c *boundary.Conn) error {
			return c.SendError(q.ID, boundary.ErrBadRequest, "module %x is not loaded", x.Module[:8])
		})
	}
	var globals = x.Globals
	if !x.HasGlobals {
		globals = nil
	}
	warn := func(reason string) {
		if w.warned.CompareAndSwap(false, true) { // once per sandbox: it would repeat every message
			_ = w.send(func(c *boundary.Conn) error { return c.SendLog(q.ID, boundary.LogWarn, "%s", reason) })
		}
	}
	// The output is sent while the instance lives: its heap pages are the
	// linear memory's, not a second copy of a large delta (engine.Request.Emit).
	sent := false
	send := func(out *sysapi.Output) error {
		sent = true
		boundary.Normalize(x.Input.Context, out)
		return w.send(func(c *boundary.Conn) error { return c.SendOutput(q.ID, out) })
	}
	_, err := w.e.Run(&engine.Request{Module: w.mod, Heap: q.Heap, Pagemap: pagemap, Warn: warn, Globals: globals, RunStart: x.RunStart, Input: x.Input, Emit: send})
	if err != nil && !sent {
		code := boundary.ErrInternal
		if errors.Is(err, engine.ErrHostMemory) {
			code = boundary.ErrHostMemory
		}
		return w.send(func(c *boundary.Conn) error { return c.SendError(q.ID, code, "%v", err) })
	}
	return err
}
