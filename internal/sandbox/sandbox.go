package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/fdpass"
	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// maxSpecFiles bounds Spec.Files.
const maxSpecFiles = 64

// Defaults for Spec's zero values.
const (
	DefaultMemoryBytes = 8 << 30
	DefaultPids        = 64
	// NoFileLimit is RLIMIT_NOFILE inside a sandbox.
	NoFileLimit = 64
	// AddressSpaceLimit is RLIMIT_AS inside a sandbox: generous, because
	// wasmtime reserves virtual memory far beyond what it touches (every
	// instance's memory is a 4 GiB + 64 MiB reservation, a 64-bit one
	// engine.MaxHeapBytes (6 GiB) + 64 MiB: it never moves), and a sandbox
	// holds up to boundary.MaxInFlight (16) running instances plus as many
	// kept ones (one per query thread, worker.options.engineConfig; kept
	// for a heap no query uses any more until evicted): 32 × 6.06 GiB, plus
	// the Go runtime's and wasmtime's own. At 64 GiB with 4 kept instances
	// the 16th concurrent query failed to instantiate
	// (TestMaxQueryThreadsFit). The real bound on memory is the cgroup;
	// this only stops runaway reservations.
	AddressSpaceLimit = 256 << 30
	// DataSlack is what RLIMIT_DATA allows beyond Spec.MemoryBytes when
	// there is no memory cgroup: RLIMIT_DATA counts writable private
	// mappings by size, and the Go runtime and glibc map about 100 MiB
	// writable that they never touch (an idle sandbox: VmData 103 MiB,
	// VmRSS 8 MiB).
	DataSlack = 256 << 20
	// startTimeout bounds start-up when ctx has no deadline.
	startTimeout = 10 * time.Second
)

// Spec describes a sandbox to start.
type Spec struct {
	Label        string            // canister id or "compiler": used in cgroup names and logs
	Binary       string            // "" = DefaultExecutable; else this file (absolute), sealed once (exe.go)
	Args         []string          // extra arguments for the child's worker (after the marker)
	Files        []*os.File        // passed to the child as fd 4, 5, ... (fd 3 is the IPC socket); at most maxSpecFiles
	MemoryBytes  uint64            // cgroup memory limit (0 = DefaultMemoryBytes)
	Pids         uint64            // cgroup pids limit, threads included (0 = DefaultPids)
	CPUPercent   int               // cgroup cpu quota in % of one core (0 = no limit)
	Strict       bool              // refuse to start if any layer is unavailable…
	AllowMissing []Layer           // …except these (the --insecure-allow-missing list)
	Stderr       func(line string) // each line the child writes to fd 2 (rate-limited); nil = discard
	// Group, if set, is the node's group cgroup (NewGroup): the sandbox's
	// cgroup is made inside it, under its limit on all sandboxes together.
	// Ignored where the sandbox gets no cgroup.
	Group *Group
	// HostIDs, when the host is root and the sandbox gets a user namespace,
	// gives the sandbox a host uid/gid of its own for its lifetime (else
	// every sandbox is 65534 on the host too). A rootless host cannot map
	// other ids: its sandboxes are all its own uid.
	HostIDs *IDPool
	// Trace, if set, is called as Start passes each phase of a spawn
	// ("cgroup", "spawned", "attached", "ready", "verified"), for the spawn breakdown
	// (benchmarks); nil costs nothing.
	Trace func(phase string)
}

// ExitStatus is how a sandbox ended.
type ExitStatus struct {
	Code           int            // exit code, -1 if killed by a signal
	Signal         syscall.Signal // the signal that killed it, 0 otherwise
	SeccompSyscall string         // the syscall that violated the filter, "" otherwise
	Err            error          // a description of abnormal ends (see ErrSeccomp, ErrOutOfMemory)
}

// Errors that ExitStatus.Err wraps.
var (
	ErrSeccomp     = errors.New("sandbox made a forbidden system call")
	ErrOutOfMemory = errors.New("sandbox exceeded its memory limit")
	// ErrNodeOutOfMemory: the OOM killer ended it though it stayed within
	// its own limit and held less than half of the node group's: the
	// group's (or the machine's) limit was reached, by all the sandboxes
	// together, and the kernel took the largest.
	ErrNodeOutOfMemory = errors.New("sandbox killed for the node's memory: its sandboxes together reached their limit")
	ErrKilled          = errors.New("sandbox killed by the host")
)

// Process is a live (or exited) sandbox.
type Process struct {
	label   string
	proc    *os.Process
	conn    *net.UnixConn
	layers  map[Layer]LayerState
	cg      *cgroup
	logs    *logReader
	notify  *os.File
	learn   func(string, confine.Notification)
	done    chan struct{}
	status  ExitStatus
	mu      sync.Mutex
	seccomp string // first violating syscall, set before the host kills
	killed  bool
	ids     *IDPool // hostID came from it; returned once the process is reaped
	hostID  uint32
	plan    map[Layer]bool // the layers Start applied, for Verify
	expect  liveExpect
	oom     *oomSteer // nil: the oom_score_adj layer is not applied
	// groupLimit is the memory limit of the node group it is in (0:
	// none), which decides whose an OOM kill was (cgroup.oomCause).
	groupLimit uint64
}

// HostUID is the sandbox's uid on the host (65534 unless Spec.HostIDs gave
// it one of its own; the host's own uid when rootless).
func (p *Process) HostUID() uint32 { return p.hostID }

func (p *Process) releaseID() {
	p.mu.Lock()
	ids := p.ids
	p.ids = nil
	p.mu.Unlock()
	if ids != nil {
		ids.put(p.hostID)
	}
}

// Conn is the host end of the IPC socket (SOCK_SEQPACKET). The caller owns
// it and closes it; Wait does not.
func (p *Process) Conn() *net.UnixConn { return p.conn }

// Pid is the sandbox's pid in the host's pid namespace.
func (p *Process) Pid() int { return p.proc.Pid }

// Layers reports what was applied.
func (p *Process) Layers() map[Layer]LayerState {
	out := make(map[Layer]LayerState, len(p.layers))
	for k, v := range p.layers {
		out[k] = v
	}
	return out
}

// Kill SIGKILLs the sandbox; its pid namespace, and so every process in it,
// dies with it. It is idempotent.
func (p *Process) Kill() error {
	p.mu.Lock()
	p.killed = true
	p.mu.Unlock()
	select {
	case <-p.done:
		return nil
	default:
	}
	err := p.proc.Kill()
	if p.cg != nil {
		p.cg.killAll()
	}
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// Wait blocks until the sandbox has exited and its cgroup is removed. It is
// safe to call from several goroutines.
func (p *Process) Wait() ExitStatus {
	<-p.done
	return p.status
}

// Done is closed when the sandbox has exited (and Wait would not block).
func (p *Process) Done() <-chan struct{} { return p.done }

// MemoryCharge is the memory the kernel charges to the sandbox's own
// cgroup: its private pages and kernel memory, without the pages of
// cordon's code that every sandbox maps from the host's sealed copy (RSS
// counts those in each sandbox: about half of an idle one's). It is RSS
// where the sandbox has no memory cgroup.
func (p *Process) MemoryCharge() (uint64, error) {
	if p.cg != nil {
		if n, err := p.cg.memoryUsage(); err == nil {
			return n, nil
		}
	}
	return p.RSS()
}

// HeldOwnMemory reports whether a live sandbox's memory failure is its own
// doing, as an OOM kill's is judged (cgroup.oomCause): its cgroup's
// counters show its own limit reached, or half of the node group's limit
// or more held. The host asks when the sandbox says it could not grow its
// canister's memory (exec). Without a cgroup, or once the sandbox has
// ended, the answer is yes: its only bound is then its own (RLIMIT_DATA),
// and a sandbox that ended cannot be judged.
func (p *Process) HeldOwnMemory() bool {
	select {
	case <-p.done:
		return true
	default:
	}
	if p.cg == nil || p.cg.removed.Load() {
		return true
	}
	return p.cg.ownMemory(p.groupLimit)
}

// RSS is the resident memory of the sandbox: VmRSS of its process (the only
// one: it cannot fork), else its cgroup's charge.
func (p *Process) RSS() (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.proc.Pid) + "/status")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				f := strings.Fields(v)
				if len(f) == 2 && f[1] == "kB" {
					n, err := strconv.ParseUint(f[0], 10, 64)
					if err == nil {
						return n * 1024, nil
					}
				}
			}
		}
	}
	if p.cg != nil {
		return p.cg.memoryUsage()
	}
	if err == nil {
		err = errors.New("no VmRSS")
	}
	return 0, err
}

type cgroupResult struct {
	cg  *cgroup
	err error
}

// startOpts are knobs for tests and Doctor.
type startOpts struct {
	// learn, if set, runs the filter in learn mode: every syscall is
	// reported here and allowed to continue.
	learn func(name string, n confine.Notification)
	// unavailable pretends these layers are missing on this host.
	unavailable []Layer
	// attach, if set, replaces the cgroup attach of a child that was not
	// cloned into its cgroup (tests: an attach that fails after the clone).
	attach func(pid int, cg *cgroup) error
	// cgroups, if set, replaces where sandbox cgroups go (tests: a parent
	// that is gone).
	cgroups *cgroupSetup
}

// Start spawns a confined sandbox process and returns once it has applied
// every layer and reported ready (before it reads any byte from the host).
// ctx bounds the start-up only; the sandbox then lives until Kill or its
// own exit.
func Start(ctx context.Context, s Spec) (*Process, error) { return start(ctx, s, startOpts{}) }

// StartMeasuring is for tests that measure which system calls a sandbox
// worker makes (to keep confine.Allowlist exact): it starts a sandbox like
// Start, but its filter reports every system call to record and lets it run.
// Never use it outside tests: it turns the seccomp layer into a recorder.
func StartMeasuring(ctx context.Context, s Spec, record func(syscall string, n confine.Notification)) (*Process, error) {
	if record == nil {
		return nil, errors.New("sandbox: StartMeasuring without a recorder")
	}
	return start(ctx, s, startOpts{learn: record})
}

func start(ctx context.Context, s Spec, o startOpts) (*Process, error) {
	if len(s.Files) > maxSpecFiles {
		return nil, errors.New("sandbox: too many files")
	}
	for i, f := range s.Files {
		if f == nil {
			return nil, fmt.Errorf("sandbox: Spec.Files[%d] is nil", i)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", s.Label, err)
	}
	av := getAvailability()
	plan, err := makePlan(av, s, o)
	if err != nil {
		return nil, err
	}
	exe, err := resolveExe(s.Binary)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", s.Label, err)
	}
	mem, pids := s.MemoryBytes, s.Pids
	if mem == 0 {
		mem = DefaultMemoryBytes
	}
	if pids == 0 {
		pids = DefaultPids
	}

	trace := s.Trace
	if trace == nil {
		trace = func(string) {}
	}
	p := &Process{label: s.Label, layers: map[Layer]LayerState{}, done: make(chan struct{}), learn: o.learn}
	if s.Group != nil {
		p.groupLimit = s.Group.MemoryLimit()
	}
	for _, l := range AllLayers {
		if !plan[l] {
			d := "missing: " + av.detail[l]
			if av.layers[l] {
				d = "disabled"
			}
			p.layers[l] = LayerState{Detail: d}
		}
	}

	// Resources the host holds until the child is running.
	var cleanup []func()
	defer func() {
		for _, f := range cleanup {
			f()
		}
	}()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("sandbox: socketpair: %w", err)
	}
	hostFile, childSock := os.NewFile(uintptr(fds[0]), "ipc-host"), os.NewFile(uintptr(fds[1]), "ipc-child")
	cleanup = append(cleanup, func() { childSock.Close() })
	c, err := net.FileConn(hostFile)
	hostFile.Close()
	if err != nil {
		return nil, fmt.Errorf("sandbox: ipc: %w", err)
	}
	p.conn = c.(*net.UnixConn)
	ok := false
	defer func() {
		if !ok {
			p.conn.Close()
		}
	}()
	logR, logW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("sandbox: log pipe: %w", err)
	}
	cleanup = append(cleanup, func() { logW.Close() })
	p.logs = newLogReader(logR, s.Stderr)

	// The cgroup is made while the spawner clones the child, which the
	// host then attaches by pid before its go-ahead; only a host that
	// clones into it itself (v2 without a spawner, CLONE_INTO_CGROUP)
	// needs it before the clone. waitCgroup collects it (once).
	var cgDone chan cgroupResult
	if plan[LayerCgroup] {
		cgDone = make(chan cgroupResult, 1)
		lim := cgroupLimits{memory: mem, pids: pids, cpuPercent: s.CPUPercent}
		cgroups := av.cgroups
		if s.Group != nil {
			cgroups = s.Group.setup
		}
		if o.cgroups != nil {
			cgroups = o.cgroups
		}
		go func() {
			cg, err := cgroups.create(s.Label, lim)
			cgDone <- cgroupResult{cg, err}
		}()
	}
	var cgErr error
	waitCgroup := func() error {
		if cgDone == nil {
			return cgErr
		}
		r := <-cgDone
		cgDone = nil
		if r.err != nil {
			cgErr = &LayerError{Layer: LayerCgroup, Err: r.err}
			return cgErr
		}
		p.cg = r.cg
		d := fmt.Sprintf("%s memory=%d pids=%d cpu=%d%%", p.cg.dirs[0], mem, pids, s.CPUPercent)
		if p.cg.hugetlb {
			d += " hugetlb=0"
		}
		if s.Group != nil {
			d += "; in " + s.Group.String()
		}
		p.layers[LayerCgroup] = LayerState{Applied: true, Detail: d}
		return nil
	}
	if plan[LayerCgroup] && !useSpawner {
		if err := waitCgroup(); err != nil {
			p.logs.close()
			return nil, fmt.Errorf("sandbox %s: %w", s.Label, err)
		}
	}
	trace("cgroup")
	fail := func(err error) (*Process, error) {
		_ = waitCgroup()    // a cgroup still being made is removed below
		defer p.releaseID() // after the process is reaped below
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w (%v)", cerr, err)
		}
		if p.proc != nil {
			_ = p.proc.Kill()
			_, _ = p.proc.Wait()
		}
		p.oom.close()
		p.logs.wait(time.Second)
		if _, named := FailedLayer(err); !named && p.cg != nil && p.cg.oomKilled() {
			// It died before it could say why: its memory limit.
			err = &LayerError{Layer: LayerCgroup, Err: fmt.Errorf("the sandbox exceeded its memory limit of %d bytes while starting: %w", mem, err)}
		}
		if p.cg != nil {
			_ = p.cg.remove()
		}
		// The sandbox's own report says it all; else its last lines may.
		var setup *SetupError
		if tail := p.logs.tail(); tail != "" && !errors.As(err, &setup) {
			err = fmt.Errorf("%w; sandbox stderr: %s", err, tail)
		}
		return nil, fmt.Errorf("sandbox %s: %w", s.Label, err)
	}

	cfg := confine.Config{Files: len(s.Files), NoFile: NoFileLimit, AS: AddressSpaceLimit, FSize: mem}
	for b, l := range childLayer {
		if plan[l] {
			cfg.Layers |= b
		}
	}
	if !plan[LayerCgroup] {
		// Without a pids cgroup, RLIMIT_NPROC (per user namespace) bounds
		// threads; without a memory cgroup, RLIMIT_DATA bounds memory: the
		// writable private mappings (the Go heap, malloc, wasmtime's linear
		// memories once made writable, heap images mapped copy-on-write),
		// counted by size, not by the pages touched (RATIONALE.md).
		cfg.NProc = pids
		cfg.Data = mem + DataSlack
	}
	if o.learn != nil {
		cfg.Layers |= confine.LLearn
	} else if plan[LayerWX] {
		cfg.Layers |= confine.LWX // the worker must not carry on without MDWE
	}
	attr := &syscall.SysProcAttr{Setsid: plan[LayerSession], Pdeathsig: syscall.SIGKILL}
	if !plan[LayerPdeathsig] {
		attr.Pdeathsig = 0
	}
	for l, f := range nsFlags {
		if plan[l] && l != LayerCgroupNS { // the child unshares cgroupns once in its cgroup
			attr.Cloneflags |= f
		}
	}
	p.hostID = confine.UnprivilegedID
	if plan[LayerUserNS] {
		// A privileged host maps the sandbox to nobody, or to an id of its
		// own, and drops its own uid, gid and supplementary groups at
		// fork; a rootless one maps it to itself (userNSAttr).
		id := uint32(confine.UnprivilegedID)
		if !av.rootless && s.HostIDs != nil {
			var ok bool
			if id, ok = s.HostIDs.take(); !ok {
				return fail(fmt.Errorf("every host id of %s is in use by a live sandbox", s.HostIDs))
			}
			p.mu.Lock()
			p.ids = s.HostIDs
			p.mu.Unlock()
		}
		if av.rootless {
			id = uint32(os.Geteuid())
		}
		userNSAttr(attr, av.rootless, int(id))
		p.hostID = id
		// The early confinement needs these two inside its namespace
		// (mount, pivot_root, sethostname, unshare; securebits and the
		// bounding set), and drops them with everything else.
		attr.AmbientCaps = []uintptr{unix.CAP_SYS_ADMIN, unix.CAP_SETPCAP}
	} else if !av.rootless && plan[LayerCaps] {
		cfg.Layers |= confine.LSetuid // root without a user namespace: drop to nobody in the child
	}
	if p.cg != nil && p.cg.version == cgroupV2 {
		fd, err := p.cg.openDir()
		if err != nil {
			return fail(&LayerError{Layer: LayerCgroup, Err: fmt.Errorf("open %s: %w", p.cg.dirs[0], err)})
		}
		cleanup = append(cleanup, func() { unix.Close(fd) })
		attr.UseCgroupFD, attr.CgroupFD = true, fd
	}
	env := []string{"GOMAXPROCS=" + strconv.Itoa(gomaxprocs(s.CPUPercent)), "TZ="}
	if !plan[LayerEnv] {
		env = append(os.Environ(), env...)
	}
	files := []*os.File{nil, nil, logW, childSock}
	files = append(files, s.Files...)
	argv := append([]string{"cordon-sandbox", confine.Marker, cfg.Arg()}, s.Args...)
	spawnDeadline, has := ctx.Deadline()
	if !has {
		spawnDeadline = time.Now().Add(startTimeout)
	}
	proc, inCgroup, err := spawnSandbox(exe, argv, &os.ProcAttr{Dir: "/", Env: env, Files: files, Sys: attr}, spawnDeadline)
	if err != nil {
		return fail(fmt.Errorf("spawn: %w", err))
	}
	p.proc = proc
	trace("spawned")
	if plan[LayerOOMScore] {
		// Before the go-ahead, while the sandbox is still dumpable.
		p.oom = openOOMSteer(proc.Pid)
	}
	if err := waitCgroup(); err != nil {
		return fail(err) // kills and reaps the child, which waits for its go-ahead
	}
	for _, f := range cleanup {
		f()
	}
	cleanup = nil

	// Before the go-ahead, which the child awaits before its cgroup
	// namespace and the Go runtime; its C constructor meanwhile applies
	// what needs no cgroup (fds, pivot_root, hostname). A failed attach
	// kills and reaps the child (fail), and removes the cgroup.
	if p.cg != nil && !inCgroup {
		join := func(pid int, cg *cgroup) error { return cg.join(pid) }
		if o.attach != nil {
			join = o.attach
		}
		if err := join(proc.Pid, p.cg); err != nil {
			return fail(&LayerError{Layer: LayerCgroup, Err: fmt.Errorf("attach after clone: %w", err)})
		}
	}
	trace("attached")
	for _, l := range []Layer{LayerEnv, LayerFds, LayerSession, LayerPdeathsig, LayerUserNS, LayerPidNS, LayerNetNS, LayerMountNS, LayerIPCNS, LayerUTSNS} {
		if plan[l] {
			p.layers[l] = LayerState{Applied: true, Detail: hostLayerDetail(l, env)}
		}
	}
	if plan[LayerUserNS] {
		own := "shared by every sandbox"
		if p.ids != nil {
			own = "its own, from " + p.ids.String()
		} else if av.rootless {
			own = "the host's own uid (rootless), shared by every sandbox"
		}
		p.layers[LayerUserNS] = LayerState{Applied: true, Detail: fmt.Sprintf("uid/gid %d inside; host uid %d: %s", confine.UnprivilegedID, p.hostID, own)}
	}

	// Go-ahead, then wait for the ready report.
	deadline, has := ctx.Deadline()
	if !has {
		deadline = time.Now().Add(startTimeout)
	}
	_ = p.conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = p.conn.SetDeadline(time.Unix(1, 0)) })
	buf := make([]byte, confine.MaxReady+1)
	if _, err := p.conn.Write([]byte{confine.GoByte}); err != nil {
		stop()
		// A child that failed before the go-ahead is gone; it said why.
		if b := queuedPacket(p.conn, buf); confine.IsFailure(b) {
			return fail(childFailure(b))
		}
		return fail(fmt.Errorf("send go-ahead: %w", err))
	}
	n, received, err := readReady(p.conn, buf)
	stop()
	_ = p.conn.SetDeadline(time.Time{})
	closeAll := func() { fdpass.Close(received) }
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fail(fmt.Errorf("waiting for the sandbox to be ready: %w", err))
	}
	if confine.IsFailure(buf[:n]) {
		closeAll()
		return fail(childFailure(buf[:n]))
	}
	trace("ready")
	applied, abi, err := confine.ParseReady(buf[:n])
	if err != nil {
		closeAll()
		return fail(err)
	}
	if missing := cfg.Layers &^ confine.LLearn &^ confine.LWX &^ applied; missing != 0 {
		closeAll()
		return fail(notApplied(missing))
	}
	if plan[LayerSeccomp] {
		if len(received) != 1 {
			closeAll()
			return fail(fmt.Errorf("expected one seccomp listener fd, got %d", len(received)))
		}
		// It must be a seccomp listener (of the filter the child just
		// installed: nothing untrusted has run yet).
		if l, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(received[0])); l != "anon_inode:seccomp notify" {
			closeAll()
			return fail(fmt.Errorf("ready packet carried %q, not a seccomp listener", l))
		}
		if err := unix.SetNonblock(received[0], true); err != nil {
			closeAll()
			return fail(err)
		}
		p.notify = os.NewFile(uintptr(received[0]), "seccomp-listener")
	} else {
		closeAll()
	}
	for b, l := range childLayer {
		if plan[l] {
			p.layers[l] = LayerState{Applied: applied&b != 0, Detail: childLayerDetail(l, abi, cfg)}
		}
	}
	if plan[LayerOOMScore] {
		st := p.layers[LayerOOMScore]
		st.Detail += p.oom.detail()
		p.layers[LayerOOMScore] = st
	}
	if plan[LayerWX] {
		// Its first half is the seccomp filter's; the worker adds MDWE.
		p.layers[LayerWX] = LayerState{Applied: applied&confine.LSeccomp != 0 && o.learn == nil, Detail: wxDetail}
	}
	if p.notify != nil {
		go p.watchSeccomp()
	}
	// Check from the outside what the child claims (every thread).
	exp := liveExpect{limits: plannedLimits(cfg), oom: p.oom}
	if p.cg != nil {
		exp.cgroupDirs, exp.group = p.cg.dirs, s.Group
	}
	p.plan, p.expect = plan, exp
	if err := verifyLive(proc.Pid, plan, exp); err != nil && !exitsSoon(proc.Pid) {
		if p.notify != nil {
			p.notify.Close()
		}
		return fail(fmt.Errorf("verification: %w", err))
	}
	trace("verified")
	for l, st := range p.layers {
		if !st.Applied && (!s.Strict || allowed(s.AllowMissing, l)) {
			slog.Warn("sandbox started WITHOUT a confinement layer", "sandbox", s.Label, "layer", string(l), "reason", st.Detail)
		}
	}
	ok = true
	go p.waiter()
	return p, nil
}

// The parent-death signal fires when the *thread* that forked the child
// exits, not the process; Go ends an OS thread when a goroutine locked to it
// returns. So the spawner (spawner.go), whose sandboxes share its parent
// (CLONE_PARENT), and sandboxes cloned by the host itself when there is no
// spawner, are forked only from spawn goroutines locked to their threads
// for the life of the process: a sandbox dies with its host, never with
// some thread of it.
type spawnReq struct {
	binary string
	argv   []string
	attr   *os.ProcAttr
	done   chan spawnRes
}

type spawnRes struct {
	p   *os.Process
	err error
}

var (
	spawnOnce sync.Once
	spawnCh   = make(chan spawnReq)
)

func spawn(binary string, argv []string, attr *os.ProcAttr) (*os.Process, error) {
	spawnOnce.Do(func() {
		for i := 0; i < min(4, max(1, runtime.NumCPU())); i++ {
			go func() {
				runtime.LockOSThread() // never unlocked: this thread lives as long as the host
				for r := range spawnCh {
					p, err := os.StartProcess(r.binary, r.argv, r.attr)
					r.done <- spawnRes{p, err}
				}
			}()
		}
	})
	r := spawnReq{binary: binary, argv: argv, attr: attr, done: make(chan spawnRes, 1)}
	spawnCh <- r
	res := <-r.done
	return res.p, res.err
}

// exitsSoon reports whether a child is exiting: /proc of a process in the
// middle of exiting is unreadable (to an unprivileged host, its namespace
// links are refused with EACCES), and a sandbox that already violated its
// filter is being killed while Start verifies it. A dead sandbox is harmless.
func exitsSoon(pid int) bool {
	for i := 0; i < 50; i++ {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		if err != nil {
			return false
		}
		if info.Signo == int32(unix.SIGCHLD) || dying(pid) {
			return true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return false
}

// dying reports whether a process can no longer run code of its own though
// it is not yet reapable (a loaded host may take longer than exitsSoon waits
// to tear down a large address space): a SIGKILL is pending for the whole
// thread group (the host's kill after a seccomp violation), or every thread
// is exiting (PF_EXITING), a zombie or gone.
func dying(pid int) bool {
	dir := "/proc/" + strconv.Itoa(pid)
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "ShdPnd:"); ok {
			if set, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && set&(1<<(unix.SIGKILL-1)) != 0 {
				return true
			}
		}
	}
	tasks, err := os.ReadDir(dir + "/task")
	if err != nil {
		return false
	}
	const pfExiting = 0x4 // include/linux/sched.h
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/task/" + t.Name() + "/stat")
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return false
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 > len(s) {
			return false
		}
		f := strings.Fields(s[i+2:]) // f[0] is field 3 (state), f[6] field 9 (flags)
		if len(f) < 7 {
			return false
		}
		flags, err := strconv.ParseUint(f[6], 10, 64)
		if err != nil {
			return false
		}
		if f[0] != "Z" && f[0] != "X" && f[0] != "x" && flags&pfExiting == 0 {
			return false
		}
	}
	return true
}

func allowed(list []Layer, l Layer) bool {
	for _, x := range list {
		if x == l {
			return true
		}
	}
	return false
}

// makePlan decides which layers to apply: all available ones; a missing
// layer is an error in strict mode unless allowed.
func makePlan(av *availability, s Spec, o startOpts) (map[Layer]bool, error) {
	plan := map[Layer]bool{}
	var missing []Layer
	for _, l := range AllLayers {
		ok := av.layers[l] && !allowed(o.unavailable, l)
		if ok && l == LayerPivotRoot && allowed(o.unavailable, LayerMountNS) {
			ok = false
		}
		if ok && l == LayerWX && !plan[LayerSeccomp] {
			ok = false // the filter is half of it
		}
		if ok && l != LayerUserNS && (allowed(o.unavailable, LayerUserNS) || !av.layers[LayerUserNS]) && av.rootless {
			switch l {
			case LayerPidNS, LayerNetNS, LayerMountNS, LayerIPCNS, LayerUTSNS, LayerCgroupNS, LayerPivotRoot, LayerCaps:
				ok = false
			}
		}
		plan[l] = ok
		if !ok && s.Strict && !allowed(s.AllowMissing, l) {
			missing = append(missing, l)
		}
	}
	if len(missing) > 0 {
		var why []string
		for _, l := range missing {
			d := av.detail[l]
			if d == "" || av.layers[l] {
				d = "unavailable"
			}
			why = append(why, string(l)+": "+d)
		}
		return nil, fmt.Errorf("sandbox %s: strict mode: required confinement layers unavailable (%s); allow them explicitly (INSECURE) with --set sandbox.allow_missing=%s or CORDON_SANDBOX_ALLOW_MISSING=%s",
			s.Label, strings.Join(why, "; "), layerList(missing), layerList(missing))
	}
	return plan, nil
}

func gomaxprocs(cpuPercent int) int {
	n := runtime.NumCPU()
	if cpuPercent > 0 {
		n = min(n, (cpuPercent+99)/100)
	}
	return max(1, min(n, 8))
}

func hostLayerDetail(l Layer, env []string) string {
	switch l {
	case LayerEnv:
		return strings.Join(env, " ")
	case LayerFds:
		return "2=log pipe, 3=IPC socket, 4..=passed files"
	case LayerUserNS:
		return fmt.Sprintf("uid/gid %d", confine.UnprivilegedID)
	}
	return ""
}

func childLayerDetail(l Layer, abi int, cfg confine.Config) string {
	switch l {
	case LayerLandlock:
		return fmt.Sprintf("ABI %d, no rights", abi)
	case LayerRlimits:
		d := fmt.Sprintf("core=0 fsize=%d nofile=%d as=%d memlock=0 msgqueue=0", cfg.FSize, cfg.NoFile, cfg.AS)
		if cfg.NProc > 0 {
			d += fmt.Sprintf(" nproc=%d", cfg.NProc)
		}
		if cfg.Data > 0 {
			d += fmt.Sprintf(" data=%d", cfg.Data)
		}
		return d
	case LayerSeccomp:
		return confine.AllowlistSummary() + "; every thread (TSYNC)"
	case LayerPivotRoot:
		return "empty read-only tmpfs"
	case LayerOOMScore:
		return fmt.Sprintf("oom_score_adj %d", confine.OOMScoreAdj)
	}
	return ""
}

// notApplied names the layers of the bits a sandbox did not report applied.
func notApplied(missing uint64) error {
	var layers []Layer
	for _, l := range AllLayers {
		for b, cl := range childLayer {
			if cl == l && missing&b != 0 {
				layers = append(layers, l)
				missing &^= b
			}
		}
	}
	what := layerList(layers)
	if missing != 0 {
		what = strings.TrimPrefix(what+fmt.Sprintf(",bits %#x", missing), ",")
	}
	err := fmt.Errorf("the sandbox reported ready without applying %s", what)
	if len(layers) == 1 && missing == 0 {
		return &LayerError{Layer: layers[0], Err: err}
	}
	return err
}

// queuedPacket reads a packet already waiting on c, without waiting for one
// (nil if there is none). Descriptors sent with it are discarded.
func queuedPacket(c *net.UnixConn, buf []byte) []byte {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	n, rerr := 0, error(nil)
	if err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
		return true
	}); err != nil || rerr != nil || n <= 0 {
		return nil
	}
	return buf[:n]
}

// readReady receives the sandbox's ready (or failure) packet into buf and
// the descriptors that came with it, which the caller owns. On error none
// is left open: like everything a sandbox sends, the packet is taken as
// hostile, and the descriptors it carries are installed in the host
// before recvmsg returns, whatever it holds.
func readReady(c *net.UnixConn, buf []byte) (int, []int, error) {
	// Room for one descriptor more than a ready packet carries: more than
	// that sets MSG_CTRUNC, and the kernel closes what does not fit.
	oob := make([]byte, unix.CmsgSpace(4*2))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	// Descriptors come with a packet even when Go reports an error for
	// it: an empty packet is io.EOF on a SOCK_SEQPACKET socket.
	fds, ferr := fdpass.Take(oob[:oobn])
	switch {
	case err != nil:
	case ferr != nil:
		err = ferr
	case flags&unix.MSG_CTRUNC != 0:
		err = errors.New("the ready packet came with more descriptors than it may carry (one)")
	case flags&unix.MSG_TRUNC != 0:
		err = fmt.Errorf("the ready packet is longer than %d bytes", len(buf))
	}
	if err != nil {
		fdpass.Close(fds)
		return 0, nil, err
	}
	return n, fds, nil
}

// watchSeccomp waits for seccomp notifications. A violation: record the
// syscall, kill the sandbox (the call never runs). In learn mode: report and
// let it continue.
func (p *Process) watchSeccomp() {
	rc, err := p.notify.SyscallConn()
	if err != nil {
		return
	}
	for {
		var n confine.Notification
		var rerr error
		hup := false
		err := rc.Read(func(fd uintptr) bool {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(pfd, 0); err != nil {
				return false
			}
			if pfd[0].Revents&unix.POLLIN != 0 {
				n, rerr = confine.RecvNotification(int(fd))
				return true
			}
			if pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
				hup = true
				return true
			}
			return false
		})
		if err != nil || hup {
			return
		}
		if rerr != nil {
			if errors.Is(rerr, unix.ENOENT) || errors.Is(rerr, unix.EINTR) {
				continue
			}
			return
		}
		if p.learn != nil {
			p.learn(confine.SyscallName(n.Arch, n.Nr), n)
			_ = rc.Control(func(fd uintptr) { _ = confine.ContinueNotification(int(fd), n.ID) })
			continue
		}
		p.mu.Lock()
		if p.seccomp == "" {
			p.seccomp = confine.ViolationName(n)
		}
		p.mu.Unlock()
		_ = p.proc.Kill()
		if p.cg != nil {
			p.cg.killAll()
		}
	}
}

// waiter reaps the sandbox, then removes its cgroup and records the status.
func (p *Process) waiter() {
	ps, err := p.proc.Wait()
	st := ExitStatus{Code: -1}
	if err != nil {
		st.Err = err
	} else if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
		switch {
		case ws.Exited():
			st.Code = ws.ExitStatus()
		case ws.Signaled():
			st.Signal = ws.Signal()
		}
	}
	if p.notify != nil {
		_ = p.notify.Close()
	}
	p.oom.close()
	p.logs.wait(time.Second)
	p.releaseID()
	p.mu.Lock()
	st.SeccompSyscall = p.seccomp
	killed := p.killed
	p.mu.Unlock()
	var oom, ownLimit bool
	if p.cg != nil {
		oom, ownLimit = p.cg.oomCause(p.groupLimit)
	}
	if p.cg != nil {
		if err := p.cg.remove(); err != nil {
			slog.Error("sandbox cgroup not removed", "sandbox", p.label, "err", err)
		}
	}
	if st.Err == nil {
		switch {
		case st.SeccompSyscall != "":
			st.Err = fmt.Errorf("%w: %s", ErrSeccomp, st.SeccompSyscall)
		case oom && ownLimit:
			st.Err = ErrOutOfMemory
		case oom:
			st.Err = ErrNodeOutOfMemory
		case killed && st.Signal == syscall.SIGKILL:
			st.Err = ErrKilled
		case st.Code == confine.ExitSetup:
			st.Err = fmt.Errorf("sandbox confinement failed: %s", p.logs.tail())
		case st.Signal != 0:
			st.Err = fmt.Errorf("sandbox killed by signal %v", st.Signal)
		case st.Code != 0:
			st.Err = fmt.Errorf("sandbox exited with code %d", st.Code)
		}
	}
	p.status = st
	close(p.done)
}
