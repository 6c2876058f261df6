package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/fdpass"
	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// The spawner clones sandboxes on the host's behalf. Go's fork drops vfork
// (CLONE_VM|CLONE_VFORK) when CLONE_NEWUSER is set, so a host that clones a
// sandbox itself copies its whole page table: 1.2 ms with an empty heap, 97
// ms at 2 GiB (BenchmarkStartHostMemory). The spawner is the sealed cordon
// binary in a mode of its own, started once while the host is small; its
// heap stays a few MiB, so its fork copies little whatever the host holds.
// It clones with CLONE_PARENT: the sandbox is the host's child, which the
// host waits for, kills and verifies through /proc exactly as before, and
// whose parent-death signal fires with the host's spawning thread (the
// spawner's parent) — the spawner is nothing to the sandbox but the process
// that made it.
//
// It holds nothing of the host: an empty environment, stdin and stdout
// closed, the host's stderr, its own sealed copy of the executable and one
// end of a socketpair, the only way to reach it. It dies with the host
// (PR_SET_PDEATHSIG). It runs unconfined, as the host does today when it
// clones: it needs the host's privileges to create the namespaces and
// write the id maps, and what it runs is a request of the host's, checked
// (marker, flags, maps, descriptors) before it clones anything.

// spawnerMarker is argv[1] of the spawner. The sandbox package's init runs
// the spawner instead of returning when it sees it, so every binary that
// links the package (cordon, its tests) can be one.
const spawnerMarker = confine.SpawnerMarker

// spawnerFD is where the spawner's socket lands at exec (ExtraFiles[0]);
// its sealed executable copy, if any, is ExtraFiles[1].
const (
	spawnerSockFD = 3
	spawnerExeFD  = 4
)

// Limits on a request; the host never sends more.
const (
	maxSpawnRequest = 64 << 10
	maxSpawnFiles   = 64 + 4 // Spec.Files and the host's own four
)

// spawnRequest is one clone, as the host asks for it. Descriptors travel as
// SCM_RIGHTS in the same packet, in order: Files' non-negative entries index
// them.
type spawnRequest struct {
	Self        bool      `json:"self,omitempty"`   // execute the spawner's sealed copy
	Sealed      bool      `json:"sealed,omitempty"` // else the last descriptor sent, a sealed executable
	Binary      string    `json:"binary,omitempty"` // else this absolute path
	Argv        []string  `json:"argv"`
	Env         []string  `json:"env"`
	Files       []int     `json:"files"` // child fd i = rights[Files[i]], -1 = closed
	Setsid      bool      `json:"setsid,omitempty"`
	Pdeathsig   bool      `json:"pdeathsig,omitempty"`
	Cloneflags  uintptr   `json:"cloneflags,omitempty"`
	Credential  bool      `json:"credential,omitempty"` // setuid/setgid to UnprivilegedID inside
	UID         int       `json:"uid,omitempty"`        // host ids of the one-id maps (with CLONE_NEWUSER)
	GID         int       `json:"gid,omitempty"`
	Setgroups   bool      `json:"setgroups,omitempty"`
	AmbientCaps []uintptr `json:"ambient,omitempty"`
}

type spawnReply struct {
	Pid int    `json:"pid,omitempty"`
	Err string `json:"err,omitempty"`
}

// allowedCloneflags are the namespaces a sandbox may be cloned into; the
// spawner adds CLONE_PARENT itself.
const allowedCloneflags = unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWNS | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS

func init() {
	if len(os.Args) == 2 && os.Args[1] == spawnerMarker {
		os.Exit(spawnerMain())
	}
}

// spawnerMain serves the host until its socket closes.
func spawnerMain() int {
	sock := spawnerSockFD
	self := "/proc/self/exe"
	if _, err := unix.FcntlInt(spawnerExeFD, unix.F_GETFD, 0); err == nil {
		high, err := moveUp(spawnerExeFD)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cordon spawner: move the executable up:", err)
			return 1
		}
		unix.Close(spawnerExeFD)
		self = "/proc/self/fd/" + strconv.Itoa(high)
	}
	unix.CloseOnExec(sock)
	// The socket must be the host's: a socketpair its parent made.
	if cred, err := unix.GetsockoptUcred(sock, unix.SOL_SOCKET, unix.SO_PEERCRED); err != nil || int(cred.Pid) != os.Getppid() {
		fmt.Fprintln(os.Stderr, "cordon spawner: fd 3 is not its parent's socket")
		return 1
	}
	buf := make([]byte, maxSpawnRequest+1)
	oob := make([]byte, unix.CmsgSpace(4*(maxSpawnFiles+1)))
	for {
		n, oobn, flags, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return 0 // the host is gone
		}
		rights, perr := fdpass.Take(oob[:oobn])
		var reply spawnReply
		switch {
		case perr != nil:
			reply.Err = "control message: " + perr.Error()
		case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
			reply.Err = "request truncated"
		default:
			// serveSpawn owns (and closes) the descriptors.
			pid, err := serveSpawn(buf[:n], rights, self)
			if err != nil {
				reply.Err = err.Error()
			}
			reply.Pid, rights = pid, nil
		}
		for _, fd := range rights {
			unix.Close(fd)
		}
		b, _ := json.Marshal(reply)
		if _, err := unix.Write(sock, b); err != nil {
			return 0
		}
	}
}

// serveSpawn checks a request and clones it. It closes rights.
func serveSpawn(b []byte, rights []int, self string) (int, error) {
	owned := make([]*os.File, len(rights))
	for i, fd := range rights {
		owned[i] = os.NewFile(uintptr(fd), "spawn-"+strconv.Itoa(i))
	}
	defer func() {
		for _, f := range owned {
			f.Close()
		}
	}()
	var r spawnRequest
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, fmt.Errorf("decode request: %w", err)
	}
	if len(r.Argv) < 3 || r.Argv[1] != confine.Marker {
		return 0, errors.New("not a sandbox command line")
	}
	bin := self
	switch {
	case r.Self && r.Sealed:
		return 0, errors.New("two executables")
	case r.Sealed:
		if len(rights) == 0 {
			return 0, errors.New("no executable sent")
		}
		exe := rights[len(rights)-1]
		rights = rights[:len(rights)-1]
		// Only a sealed memory file: what the host checked is what runs.
		if seals, err := unix.FcntlInt(uintptr(exe), unix.F_GET_SEALS, 0); err != nil || seals&execSeals != execSeals {
			return 0, errors.New("the executable sent is not a sealed memory file")
		}
		// Above the child's descriptors, which its dup2s would overwrite
		// before exec resolves the path.
		high, err := moveUp(exe)
		if err != nil {
			return 0, fmt.Errorf("move the executable up: %w", err)
		}
		defer unix.Close(high)
		bin = fdPath(high)
	case !r.Self:
		if len(r.Binary) == 0 || r.Binary[0] != '/' {
			return 0, errors.New("binary is not an absolute path")
		}
		bin = r.Binary
	}
	if r.Cloneflags&^allowedCloneflags != 0 {
		return 0, fmt.Errorf("clone flags %#x not allowed", r.Cloneflags)
	}
	if len(r.Files) > maxSpawnFiles {
		return 0, errors.New("too many files")
	}
	used := 0
	files := make([]*os.File, len(r.Files))
	for i, k := range r.Files {
		if k < 0 {
			continue
		}
		if k >= len(rights) || k != used {
			return 0, errors.New("files do not match the descriptors sent")
		}
		used++
		files[i] = owned[k]
	}
	if used != len(rights) {
		return 0, fmt.Errorf("%d descriptors sent, %d expected", len(rights), used)
	}
	for _, c := range r.AmbientCaps {
		if c != unix.CAP_SYS_ADMIN && c != unix.CAP_SETPCAP {
			return 0, fmt.Errorf("ambient capability %d not allowed", c)
		}
	}
	attr := &syscall.SysProcAttr{Setsid: r.Setsid, Cloneflags: r.Cloneflags | unix.CLONE_PARENT}
	if r.Pdeathsig {
		attr.Pdeathsig = syscall.SIGKILL
		// Go's child kills itself if its parent is not the process that
		// forked it, to close the race with a parent dying before the
		// prctl; with CLONE_PARENT that is always so. In a new pid
		// namespace it is pid 1 and ignores its own SIGKILL; elsewhere
		// the worker's constructor sets the signal (LPdeathsig), and a
		// host that died before it leaves the child's IPC socket closed,
		// which ends it.
		if r.Cloneflags&unix.CLONE_NEWPID == 0 {
			attr.Pdeathsig = 0
		}
	}
	if r.Cloneflags&unix.CLONE_NEWUSER != 0 {
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: confine.UnprivilegedID, HostID: r.UID, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: confine.UnprivilegedID, HostID: r.GID, Size: 1}}
		attr.GidMappingsEnableSetgroups = r.Setgroups
		attr.AmbientCaps = r.AmbientCaps
		if r.Credential {
			attr.Credential = &syscall.Credential{Uid: confine.UnprivilegedID, Gid: confine.UnprivilegedID}
		}
	} else if r.Credential || len(r.AmbientCaps) > 0 {
		return 0, errors.New("credentials without a user namespace")
	}
	// A child whose exec fails is the host's zombie, and nobody knows its
	// pid (Go's forkExec can only wait for its own children): refuse what
	// cannot execute before cloning.
	if err := checkRunnable(bin); err != nil {
		return 0, err
	}
	proc, err := os.StartProcess(bin, r.Argv, &os.ProcAttr{Dir: "/", Env: r.Env, Files: files, Sys: attr})
	if err != nil {
		return 0, err
	}
	pid := proc.Pid
	_ = proc.Release() // not ours to wait for: the host's child
	return pid, nil
}

// checkRunnable refuses, before any clone, an executable whose exec would
// fail: not executable, or not an ELF program of the spawner's own class,
// byte order and machine (garbage, a script whose interpreter the empty
// root lacks, another architecture's binary).
func checkRunnable(bin string) error {
	if err := unix.Access(bin, unix.X_OK); err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	got, err := elfIdent(bin)
	if err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	want, err := ownELFIdent()
	if err != nil {
		return fmt.Errorf("the spawner's own executable: %w", err)
	}
	if got != want {
		return fmt.Errorf("%s: not an ELF executable for this machine", bin)
	}
	return nil
}

var ownELFIdent = sync.OnceValues(func() ([8]byte, error) { return elfIdent("/proc/self/exe") })

// elfIdent is what must match for the kernel to run a program as this
// one: the ELF magic, class and byte order (e_ident[0:6]) and e_machine.
func elfIdent(path string) ([8]byte, error) {
	var id [8]byte
	f, err := os.Open(path)
	if err != nil {
		return id, err
	}
	defer f.Close()
	var h [20]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return id, errors.New("not an ELF executable (too short)")
	}
	if string(h[:4]) != "\x7fELF" {
		return id, errors.New("not an ELF executable")
	}
	copy(id[:6], h[:6])
	copy(id[6:], h[18:20])
	return id, nil
}

// spawnerClient is the host's end of its spawner.
type spawnerClient struct {
	mu   sync.Mutex
	conn *net.UnixConn
	proc *os.Process
	dead chan struct{} // closed once proc is reaped
	err  error         // why there is no spawner (logged once)
	// served counts the sandboxes it cloned (tests).
	served uint64
}

var (
	theSpawner spawnerClient
	// useSpawner: clone through the spawner (the default); false clones
	// from the host itself (benchmarks compare the two).
	useSpawner = true
)

// StartSpawner starts the spawner now, if it is not running: call it while
// the host is small (before it loads canisters), so that even the spawner's
// own fork is cheap. Start starts it on first use otherwise.
func StartSpawner() error {
	theSpawner.mu.Lock()
	defer theSpawner.mu.Unlock()
	return theSpawner.ensure()
}

// ensure starts the spawner if there is none (or it died). Called with mu held.
func (c *spawnerClient) ensure() error {
	if c.proc != nil {
		select {
		case <-c.dead:
			slog.Warn("sandbox spawner died; restarting it", "pid", c.proc.Pid)
			c.drop()
		default:
			return nil
		}
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("spawner socketpair: %w", err)
	}
	hostF, childF := os.NewFile(uintptr(fds[0]), "spawner-host"), os.NewFile(uintptr(fds[1]), "spawner-child")
	defer childF.Close()
	fc, err := net.FileConn(hostF)
	hostF.Close()
	if err != nil {
		return fmt.Errorf("spawner socket: %w", err)
	}
	conn := fc.(*net.UnixConn)
	bin := selfExe()
	files := []*os.File{nil, nil, os.Stderr, childF}
	if bin != "/proc/self/exe" {
		// The spawner keeps the host's sealed copy to execute sandboxes
		// from; exec closes the host's (close-on-exec) descriptor.
		// A duplicate: an *os.File of the host's own descriptor would close
		// it when collected.
		fd, err := strconv.Atoi(bin[len("/proc/self/fd/"):])
		if err == nil {
			fd, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		}
		if err != nil {
			conn.Close()
			return fmt.Errorf("sealed executable %q: %w", bin, err)
		}
		exe := os.NewFile(uintptr(fd), "cordon-sandbox")
		defer exe.Close()
		files = append(files, exe)
	}
	attr := &os.ProcAttr{Dir: "/", Env: []string{}, Files: files, Sys: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}}
	// Forked from a spawn thread (locked for the host's life): the
	// spawner's parent-death signal, and with CLONE_PARENT every
	// sandbox's, fires with that thread, that is with the host.
	proc, err := spawn(bin, []string{"cordon-spawner", spawnerMarker}, attr)
	if err != nil {
		conn.Close()
		return fmt.Errorf("start the spawner: %w", err)
	}
	dead := make(chan struct{})
	go func() { _, _ = proc.Wait(); close(dead) }()
	c.conn, c.proc, c.dead = conn, proc, dead
	return nil
}

// errSpawnerGone: the spawner did not take the request (it was dead or
// died before reading it); the request can be sent again to a new one.
var errSpawnerGone = errors.New("spawner gone")

// spawnSandbox clones a sandbox through the spawner, restarting it once if
// it is gone; without a spawner it clones from the host as before.
// inCgroup reports whether the child was cloned into pa.Sys.CgroupFD's
// cgroup: the spawner cannot (clone3 refuses CLONE_PARENT with an exit
// signal, which Go always sets), so the host attaches it by pid, as on v1,
// before its go-ahead.
func spawnSandbox(exe runExe, argv []string, pa *os.ProcAttr, deadline time.Time) (p *os.Process, inCgroup bool, err error) {
	if !useSpawner {
		p, err = spawn(exe.path, argv, pa)
		return p, pa.Sys.UseCgroupFD, err
	}
	c := &theSpawner
	c.mu.Lock()
	defer c.mu.Unlock()
	for attempt := 0; ; attempt++ {
		if err := c.ensure(); err != nil {
			if c.err == nil {
				slog.Error("no sandbox spawner: sandboxes are cloned from the host, at a cost that grows with its memory", "err", err)
			}
			c.err = err
			p, err = spawn(exe.path, argv, pa)
			return p, pa.Sys.UseCgroupFD, err
		}
		c.err = nil
		p, err := c.request(exe, argv, pa, deadline)
		if errors.Is(err, errSpawnerGone) && attempt == 0 {
			slog.Warn("sandbox spawner gone; restarting it", "pid", c.proc.Pid, "err", err)
			c.drop()
			continue
		}
		var re *spawnRefused
		if err != nil && !errors.As(err, &re) {
			// A broken exchange: start afresh next time.
			c.drop()
		}
		return p, false, err
	}
}

// drop kills and forgets the spawner (its waiter reaps it). Called with mu held.
func (c *spawnerClient) drop() {
	_ = c.proc.Kill()
	c.conn.Close()
	c.conn, c.proc, c.dead = nil, nil, nil
}

// spawnRefused is an error the spawner answered (the clone or exec failed).
type spawnRefused struct{ msg string }

func (e *spawnRefused) Error() string { return "spawner: " + e.msg }

func (c *spawnerClient) request(exe runExe, argv []string, pa *os.ProcAttr, deadline time.Time) (*os.Process, error) {
	sys := pa.Sys
	r := spawnRequest{
		Self: exe.self, Sealed: !exe.self && exe.fd >= 0, Argv: argv, Env: pa.Env,
		Setsid: sys.Setsid, Pdeathsig: sys.Pdeathsig != 0, Cloneflags: sys.Cloneflags,
		Credential: sys.Credential != nil, Setgroups: sys.GidMappingsEnableSetgroups,
		AmbientCaps: sys.AmbientCaps,
	}
	if !r.Self && !r.Sealed {
		r.Binary = exe.path
	}
	if len(sys.UidMappings) == 1 && len(sys.GidMappings) == 1 {
		r.UID, r.GID = sys.UidMappings[0].HostID, sys.GidMappings[0].HostID
	}
	var rights []int
	for _, f := range pa.Files {
		if f == nil {
			r.Files = append(r.Files, -1)
			continue
		}
		r.Files = append(r.Files, len(rights))
		rights = append(rights, int(f.Fd()))
	}
	if r.Sealed {
		rights = append(rights, exe.fd) // last: the executable
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	_ = c.conn.SetDeadline(deadline)
	defer c.conn.SetDeadline(time.Time{})
	if _, _, err := c.conn.WriteMsgUnix(b, unix.UnixRights(rights...), nil); err != nil {
		return nil, fmt.Errorf("%w: send: %v", errSpawnerGone, err)
	}
	runtime.KeepAlive(pa.Files)
	buf := make([]byte, 4096)
	n, err := c.conn.Read(buf)
	if err != nil || n == 0 {
		// It may have cloned a sandbox before it died: that child's
		// socket closes with the caller's cleanup, and it exits.
		return nil, fmt.Errorf("spawner did not answer: %v", err)
	}
	var rep spawnReply
	if err := json.Unmarshal(buf[:n], &rep); err != nil {
		return nil, fmt.Errorf("spawner answer: %w", err)
	}
	if rep.Err != "" {
		return nil, &spawnRefused{rep.Err}
	}
	// The sandbox must be a child of the host's (CLONE_PARENT): then its
	// pid cannot be reused until the host reaps it.
	if rep.Pid <= 0 {
		return nil, fmt.Errorf("spawner answered pid %d", rep.Pid)
	}
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, rep.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
		return nil, fmt.Errorf("spawner answered pid %d, not a child of the host: %w", rep.Pid, err)
	}
	c.served++
	return os.FindProcess(rep.Pid)
}
