package exec

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"weak"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Process is a running sandbox as the executor uses it; *sandbox.Process
// implements it, and tests substitute in-process stand-ins.
type Process interface {
	Conn() *net.UnixConn
	Pid() int
	Kill() error
	Wait() sandbox.ExitStatus
	RSS() (uint64, error)
}

// Launcher starts a sandbox process.
type Launcher func(ctx context.Context, s sandbox.Spec) (Process, error)

func defaultLauncher(ctx context.Context, s sandbox.Spec) (Process, error) {
	p, err := sandbox.Start(ctx, s)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// SandboxConfig configures sandboxed execution. Zero values take defaults.
type SandboxConfig struct {
	// Dir is the artifact cache (compiled modules, keyed by module hash).
	Dir          string
	ModuleLimits engine.ModuleLimits
	// Binary is the sandbox executable (sandbox.binary): the worker-only
	// binary of this build, checked by NewSandboxed (sandbox.CheckExecutable).
	// "" runs sandbox.DefaultExecutable: cordon-sandbox next to this binary
	// if it is of the same build, else this binary.
	Binary       string
	Strict       bool
	AllowMissing []sandbox.Layer
	// Per canister sandbox: cgroup memory (bytes), pids, cpu quota (% of
	// one core: default 100; negative: no quota).
	MemoryBytes uint64
	Pids        uint64
	CPUPercent  int
	// CompileMemoryBytes is the compiler sandbox's memory limit.
	CompileMemoryBytes uint64
	// MaxCompiles bounds the compiler sandboxes at once (default
	// DefaultMaxCompiles); more compilations wait for one to finish,
	// bounded by their context. Without it a canister that sends
	// install_code for many canisters it controls, each handled at once,
	// would start that many compilers, each allowed CompileMemoryBytes.
	MaxCompiles int

	// A sandbox between messages has nothing to do. One that has used more
	// than IdleCPUPercent of a core (and 50 ms) since its idle period began,
	// looked at every IdleCPUCheck, runs code of its own (a thread left
	// spinning) and is killed. The share is low because a spinning thread
	// on a loaded node gets little more than its share of the cores.
	IdleCPUPercent int           // default 2
	IdleCPUCheck   time.Duration // default 1 s
	// IdleCPUChecks bounds the canister sandboxes looked at per
	// IdleCPUCheck (default 256); with more idle ones they take turns, in
	// pid order. Each look reads /proc (tens of µs of host CPU), which at
	// 1,000 live sandboxes was a quarter of the host's CPU. A sandbox's
	// usage adds up from the start of its idle period, so a later look
	// still judges all of it, and its cgroup's quota bounds it meanwhile.
	IdleCPUChecks int

	MaxSandboxes int // live canister sandboxes; the coldest beyond are evicted (default 256)
	// NodeMemoryBytes is the hard memory limit of all the node's
	// sandboxes together, compilers included: the memory limit of the
	// group cgroup that holds their cgroups (sandbox.NewGroup), which the
	// kernel enforces at every allocation (default DefaultNodeMemory).
	// Without the cgroup layer there is none.
	NodeMemoryBytes uint64
	// MaxTotalRSS is the memory budget of all canister sandboxes: their
	// cgroups' charge, else RSS. Beyond it the least recently used idle
	// ones are evicted, when a sandbox is about to start and at every
	// IdleCPUCheck (default NodeMemoryBytes / 2: the other half is room
	// for what executions in flight grow by).
	MaxTotalRSS uint64
	// IdleMemoryGrowth is how much a canister sandbox's memory may grow
	// between messages (from the least it was seen holding in its idle
	// period, looked at every IdleCPUCheck) before it is killed: an idle
	// worker only gives memory back (default DefaultIdleMemoryGrowth).
	IdleMemoryGrowth uint64
	IdleTimeout      time.Duration // a sandbox idle this long is stopped (default 5 min)

	// WarmPool is the number of blank sandboxes kept ready for canisters
	// that need one (warmpool.go), counted in MaxSandboxes and MaxTotalRSS;
	// 0: none, every sandbox starts cold.
	WarmPool int
	// PreloadPool is the number of primed sandboxes (primed.go): sandboxes
	// that have loaded the module of a recently evicted canister, whose
	// next message then only restores its state. Counted in MaxSandboxes
	// and MaxTotalRSS like blank ones; 0: none.
	PreloadPool int

	MaxArtifactBytes uint64 // largest artifact accepted from the compiler (default 1 GiB)
	// ArtifactCacheBytes bounds the artifact cache on disk (artifacts.go;
	// default DefaultArtifactCacheBytes of Dir): beyond it the least
	// recently used artifacts go, those of modules no live sandbox runs
	// first.
	ArtifactCacheBytes uint64

	// InstalledModule, if set, reads an installed module again by its
	// SHA-256 (the host's store): a Module then does not keep its Wasm,
	// and one whose artifact is missing or damaged is compiled again from
	// what this returns. Without it every Module keeps its Wasm, and the
	// host held the module of every loaded canister in memory.
	InstalledModule func(hash [32]byte) ([]byte, error)

	// SealedArtifactBytes bounds the sealed artifact memfds the host keeps
	// (sealed.go; default 256 MiB): a module's artifact is checked once
	// and then handed to every sandbox that loads it as a duplicate of one
	// sealed memfd.
	SealedArtifactBytes uint64
	// SealedArtifacts bounds how many sealed artifact memfds the host
	// keeps (default DefaultSealedArtifacts): each is a host descriptor.
	SealedArtifacts int

	// QueryThreads bounds the queries of one canister its sandbox runs at
	// once (queries.go; default: twice the cores of the CPU quota, at most
	// boundary.MaxInFlight; 1: one execution at a time).
	QueryThreads int

	// HostIDs gives each sandbox (canister and compiler) a host uid of its
	// own while it lives, on a root host (nil: all are 65534).
	HostIDs *sandbox.IDPool

	// The watchdog allows an execution WatchdogBase plus its instruction
	// limit at InstructionsPerSecond (a deliberately slow rate, 10 ns an
	// instruction where the slowest honest code, ic0-bound loops included
	// since sysapi.CallOverhead, runs at under 1 ns: it catches hangs, the
	// instruction limit catches everything else) plus transfer time for its
	// pages.
	// Concurrent queries of one sandbox share its CPU, so a query's
	// watchdog also allows the compute time of every query in flight with
	// it (queries.go).
	WatchdogBase          time.Duration // default 10 s
	InstructionsPerSecond uint64        // default 100 M
	CompileTimeout        time.Duration // default DefaultCompileTimeout
	StartTimeout          time.Duration // spawn to ready (default 10 s)
	// IdleWatchDelay is how long after an exchange a sandbox's idle watch
	// starts (default DefaultIdleWatchDelay).
	IdleWatchDelay time.Duration

	Logger  *slog.Logger
	Launch  Launcher        // nil: sandbox.Start
	Metrics metrics.Sandbox // nil: not recorded

	// blankLabel labels blank sandboxes (default blankLabel); tests give
	// them the label of a misbehaviour of the test worker's.
	blankLabel string
	// primedLabel labels primed sandboxes (default primedLabel), as
	// blankLabel.
	primedLabel string
}

func (c *SandboxConfig) defaults() {
	if c.Metrics == nil {
		c.Metrics = metrics.Nop{}
	}
	if c.ModuleLimits == (engine.ModuleLimits{}) {
		c.ModuleLimits = engine.DefaultModuleLimits()
	}
	if c.MaxSandboxes <= 0 {
		c.MaxSandboxes = DefaultMaxSandboxes
	}
	if c.NodeMemoryBytes == 0 {
		c.NodeMemoryBytes = DefaultNodeMemory()
	}
	if c.MaxTotalRSS == 0 {
		c.MaxTotalRSS = c.NodeMemoryBytes / 2
	}
	if c.IdleMemoryGrowth == 0 {
		c.IdleMemoryGrowth = DefaultIdleMemoryGrowth
	}
	if c.CPUPercent == 0 {
		c.CPUPercent = 100
	}
	if c.IdleCPUPercent <= 0 {
		c.IdleCPUPercent = 2
	}
	if c.IdleCPUCheck <= 0 {
		c.IdleCPUCheck = time.Second
	}
	if c.IdleCPUChecks <= 0 {
		c.IdleCPUChecks = 256
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	if c.MaxArtifactBytes == 0 {
		c.MaxArtifactBytes = 1 << 30
	}
	if c.SealedArtifactBytes == 0 {
		c.SealedArtifactBytes = 256 << 20
	}
	if c.SealedArtifacts <= 0 {
		c.SealedArtifacts = DefaultSealedArtifacts
	}
	if c.MaxCompiles <= 0 {
		c.MaxCompiles = DefaultMaxCompiles()
	}
	if c.QueryThreads <= 0 {
		c.QueryThreads = DefaultQueryThreads(c.CPUPercent)
	}
	c.QueryThreads = min(c.QueryThreads, boundary.MaxInFlight)
	if c.WatchdogBase <= 0 {
		c.WatchdogBase = 10 * time.Second
	}
	if c.IdleWatchDelay <= 0 {
		c.IdleWatchDelay = DefaultIdleWatchDelay
	}
	if c.InstructionsPerSecond == 0 {
		c.InstructionsPerSecond = 100_000_000
	}
	if c.CompileTimeout <= 0 {
		c.CompileTimeout = DefaultCompileTimeout
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Launch == nil {
		c.Launch = defaultLauncher
	}
	if c.blankLabel == "" {
		c.blankLabel = blankLabel
	}
	if c.primedLabel == "" {
		c.primedLabel = primedLabel
	}
}

// DefaultNodeMemoryShare: by default all of a node's sandboxes together
// may hold a quarter of the machine's memory (NodeMemoryBytes), and idle
// ones are evicted beyond an eighth (MaxTotalRSS). The node's canisters
// hold up to half by default (host's limits.memory_capacity, in the host's
// memory images); the rest is the host's own transient memory (a commit of
// n changed bytes needs up to 2.5 n) and the page cache (RATIONALE.md).
const DefaultNodeMemoryShare = 4

// DefaultNodeMemory is NodeMemoryBytes by default: a DefaultNodeMemoryShare
// of MemTotal (1 TiB where that is unknown: no practical bound).
func DefaultNodeMemory() uint64 {
	if m := sandbox.MachineMemory(); m > 0 {
		return m / DefaultNodeMemoryShare
	}
	return 1 << 40
}

// DefaultCompileTimeout is CompileTimeout by default: a compiler sandbox
// running longer is killed and the install fails. About 4 times what the
// worst module engine's default control bounds accept takes (500,000
// control instructions: some 40 s of CPU on a loaded 2-core VM) and what
// the IC's largest code section (12 MiB) of straight-line code takes
// (some 2.5 s of CPU a MB), so load leaves room; 35 times the corpus's
// slowest module in a compiler sandbox (dfx's ui canister, 1.7 MB: 5.0 s).
const DefaultCompileTimeout = 3 * time.Minute

// DefaultIdleMemoryGrowth is IdleMemoryGrowth by default. An honest idle
// worker's memory shrinks (it trims 500 ms to 32 s after its last request:
// worker/trim.go); a
// first garbage collection adds about 0.5 MiB of runtime metadata. Growth
// beyond this is code of its own allocating (RATIONALE.md).
const DefaultIdleMemoryGrowth = 32 << 20

// DefaultQueryThreads is the default QueryThreads of sandboxes with a CPU
// quota of cpuPercent (% of one core; 0 or negative: none): as in-process
// execution, twice the CPUs they may use, at most boundary.MaxInFlight.
func DefaultQueryThreads(cpuPercent int) int {
	cores := runtime.NumCPU()
	if cpuPercent > 0 {
		cores = (cpuPercent + 99) / 100
	}
	return min(2*cores, boundary.MaxInFlight)
}

// Fault classifies why a sandbox failed a request.
type Fault uint8

// Faults.
const (
	FaultViolation Fault = iota + 1 // it broke the protocol (see SandboxError.Violation)
	FaultCrash                      // it died (see SandboxError.Exit)
	FaultTimeout                    // the watchdog expired
	FaultStart                      // it could not be started
	FaultFailed                     // it reported that it could not carry out the request
	// FaultNodeMemory: it died, OOM-killed within its own memory limit:
	// the node's sandboxes together reached theirs (the node group's)
	// and the kernel took it. Not the canister's doing.
	FaultNodeMemory
)

func (f Fault) String() string {
	switch f {
	case FaultViolation:
		return "protocol violation"
	case FaultCrash:
		return "crash"
	case FaultTimeout:
		return "timeout"
	case FaultStart:
		return "start"
	case FaultFailed:
		return "failure"
	case FaultNodeMemory:
		return "node_memory"
	}
	return "unknown"
}

// SandboxError is a request that failed because of the sandbox: it broke
// the protocol, crashed, hung or could not start. The sandbox has been
// killed and forgotten; nothing of the request was applied. The host turns
// it into a CANISTER_ERROR reject of that message (SYS_TRANSIENT for
// FaultNodeMemory).
type SandboxError struct {
	CanisterID string // "" for the compiler sandbox
	Op         string // "start", "load", "execute", "compile"
	Fault      Fault
	Violation  *boundary.Violation // FaultViolation
	Exit       *sandbox.ExitStatus // how the process ended, when known
	Timeout    time.Duration       // FaultTimeout: the deadline that expired
	// TimeoutPages is, for FaultTimeout, the pages of the answer whose own
	// deadline expired (Sandboxed.pagesTime, after its header, counted
	// while the host waited for them); 0: the execution's deadline expired.
	TimeoutPages uint64
	// WaitCPU is, for FaultTimeout, the CPU time the sandbox used while
	// the host made its answer wait for memory, charged to its deadline
	// (reserveOffWatch); 0: none beyond the allowance.
	WaitCPU time.Duration
	Err     error
}

func (e *SandboxError) Error() string {
	switch e.Fault {
	case FaultViolation:
		return e.Violation.Error()
	case FaultTimeout:
		charged := ""
		if e.WaitCPU > 0 {
			charged = fmt.Sprintf("; it used %s of CPU while its answer waited for the host's memory, counted against that deadline",
				e.WaitCPU.Round(time.Millisecond))
		}
		if e.TimeoutPages > 0 {
			return fmt.Sprintf("sandbox kept the host waiting for the %d pages of its answer beyond their deadline of %s after its header (%s) and was killed%s",
				e.TimeoutPages, e.Timeout.Round(time.Millisecond), e.Op, charged)
		}
		return fmt.Sprintf("sandbox exceeded its wall-clock deadline of %s (%s) and was killed%s", e.Timeout.Round(time.Millisecond), e.Op, charged)
	case FaultCrash, FaultNodeMemory:
		if errors.Is(e.Err, engine.ErrHostMemory) {
			return "sandbox failed (" + e.Op + "): " + e.Err.Error()
		}
		return "sandbox crashed (" + e.Op + "): " + describeExit(e.Exit, e.Err)
	case FaultStart:
		return "sandbox could not be started: " + errString(e.Err)
	case FaultFailed:
		return "sandbox failed (" + e.Op + "): " + errString(e.Err)
	}
	return "sandbox error: " + errString(e.Err)
}

func (e *SandboxError) Unwrap() error { return e.Err }

func errString(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

// heldOwnMemory asks a sandbox whether a failure for memory was its own
// doing (sandbox.Process.HeldOwnMemory); a Process that cannot say is
// taken at its word's worst: its own.
func heldOwnMemory(p Process) bool {
	if o, ok := p.(interface{ HeldOwnMemory() bool }); ok {
		return o.HeldOwnMemory()
	}
	return true
}

func describeExit(st *sandbox.ExitStatus, err error) string {
	cause := "connection lost"
	var v *boundary.Violation
	switch {
	case errors.As(err, &v):
		// A message cut short by a death the kernel's verdict explains
		// (fail): what the socket showed, not a violation.
		cause = v.Detail
	case err != nil && !errors.Is(err, boundary.ErrClosed):
		cause = err.Error()
	}
	if st == nil {
		return cause
	}
	switch {
	case st.SeccompSyscall != "":
		return "killed for the forbidden system call " + st.SeccompSyscall
	case st.Err != nil && !errors.Is(st.Err, sandbox.ErrKilled):
		return cause + "; " + st.Err.Error()
	case st.Signal != 0:
		return cause + "; process ended by " + unix.SignalName(st.Signal)
	case st.Code >= 0:
		return fmt.Sprintf("%s; process exited with status %d", cause, st.Code)
	}
	return cause
}

// SandboxInfo describes a live canister sandbox (cordon ps).
type SandboxInfo struct {
	CanisterID string    `json:"canister"`
	Pid        int       `json:"pid"`
	RSS        uint64    `json:"rss_bytes"`
	Started    time.Time `json:"started"`
	LastUsed   time.Time `json:"last_used"`
	Messages   uint64    `json:"messages"`
}

// SandboxStats counts what happened to sandboxes since the executor started.
type SandboxStats struct {
	Spawned, Evicted, Compiles uint64
	PoolTakes                  uint64 // canisters given a blank sandbox from the warm pool
	PrimedTakes                uint64 // canisters given a primed sandbox (primed.go)
	PrimeFailures              uint64 // primed sandboxes that failed their load or misbehaved while they waited
	// JoinedQueries counts queries sent to a sandbox that was already
	// running another query of its canister (queries.go).
	JoinedQueries uint64
	Faults        map[string]uint64 // by Fault
	Violations    map[string]uint64 // by boundary.ViolationKind
	// MostCompiles is the most compiler sandboxes that were live at once.
	MostCompiles int
}

// Sandboxed runs every execution in its canister's sandbox process and
// compiles modules in short-lived compiler sandboxes. The host process
// never parses, compiles or loads canister code in this mode.
type Sandboxed struct {
	cfg SandboxConfig
	tag string // artifact compatibility tag: format, engine version, architecture

	mu      sync.Mutex
	pool    map[string]*canisterSandbox
	idleCPU int               // pid of the last sandbox the idle CPU watch looked at
	comps   map[int]time.Time // live compiler sandboxes: pid → start

	// compileSlots holds a token per compilation under way (MaxCompiles).
	compileSlots chan struct{}

	modules *moduleCache
	compile map[[32]byte]*moduleLock
	sealed  *sealedCache  // sealed artifact memfds (sealed.go)
	disk    *artifactDisk // the artifact files' bytes (artifacts.go)
	closed  bool
	stats   SandboxStats
	blanks  []*blankSandbox // the warm pool (warmpool.go)
	filling int             // blank sandboxes being started
	refill  chan struct{}   // wakes the filler
	// Primed sandboxes (primed.go): those ready, the starts in flight, the
	// modules of recently evicted canisters (most recent last), and the
	// primer's wake-up.
	primed    []*blankSandbox
	priming   int
	primeWant []*primeTarget
	reprime   chan struct{}
	// live counts the pool entries holding a slot: a sandbox running or
	// being spawned. rss is the sum of their last measured memory (after
	// each exchange, only under a memory budget), blankMem that of the
	// blank sandboxes. All are kept as entries come and go, so making room
	// costs no scan of /proc.
	live     int
	rss      uint64
	blankMem uint64

	// group is the cgroup holding every sandbox's (NodeMemoryBytes); nil
	// without the cgroup layer.
	group *sandbox.Group

	nextID atomic.Uint64
	stop   chan struct{}
	reaper sync.WaitGroup

	// Idle watches waiting to start (watch): the sandboxes whose
	// exchange ended, and the one timer that starts their watches
	// (startWatches), armed while the queue is not empty.
	idleMu    sync.Mutex
	idleQueue []*canisterSandbox
	idleArmed bool
	idleTimer *time.Timer

	// afterPagePacket, if set, runs after the host files each packet of an
	// answer's pages (boundary.PageWait.AfterPacket): tests slow the
	// host's reading with it.
	afterPagePacket func()
}

// sbModule is a module prepared by the compiler sandbox.
type sbModule struct {
	hash        [32]byte
	globalTypes []state.GlobalType
}

// canisterSandbox is a pool entry. mu is held for a whole exchange; the
// pool lock (Sandboxed.mu) protects the bookkeeping fields and is never
// held while waiting for mu.
type canisterSandbox struct {
	id string
	mu sync.Mutex

	// Under mu:
	proc   Process
	conn   *boundary.Conn
	loaded [32]byte // set with setLoaded
	dead   bool     // killed: acquire must take a fresh entry
	// running is loaded, read without mu by the artifact cache's
	// eviction (artifacts.go); nil: none.
	running atomic.Pointer[[32]byte]
	// watching is closed when the idle watch of this sandbox's socket
	// (between exchanges) has ended; nil when none runs.
	watching chan struct{}
	// watchFrom, if not zero, is when the last exchange ended (Unix
	// nanoseconds): a watch is due SandboxConfig.IdleWatchDelay later
	// (startWatches). Written under mu; atomic so that startWatches can
	// pass over a sandbox in an exchange without its lock.
	watchFrom atomic.Int64
	// queued: in Sandboxed.idleQueue (under Sandboxed.idleMu).
	queued bool

	// given is the memories proc was sent, whose images it may have read
	// holes of: trimmed when it is gone (given.go). Under givenMu: a
	// session's queries send without holding mu themselves.
	givenMu sync.Mutex
	given   []weak.Pointer[state.PageMap]

	// Under Sandboxed.mu:
	busy     int
	pooled   bool // acquire gave it a blank sandbox: refill after the exchange
	started  time.Time
	lastUsed time.Time
	messages uint64
	pid      int
	idleCPU  cpuMark
	slot     bool   // counted in Sandboxed.live (running or being spawned)
	rss      uint64 // last measured RSS, counted in Sandboxed.rss
	// endMem is the memory measured as its last exchange ended, by the
	// process endPid (0: none): where the idle memory watch's mark starts,
	// so that what the sandbox takes before the watch's first look is
	// judged too.
	endMem uint64
	endPid int

	// slots holds a token per query in flight or waiting for its session
	// (capacity QueryThreads; made under Sandboxed.mu): queries take them
	// in arrival order, and a query's is given back when it is answered.
	slots chan struct{}

	// Concurrent queries (queries.go), under smu: the open query session
	// (it holds mu), whether a query is opening one, how many exclusive
	// exchanges wait for mu (no query joins a session meanwhile), and a
	// channel closed at the next change of these.
	smu       sync.Mutex
	sess      *session
	opening   bool
	exclusive int
	changed   chan struct{}
}

// setLoaded records the module sb's process has loaded (mu held).
func (sb *canisterSandbox) setLoaded(h [32]byte) {
	sb.loaded = h
	if h == ([32]byte{}) {
		sb.running.Store(nil)
	} else {
		sb.running.Store(&h)
	}
}

// cpuMark is a sandbox's CPU time when its idle period began, and the
// least memory it was seen holding since.
type cpuMark struct {
	ok       bool
	pid      int
	messages uint64
	at       time.Time
	cpu      time.Duration
	mem      uint64
	memOK    bool
}

// NewSandboxed creates a sandboxed executor.
func NewSandboxed(cfg SandboxConfig) (*Sandboxed, error) {
	cfg.defaults()
	if cfg.Dir == "" {
		return nil, errors.New("exec: sandboxed execution needs an artifact directory")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("exec: artifact cache: %w", err)
	}
	if cfg.ArtifactCacheBytes == 0 {
		cfg.ArtifactCacheBytes = DefaultArtifactCacheBytes(cfg.Dir, cfg.MaxArtifactBytes)
	}
	// What sandboxes execute, decided (and sealed) now: a configured
	// executable of another build stops the node here, not at its first
	// canister.
	if cfg.Binary != "" {
		e, err := sandbox.CheckExecutable(cfg.Binary)
		if err != nil {
			return nil, fmt.Errorf("exec: sandbox.binary: %w", err)
		}
		cfg.Logger.Info("sandbox executable", "executable", e.String())
	} else {
		cfg.Logger.Info("sandbox executable", "executable", sandbox.DefaultExecutable().String())
	}
	group, err := nodeGroup(cfg)
	if err != nil {
		return nil, err
	}
	x := &Sandboxed{cfg: cfg, tag: artifactTag(), group: group, pool: map[string]*canisterSandbox{}, comps: map[int]time.Time{}, compileSlots: make(chan struct{}, cfg.MaxCompiles),
		modules: newModuleCache(), compile: map[[32]byte]*moduleLock{}, stop: make(chan struct{}), sealed: newSealedCache(cfg.SealedArtifactBytes, cfg.SealedArtifacts),
		disk:  newArtifactDisk(),
		stats: SandboxStats{Faults: map[string]uint64{}, Violations: map[string]uint64{}}, refill: make(chan struct{}, 1),
		reprime: make(chan struct{}, 1)}
	if err := x.disk.scan(cfg.Dir, x.tag); err != nil {
		return nil, err
	}
	x.idleTimer = time.AfterFunc(time.Hour, x.startWatches)
	x.idleTimer.Stop()
	if cfg.Launch == nil {
		// Now, while the host is small: the spawner's own fork copies the
		// host's page table once (sandbox/spawner.go).
		if err := sandbox.StartSpawner(); err != nil {
			slog.Warn("sandbox spawner not started; sandboxes are cloned from the host", "err", err)
		}
	}
	x.reaper.Add(2)
	go x.every(max(min(cfg.IdleTimeout/2, 30*time.Second), 10*time.Millisecond), x.reapIdle)
	go x.every(cfg.IdleCPUCheck, x.watchIdleCPU)
	if cfg.WarmPool > 0 {
		x.reaper.Add(1)
		go x.filler()
		x.kickFill()
	}
	if cfg.PreloadPool > 0 {
		x.reaper.Add(1)
		go x.primer()
	}
	return x, nil
}

// nodeGroup makes the group cgroup of the node's sandboxes
// (NodeMemoryBytes). Without the cgroup layer there is none: a strict
// sandbox refuses to start then, as it always did, and doctor says why. A
// group that cannot be made where the layer is available fails a strict
// node that does not allow the layer missing.
func nodeGroup(cfg SandboxConfig) (*sandbox.Group, error) {
	if cfg.MaxTotalRSS > cfg.NodeMemoryBytes {
		cfg.Logger.Warn("sandbox.memory_budget is above sandbox.node_memory_bytes: the kernel's OOM killer acts before idle sandboxes are evicted",
			"memory_budget", cfg.MaxTotalRSS, "node_memory_bytes", cfg.NodeMemoryBytes)
	}
	g, err := sandbox.NewGroup("node", cfg.NodeMemoryBytes)
	switch {
	case err == nil:
		cfg.Logger.Info("sandbox node group", "dir", g.Dir(), "memory_limit", g.MemoryLimit())
		return g, nil
	case errors.Is(err, sandbox.ErrNoCgroupLayer):
		cfg.Logger.Warn("sandboxes have no hard memory limit together (no cgroup layer): only the memory budget's eviction bounds them", "err", err)
		return nil, nil
	case cfg.Strict && !slices.Contains(cfg.AllowMissing, sandbox.LayerCgroup):
		return nil, fmt.Errorf("exec: %w", err)
	}
	cfg.Logger.Warn("sandboxes run without a hard memory limit together", "err", err)
	return nil, nil
}

// artifactTag names what an artifact depends on besides the module: a new
// engine version or architecture gets new files instead of failing loads.
// v2: the rewriter exports table 0 (callbacks of modules that do not export
// their table); a v1 artifact of such a module would still lack it.
// v3: the info carries the module's icp: metadata sections.
// v4: metering by instrumentation (an instruction counter global) instead
// of wasmtime fuel; v3 artifacts carry fuel-compiled code.
// v6: the artifact lists the pages the module's data segments write.
func artifactTag() string {
	h := sha256.New()
	fmt.Fprintf(h, "cordon artifact v6 protocol %d %s/%s", boundary.Version, runtime.GOOS, runtime.GOARCH)
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/bytecodealliance/wasmtime-go/v39" {
				fmt.Fprintf(h, " %s %s", d.Version, d.Sum)
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:6])
}

func (x *Sandboxed) artifactPath(h [32]byte, ext string) string {
	return filepath.Join(x.cfg.Dir, hex.EncodeToString(h[:])+"-"+x.tag+ext)
}

// ---- Prepare -------------------------------------------------------------

// Prepare implements Executor: the module is compiled in a compiler sandbox
// (or found in the artifact cache), never in this process.
func (x *Sandboxed) Prepare(ctx context.Context, wasm []byte) (*Module, error) {
	h := sha256.Sum256(wasm)
	if m := x.modules.get(h); m != nil {
		return m, nil
	}
	x.mu.Lock()
	closed := x.closed
	x.mu.Unlock()
	if closed {
		return nil, errors.New("exec: executor closed")
	}
	defer x.lockModule(h)()
	if m := x.modules.get(h); m != nil {
		return m, nil
	}
	if len(wasm) > x.cfg.ModuleLimits.MaxBytes {
		return nil, fmt.Errorf("%w: module is %d bytes, the limit is %d", engine.ErrInvalidModule, len(wasm), x.cfg.ModuleLimits.MaxBytes)
	}
	comp, err := x.cachedInfo(h, len(wasm))
	if err == nil {
		x.disk.touch(h)
	} else {
		if comp, err = x.compileInSandbox(ctx, h, wasm); err != nil {
			return nil, err
		}
	}
	info := comp.Info
	info.Hash, info.Size = h, len(wasm) // the host's own facts, never the sandbox's
	if x.cfg.InstalledModule != nil {
		wasm = nil // read again from the store when needed (moduleWasm)
	}
	return x.modules.put(h, &Module{Info: info, Wasm: wasm, handle: &sbModule{hash: h, globalTypes: comp.GlobalTypes}}), nil
}

// tryLockModule is lockModule when nobody holds or waits for h's lock;
// ok is false otherwise.
func (x *Sandboxed) tryLockModule(h [32]byte) (unlock func(), ok bool) {
	x.mu.Lock()
	if _, held := x.compile[h]; held {
		x.mu.Unlock()
		return nil, false
	}
	x.mu.Unlock()
	return x.lockModule(h), true
}

// moduleLock is one module's lock and the number of callers holding or
// waiting for it. The entry leaves the map only when that number falls to
// zero: a caller still waiting on it must not find a newer lock beside it,
// or two compilations (or a compilation and a removal) of one module would
// run at once.
type moduleLock struct {
	mu   sync.Mutex
	refs int // under Sandboxed.mu
}

// lockModule takes h's lock and returns its release: one compilation (or
// removal, ForgetModule) of a module at a time.
func (x *Sandboxed) lockModule(h [32]byte) func() {
	x.mu.Lock()
	lock, ok := x.compile[h]
	if !ok {
		lock = &moduleLock{}
		x.compile[h] = lock
	}
	lock.refs++
	x.mu.Unlock()
	lock.mu.Lock()
	return func() {
		x.mu.Lock()
		if lock.refs--; lock.refs == 0 {
			delete(x.compile, h)
		}
		x.mu.Unlock()
		lock.mu.Unlock()
	}
}

// The cache holds two files per module: <hash>-<tag>.cwasm, the artifact
// exactly as the compiler sandbox returned it (handed to canister sandboxes
// as a read-only descriptor), and <hash>-<tag>.info: the SHA-256 of the
// artifact, then the Compiled message without its artifact.

// cachedInfo reads a cached module's info (validated again: the cache is
// the host's, but the values came from a sandbox).
func (x *Sandboxed) cachedInfo(h [32]byte, wasmSize int) (*boundary.Compiled, error) {
	if _, err := os.Stat(x.artifactPath(h, ".cwasm")); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(x.artifactPath(h, ".info"))
	if err != nil {
		return nil, err
	}
	if len(b) < sha256.Size {
		return nil, errors.New("exec: truncated artifact info")
	}
	c, err := boundary.DecodeCompiled(b[sha256.Size:], x.cfg.ModuleLimits)
	if err != nil {
		return nil, err
	}
	c.Artifact = []byte{0} // kept in the .cwasm file
	if err := boundary.ValidateCompiled(x.cfg.ModuleLimits, wasmSize, x.artifactLimit(wasmSize), c); err != nil {
		return nil, err
	}
	return c, nil
}

func (x *Sandboxed) compileInSandbox(ctx context.Context, h [32]byte, wasm []byte) (*boundary.Compiled, error) {
	// A fresh compiler sandbox for every module: a module that compromises
	// the compiler can only affect its own artifact. At most MaxCompiles
	// at once.
	select {
	case x.compileSlots <- struct{}{}:
		defer func() { <-x.compileSlots }()
	case <-ctx.Done():
		return nil, fmt.Errorf("exec: waiting for a compiler sandbox: %w", ctx.Err())
	}
	x.count(func(s *SandboxStats) { s.Compiles++ })
	spec := x.spec("compiler", boundary.ModeCompile, x.cfg.CompileMemoryBytes)
	proc, conn, err := x.start(ctx, "", spec, boundary.ModeCompile)
	if err != nil {
		return nil, err
	}
	pid := proc.Pid()
	x.mu.Lock()
	x.comps[pid] = time.Now()
	x.stats.MostCompiles = max(x.stats.MostCompiles, len(x.comps))
	x.mu.Unlock()
	defer func() {
		_ = proc.Kill()
		waitExit(proc)
		conn.Raw().Close()
		x.mu.Lock()
		delete(x.comps, pid)
		x.mu.Unlock()
	}()
	id := x.nextID.Add(1)
	deadline := x.cfg.CompileTimeout
	comp, err := exchange(ctx, conn, deadline, func() (*boundary.Compiled, error) {
		body := boundary.EncodeCompile(&boundary.CompileRequest{Limits: x.cfg.ModuleLimits, Wasm: wasm})
		if err := conn.Send(&boundary.Msg{Kind: boundary.KindCompile, ID: id, Body: body}); err != nil {
			return nil, err
		}
		return conn.AwaitCompiled(id, x.cfg.ModuleLimits, len(wasm), x.artifactLimit(len(wasm)), x.logFunc("compiler"))
	})
	var re *boundary.RemoteError
	if errors.As(err, &re) && re.Code == boundary.ErrInvalidModule {
		return nil, fmt.Errorf("%w: %s", engine.ErrInvalidModule, re.Message)
	}
	if err != nil {
		return nil, x.fail("", "compile", proc, deadline, err)
	}
	if err := x.writeArtifact(h, comp); err != nil {
		return nil, fmt.Errorf("exec: cache artifact: %w", err)
	}
	x.trimArtifacts(h)
	x.sealed.drop(h) // a stale one, if this is a compilation again
	x.sealArtifact(h, comp.Artifact)
	return comp, nil
}

// An artifact is bounded by its module's size, not only by
// SandboxConfig.MaxArtifactBytes: a compiler a module compromised could
// otherwise return 1 GiB for every module of a few bytes, and the cache
// keeps one artifact per module the store holds. Compiled code is about 5
// times the module (4.5 for the Motoko corpus, 5.7 for 64-bit Motoko, 3.5
// for factory64); the densest modules measured, chains of float
// conversions that each expand to a trapping sequence, reach 86 times,
// and every module has about 13 KiB of fixed overhead.
//
// The artifact also holds the module's initial memory image: wasmtime
// makes one of everything from the first to the last byte the data
// segments write (page-aligned) when it is under twice their bytes, which
// the allowance per byte covers, or under 16 MiB whatever they hold (its
// default memory_guaranteed_dense_image_size, which wasmtime-go cannot
// change). So a module of a hundred bytes writing a byte at 0 and one near
// 16 MiB compiles to 16 MiB, which the in-process engine runs: the bound
// allows that image to every module, lest the two modes disagree.
const (
	artifactBytesPerWasmByte = 256
	artifactBaseBytes        = 1 << 20
	artifactImageBytes       = 16 << 20
)

// artifactLimit returns the largest artifact accepted for a module of
// wasmSize bytes.
func (x *Sandboxed) artifactLimit(wasmSize int) uint64 {
	return min(x.cfg.MaxArtifactBytes, artifactBaseBytes+artifactImageBytes+artifactBytesPerWasmByte*uint64(max(wasmSize, 0)))
}

func (x *Sandboxed) writeArtifact(h [32]byte, c *boundary.Compiled) error {
	info := *c
	info.Artifact = nil
	sum := sha256.Sum256(c.Artifact)
	if err := writeAtomic(x.cfg.Dir, x.artifactPath(h, ".cwasm"), c.Artifact); err != nil {
		return err
	}
	infoBytes := append(sum[:], boundary.EncodeCompiled(&info)...)
	if err := writeAtomic(x.cfg.Dir, x.artifactPath(h, ".info"), infoBytes); err != nil {
		return err
	}
	x.disk.add(h, uint64(len(c.Artifact)+len(infoBytes)))
	return nil
}

func writeAtomic(dir, path string, data []byte) error {
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

func (x *Sandboxed) removeArtifact(h [32]byte) {
	x.sealed.drop(h)
	x.removeArtifactFiles(h)
}

// removeArtifactFiles removes h's files and returns the bytes they were
// accounted as.
func (x *Sandboxed) removeArtifactFiles(h [32]byte) uint64 {
	before := x.disk.bytes()
	os.Remove(x.artifactPath(h, ".cwasm"))
	os.Remove(x.artifactPath(h, ".info"))
	x.disk.remove(h)
	return before - x.disk.bytes()
}

// ---- sandboxes -----------------------------------------------------------

func (x *Sandboxed) spec(label string, mode boundary.Mode, mem uint64) sandbox.Spec {
	log := x.cfg.Logger
	args := []string{mode.String()}
	if mode == boundary.ModeCanister {
		// The label shows in the process list (the worker ignores it); the
		// worker keeps a reset query instance for each query thread.
		args = append(args, label, boundary.QueryThreadsArg+strconv.Itoa(x.cfg.QueryThreads))
	}
	pids, cpu := x.cfg.Pids, max(x.cfg.CPUPercent, 0)
	if mode == boundary.ModeCompile {
		// Cranelift compiles on one thread per CPU.
		if pids == 0 {
			pids = sandbox.DefaultPids + uint64(runtime.NumCPU())
		}
		if cpu != 0 {
			cpu = max(cpu, 100*runtime.NumCPU())
		}
	}
	return sandbox.Spec{
		Label: label, Binary: x.cfg.Binary, Args: args,
		MemoryBytes: mem, Group: x.group, Pids: pids, CPUPercent: cpu,
		Strict: x.cfg.Strict, AllowMissing: x.cfg.AllowMissing, HostIDs: x.cfg.HostIDs,
		Stderr: func(line string) { log.Info("sandbox stderr", "canister", label, "line", line) },
	}
}

func (x *Sandboxed) logFunc(label string) boundary.LogFunc {
	log := x.cfg.Logger
	return func(l boundary.LogLine) {
		lvl := []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError}[l.Level]
		log.Log(context.Background(), lvl, "sandbox log", "canister", label, "line", l.Text)
	}
}

// start spawns a sandbox and waits for its Ready.
func (x *Sandboxed) start(ctx context.Context, canisterID string, spec sandbox.Spec, mode boundary.Mode) (Process, *boundary.Conn, error) {
	kind := "canister"
	switch {
	case mode == boundary.ModeCompile:
		kind = "compiler"
	case canisterID == "":
		kind = "blank"
	}
	return x.startKind(ctx, canisterID, kind, spec, mode)
}

// startKind is start for a sandbox of the given kind (metrics and logs:
// "canister", "compiler", "blank" or "primed").
func (x *Sandboxed) startKind(ctx context.Context, canisterID, kind string, spec sandbox.Spec, mode boundary.Mode) (Process, *boundary.Conn, error) {
	sctx, cancel := context.WithTimeout(ctx, x.cfg.StartTimeout)
	defer cancel()
	proc, err := x.cfg.Launch(sctx, spec)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		x.count(func(s *SandboxStats) { s.Faults[FaultStart.String()]++ })
		attrs := []any{"canister", spec.Label, "err", err}
		if l, ok := sandbox.FailedLayer(err); ok {
			attrs = append(attrs, "layer", string(l))
		}
		var errno syscall.Errno
		if errors.As(err, &errno) {
			attrs = append(attrs, "errno", int(errno))
		}
		x.cfg.Logger.Error("sandbox start failed", attrs...)
		return nil, nil, &SandboxError{CanisterID: canisterID, Op: "start", Fault: FaultStart, Err: err}
	}
	x.cfg.Metrics.SandboxSpawned(kind)
	conn := boundary.NewConn(proc.Conn())
	_, err = exchange(ctx, conn, x.cfg.StartTimeout, func() (struct{}, error) {
		return struct{}{}, conn.AwaitReady(mode, x.logFunc(spec.Label))
	})
	if err != nil {
		label := canisterID
		switch kind {
		case "blank":
			label = blankLabel // not "compiler" in the log
		case "primed":
			label = primedLabel
		}
		err = x.fail(label, "start", proc, x.cfg.StartTimeout, err)
		proc.Conn().Close()
		return nil, nil, err
	}
	x.count(func(s *SandboxStats) { s.Spawned++ })
	return proc, conn, nil
}

// exchange runs f with the connection's deadline set to d from now, or to
// now when ctx ends: the watchdog. Reads and writes past the deadline fail.
func exchange[T any](ctx context.Context, conn *boundary.Conn, d time.Duration, f func() (T, error)) (T, error) {
	_ = conn.Raw().SetDeadline(time.Now().Add(d))
	stop := context.AfterFunc(ctx, func() { _ = conn.Raw().SetDeadline(time.Unix(1, 0)) })
	v, err := f()
	stop()
	_ = conn.Raw().SetDeadline(time.Time{})
	if err != nil && ctx.Err() != nil {
		var zero T
		return zero, ctx.Err()
	}
	return v, err
}

// fail kills a sandbox after a failed exchange and classifies the error.
// A context error is returned as is (the caller gave up).
func (x *Sandboxed) fail(canisterID, op string, proc Process, deadline time.Duration, err error) error {
	var re *boundary.RemoteError
	hostMemory := errors.As(err, &re) && re.Code == boundary.ErrHostMemory
	ownMemory := hostMemory && heldOwnMemory(proc) // read before the kill removes its cgroup
	_ = proc.Kill()
	st := waitExit(proc)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	se := &SandboxError{CanisterID: canisterID, Op: op, Err: err, Exit: st}
	var v *boundary.Violation
	var ne net.Error
	switch {
	case hostMemory:
		// A grow the kernel refused within the canister's limits: the
		// node's, as an OOM kill for the node's memory is, unless the
		// sandbox's cgroup shows it its own (its limit, or half the
		// group held), which is charged as a crash (RATIONALE.md, "A
		// grow the host fails is the host's failure, never -1").
		se.Err = fmt.Errorf("%w (%s)", engine.ErrHostMemory, re.Message)
		se.Fault = FaultNodeMemory
		if ownMemory {
			se.Fault = FaultCrash
		}
	case st != nil && errors.Is(st.Err, sandbox.ErrNodeOutOfMemory):
		// The kernel's verdict before what the host read: it OOM-killed
		// the sandbox for the node group's memory (within its own limit,
		// under half of the group: the cgroup's counters, as for a grow
		// above), and a message cut short by that death (a protocol
		// violation: pages missing) or a reset is that death seen from
		// the socket. Not the canister's doing (RATIONALE.md, "The
		// kernel's OOM verdict comes before what the socket showed").
		se.Fault = FaultNodeMemory
	case errors.As(err, &v):
		se.Fault, se.Violation = FaultViolation, v
	case errors.As(err, &ne) && ne.Timeout():
		se.Fault, se.Timeout = FaultTimeout, deadline
		var pd *pagesDeadlineError
		if errors.As(err, &pd) {
			if pd.pages > 0 {
				se.Timeout, se.TimeoutPages = pd.allowed, pd.pages
			}
			se.WaitCPU = pd.waitCPU
		}
	case errors.As(err, &re):
		se.Fault = FaultFailed
	default: // closed, EPIPE, ECONNRESET: it died
		se.Fault = FaultCrash
	}
	x.count(func(s *SandboxStats) {
		s.Faults[se.Fault.String()]++
		if v != nil {
			s.Violations[v.Kind.String()]++
		}
	})
	x.recordFault(se, st)
	label := canisterID
	if label == "" {
		label = "compiler"
	}
	x.cfg.Logger.Warn("sandbox killed", "canister", label, "op", op, "pid", proc.Pid(), "fault", se.Fault.String(), "err", se.Error())
	return se
}

// recordFault reports a failed sandbox to the metrics.
func (x *Sandboxed) recordFault(se *SandboxError, st *sandbox.ExitStatus) {
	m := x.cfg.Metrics
	switch {
	case st != nil && st.SeccompSyscall != "":
		m.SandboxCrashed("seccomp")
		m.SeccompKill(st.SeccompSyscall)
	case st != nil && errors.Is(st.Err, sandbox.ErrOutOfMemory):
		m.SandboxCrashed("oom")
	case st != nil && errors.Is(st.Err, sandbox.ErrNodeOutOfMemory):
		m.SandboxCrashed("node_oom")
	case se.Fault == FaultTimeout:
		m.SandboxCrashed("watchdog")
		m.WatchdogKill()
	case se.Fault == FaultViolation:
		m.SandboxCrashed("violation")
		m.ProtocolViolation(se.Violation.Kind.String())
	case st != nil && st.Signal != 0:
		m.SandboxCrashed("signal")
	default:
		m.SandboxCrashed("exit")
	}
}

// waitExit reaps a killed sandbox, giving up after a while (a stand-in that
// ignores Kill must not hang the host).
func waitExit(proc Process) *sandbox.ExitStatus {
	ch := make(chan sandbox.ExitStatus, 1)
	go func() { ch <- proc.Wait() }()
	select {
	case st := <-ch:
		return &st
	case <-time.After(5 * time.Second):
		return nil
	}
}

func (x *Sandboxed) count(f func(*SandboxStats)) {
	x.mu.Lock()
	f(&x.stats)
	x.mu.Unlock()
}

// Stats returns the counters.
func (x *Sandboxed) Stats() SandboxStats {
	x.mu.Lock()
	defer x.mu.Unlock()
	s := x.stats
	s.Faults, s.Violations = map[string]uint64{}, map[string]uint64{}
	for k, v := range x.stats.Faults {
		s.Faults[k] = v
	}
	for k, v := range x.stats.Violations {
		s.Violations[k] = v
	}
	return s
}

// acquire returns the canister's pool entry locked for an exchange, with a
// live sandbox (spawned if needed) that has loaded module want or nothing
// yet. The boolean says whether the sandbox was reused rather than spawned
// for this call.
func (x *Sandboxed) acquire(ctx context.Context, id string, want [32]byte) (*canisterSandbox, bool, error) {
	for {
		x.mu.Lock()
		if x.closed {
			x.mu.Unlock()
			return nil, false, errors.New("exec: executor closed")
		}
		sb := x.pool[id]
		if sb == nil {
			sb = &canisterSandbox{id: id}
			x.pool[id] = sb
		}
		sb.busy++
		x.mu.Unlock()

		sb.mu.Lock()
		x.unwatch(sb)
		if sb.dead {
			sb.mu.Unlock()
			x.release(sb, false)
			continue
		}
		if sb.proc != nil && exited(sb.proc) {
			// Died while idle (killed from outside, OOM): respawn quietly.
			x.cfg.Logger.Info("sandbox found dead, respawning", "canister", id, "pid", sb.proc.Pid())
			x.discard(sb)
		}
		if sb.proc != nil && sb.loaded != ([32]byte{}) && sb.loaded != want {
			// A sandbox runs one module: after loading it, it can make no
			// more memory executable (W^X). An upgrade gets a fresh one.
			x.cfg.Logger.Info("module changed, respawning the sandbox", "canister", id, "pid", sb.proc.Pid())
			x.discard(sb)
		}
		if sb.proc != nil {
			return sb, true, nil
		}
		if b := x.takePrimed(id, want); b != nil {
			// Its module is loaded: only the canister's state travels.
			// Not reused: a crash in its first exchange is the
			// canister's, as in a fresh one.
			x.unprime(id)
			sb.proc, sb.conn = b.proc, b.conn
			sb.setLoaded(want)
			x.mu.Lock()
			sb.started, sb.lastUsed, sb.messages, sb.pid, sb.pooled = b.started, time.Now(), 0, b.proc.Pid(), true
			x.takeSlotLocked(sb)
			x.mu.Unlock()
			return sb, false, nil
		}
		x.unprime(id) // it gets another sandbox: its module need not stay primed for it
		if b := x.takeBlank(id); b != nil {
			// Confined, verified, idle and alive until now; it loads
			// this canister's module next. Not reused: a crash in its
			// first exchange is the canister's, as in a fresh one.
			sb.proc, sb.conn = b.proc, b.conn
			sb.setLoaded([32]byte{})
			x.mu.Lock()
			sb.started, sb.lastUsed, sb.messages, sb.pid, sb.pooled = b.started, time.Now(), 0, b.proc.Pid(), true
			x.takeSlotLocked(sb)
			x.mu.Unlock()
			return sb, false, nil
		}
		x.makeRoom(sb) // its slot keeps the warm pool from filling it (warmpool.go)
		proc, conn, err := x.start(ctx, id, x.spec(id, boundary.ModeCanister, x.cfg.MemoryBytes), boundary.ModeCanister)
		if err != nil {
			x.forgetLocked(sb)
			sb.mu.Unlock()
			x.release(sb, false)
			return nil, false, err
		}
		sb.proc, sb.conn = proc, conn
		sb.setLoaded([32]byte{})
		now := time.Now()
		x.mu.Lock()
		sb.started, sb.lastUsed, sb.messages, sb.pid = now, now, 0, proc.Pid()
		x.mu.Unlock()
		return sb, false, nil
	}
}

// executing is a sandbox whose oom_score_adj the host lowers while it
// executes (sandbox.Process): the kernel then takes idle sandboxes first
// when the node group runs out of memory.
type executing interface {
	BeginExecution()
	EndExecution()
}

// beginExecution marks an execution in flight on p (its load included);
// each is ended by one endExecution. An exclusive exchange is one; a query
// session is one from its opening to its last answer (its queries are in
// flight exactly while it is open).
func beginExecution(p Process) {
	if e, ok := p.(executing); ok {
		e.BeginExecution()
	}
}

func endExecution(p Process) {
	if e, ok := p.(executing); ok {
		e.EndExecution()
	}
}

// exited reports whether a sandbox process is known to have ended.
func exited(p Process) bool {
	d, ok := p.(interface{ Done() <-chan struct{} })
	if !ok {
		return false
	}
	select {
	case <-d.Done():
		return true
	default:
		return false
	}
}

// release ends an exchange (sb.mu already unlocked).
func (x *Sandboxed) release(sb *canisterSandbox, used bool) {
	x.mu.Lock()
	sb.busy--
	if used {
		sb.lastUsed = time.Now()
		sb.messages++
	}
	refill := sb.pooled
	sb.pooled = false
	x.mu.Unlock()
	if refill {
		// After the exchange, not while it loads and runs: the refill
		// competes for the same cores.
		x.kickFill()
		x.kickPrime()
	}
}

// discard kills sb's process (sb.mu held) and keeps the entry for a respawn.
func (x *Sandboxed) discard(sb *canisterSandbox) {
	x.unwatch(sb)
	if sb.proc == nil {
		return
	}
	_ = sb.proc.Kill()
	waitExit(sb.proc)
	sb.trimGiven()
	sb.conn.Raw().Close()
	sb.proc, sb.conn = nil, nil
	sb.setLoaded([32]byte{})
	x.mu.Lock()
	sb.pid = 0
	x.freeSlotLocked(sb)
	x.mu.Unlock()
}

// forgetLocked kills sb and removes it from the pool (sb.mu held).
func (x *Sandboxed) forgetLocked(sb *canisterSandbox) {
	x.unwatch(sb)
	if sb.proc != nil {
		_ = sb.proc.Kill()
		waitExit(sb.proc)
		sb.trimGiven()
		sb.conn.Raw().Close()
		sb.proc, sb.conn = nil, nil
	}
	sb.dead = true
	x.mu.Lock()
	sb.pid = 0
	x.freeSlotLocked(sb)
	if x.pool[sb.id] == sb {
		delete(x.pool, sb.id)
	}
	x.mu.Unlock()
}

// makeRoom evicts the coldest idle sandboxes while the pool is over its
// count or memory budget, then takes a slot for self (sb.mu held), which is
// about to be spawned: from here it counts as live, so that concurrent
// spawns see each other and evict instead of all squeezing into the room
// one of them made. If every live sandbox is busy the slot is taken anyway:
// the pool then exceeds its budget by the exchanges in flight rather than
// refuse a message.
func (x *Sandboxed) makeRoom(self *canisterSandbox) {
	for {
		x.mu.Lock()
		reason := x.overLocked()
		if reason == "" {
			x.takeSlotLocked(self)
			x.mu.Unlock()
			return
		}
		x.mu.Unlock()
		// Blank sandboxes give way first: they hold no canister.
		if !x.trimBlank() && !x.evictColdest(self, reason) {
			x.mu.Lock()
			x.takeSlotLocked(self)
			x.mu.Unlock()
			return
		}
	}
}

// overLocked says which budget a new sandbox would exceed: "pool" (the
// count), "memory" (the RSS of all), or "" (x.mu held).
func (x *Sandboxed) overLocked() string {
	switch {
	case x.live+len(x.blanks)+len(x.primed) >= x.cfg.MaxSandboxes:
		return "pool"
	case x.cfg.MaxTotalRSS > 0 && x.rss+x.blankMem >= x.cfg.MaxTotalRSS:
		return "memory"
	}
	return ""
}

func (x *Sandboxed) takeSlotLocked(sb *canisterSandbox) {
	if !sb.slot {
		sb.slot = true
		x.live++
	}
}

// freeSlotLocked gives sb's slot back when its process is gone (x.mu held).
func (x *Sandboxed) freeSlotLocked(sb *canisterSandbox) {
	if sb.slot {
		sb.slot = false
		x.live--
		x.rss -= sb.rss
		sb.rss = 0
	}
}

// measure records sb's memory after an exchange (sb.mu held), for the
// pool's memory budget and as where sb's idle memory watch starts
// (endMem): one read per message, so that making room adds up numbers
// instead of reading every live sandbox's. The memory is what
// its cgroup is charged (sandbox.Process.MemoryCharge), else its RSS: RSS
// counts the code every sandbox shares once per sandbox, so that a budget
// of RSS held half the sandboxes the memory had room for.
func (x *Sandboxed) measure(sb *canisterSandbox) {
	if (x.cfg.MaxTotalRSS == 0 && x.cfg.IdleMemoryGrowth == 0) || sb.proc == nil {
		return
	}
	r, err := memoryOf(sb.proc)
	if err != nil {
		return
	}
	x.mu.Lock()
	sb.endMem, sb.endPid = r, sb.pid
	if sb.slot {
		x.rss = x.rss - sb.rss + r
		sb.rss = r
	}
	x.mu.Unlock()
}

// memoryOf is what a sandbox counts in the memory budget: its cgroup's
// charge, else its RSS.
func memoryOf(p Process) (uint64, error) {
	if c, ok := p.(interface{ MemoryCharge() (uint64, error) }); ok {
		return c.MemoryCharge()
	}
	return p.RSS()
}

// evictColdest stops the least recently used idle sandbox; false if none.
// reason is the budget it makes room in ("pool" or "memory").
func (x *Sandboxed) evictColdest(self *canisterSandbox, reason string) bool {
	type cand struct {
		sb   *canisterSandbox
		last time.Time
	}
	x.mu.Lock()
	var cands []cand
	for _, sb := range x.pool {
		if sb != self && sb.busy == 0 && sb.pid != 0 {
			cands = append(cands, cand{sb, sb.lastUsed})
		}
	}
	x.mu.Unlock()
	// Usually the coldest is free: find it in one pass, the next one only
	// if it is not.
	for len(cands) > 0 {
		k := 0
		for i, c := range cands {
			if c.last.Before(cands[k].last) {
				k = i
			}
		}
		sb := cands[k].sb
		if sb.mu.TryLock() {
			x.cfg.Logger.Info("sandbox evicted", "canister", sb.id, "reason", reason)
			loaded := sb.loaded
			x.forgetLocked(sb)
			sb.mu.Unlock()
			x.count(func(s *SandboxStats) { s.Evicted++ })
			x.cfg.Metrics.SandboxEvicted(reason)
			x.kickFill() // room for a blank, if the pool is short
			if reason != "memory" {
				// Evicted for the memory budget, the node is at it: a
				// primed sandbox would only be trimmed by the next cold
				// start (under the count budget none starts: no room).
				x.notePrime(sb.id, loaded)
			}
			return true
		}
		cands[k] = cands[len(cands)-1]
		cands = cands[:len(cands)-1]
	}
	return false
}

// reapIdle stops the sandboxes idle for longer than IdleTimeout, primed
// ones included.
func (x *Sandboxed) reapIdle() {
	for _, sb := range x.idleSandboxes(func(sb *canisterSandbox) bool { return time.Since(sb.lastUsed) > x.cfg.IdleTimeout }) {
		if sb.mu.TryLock() {
			x.cfg.Logger.Info("sandbox evicted", "canister", sb.id, "reason", "idle")
			loaded := sb.loaded
			x.forgetLocked(sb)
			sb.mu.Unlock()
			x.count(func(s *SandboxStats) { s.Evicted++ })
			x.cfg.Metrics.SandboxEvicted("idle")
			x.kickFill()
			x.notePrime(sb.id, loaded)
		}
	}
	x.reapPrimed()
}

// every calls f every d until the executor closes (a reaper goroutine).
func (x *Sandboxed) every(d time.Duration, f func()) {
	defer x.reaper.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-x.stop:
			return
		case <-t.C:
		}
		f()
	}
}

// idleSandboxes returns the live sandboxes that no exchange holds or waits
// for and that satisfy keep (which runs under x.mu).
func (x *Sandboxed) idleSandboxes(keep func(*canisterSandbox) bool) []*canisterSandbox {
	x.mu.Lock()
	defer x.mu.Unlock()
	var idle []*canisterSandbox
	for _, sb := range x.pool {
		if sb.busy == 0 && sb.pid != 0 && keep(sb) {
			idle = append(idle, sb)
		}
	}
	return idle
}

// watchIdleCPU kills the sandboxes that burn CPU or grow their memory
// between messages, then keeps the memory budget. Between messages a
// worker is blocked reading its socket; CPU time it uses then is a thread
// of its own, which costs the node a core until the idle timeout, and
// memory it takes then is held for as long as its canister stays warm.
func (x *Sandboxed) watchIdleCPU() {
	for _, sb := range x.idleCPUTurn() {
		x.checkIdle(sb)
	}
	x.checkIdleBlanks()
	x.keepMemoryBudget()
}

// keepMemoryBudget evicts while the sandboxes' memory, as last measured,
// is over MaxTotalRSS: blank and primed sandboxes first, then the least
// recently used idle canister sandboxes. makeRoom does so before a
// sandbox starts; this finds what idle ones grew meanwhile (checkIdle
// measures them), so a budget passed between messages does not wait for
// the next cold start.
func (x *Sandboxed) keepMemoryBudget() {
	for {
		x.mu.Lock()
		over := x.cfg.MaxTotalRSS > 0 && x.rss+x.blankMem > x.cfg.MaxTotalRSS
		x.mu.Unlock()
		if !over || (!x.trimBlank() && !x.evictColdest(nil, "memory")) {
			return
		}
	}
}

// idleCPUTurn returns the idle canister sandboxes whose turn it is: at most
// IdleCPUChecks of them, those after the last one looked at in pid order,
// wrapping around.
func (x *Sandboxed) idleCPUTurn() []*canisterSandbox {
	x.mu.Lock()
	defer x.mu.Unlock()
	type idle struct {
		sb  *canisterSandbox
		pid int
	}
	var all []idle
	for _, sb := range x.pool {
		if sb.busy == 0 && sb.pid != 0 {
			all = append(all, idle{sb, sb.pid})
		}
	}
	n := min(x.cfg.IdleCPUChecks, len(all))
	if n == 0 {
		return nil
	}
	slices.SortFunc(all, func(a, b idle) int { return cmp.Compare(a.pid, b.pid) })
	first, _ := slices.BinarySearchFunc(all, x.idleCPU+1, func(e idle, pid int) int { return cmp.Compare(e.pid, pid) })
	turn := make([]*canisterSandbox, n)
	for i := range turn {
		turn[i] = all[(first+i)%len(all)].sb
	}
	x.idleCPU = all[(first+n-1)%len(all)].pid
	return turn
}

// checkIdle looks at an idle sandbox: its memory now counts in the budget,
// and it is compared with the mark taken when its idle period began. One
// that handled no message since and used more than IdleCPUPercent of the
// wall time, or whose memory grew by more than IdleMemoryGrowth from the
// least it held since, is killed.
func (x *Sandboxed) checkIdle(sb *canisterSandbox) {
	if !sb.mu.TryLock() {
		return // an exchange holds it: not idle
	}
	defer sb.mu.Unlock()
	if sb.proc == nil {
		return
	}
	defer x.rewatch(sb)
	var used time.Duration
	c, cpuOK := sb.proc.(interface{ CPUTime() (time.Duration, error) })
	if cpuOK {
		var err error
		if used, err = c.CPUTime(); err != nil {
			return // exited: the next acquire notices
		}
	}
	mem, err := memoryOf(sb.proc)
	memOK := err == nil
	now := time.Now()
	// The mark stays where the sandbox's idle period began, so what it
	// uses adds up over the checks: on a loaded node a spinning thread gets
	// a small share of a core per check, never enough to judge on alone.
	// Its memory is judged from the least it held since: an honest worker
	// trims after its last request, and a thread that then takes memory
	// back is as foreign as one that takes more.
	x.mu.Lock()
	if memOK && sb.slot {
		x.rss = x.rss - sb.rss + mem
		sb.rss = mem
	}
	mark := sb.idleCPU
	busy := sb.busy != 0
	same := !busy && mark.ok && mark.pid == sb.pid && mark.messages == sb.messages
	if !same {
		sb.idleCPU = cpuMark{ok: !busy, pid: sb.pid, messages: sb.messages, at: now, cpu: used, mem: mem, memOK: memOK}
		// From what it held when its last exchange ended, if less: memory
		// taken between that and this first look is growth while idle too.
		if sb.endPid != 0 && sb.endPid == sb.pid && (!memOK || sb.endMem < mem) {
			sb.idleCPU.mem, sb.idleCPU.memOK = sb.endMem, true
		}
	} else if memOK && (!mark.memOK || mem < mark.mem) {
		sb.idleCPU.mem, sb.idleCPU.memOK = mem, true
	}
	x.mu.Unlock()
	if !same {
		return
	}
	// /proc counts in 10 ms ticks: never judge on less than a few.
	spent, wall := used-mark.cpu, now.Sub(mark.at)
	if cpuOK && spent > max(5*10*time.Millisecond, wall*time.Duration(x.cfg.IdleCPUPercent)/100) {
		x.cfg.Logger.Warn("sandbox killed: it used CPU between messages", "canister", sb.id, "pid", sb.pid,
			"cpu", spent, "wall", wall, "limit_percent", x.cfg.IdleCPUPercent)
		x.killIdle(sb, "idle_cpu")
		return
	}
	if memOK && mark.memOK && mem > mark.mem && mem-mark.mem > x.cfg.IdleMemoryGrowth {
		x.cfg.Logger.Warn("sandbox killed: its memory grew between messages", "canister", sb.id, "pid", sb.pid,
			"memory", mem, "least_since_idle", mark.mem, "limit", x.cfg.IdleMemoryGrowth, "wall", wall)
		x.killIdle(sb, "idle_memory")
	}
}

// killIdle kills an idle sandbox that misbehaved (sb.mu held), counting
// the fault.
func (x *Sandboxed) killIdle(sb *canisterSandbox, fault string) {
	x.forgetLocked(sb)
	x.count(func(s *SandboxStats) { s.Faults[fault]++ })
	x.cfg.Metrics.SandboxCrashed(fault)
}

// ---- Execute -------------------------------------------------------------

// Execute implements Executor. A sandbox that breaks the protocol, crashes
// or exceeds its deadline is killed and forgotten, and the error is a
// *SandboxError; the next execution gets a fresh sandbox.
func (x *Sandboxed) Execute(ctx context.Context, canisterID string, req *Request) (*sysapi.Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if req.Module == nil || req.Input == nil {
		return nil, errors.New("exec: request without module or input")
	}
	m, ok := req.Module.handle.(*sbModule)
	if !ok {
		return nil, errors.New("exec: module was not prepared by the sandboxed executor")
	}
	defer trimImages(req)
	shared := req.Input.Context.IsQuery() && x.cfg.QueryThreads > 1
	for attempt := 0; ; attempt++ {
		var out *sysapi.Output
		var retry bool
		var err error
		if shared {
			out, retry, err = x.queryOnce(ctx, canisterID, req, m, attempt == 0)
		} else {
			out, retry, err = x.executeOnce(ctx, canisterID, req, m, attempt == 0)
		}
		if err == nil || !retry {
			return out, err
		}
		x.cfg.Logger.Info("sandbox was dead, retrying on a fresh one", "canister", canisterID, "err", err)
	}
}

// executeOnce runs one attempt. retry is true only when a reused sandbox
// turned out to be dead before it answered (executions have no effects
// outside their output, so running again is safe); it is allowed once.
func (x *Sandboxed) executeOnce(ctx context.Context, canisterID string, req *Request, m *sbModule, mayRetry bool) (*sysapi.Output, bool, error) {
	if sb := x.entry(canisterID); sb != nil {
		// Open query sessions admit no more queries until this has run.
		sb.markExclusive(1)
		defer sb.markExclusive(-1)
	}
	sb, reused, err := x.acquire(ctx, canisterID, m.hash)
	if err != nil {
		return nil, false, err
	}
	return x.runExclusive(ctx, sb, reused, req, m, mayRetry)
}

// runExclusive runs req alone on sb (acquired: sb.mu held) and ends the
// exchange.
func (x *Sandboxed) runExclusive(ctx context.Context, sb *canisterSandbox, reused bool, req *Request, m *sbModule, mayRetry bool) (*sysapi.Output, bool, error) {
	out, err := x.run(ctx, sb, req, m)
	var refused *boundary.ReserveError
	if err != nil && !errors.As(err, &refused) {
		var se *SandboxError
		// A sandbox killed for a forbidden system call is not retried:
		// the canister did it, and would do it again (CANISTER_ERROR).
		retry := mayRetry && reused && errors.As(err, &se) && (se.Fault == FaultCrash || se.Fault == FaultNodeMemory) &&
			(se.Exit == nil || se.Exit.SeccompSyscall == "")
		x.forgetLocked(sb)
		sb.mu.Unlock()
		x.release(sb, false)
		return nil, retry, err
	}
	// An answer whose pages the host refused was read in full: the
	// sandbox did nothing wrong and stays.
	x.measure(sb)
	x.watch(sb)
	sb.mu.Unlock()
	x.release(sb, true)
	return out, false, err
}

// DefaultIdleWatchDelay is how long after an exchange a sandbox's idle
// watch starts. A canister whose next message comes sooner is not watched
// in between: starting a watch (a goroutine parked on the socket) and
// stopping it again woke threads of the host on every message, and so would
// a timer armed for each, so one timer (Sandboxed.idleTimer) starts the
// watches that are due, at most once per delay. A hostile sandbox gains
// nothing in the gap: what it can queue is bounded by its socket's buffer
// as before, the watch finds it when it starts, and an exchange that comes
// first reads it as the violation it is (TestPacketBeforeWatchIsViolation).
const DefaultIdleWatchDelay = 5 * time.Millisecond

// watch arranges for sb's socket to be read while it is idle (sb.mu held,
// an exchange just ended), from SandboxConfig.IdleWatchDelay on: a sandbox
// has nothing to say between messages, so a packet, a descriptor or a
// hang-up then is caught, the sandbox killed and its socket closed, which
// releases whatever it queued (memfds it sent before exiting would
// otherwise stay charged to the host until the canister's next message).
func (x *Sandboxed) watch(sb *canisterSandbox) {
	sb.watchFrom.Store(time.Now().UnixNano())
	x.queueWatch(sb)
}

// queueWatch puts sb in the queue of watches to start, and arms the timer
// that starts them if it is not armed.
func (x *Sandboxed) queueWatch(sbs ...*canisterSandbox) {
	x.idleMu.Lock()
	defer x.idleMu.Unlock()
	for _, sb := range sbs {
		if !sb.queued {
			sb.queued = true
			x.idleQueue = append(x.idleQueue, sb)
		}
	}
	if len(x.idleQueue) > 0 && !x.idleArmed {
		x.idleArmed = true
		x.idleTimer.Reset(x.cfg.IdleWatchDelay)
	}
}

// startWatches starts the idle watches that are due (the timer's
// function). A sandbox in an exchange is dropped from the queue (the
// exchange cancelled its watch, and queues a new one when it ends); one
// whose lock something else holds is looked at again at the next round.
func (x *Sandboxed) startWatches() {
	x.idleMu.Lock()
	queue := x.idleQueue
	x.idleQueue = nil
	for _, sb := range queue {
		sb.queued = false
	}
	x.idleArmed = false
	x.idleMu.Unlock()
	now := time.Now().UnixNano()
	delay := x.cfg.IdleWatchDelay.Nanoseconds()
	var later []*canisterSandbox
	for _, sb := range queue {
		from := sb.watchFrom.Load()
		switch {
		case from == 0:
			continue // in an exchange, or gone
		case now-from < delay:
			later = append(later, sb)
			continue
		case !sb.mu.TryLock():
			later = append(later, sb)
			continue
		}
		if sb.watchFrom.Load() != 0 && sb.proc != nil && sb.watching == nil {
			sb.watchFrom.Store(0)
			x.startWatch(sb)
		}
		sb.mu.Unlock()
	}
	if len(later) > 0 {
		x.queueWatch(later...)
	}
}

// startWatch starts reading sb's idle socket (sb.mu held).
func (x *Sandboxed) startWatch(sb *canisterSandbox) {
	done := make(chan struct{})
	sb.watching = done
	proc, conn := sb.proc, sb.conn
	go func() {
		defer close(done)
		err := conn.WatchIdle()
		if errors.Is(err, boundary.ErrInterrupted) || errors.Is(err, net.ErrClosed) {
			return
		}
		if !sb.mu.TryLock() {
			// An exchange, an eviction or Forget is taking the sandbox
			// (and waits for this goroutine): what was sent is theirs.
			return
		}
		defer sb.mu.Unlock()
		if sb.conn != conn || sb.watching != done {
			return
		}
		sb.watching = nil
		_ = x.fail(sb.id, "idle", proc, 0, err)
		conn.Raw().Close()
		sb.proc, sb.conn = nil, nil
		sb.setLoaded([32]byte{})
		x.mu.Lock()
		sb.pid = 0
		x.freeSlotLocked(sb)
		x.mu.Unlock()
	}()
}

// rewatch restarts sb's idle watch if it ended while this goroutine held
// sb.mu (sb.mu held): the watcher leaves what it saw to the lock's holder,
// and an idle check is not an exchange that would read it. What the sandbox
// sent is still queued, so the new watch sees it when it starts.
func (x *Sandboxed) rewatch(sb *canisterSandbox) {
	if sb.watching == nil || sb.proc == nil {
		return
	}
	select {
	case <-sb.watching:
		x.unwatch(sb)
		x.watch(sb)
	default:
	}
}

// unwatch ends sb's idle watch, if any, and waits for it (sb.mu held); a
// watch not started yet never starts.
func (x *Sandboxed) unwatch(sb *canisterSandbox) {
	sb.watchFrom.Store(0)
	if sb.watching == nil {
		return
	}
	sb.conn.StopWatch()
	<-sb.watching
	sb.watching = nil
	sb.conn.ResumeIO()
}

// run performs load (if needed) and the execution on sb (sb.mu held). On
// error the caller kills sb; run has already classified and logged it.
func (x *Sandboxed) run(ctx context.Context, sb *canisterSandbox, req *Request, m *sbModule) (*sysapi.Output, error) {
	proc := sb.proc
	beginExecution(proc)
	defer endExecution(proc)
	if sb.loaded != m.hash {
		if err := x.load(ctx, sb, req.Module, m); err != nil {
			return nil, err
		}
	}
	in := req.Input
	stable, err := stableOf(in)
	if err != nil {
		return nil, err
	}
	id := x.nextID.Add(1)
	q := &boundary.ExecRequest{Module: m.hash, RunStart: req.RunStart, HasGlobals: req.Globals != nil, Globals: req.Globals, Input: in}
	deadline := x.watchdog(req, stable)
	exp := boundary.ExpectFor(id, in, req.Heap, stable, m.globalTypes)
	var pages pagesDeadline
	reserve := req.Reserve
	if reserve == nil {
		reserve = func(uint64) error { return nil } // the pages' deadline still applies
	}
	exp.PageWait = &boundary.PageWait{AfterPacket: x.afterPagePacket}
	exp.Reserve = x.reserveOffWatch(ctx, sb.conn, sb.proc, time.Now().Add(deadline), reserve, &pages, exp.PageWait)
	out, err := exchange(ctx, sb.conn, deadline, func() (*sysapi.Output, error) {
		sb.noteGiven(req.Heap, stable)
		if err := sb.conn.SendExecute(id, q, req.Heap, stable); err != nil {
			return nil, err
		}
		return sb.conn.AwaitOutput(exp, x.logFunc(sb.id))
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var refused *boundary.ReserveError
		if errors.As(err, &refused) {
			return nil, fmt.Errorf("exec: output of %s: %w", sb.id, err)
		}
		if pages.pages > 0 || pages.waitCPU > 0 {
			// The deadline in force was the pages' own, not the
			// execution's, or CPU used during the host's wait was charged
			// to it: a timeout names that.
			err = &pagesDeadlineError{pagesDeadline: pages, err: err}
		}
		return nil, x.fail(sb.id, "execute", sb.proc, deadline, err)
	}
	return out, nil
}

// reserveOffWatch is reserve for an exclusive exchange on conn whose
// watchdog ends at until: a wait for the host's memory is the host's, not
// the sandbox's, so the connection's deadline is lifted while reserve
// runs, and stays lifted. Then the answer's pages must come within what
// the watchdog had left and their own transfer time (pagesTime),
// whichever is less (none if ctx ended meanwhile, as exchange does): the
// execution is over once its header came, so a sandbox that sends its
// pages slowly holds what was reserved for them no longer than sending
// them takes, not for the rest of its compute time (up to an hour for an
// install). That time is counted by wait (boundary.PageWait): only while
// the host's reader is blocked with nothing to read, never while the host
// files the pages it received or is otherwise slow, so a slow host does
// not make an honest sandbox late.
// The pause is not free CPU, though: an honest worker is blocked sending
// its pages meanwhile, so what proc used during the wait beyond
// waitCPUAllowance is a thread of its own, and it is taken from what the
// watchdog had left; a sandbox that used all of it is timed out at once.
// The pages' own deadline, when it is the shorter, and the CPU charged are
// recorded in pages.
func (x *Sandboxed) reserveOffWatch(ctx context.Context, conn *boundary.Conn, proc Process, until time.Time, reserve func(uint64) error, pages *pagesDeadline, wait *boundary.PageWait) func(uint64) error {
	return func(b uint64) error {
		left := time.Until(until)
		_ = conn.Raw().SetDeadline(time.Time{})
		before, beforeOK := cpuTime(proc)
		err := reserve(b)
		*pages = pagesDeadline{}
		if after, ok := cpuTime(proc); beforeOK && ok && after-before > waitCPUAllowance {
			pages.waitCPU = after - before
			left -= pages.waitCPU - waitCPUAllowance
		}
		allowed := x.pagesTime(b)
		if allowed < left {
			pages.pages, pages.allowed = b/state.PageSize, allowed
		}
		wait.Arm(min(left, allowed), func() bool { return ctx.Err() != nil })
		if left <= 0 || ctx.Err() != nil {
			// Its time is used up: the next read is a timeout. (Or
			// exchange's AfterFunc may have fired before the line above.)
			_ = conn.Raw().SetDeadline(time.Unix(1, 0))
		}
		return err
	}
}

// waitCPUAllowance is the CPU a sandbox may use while the host makes its
// answer wait for memory without it counting: an honest worker's runtime
// after its header (a few ms), and a few of /proc's 10 ms ticks where its
// CPU clock cannot be read.
const waitCPUAllowance = 50 * time.Millisecond

// cpuTime reads the CPU time p has used (sandbox.Process.CPUTime); ok is
// false for a Process that cannot say, or one that ended.
func cpuTime(p Process) (d time.Duration, ok bool) {
	c, can := p.(interface{ CPUTime() (time.Duration, error) })
	if !can {
		return 0, false
	}
	d, err := c.CPUTime()
	return d, err == nil
}

// pagesDeadline is what reserveOffWatch set for an answer's pages after
// its header: their own deadline, when it was shorter than what the
// execution's watchdog had left (pages 0: it was not), and the CPU the
// sandbox used during the host's wait, charged to that watchdog (0: none
// beyond waitCPUAllowance).
type pagesDeadline struct {
	pages   uint64
	allowed time.Duration
	waitCPU time.Duration
}

// pagesDeadlineError is an exchange's error met while the pages' own
// deadline was in force: a timeout then is that deadline's (fail).
type pagesDeadlineError struct {
	pagesDeadline
	err error
}

func (e *pagesDeadlineError) Error() string { return e.err.Error() }
func (e *pagesDeadlineError) Unwrap() error { return e.err }

// pageTransferTime is the watchdog's time for one 4 KiB page that travels
// over a sandbox's socket, either way.
const pageTransferTime = 10 * time.Microsecond

// pageReceiveTime is the time the host may wait for each of an answer's
// pages after its header (pagesTime), counted only while its reader is
// blocked with nothing to read (boundary.PageWait): the host's own pace
// (reading, checking and filing each page, under the race detector or on
// a loaded machine) no longer counts. 100 times pageTransferTime, a rate of
// 4 MB/s of the sandbox's own sending: room for a starved sandbox on a
// loaded machine, where the first 10 µs a page, counted by the clock,
// killed an honest 256 MiB answer under the race detector at 10.7 s.
const pageReceiveTime = 100 * pageTransferTime

// pagesTime is how long a sandbox may take to send b bytes of pages after
// its answer's header: WatchdogBase (scheduling on a loaded machine) and
// their receive time (the caller bounds it by what the watchdog had left).
func (x *Sandboxed) pagesTime(b uint64) time.Duration {
	pages := b / state.PageSize
	if pages >= uint64(maxInstructionTime/pageReceiveTime) {
		return maxInstructionTime
	}
	return x.cfg.WatchdogBase + time.Duration(pages)*pageReceiveTime
}

// stableOf returns the stable memory of an execution's input.
func stableOf(in *sysapi.Input) (*state.PageMap, error) {
	stable, ok := in.Stable.(*state.PageMap)
	if in.Stable == nil || stable == nil {
		if in.Stable != nil && !ok {
			return nil, fmt.Errorf("exec: stable memory is a %T, not a page map", in.Stable)
		}
		stable = state.NewPageMap(0)
	}
	return stable, nil
}

// watchdog returns the wall-clock deadline of an execution.
func (x *Sandboxed) watchdog(req *Request, stable *state.PageMap) time.Duration {
	// Pages cost watchdog time only when they travel over the socket
	// (memories without images, pages laid over them).
	pages := boundary.PagesSent(req.Heap, stable)
	return x.cfg.WatchdogBase + x.computeTime(req) + time.Duration(pages)*pageTransferTime
}

// computeTime is the part of an execution's watchdog for its instruction
// limit, at the deliberately slow InstructionsPerSecond.
func (x *Sandboxed) computeTime(req *Request) time.Duration {
	return instructionTime(req.Input.Limits.Instructions, x.cfg.InstructionsPerSecond)
}

// maxInstructionTime bounds instructionTime (an absurd limit must not
// overflow a Duration into a negative, already expired, deadline).
const maxInstructionTime = 1 << 20 * time.Hour

// instructionTime is how long n instructions take at perSecond, to the
// nanosecond: whole seconds would give a limit under perSecond no time at
// all beyond the watchdog's base.
func instructionTime(n, perSecond uint64) time.Duration {
	secs, rem := n/perSecond, n%perSecond
	if secs >= uint64(maxInstructionTime/time.Second) {
		return maxInstructionTime
	}
	// rem < perSecond, so rem*1e9/perSecond < 1e9 and Div64 cannot overflow.
	hi, lo := bits.Mul64(rem, uint64(time.Second))
	frac, _ := bits.Div64(hi, lo, perSecond)
	return time.Duration(secs)*time.Second + time.Duration(frac)
}

// load hands the module's artifact to sb as a descriptor. A stale or
// damaged cached artifact is compiled again, once.
func (x *Sandboxed) load(ctx context.Context, sb *canisterSandbox, mod *Module, m *sbModule) error {
	for attempt := 0; ; attempt++ {
		f, err := x.openArtifact(m.hash)
		if (errors.Is(err, os.ErrNotExist) || errors.Is(err, errDamagedArtifact)) && attempt == 0 {
			// The cache was cleared or damaged: compile again from the
			// installed module.
			x.cfg.Logger.Warn("artifact missing or damaged, compiling again", "canister", sb.id, "err", err)
			x.removeArtifact(m.hash)
			if err = x.compileAgain(ctx, mod, m.hash); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("exec: open artifact: %w", err)
		}
		id := x.nextID.Add(1)
		deadline := x.cfg.StartTimeout
		_, err = exchange(ctx, sb.conn, deadline, func() (struct{}, error) {
			err := sb.conn.Send(&boundary.Msg{Kind: boundary.KindLoad, ID: id, Body: boundary.EncodeHash(m.hash), Files: []*os.File{f}})
			f.Close()
			if err != nil {
				return struct{}{}, err
			}
			return struct{}{}, sb.conn.AwaitLoaded(id, m.hash, x.logFunc(sb.id))
		})
		var re *boundary.RemoteError
		if errors.As(err, &re) && re.Code == boundary.ErrArtifact && attempt == 0 {
			x.cfg.Logger.Warn("cached artifact refused, compiling again", "canister", sb.id, "err", re.Message)
			x.removeArtifact(m.hash)
			if err = x.compileAgain(ctx, mod, m.hash); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return x.fail(sb.id, "load", sb.proc, deadline, err)
		}
		sb.setLoaded(m.hash)
		return nil
	}
}

// compileAgain compiles an installed module whose artifact went missing
// or was refused, from the Wasm the Module keeps or, without it, from the
// host's store.
func (x *Sandboxed) compileAgain(ctx context.Context, mod *Module, h [32]byte) error {
	wasm := mod.Wasm
	if wasm == nil && x.cfg.InstalledModule != nil {
		var err error
		if wasm, err = x.cfg.InstalledModule(h); err != nil {
			return fmt.Errorf("exec: read module %x to compile it again: %w", h[:8], err)
		}
	}
	if wasm == nil {
		return fmt.Errorf("exec: module %x: its artifact is gone and its Wasm is not at hand", h[:8])
	}
	if got := sha256.Sum256(wasm); got != h {
		return fmt.Errorf("exec: module %x read again has hash %x", h[:8], got[:8])
	}
	_, err := x.compileInSandbox(ctx, h, wasm)
	return err
}

// Forget implements Executor: the canister's sandbox is stopped.
func (x *Sandboxed) Forget(canisterID string) {
	x.unprime(canisterID) // a module no evicted canister runs any more is not kept primed
	x.mu.Lock()
	sb := x.pool[canisterID]
	x.mu.Unlock()
	if sb == nil {
		return
	}
	sb.mu.Lock()
	x.forgetLocked(sb)
	sb.mu.Unlock()
	x.kickFill()
}

// Close implements Executor: every sandbox is stopped.
func (x *Sandboxed) Close() error {
	x.mu.Lock()
	if x.closed {
		x.mu.Unlock()
		return nil
	}
	x.closed = true
	all := make([]*canisterSandbox, 0, len(x.pool))
	for _, sb := range x.pool {
		all = append(all, sb)
	}
	x.mu.Unlock()
	close(x.stop)
	x.idleTimer.Stop() // a round under way finds every sandbox gone
	x.reaper.Wait()    // the filler too: no blank is added after this
	x.closeBlanks()
	for _, sb := range all {
		sb.mu.Lock()
		x.forgetLocked(sb)
		sb.mu.Unlock()
	}
	x.sealed.close()
	if err := x.group.Close(); err != nil {
		x.cfg.Logger.Warn("sandbox node group not removed", "err", err)
	}
	return nil
}

// List returns the live canister sandboxes, by canister id.
func (x *Sandboxed) List() []SandboxInfo {
	x.mu.Lock()
	out := make([]SandboxInfo, 0, len(x.pool))
	for _, sb := range x.pool {
		if sb.pid != 0 {
			out = append(out, SandboxInfo{CanisterID: sb.id, Pid: sb.pid, Started: sb.started, LastUsed: sb.lastUsed, Messages: sb.messages})
		}
	}
	x.mu.Unlock()
	for i := range out {
		if rss, err := readRSS(out[i].Pid); err == nil {
			out[i].RSS = rss
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CanisterID < out[j].CanisterID })
	return out
}

// Sandboxes lists every live sandbox, compilers included, for metrics and
// cordon ps (the host's sandboxLister).
func (x *Sandboxed) Sandboxes() []metrics.SandboxInfo {
	list := x.List()
	out := make([]metrics.SandboxInfo, 0, len(list))
	for _, s := range list {
		out = append(out, metrics.SandboxInfo{Canister: s.CanisterID, Kind: "canister", PID: s.Pid, RSSBytes: s.RSS,
			Started: s.Started, Executions: s.Messages})
	}
	x.mu.Lock()
	for pid, started := range x.comps {
		out = append(out, metrics.SandboxInfo{Kind: "compiler", PID: pid, Started: started})
	}
	for _, b := range x.blanks {
		out = append(out, metrics.SandboxInfo{Kind: "blank", PID: b.proc.Pid(), Started: b.started})
	}
	for _, b := range x.primed {
		out = append(out, metrics.SandboxInfo{Kind: "primed", PID: b.proc.Pid(), Started: b.started})
	}
	x.mu.Unlock()
	for i := range out {
		if out[i].Kind != "canister" {
			out[i].RSSBytes, _ = readRSS(out[i].PID)
		}
	}
	return out
}

// readRSS reads VmRSS of a pid (0 if it is gone).
func readRSS(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return 0, err
	}
	var size, res uint64
	if _, err := fmt.Sscan(string(b), &size, &res); err != nil {
		return 0, err
	}
	return res * uint64(syscall.Getpagesize()), nil
}
