package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// attackResult starts a sandbox running one attack and returns what the
// sandbox reported ("" if it died first) and how it ended.
func attackResult(t *testing.T, name string, spec Spec, o startOpts) (string, ExitStatus) {
	t.Helper()
	spec.Label = "attack-" + name
	spec.Args = append([]string{"attack", name, strconv.Itoa(os.Getpid()), strconv.Itoa(hostPort), hostAbstract}, spec.Args...)
	if spec.Stderr == nil {
		spec.Stderr = func(l string) { t.Logf("sandbox: %s", l) }
	}
	spec, why := rootlessSpec(spec)
	if why != "" {
		t.Log(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := start(ctx, spec, o)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Conn().Close()
	checkRootlessLayers(t, p, o.unavailable)
	_ = p.Conn().SetReadDeadline(time.Now().Add(20 * time.Second))
	b := make([]byte, 4096)
	n, err := p.Conn().Read(b)
	reply := ""
	if err == nil {
		reply = string(b[:n])
	}
	p.Kill()
	st := p.Wait()
	checkCgroupGone(t, p)
	return reply, st
}

// liveAttack is attackResult letting the host inspect the sandbox while it
// is still alive (after its report, or its death if it died first), before
// it is killed.
func liveAttack(t *testing.T, name string, spec Spec, o startOpts, inspect func(p *Process, reply string)) (string, ExitStatus) {
	t.Helper()
	spec.Label = "live-attack-" + name
	spec.Args = append([]string{"attack", name, strconv.Itoa(os.Getpid()), strconv.Itoa(hostPort), hostAbstract}, spec.Args...)
	if spec.Stderr == nil {
		spec.Stderr = func(l string) { t.Logf("sandbox: %.200s", l) }
	}
	spec, why := rootlessSpec(spec)
	if why != "" {
		t.Log(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := start(ctx, spec, o)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Conn().Close()
	_ = p.Conn().SetReadDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, 4096)
	n, err := p.Conn().Read(b)
	reply := ""
	if err == nil {
		reply = string(b[:n])
	}
	if inspect != nil {
		inspect(p, reply)
	}
	p.Kill()
	st := p.Wait()
	checkCgroupGone(t, p)
	return reply, st
}

func checkCgroupGone(t *testing.T, p *Process) {
	t.Helper()
	if p.cg == nil {
		return
	}
	for _, d := range p.cg.dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s still exists after Wait", d)
		}
	}
}

// Attacks that the full filter answers by killing the sandbox, and the
// syscall the host must name.
var killedBy = map[string]string{
	"exec_sh": "execve", "execveat_self": "execveat", "chroot": "chroot", "mknod": "mknodat",
	"mount": "mount", "umount": "umount2", "pivot": "pivot_root",
	"open_by_handle_at": "open_by_handle_at", "name_to_handle_at": "name_to_handle_at",
	"socket_inet": "socket", "socket_unix": "socket", "socket_netlink": "socket", "socketpair": "socketpair",
	"connect_abstract": "connect", "io_uring_setup": "io_uring_setup",
	"ptrace_host": "ptrace", "process_vm_readv": "process_vm_readv", "kill_host": "kill", "kill_all": "kill",
	"tgkill_host": "tgkill", "pidfd_open": "pidfd_open", "getppid": "getppid",
	"bpf": "bpf", "keyctl": "keyctl", "add_key": "add_key", "userfaultfd": "userfaultfd",
	"perf_event_open": "perf_event_open", "init_module": "init_module", "reboot": "reboot",
	"sethostname": "sethostname", "unshare_user": "unshare", "setns": "setns",
	"clone_newuser": "clone", "clone_thread_newns": "clone", "fork": "clone", "vfork": "vfork",
	"setuid": "setuid", "setresuid": "setresuid", "capset": "capset",
	"prctl_seccomp_off": "prctl", "seccomp_new_filter": "seccomp",
	"x32_getpid": "x32:getpid", "i386_getpid": "arch-0x40000003:20",
	"fcntl_setown": "fcntl", "memfd_secret": "memfd_secret",
}

// Attacks that fail with an error under full confinement (the sandbox
// lives), and the error they must report.
var refusedWith = map[string]string{
	"read_passwd": "ENOENT", "list_root": "ENOENT", "write_file": "ENOENT", "proc_environ": "ENOENT", "oom_score_adj_lower": "ENOENT",
	"clone3": "ENOSYS", "ioctl_tiocsti": "ENOTTY", "write_fd0": "EBADF", "write_fd1": "EBADF",
	"fd_exhaustion": "EMFILE", "thread_bomb": "EAGAIN",
}

func TestAttacksKilled(t *testing.T) {
	for name, want := range killedBy {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			reply, st := attackResult(t, name, Spec{Strict: true}, startOpts{})
			if reply != "" {
				t.Fatalf("sandbox survived and reported %q", reply)
			}
			if name == "i386_getpid" {
				if ok, why := kernelHasI386Entry(); !ok {
					// No i386 entry: the instruction faults before seccomp
					// sees a call. The attack must still end the sandbox.
					t.Logf("this kernel has no i386 system calls (%s)", why)
					if st.SeccompSyscall != "" || (st.Code == 0 && st.Signal == 0) {
						t.Fatalf("want the sandbox dead of the fault, got %+v", st)
					}
					return
				}
			}
			if st.SeccompSyscall != want || st.Signal != syscall.SIGKILL || !errors.Is(st.Err, ErrSeccomp) {
				t.Fatalf("want killed for %s, got %+v", want, st)
			}
		})
	}
}

func TestAttacksRefused(t *testing.T) {
	for name, want := range refusedWith {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			reply, st := attackResult(t, name, Spec{Strict: true, Pids: 32}, startOpts{})
			if !strings.HasPrefix(reply, "failed: "+want) {
				t.Fatalf("want failure %s, got %q (exit %+v)", want, reply, st)
			}
			t.Log(reply)
			if st.SeccompSyscall != "" || !errors.Is(st.Err, ErrKilled) {
				t.Fatalf("exit %+v", st)
			}
			switch name {
			case "fd_exhaustion":
				n, _ := strconv.Atoi(reply[strings.LastIndex(reply, " ")+1:])
				if n <= 0 || n >= NoFileLimit {
					t.Fatalf("opened %d fds with RLIMIT_NOFILE %d", n, NoFileLimit)
				}
			case "thread_bomb":
				f := strings.Fields(reply)
				n, _ := strconv.Atoi(f[len(f)-2])
				if n <= 0 || n >= 32 {
					t.Fatalf("created %d threads with a pids limit of 32", n)
				}
			}
		})
	}
}

// listenForAttacks gives the sandbox something of the host's to try to
// reach: a TCP port on 127.0.0.1 and an abstract unix socket. (Host side
// only: TestMain calls it, never the sandbox.)
func listenForAttacks() {
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		hostPort = l.Addr().(*net.TCPAddr).Port
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("reached the host"))
				c.Close()
			}
		}()
	}
	hostAbstract = "cordon-test-" + strconv.Itoa(os.Getpid())
	if l, err := net.Listen("unix", "@"+hostAbstract); err == nil {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
}

// TestLayersWithoutSeccomp turns the filter off and checks that every other
// layer holds by itself (defence in depth): the same attacks fail for the
// namespace, pivot_root, capability, Landlock and rlimit reasons.
func TestLayersWithoutSeccomp(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("host secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"read_passwd":           "ENOENT", // empty root
		"proc_environ":          "ENOENT",
		"oom_score_adj_lower":   "ENOENT",
		"list_root":             "EACCES", // mode 0111 and Landlock
		"write_file":            "E",      // EROFS or EACCES
		"exec_sh":               "ENOENT",
		"chroot":                "EPERM", // no capabilities
		"mount":                 "EPERM",
		"pivot":                 "E",
		"mknod":                 "E",
		"sethostname":           "EPERM",
		"setuid":                "E",
		"capset":                "EPERM",
		"open_by_handle_at":     "E",
		"bpf":                   "E",
		"kill_host":             "ESRCH", // pid namespace
		"ptrace_host":           "ESRCH",
		"tgkill_host":           "ESRCH",
		"net_connect_host":      "E",           // Landlock (ABI 4+) refuses TCP connect; the netns's lo is down anyway
		"net_connect_internet":  "ENETUNREACH", // network namespace: no route
		"abstract_connect_host": "E",           // own netns, and Landlock's abstract-socket scope
		"tcp_bind":              "EACCES",      // Landlock net (ABI 4+)
		"interfaces_up":         "failed: only [lo/",
		"landlock_dirfd":        "EACCES", // a host dir fd passed on purpose: Landlock refuses
		"landlock_dirfd_create": "EACCES",
	}
	for name, w := range want {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			reply, st := attackResult(t, name, Spec{Files: []*os.File{d}}, startOpts{unavailable: []Layer{LayerSeccomp}})
			if !strings.HasPrefix(w, "failed") {
				w = "failed: " + w
			}
			if !strings.HasPrefix(reply, w) {
				t.Fatalf("want %q..., got %q (exit %+v)", w, reply, st)
			}
			t.Log(reply)
		})
	}
	t.Run("identity", func(t *testing.T) {
		reply, _ := attackResult(t, "identity", Spec{}, startOpts{unavailable: []Layer{LayerSeccomp}})
		t.Log(reply)
		for _, w := range []string{"host=cordon ", "pid=1 ", "ppid=0 ", "uid=65534 ", "gid=65534 ", "caps=0,0,0 ", "nnp=1 ",
			"core=0 ", "nofile=64 ", `env=["GOMAXPROCS=`} {
			if !strings.Contains(reply, w) {
				t.Errorf("identity lacks %q", w)
			}
		}
	})
}

// TestNoHostFdsOrEnv looks at a live sandbox from the host: its fd table
// holds only what the host gave it (and what it made itself), its
// environment nothing of the host's, its namespaces are its own.
func TestNoHostFdsOrEnv(t *testing.T) {
	t.Setenv("CORDON_SECRET_TEST", "leak")
	f := corpusFile(t, "canisters/counter.wasm")
	p := startT(t, Spec{Args: []string{"echo"}, Files: []*os.File{f}, Strict: true})
	roundTrip(t, p, "x")
	pid := strconv.Itoa(p.Pid())
	fds, err := sandboxFds(t, p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, fd := range slices.Sorted(maps.Keys(fds)) {
		e, target := dirEntryName(strconv.Itoa(fd)), fds[fd]
		t.Logf("fd %s -> %s", e.Name(), target)
		kind := target
		switch {
		case e.Name() == "0" || e.Name() == "1":
			t.Errorf("fd %s open: %s", e.Name(), target)
		case e.Name() == "2" && strings.HasPrefix(target, "pipe:"):
			kind = "log"
		case e.Name() == "4" && target == absPath(t, f.Name()):
			kind = "passed"
		case target == "/proc/"+pid+"/pagemap":
			// Its own page table view, opened before the empty root for
			// finding written pages (confine.Pagemap).
			kind = "pagemap"
		case strings.HasPrefix(target, "socket:"):
			kind = "socket"
		case target == "anon_inode:[eventpoll]", target == "anon_inode:[eventfd]":
			kind = "poller"
		default:
			t.Errorf("unexpected fd %s -> %s", e.Name(), target)
		}
		counts[kind]++
	}
	if counts["log"] != 1 || counts["passed"] != 1 || counts["socket"] != 1 || counts["pagemap"] > 1 {
		t.Errorf("fd table %v", counts)
	}
	env, err := sandboxEnviron(t, p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	vars := strings.Split(strings.TrimRight(string(env), "\x00"), "\x00")
	if len(vars) != 2 || !strings.HasPrefix(vars[0], "GOMAXPROCS=") || vars[1] != "TZ=" {
		t.Errorf("environment %q", vars)
	}
	for l, f := range nsFiles {
		mine, _ := os.Readlink("/proc/self/ns/" + f)
		theirs, _ := os.Readlink("/proc/" + pid + "/ns/" + f)
		if mine == theirs || theirs == "" {
			t.Errorf("%s: sandbox shares the host's namespace %s", l, theirs)
		}
	}
	stat, _ := os.ReadFile("/proc/" + pid + "/stat")
	if f := strings.Fields(string(stat)[strings.LastIndexByte(string(stat), ')')+2:]); len(f) < 4 || f[2] != pid || f[3] != pid {
		t.Errorf("not a session and process group leader: %v", f[:4])
	}
	status, _ := os.ReadFile("/proc/" + pid + "/status")
	if !strings.Contains(string(status), "NSpid:\t"+pid+"\t1\n") {
		t.Errorf("not pid 1 of its own pid namespace")
	}
	uidmap, _ := os.ReadFile("/proc/" + pid + "/uid_map")
	if f := strings.Fields(string(uidmap)); len(f) != 3 || f[0] != "65534" || f[2] != "1" || (os.Geteuid() == 0 && f[1] != "65534") {
		t.Errorf("uid_map %q", uidmap)
	}
	netdev, _ := os.ReadFile("/proc/" + pid + "/net/dev")
	if lines := strings.Split(strings.TrimSpace(string(netdev)), "\n"); len(lines) != 3 || !strings.HasPrefix(strings.TrimSpace(lines[2]), "lo:") {
		t.Errorf("network devices:\n%s", netdev)
	}
	mounts, _ := os.ReadFile("/proc/" + pid + "/mounts")
	if lines := strings.Split(strings.TrimSpace(string(mounts)), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "cordon / tmpfs ro,") {
		t.Errorf("mounts:\n%s", mounts)
	}
	t.Logf("mounts: %s", strings.TrimSpace(string(mounts)))
	limits, _ := os.ReadFile("/proc/" + pid + "/limits")
	for _, w := range []string{"Max core file size        0 ", "Max open files            64 "} {
		if !strings.Contains(string(limits), w) {
			t.Errorf("limits lack %q:\n%s", w, limits)
		}
	}
}

// dirEntryName gives an fd number the Name method the fd checks use.
type dirEntryName string

func (n dirEntryName) Name() string { return string(n) }

// sandboxFds reads a live sandbox's fd table from the host: fd -> what
// /proc/<pid>/fd/<fd> links to. A privileged host reads /proc/<pid>/fd. An
// unprivileged one cannot (the sandbox is not dumpable, so the kernel makes
// its /proc/<pid>/fd root's); as the owner of the sandbox's user namespace
// it may still duplicate each of its fds (pidfd_getfd, over the whole fd
// table: FDSize in /proc/<pid>/status) and look at the copy.
func sandboxFds(t *testing.T, pid int) (map[int]string, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err == nil {
		fds := map[int]string{}
		for _, e := range ents {
			fd, _ := strconv.Atoi(e.Name())
			if fds[fd], err = os.Readlink(dir + "/" + e.Name()); err != nil {
				return nil, err
			}
		}
		return fds, nil
	}
	if !errors.Is(err, os.ErrPermission) || !getAvailability().rootless {
		return nil, err
	}
	t.Logf("%v (the sandbox is not dumpable); reading its fd table with pidfd_getfd", err)
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	size := 0
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "FDSize:"); ok {
			size, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if size <= 0 {
		return nil, errors.New("no FDSize in /proc/<pid>/status")
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(pidfd)
	fds := map[int]string{}
	for fd := 0; fd < size; fd++ {
		c, err := unix.PidfdGetfd(pidfd, fd, 0)
		if errors.Is(err, unix.EBADF) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("pidfd_getfd %d: %w", fd, err)
		}
		fds[fd], err = os.Readlink("/proc/self/fd/" + strconv.Itoa(c))
		unix.Close(c)
		if err != nil {
			return nil, err
		}
	}
	return fds, nil
}

// sandboxEnviron reads a live sandbox's environment block from the host:
// /proc/<pid>/environ, or for an unprivileged host (to which that file is
// root's, as above) the same bytes with process_vm_readv between env_start
// and env_end of /proc/<pid>/stat.
func sandboxEnviron(t *testing.T, pid int) ([]byte, error) {
	file := "/proc/" + strconv.Itoa(pid) + "/environ"
	env, err := os.ReadFile(file)
	if err == nil || !errors.Is(err, os.ErrPermission) || !getAvailability().rootless {
		return env, err
	}
	t.Logf("%v (the sandbox is not dumpable); reading its environment with process_vm_readv", err)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+2:]) // f[0] is field 3
	if len(f) < 51-2 {
		return nil, fmt.Errorf("short stat: %d fields", len(f))
	}
	start, _ := strconv.ParseUint(f[50-3], 10, 64)
	end, _ := strconv.ParseUint(f[51-3], 10, 64)
	if start == 0 || end <= start || end-start > 1<<20 {
		return nil, fmt.Errorf("env_start %#x env_end %#x", start, end)
	}
	env = make([]byte, end-start)
	n, err := unix.ProcessVMReadv(pid, []unix.Iovec{{Base: &env[0], Len: uint64(len(env))}},
		[]unix.RemoteIovec{{Base: uintptr(start), Len: len(env)}}, 0)
	if err != nil {
		return nil, fmt.Errorf("process_vm_readv: %w", err)
	}
	return env[:n], nil
}

// absPath resolves p as /proc/<pid>/fd links show it: absolute, with
// symbolic links followed.
func absPath(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := filepath.EvalSymlinks(a); err == nil {
		return r
	}
	return a
}

func TestCgroupLimitsAndRemoval(t *testing.T) {
	needCgroup(t)
	p := startT(t, Spec{Args: []string{"echo"}, MemoryBytes: 300 << 20, Pids: 40, CPUPercent: 50, Strict: true})
	roundTrip(t, p, "x")
	read := func(dir, file string) string {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	pid := strconv.Itoa(p.Pid())
	if p.cg.version == cgroupV1 {
		mem, pids, cpu := p.cg.dirs[0], p.cg.dirs[1], p.cg.dirs[2]
		if got := read(mem, "memory.limit_in_bytes"); got != strconv.Itoa(300<<20) {
			t.Errorf("memory limit %s", got)
		}
		if got := read(pids, "pids.max"); got != "40" {
			t.Errorf("pids.max %s", got)
		}
		if got := read(cpu, "cpu.cfs_quota_us"); got != "50000" {
			t.Errorf("cpu quota %s", got)
		}
		for _, d := range p.cg.dirs {
			if got := read(d, "cgroup.procs"); got != pid {
				t.Errorf("%s: procs %q, want %s", d, got, pid)
			}
		}
	} else {
		d := p.cg.dirs[0]
		if got := read(d, "memory.max"); got != strconv.Itoa(300<<20) {
			t.Errorf("memory.max %s", got)
		}
		if got := read(d, "pids.max"); got != "40" {
			t.Errorf("pids.max %s", got)
		}
		if got := read(d, "cgroup.procs"); got != pid {
			t.Errorf("procs %q", got)
		}
	}
	p.Kill()
	st := p.Wait()
	if !errors.Is(st.Err, ErrKilled) || st.Signal != syscall.SIGKILL {
		t.Fatalf("exit %+v", st)
	}
	checkCgroupGone(t, p)
}

func TestMemoryBomb(t *testing.T) {
	needCgroup(t)
	p := startT(t, Spec{Args: []string{"membomb", "1024"}, MemoryBytes: 128 << 20, Strict: true})
	if got := recvT(t, p); got != "allocating" {
		t.Fatal(got)
	}
	st := p.Wait()
	if !errors.Is(st.Err, ErrOutOfMemory) || st.Signal != syscall.SIGKILL {
		t.Fatalf("want an OOM kill, got %+v", st)
	}
	checkCgroupGone(t, p)
}

func TestCrashAndHang(t *testing.T) {
	t.Run("crash", func(t *testing.T) {
		p := startT(t, Spec{Args: []string{"crash"}, Strict: true, Stderr: func(string) {}})
		recvT(t, p)
		st := p.Wait()
		if st.Code != 2 || st.Err == nil {
			t.Fatalf("exit %+v", st)
		}
		checkCgroupGone(t, p)
	})
	t.Run("hang", func(t *testing.T) {
		p := startT(t, Spec{Args: []string{"hang"}, Strict: true})
		recvT(t, p)
		select {
		case <-p.Done():
			t.Fatal("exited")
		case <-time.After(100 * time.Millisecond):
		}
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := p.Kill(); err != nil { // idempotent
			t.Fatal(err)
		}
		done := make(chan ExitStatus, 2)
		go func() { done <- p.Wait() }()
		go func() { done <- p.Wait() }()
		for i := 0; i < 2; i++ {
			if st := <-done; st.Signal != syscall.SIGKILL || !errors.Is(st.Err, ErrKilled) {
				t.Fatalf("exit %+v", st)
			}
		}
		checkCgroupGone(t, p)
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestCPULimit(t *testing.T) {
	needCgroup(t)
	p := startT(t, Spec{Args: []string{"spin"}, CPUPercent: 10, Strict: true})
	recvT(t, p)
	cpu := func() time.Duration {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid()) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		u, _ := strconv.Atoi(f[11])
		st, _ := strconv.Atoi(f[12])
		return time.Duration(u+st) * 10 * time.Millisecond
	}
	c0, t0 := cpu(), time.Now()
	time.Sleep(time.Second)
	used, wall := cpu()-c0, time.Since(t0)
	t.Logf("%v of CPU in %v of wall time with a 10%% quota", used, wall)
	if used > wall*25/100 {
		t.Fatalf("quota not enforced: %v in %v", used, wall)
	}
}

func TestStderrLabelledAndRateLimited(t *testing.T) {
	const flooded = 5001 // "flood 5000" writes 5000 lines and one long one
	var (
		mu    sync.Mutex
		lines []string
	)
	t0 := time.Now()
	p := startT(t, Spec{Args: []string{"flood", "5000"}, Strict: true, Stderr: func(l string) {
		mu.Lock()
		lines = append(lines, l)
		mu.Unlock()
	}})
	recvT(t, p)
	p.Kill()
	p.Wait()
	// The reader may still be draining the pipe: wait until every line the
	// sandbox wrote is accounted for, delivered or reported dropped.
	var delivered []string
	dropped := 0
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		delivered, dropped = account(t, lines)
		mu.Unlock()
		if len(delivered)+dropped >= flooded || time.Now().After(deadline) {
			break
		}
	}
	elapsed := time.Since(t0)
	if got := len(delivered) + dropped; got != flooded {
		t.Fatalf("%d delivered + %d reported dropped = %d, want %d", len(delivered), dropped, got, flooded)
	}
	// The budget, however slowly this machine ran: the burst plus what the
	// bucket can have refilled while the test ran.
	if limit := logBurst + int(elapsed.Seconds()*logRate) + 1; len(delivered) > limit || len(delivered) < 10 {
		t.Fatalf("%d lines delivered in %v (budget %d)", len(delivered), elapsed, limit)
	}
	if delivered[0] != `line 0 \x1b[31mred\x1b[0m` {
		t.Errorf("first line %q: missing, or control characters not escaped", delivered[0])
	}
	// Dropped lines are reported before the next line delivered, or at the
	// end: the accounting above found them all in reports.
	if dropped == 0 {
		t.Errorf("a flood of %d lines with none reported dropped", flooded)
	}
	t.Logf("%d lines delivered, %d dropped, in %v", len(delivered), dropped, elapsed)
}

func TestStrictMode(t *testing.T) {
	o := startOpts{unavailable: []Layer{LayerLandlock, LayerCgroup}}
	_, err := start(context.Background(), Spec{Label: "strict", Args: []string{"echo"}, Strict: true}, o)
	if err == nil || !strings.Contains(err.Error(), "landlock") || !strings.Contains(err.Error(), "cgroup") {
		t.Fatalf("strict start with missing layers: %v", err)
	}
	_, err = start(context.Background(), Spec{Label: "strict", Args: []string{"echo"}, Strict: true, AllowMissing: []Layer{LayerLandlock}}, o)
	if err == nil || strings.Contains(err.Error(), "landlock:") || !strings.Contains(err.Error(), "cgroup") {
		t.Fatalf("strict start allowing landlock only: %v", err)
	}
	p, err := start(context.Background(), Spec{Label: "strict", Args: []string{"echo"}, Strict: true,
		AllowMissing: []Layer{LayerLandlock, LayerCgroup}}, o)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Kill(); p.Wait() }()
	roundTrip(t, p, "x")
	ls := p.Layers()
	if ls[LayerLandlock].Applied || ls[LayerCgroup].Applied || !ls[LayerSeccomp].Applied || !ls[LayerPivotRoot].Applied {
		t.Fatalf("layers %+v", ls)
	}
	if _, err := ParseLayers("cgroup, landlock"); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseLayers("cgroup,bogus"); err == nil {
		t.Fatal("unknown layer accepted")
	}
}

func TestStartCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Start(ctx, Spec{Label: "cancelled", Args: []string{"echo"}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled start: %v", err)
	}
	// A binary that never reports ready: bounded by the deadline.
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := Start(ctx, Spec{Label: "never-ready", Binary: "/bin/sleep", Args: []string{"10"}})
	if err == nil || time.Since(t0) > 5*time.Second {
		t.Fatalf("start of a binary that is not a sandbox: %v after %v", err, time.Since(t0))
	}
	t.Log(err)
}

func TestDoctor(t *testing.T) {
	r := Doctor()
	t.Logf("kernel %s rootless=%v", r.Kernel, r.Rootless)
	for _, l := range r.Layers {
		t.Logf("%-13s %-5v %s", l.Layer, l.Available, l.Detail)
	}
	if len(r.Layers) != len(AllLayers) {
		t.Fatalf("%d layers", len(r.Layers))
	}
	if os.Geteuid() == 0 && len(r.Missing()) != 0 {
		t.Errorf("missing as root: %v", r.Missing())
	}
	// The cgroup entry follows this kernel's RCU settings, when there is a
	// cgroup to join.
	want := !slices.Contains(r.Missing(), LayerCgroup) &&
		sysctl("/sys/kernel/rcu_expedited") == "1" && sysctl("/sys/kernel/rcu_normal") != "1"
	if r.CgroupEntry.Expedited != want || r.CgroupEntry.Detail == "" {
		t.Errorf("cgroup entry %+v, want expedited=%v", r.CgroupEntry, want)
	}
}

// TestCgroupEntry: what doctor says about a sandbox's cgroup attach for
// each RCU setting (rcu_normal overrides rcu_expedited, as in the kernel).
func TestCgroupEntry(t *testing.T) {
	for _, c := range []struct {
		cgroup            bool
		expedited, normal string
		wantExpedited     bool
		wantDetail        string
	}{
		{false, "1", "0", false, "no cgroup layer"},
		{true, "0", "0", false, "echo 1 > /sys/kernel/rcu_expedited"},
		{true, "1", "0", true, "expedited RCU grace period"},
		{true, "1", "1", false, "rcu_normal is 1"},
		{true, "", "", false, "unreadable"},
	} {
		got := cgroupEntry(c.cgroup, c.expedited, c.normal)
		if got.Expedited != c.wantExpedited || !strings.Contains(got.Detail, c.wantDetail) {
			t.Errorf("cgroupEntry(%v, %q, %q) = %+v, want expedited=%v and %q", c.cgroup, c.expedited, c.normal, got, c.wantExpedited, c.wantDetail)
		}
	}
}

// BenchmarkStart measures spawn-to-ready: from Start's call until it returns
// a fully confined sandbox that has reported ready (every layer, verified).
// Tearing the sandbox down is not timed.
func BenchmarkStart(b *testing.B) {
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, c := range []struct {
		name   string
		strict bool
		o      startOpts
	}{
		{"all-layers", true, startOpts{}},
		{"no-cgroup", false, startOpts{unavailable: []Layer{LayerCgroup}}},
		{"no-netns", false, startOpts{unavailable: []Layer{LayerNetNS}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var total time.Duration
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				p, err := start(context.Background(), Spec{Label: "bench", Args: []string{"echo"}, Strict: c.strict}, c.o)
				if err != nil {
					b.Fatal(err)
				}
				total += time.Since(t0)
				b.StopTimer()
				p.Kill()
				p.Wait()
				p.Conn().Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms/ready")
		})
	}
}

// TestRootWithoutUserNS: a root host on a kernel without user namespaces
// still confines (the child drops to 65534 itself after building its root).
func TestRootWithoutUserNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	reply, st := attackResult(t, "identity", Spec{}, startOpts{unavailable: []Layer{LayerUserNS, LayerSeccomp}})
	t.Log(reply)
	for _, w := range []string{"host=cordon ", "pid=1 ", "uid=65534 ", "gid=65534 ", "caps=0,0,0 ", "nnp=1 "} {
		if !strings.Contains(reply, w) {
			t.Errorf("identity lacks %q (exit %+v)", w, st)
		}
	}
	reply, st = attackResult(t, "socket_inet", Spec{}, startOpts{unavailable: []Layer{LayerUserNS}})
	if reply != "" || st.SeccompSyscall != "socket" {
		t.Errorf("socket: %q %+v", reply, st)
	}
	reply, _ = attackResult(t, "read_passwd", Spec{}, startOpts{unavailable: []Layer{LayerUserNS, LayerSeccomp}})
	if !strings.HasPrefix(reply, "failed: ENOENT") {
		t.Errorf("read_passwd: %q", reply)
	}
}

// TestDying: Start accepts a sandbox it cannot verify only if it is on its
// way out (killed, exiting or a zombie), never a live one.
func TestDying(t *testing.T) {
	cmd := exec.Command("/bin/sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	if dying(cmd.Process.Pid) {
		t.Fatal("a live process reported dying")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !dying(cmd.Process.Pid) { // not reaped yet: a zombie
		if time.Now().After(deadline) {
			t.Fatal("a killed process never reported dying")
		}
		time.Sleep(time.Millisecond)
	}
}
