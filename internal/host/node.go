package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/homedir"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Node is one cordon host: it owns the store and every canister in it.
type Node struct {
	cfg   Config
	store *store.Store
	exec  exec.Executor
	log   *slog.Logger
	clock func() time.Time

	mu        sync.Mutex
	canisters map[principal.Principal]*canister
	// loadedHook, if set (tests), runs when get has read a canister from
	// the store, before it joins canisters.
	loadedHook func(principal.Principal)
	lastTime   uint64 // ic0.time is strictly increasing across the node

	// alt is the executor of the other isolation mode, created on first use
	// by a canister whose settings override the node's mode (guarded by mu).
	alt exec.Executor

	modules moduleUse // installs under way; what executors forget (moduleuse.go)

	mem   *memoryLedger // the node's memory capacity (capacity.go)
	pages *pageBudget   // the pages executions hand the host (execmem.go)
	calls nodeCalls     // what calls awaiting responses hold (queues.go)

	images *imageLRU // which canisters keep memory images (images.go)

	preparing *preparingBudget // modules being decoded and compiled (modload.go)

	timers timerQueue // the timer loop's deadlines (timers.go)

	busy busyCounter   // queue drainers and management calls in flight
	done chan struct{} // closed by Close
	// stopping is the context executions run in: Close cancels it
	// (giveUp) when the drain timeout has passed, so a sandbox still
	// running a message is given up and Close does not wait for it.
	stopping   context.Context
	giveUp     context.CancelFunc
	drainAfter time.Duration // Close's drain timeout (drainTimeout; tests shorten it)
	// mgmtTimeout bounds one management call (mgmtCallTimeout; tests
	// shorten it).
	mgmtTimeout time.Duration
	closeOnce   sync.Once
	closeErr    error // the result of the one close, which every Close returns

	noRoom       noRoomLog     // refusals by the disk margin, for the log (diskmargin.go)
	ingressBytes atomic.Uint64 // argument bytes of the ingress queued on the node (ingressq.go)
	mgmtCalls    mgmtCalls     // management ingress calls in progress (mgmtq.go)
	mgmtQueue    mgmtQueues    // canisters' calls to aaaaa-aa, in order (mgmtorder.go)

	certifier Certifier // root key and data certificates (certify.go)
	rootKey   []byte    // its DER, given to every execution (ic0.root_key_copy)

	// noSeparateAnswer (tests only) drops the ingress statuses written on
	// their own, as a crash right after a state commit would (ingress.go).
	noSeparateAnswer bool
}

// canister is a canister's committed state in memory. Updates and lifecycle
// operations hold mu exclusively; queries hold it shared.
type canister struct {
	mu     rwLock // lock.go
	id     principal.Principal
	meta   store.Meta
	module *exec.Module // nil: empty canister
	// moduleBytes is the size of the installed Wasm module (memory.go
	// counts it as memory).
	moduleBytes uint64
	heap        *state.PageMap
	stable      *state.PageMap
	globals     []state.Global
	logs        *logRing
	deleted     bool
	qstats      queryStats // querystats.go
	cert        dataCert   // the data certificate queries get (certify.go)
	// pages holds the output pages of the message being processed until
	// it is done (execmem.go; set by process, guarded by mu).
	pages *pageHold
	// controllers is meta.Settings.Controllers as last committed, read
	// without mu to refuse a caller before it waits for mu (mgmtq.go).
	controllers atomic.Pointer[[]string]

	// Messaging state (guarded by mu): open call contexts and the callbacks
	// of calls awaiting responses. Not persisted: a restart drops calls in
	// flight (see RATIONALE.md).
	contexts        map[uint64]*callContext
	callbacks       map[uint64]*callback
	calls           outCalls // what the callbacks' calls hold (queues.go)
	nextID          uint64
	stopping        *pendingStop // the stop_canister calls waiting for the canister to stop
	heartbeatQueued bool
	lowMemoryQueued bool // canister_on_low_wasm_memory waits in the queue (lowmem.go)
	// timerQueued: a canister_global_timer task waits in the queue or
	// runs. timerTaken: it took the armed value, which executions see as
	// deactivated while meta keeps it, as the store does, until the task
	// commits (sched.go scheduleTimer).
	timerQueued bool
	timerTaken  bool
	// codeEpoch counts the changes of c's module (install, reinstall,
	// upgrade, uninstall) since it was loaded. A timer task carries the
	// epoch it was queued in: one queued for a module that is gone runs
	// nothing (sched.go handleTimer).
	codeEpoch uint64
	// timerWork: a goroutine of the timer loop is doing this canister's
	// timer work (timers.go timerWorkLater); at most one at a time.
	timerWork atomic.Bool
	// timerIdx is the canister's index in the node's deadline heap (-1:
	// not in it; guarded by the heap's lock), nextBeat the node time of
	// its next heartbeat (guarded by mu; timers.go).
	timerIdx int
	nextBeat uint64

	// The input queue (guarded by qmu, not mu, so senders never wait for
	// an execution).
	qmu     sync.Mutex
	queue   inputQueue
	ingress int // ingress messages in queue (Config.Messages.IngressQueue)
	// ingressBytes: their arguments' bytes (Config.Messages.IngressQueueBytes).
	ingressBytes uint64
	draining     bool
}

// Open opens the node's store under cfg.Home.
func Open(cfg Config, logger *slog.Logger) (*Node, error) {
	if cfg.Home == "" {
		return nil, errors.New("host: no home directory configured")
	}
	if err := validProvisional(cfg.Provisional); err != nil {
		return nil, fmt.Errorf("host: %w", err)
	}
	// Every linear memory reserves engine.MaxHeapBytes and never moves: a
	// larger limit could not be reached.
	if h := max(cfg.HeapBytes32, cfg.HeapBytes64); h > engine.MaxHeapBytes {
		return nil, fmt.Errorf("host: a heap limit of %d bytes (at most %d: limits.heap_bytes_32, limits.heap_bytes_64)", h, uint64(engine.MaxHeapBytes))
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg.LogLines = max(cfg.LogLines, 1)
	if cfg.LogBytes <= 0 {
		cfg.LogBytes = DefaultLogBytes
	}
	if err := applyDescriptors(&cfg, logger); err != nil {
		return nil, err
	}
	// Nothing is read from a home another user could have written.
	if err := homedir.Check(cfg.Home); err != nil {
		return nil, err
	}
	st, err := store.Open(cfg.Home, 2*time.Second)
	if err != nil {
		return nil, err
	}
	setDiskMargin(st, cfg, logger) // diskmargin.go
	cert, err := openCertifier(cfg)
	if err != nil {
		st.Close()
		return nil, err
	}
	if len(cert.DER()) > sysapi.MaxRootKey {
		st.Close()
		return nil, fmt.Errorf("host: a root key of %d bytes (at most %d)", len(cert.DER()), sysapi.MaxRootKey)
	}
	x, err := newExecutor(cfg, st, logger)
	if err != nil {
		st.Close()
		return nil, err
	}
	st.SetCommitObserver(metricsOf(cfg).Commit) // metrics: observe.go
	st.SetSyncObserver(func(i store.SyncInfo) {
		if i.Err == nil {
			metricsOf(cfg).StoreSync(i.Commits)
		}
	})
	x = observeExecutor(x, cfg)
	clock := cfg.Clock
	if clock == nil {
		clock = time.Now
	}
	// Code changes release the modules they replace; what a crash between
	// the two left is collected here.
	if err := st.GCModules(); err != nil {
		logger.Warn("collecting unused modules", "err", err)
	}
	// The calls a crash dropped gave no answer: what their cycles were
	// doing is undone (inflight.go).
	if back, err := st.ReturnCyclesInFlight(); err != nil {
		x.Close()
		st.Close()
		return nil, fmt.Errorf("host: returning cycles in flight to their callers: %w", err)
	} else if !back.IsZero() {
		logger.Info("cycles of calls a restart dropped returned to their callers", "cycles", back.String())
	}
	mem := newMemoryLedger(memoryCapacity(cfg.MemoryCapacity))
	if err := mem.load(st); err != nil {
		x.Close()
		st.Close()
		return nil, fmt.Errorf("host: memory in use: %w", err)
	}
	n := &Node{cfg: cfg, store: st, exec: x, log: logger, clock: clock, mem: mem, pages: newPageBudget(executionMemory(cfg.ExecutionMemory)),
		canisters: map[principal.Principal]*canister{}, done: make(chan struct{}),
		certifier: cert, rootKey: bytes.Clone(cert.DER()), images: newImageLRU(cfg.MemoryImages),
		preparing: newPreparingBudget(preparingBytes(cfg)), drainAfter: drainTimeout, mgmtTimeout: mgmtCallTimeout}
	n.stopping, n.giveUp = context.WithCancel(context.Background())
	n.pruneModules(x) // the artifacts of modules a crash or another version left
	go n.timerLoop()
	return n, nil
}

// drainTimeout bounds how long Close waits for messages still running;
// giveUpTimeout how long it then waits for the executions it gave up to
// answer.
const (
	drainTimeout  = 30 * time.Second
	giveUpTimeout = 5 * time.Second
)

// Close lets the messages running finish (bounded by the drain timeout,
// after which their executions are given up), answers the messages still
// queued without running them (ingressq.go), then closes the store.
// Callers must not use the node afterwards, but may call Close again (or
// at the same time): every call returns once the node is closed, with the
// first call's result.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { n.closeErr = n.close() })
	return n.closeErr
}

// close is Close, run once.
func (n *Node) close() error {
	close(n.done)
	select {
	case <-n.busy.Idle():
	case <-time.After(n.drainAfter):
		n.log.Warn("giving up the messages still running", "waited", n.drainAfter)
		n.giveUp()
		select {
		case <-n.busy.Idle():
		case <-time.After(giveUpTimeout):
			n.log.Warn("closing with messages still in flight", "waited", n.drainAfter+giveUpTimeout)
		}
	}
	n.giveUp()
	n.flushQueryStats()
	n.exec.Close()
	n.mu.Lock()
	if n.alt != nil {
		n.alt.Close()
	}
	cs := n.canisters
	n.mu.Unlock()
	// The canisters' memories are mappings of their images: unmap them
	// (a canister still locked by a message that outlived the drain keeps
	// its own).
	for _, c := range cs {
		if c.mu.TryLock() {
			c.heap.Release()
			c.stable.Release()
			c.mu.Unlock()
		}
	}
	return n.store.Close()
}

// Quiesce waits until no message is queued or executing.
func (n *Node) Quiesce(ctx context.Context) error {
	select {
	case <-n.busy.Idle():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Config returns the node's configuration.
func (n *Node) Config() Config { return n.cfg }

// now returns a strictly increasing time in nanoseconds.
func (n *Node) now() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	t := uint64(n.clock().UnixNano())
	if t <= n.lastTime {
		t = n.lastTime + 1
	}
	n.lastTime = t
	return t
}

// get returns a loaded canister, loading it from the store on first use.
func (n *Node) get(ctx context.Context, id principal.Principal) (*canister, error) {
	n.mu.Lock()
	c, ok := n.canisters[id]
	n.mu.Unlock()
	if ok {
		return c, nil
	}
	sc, err := n.store.Load(id.Bytes())
	if errors.Is(err, store.ErrNotFound) {
		return nil, rejectf(DestinationInvalid, "Canister %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("load canister %s: %w", id, err)
	}
	c = &canister{id: id, meta: sc.Meta, heap: sc.Heap, stable: sc.Stable, globals: sc.Globals, logs: newLogRing(n.cfg.LogLines, n.cfg.LogBytes),
		contexts: map[uint64]*callContext{}, callbacks: map[uint64]*callback{}, timerIdx: -1}
	if c.meta.Status == "stopping" {
		c.meta.Status = "stopped" // calls in flight did not survive the restart
	}
	ctrls := slices.Clone(c.meta.Settings.Controllers)
	c.controllers.Store(&ctrls)
	// Nor did their responses: what was reserved to run them is the
	// canister's again (durable with its next commit; until then every
	// load gives the same).
	var over cycles.Amount // what would take the balance past 2^128-1: burned
	c.meta.Balance, over = c.meta.Balance.AddCapped(c.meta.CyclesReserved)
	c.meta.CyclesBurned = c.meta.CyclesBurned.SaturatingAdd(over)
	c.meta.CyclesReserved = cycles.Amount{}
	if logs, err := n.store.Logs(id.Bytes()); err == nil && c.logs.load(logs) {
		// Stored under larger bounds (or before there was a byte bound):
		// the store keeps no more than the ring.
		err := n.store.TrimLogs(id.Bytes(), n.cfg.LogLines, n.cfg.LogBytes)
		_ = n.backgroundWrite(err, "trimming a canister's stored log", "canister", id.String())
	}
	c.logs.continueFrom(c.meta.LogNextSeq) // the log may have been purged (canlog.go)
	if sc.Meta.ModuleHash != "" {
		wasm, err := n.store.Module(sc.Meta.ModuleHash)
		if err != nil {
			sc.Release()
			return nil, fmt.Errorf("load module of canister %s: %w", id, err)
		}
		x, err := n.executorFor(c.meta.Settings.Isolation)
		if err != nil {
			sc.Release()
			return nil, fmt.Errorf("canister %s: %w", id, err)
		}
		if c.module, err = x.Prepare(ctx, wasm); err != nil {
			sc.Release()
			return nil, fmt.Errorf("compile module of canister %s: %w", id, err)
		}
		c.moduleBytes = uint64(len(wasm))
	}
	if n.loadedHook != nil {
		n.loadedHook(id)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if existing, ok := n.canisters[id]; ok {
		sc.Release() // loaded twice at once: the first one stays
		return existing, nil
	}
	// It may have been loaded, deleted and dropped from the map while
	// this load ran: then what was read is gone, and a commit on it would
	// make it again. Under n.mu a deletion is either committed (and the
	// store says so) or its canister is in the map.
	if held, err := n.store.HasCanister(id.Bytes()); err != nil || !held {
		sc.Release()
		if err != nil {
			return nil, fmt.Errorf("load canister %s: %w", id, err)
		}
		return nil, rejectf(DestinationInvalid, "Canister %s not found", id)
	}
	n.canisters[id] = c
	// Not yet shared: its deadline is read without its lock.
	n.timers.set(c, n.nextDue(c))
	return c, nil
}

// lookup returns a live canister locked for writing, or a reject.
func (n *Node) lockCanister(ctx context.Context, id principal.Principal) (*canister, error) {
	c, err := n.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := n.lockWithin(ctx, c); err != nil {
		return nil, canisterBusy(id, err)
	}
	if c.deleted {
		c.mu.Unlock()
		return nil, rejectf(DestinationInvalid, "Canister %s not found", id)
	}
	return c, nil
}

// readLockWithin takes c.mu shared, or gives up when ctx ends first with
// the reject lockCanister gives: what reads a canister's state for a caller
// (its status, settings, chunks) does not wait out a long update for a
// caller that went away.
func (n *Node) readLockWithin(ctx context.Context, c *canister) error {
	if err := c.mu.RLockContext(ctx); err != nil {
		return canisterBusy(c.id, err)
	}
	return nil
}

// canisterBusy is the answer to a caller that gave up waiting for canister
// id's lock (err: its context's error).
func canisterBusy(id principal.Principal, err error) *Reject {
	return rejectf(SysTransient, "Canister %s is busy: %v", id, err)
}

// lockWithin takes c.mu exclusively, or gives up when ctx ends first,
// holding nothing and leaving nothing queued for the lock (lock.go).
func (n *Node) lockWithin(ctx context.Context, c *canister) error {
	return c.mu.LockContext(ctx)
}

// LoadAll loads every stored canister, so that timers and heartbeats of all
// canisters fire on a long-running node (`cordon serve`).
func (n *Node) LoadAll(ctx context.Context) error {
	ids, err := n.List()
	if err != nil {
		return err
	}
	for _, id := range ids {
		if _, err := n.get(ctx, id); err != nil {
			return fmt.Errorf("load canister %s: %w", id, err)
		}
	}
	return nil
}

// List returns the ids of all canisters.
func (n *Node) List() ([]principal.Principal, error) {
	raw, err := n.store.CanisterIDs()
	if err != nil {
		return nil, err
	}
	out := make([]principal.Principal, 0, len(raw))
	for _, b := range raw {
		p, err := principal.FromBytes(b)
		if err != nil {
			return nil, fmt.Errorf("stored canister id %x: %w", b, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// MaxGzipModule bounds a decompressed .wasm.gz, so a gzip bomb cannot
// exhaust memory.
func (n *Node) heapLimit(m *exec.Module) uint64 {
	if m != nil && m.Info.Memory64 {
		return n.cfg.HeapBytes64
	}
	return n.cfg.HeapBytes32
}

// input builds the System API input common to every execution of c. Its
// memory limits are those of c's committed state (memory.go); an install
// sets them again for the new module.
func (n *Node) input(c *canister, m *exec.Module, ctx sysapi.Context, entry string, instr uint64) *sysapi.Input {
	heapLimit, stableLimit := n.memoryLimits(c.id, c.meta.Settings, m, ctx, usageOf(c))
	ctrls := make([][]byte, 0, len(c.meta.Settings.Controllers))
	for _, s := range c.meta.Settings.Controllers {
		if p, err := principal.FromText(s); err == nil {
			ctrls = append(ctrls, p.Bytes())
		}
	}
	var env []sysapi.EnvVar
	for _, v := range c.meta.Settings.EnvVars {
		env = append(env, sysapi.EnvVar{Name: v.Name, Value: v.Value})
	}
	return &sysapi.Input{
		Context:     ctx,
		Entry:       entry,
		Memory64:    m.Info.Memory64,
		CanisterID:  c.id.Bytes(),
		SubnetID:    subnetID.Bytes(),
		Controllers: ctrls,
		EnvVars:     env,
		Balance:     c.meta.Balance,
		Status:      statusOf(c.meta.Status),
		Version:     c.meta.Version,
		Time:        n.now(),
		GlobalTimer: c.globalTimer(),
		RootKey:     n.rootKey,
		Stable:      c.stable,
		Limits: sysapi.Limits{
			Instructions:    instr,
			HeapBytes:       heapLimit,
			StableBytes:     stableLimit,
			ReplyBytes:      n.cfg.ReplyBytes,
			CallArgBytes:    n.cfg.ReplyBytes,
			MaxOutgoing:     500,
			DebugPrintBytes: 16 * 1024,
			MaxLogLines:     256,

			HeapDirtyPages:   n.cfg.HeapDirty.pages(ctx),
			StableDirtyPages: n.cfg.StableDirty.pages(ctx),
		},
	}
}

// subnetID is the id this node reports as its subnet (ic0.subnet_self).
var subnetID = principal.SelfAuthenticating([]byte("cordon local subnet"))

func statusOf(s string) sysapi.Status {
	switch s {
	case "stopping":
		return sysapi.StatusStopping
	case "stopped":
		return sysapi.StatusStopped
	}
	return sysapi.StatusRunning
}

// executionFee is what an update-like execution costs.
func (n *Node) executionFee(instructions uint64) cycles.Amount {
	f, err := cycles.New(instructions).MulUint64(n.cfg.Fees.PerInstruction)
	if err != nil {
		return cycles.Max
	}
	return f.SaturatingAdd(cycles.New(n.cfg.Fees.UpdateExecution))
}

// executorFor returns the executor of an isolation mode ("" is the node's).
// The executor of the other mode is created on first use.
func (n *Node) executorFor(mode string) (exec.Executor, error) {
	if mode == "" || mode == n.cfg.Isolation {
		return n.exec, nil
	}
	if mode != "sandbox" && mode != "inprocess" {
		return nil, fmt.Errorf("unknown isolation mode %q (want sandbox or inprocess)", mode)
	}
	if n.CheckIsolation(mode) != nil {
		// A strict node confines every canister: one recorded as
		// in-process (installed before the node was strict) runs in a
		// sandbox, which gives the same results (policy.go).
		return n.exec, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.alt == nil {
		cfg := n.cfg
		cfg.Isolation = mode
		x, err := newExecutor(cfg, n.store, n.log)
		if err != nil {
			return nil, err
		}
		n.pruneModules(x)               // before any install uses it
		n.alt = observeExecutor(x, cfg) // metrics: observe.go
	}
	return n.alt, nil
}

// isolationOf is the mode a canister whose recorded override is mode runs
// in: the node's unless the override is honoured (executorFor).
func (n *Node) isolationOf(mode string) string {
	if mode == "" || (mode != "sandbox" && mode != "inprocess") || n.CheckIsolation(mode) != nil {
		return n.cfg.Isolation
	}
	return mode
}

// execOf returns the executor a canister runs in.
func (n *Node) execOf(c *canister) exec.Executor {
	x, err := n.executorFor(c.meta.Settings.Isolation)
	if err != nil {
		return n.exec // unreachable: settings are validated when set
	}
	return x
}
