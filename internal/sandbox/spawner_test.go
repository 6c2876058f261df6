package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// BenchmarkStartHostMemory: a sandbox's Start while the host holds 0, 512
// MiB and 1 GiB of touched anonymous memory, cloned by the host itself
// ("direct", the cost grows with the host's page table) and through the
// spawner (the default).
func BenchmarkStartHostMemory(b *testing.B) {
	for _, mib := range []int{0, 512, 1024} {
		for _, via := range []string{"direct", "spawner"} {
			b.Run(fmt.Sprintf("host=%dMiB/%s", mib, via), func(b *testing.B) {
				hold := make([]byte, mib<<20)
				for i := 0; i < len(hold); i += os.Getpagesize() {
					hold[i] = 1
				}
				prev := useSpawner
				useSpawner = via == "spawner"
				defer func() { useSpawner = prev }()
				if useSpawner {
					if err := StartSpawner(); err != nil {
						b.Fatal(err)
					}
				}
				s, _ := rootlessSpec(Spec{Label: "bench", Args: []string{"echo"}})
				var total time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t0 := time.Now()
					p, err := Start(context.Background(), s)
					total += time.Since(t0)
					if err != nil {
						b.Fatal(err)
					}
					p.Kill()
					p.Wait()
					p.Conn().Close()
				}
				b.StopTimer()
				b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/start")
				runtime.KeepAlive(hold)
			})
		}
	}
}

// spawnerNow returns the running spawner's process and death channel.
func spawnerNow(t *testing.T) (*os.Process, chan struct{}, uint64) {
	t.Helper()
	if err := StartSpawner(); err != nil {
		t.Fatal(err)
	}
	theSpawner.mu.Lock()
	defer theSpawner.mu.Unlock()
	return theSpawner.proc, theSpawner.dead, theSpawner.served
}

func procStatus(t *testing.T, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}

// The spawner clones the sandbox, which is the host's child (CLONE_PARENT)
// with every layer in place; the spawner holds nothing of the host: an
// empty environment and only its socket, its executable and stderr.
func TestSpawnerClonesHostChildren(t *testing.T) {
	sp, _, before := spawnerNow(t)
	p := startT(t, Spec{Args: []string{"echo"}})
	if got := roundTrip(t, p, "via spawner"); got != "via spawner" {
		t.Fatalf("echo: %q", got)
	}
	theSpawner.mu.Lock()
	after, cur := theSpawner.served, theSpawner.proc
	theSpawner.mu.Unlock()
	if cur != sp || after != before+1 {
		t.Fatalf("the sandbox was not cloned by the spawner (served %d -> %d)", before, after)
	}
	if ppid := procStatus(t, p.Pid(), "PPid"); ppid != strconv.Itoa(os.Getpid()) {
		t.Fatalf("sandbox's parent is %s, not the host %d", ppid, os.Getpid())
	}
	if ppid := procStatus(t, sp.Pid, "PPid"); ppid != strconv.Itoa(os.Getpid()) {
		t.Fatalf("spawner's parent is %s, not the host %d", ppid, os.Getpid())
	}
	env, err := os.ReadFile("/proc/" + strconv.Itoa(sp.Pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	if len(env) != 0 {
		t.Fatalf("spawner environment: %q", env)
	}
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(sp.Pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/" + strconv.Itoa(sp.Pid) + "/fd/" + e.Name())
		fds = append(fds, e.Name()+"="+l)
	}
	// stdin and stdout (closed: the Go runtime opens /dev/null there),
	// stderr, the socket, the sealed executable (if the memfd copy works)
	// and the Go runtime's own: the cgroup CPU limit files it re-reads
	// (GOMAXPROCS), its poller.
	for _, f := range fds {
		switch {
		case f == "0=/dev/null", f == "1=/dev/null", strings.HasPrefix(f, "2="), strings.HasPrefix(f, "3=socket:"),
			strings.Contains(f, "=/memfd:cordon-sandbox"), strings.Contains(f, "anon_inode:[eventpoll]"),
			strings.Contains(f, "anon_inode:[eventfd]"), strings.Contains(f, "=/sys/fs/cgroup/"):
		default:
			t.Errorf("spawner holds an unexpected descriptor %s (all: %v)", f, fds)
		}
	}
	t.Logf("spawner %d descriptors: %v; VmRSS %s", sp.Pid, fds, procStatus(t, sp.Pid, "VmRSS"))
}

// A spawner that died (killed, crashed) is noticed and replaced: the next
// Start works, through a new spawner, and the dead one was reaped.
func TestSpawnerRestartsAfterCrash(t *testing.T) {
	for _, noticed := range []bool{true, false} {
		t.Run(fmt.Sprintf("noticed=%v", noticed), func(t *testing.T) {
			old, dead, _ := spawnerNow(t)
			if err := old.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-dead // reaped by its waiter
			if !noticed {
				// As if it died just now: the host has not seen it
				// reaped, and finds out when its request fails.
				theSpawner.mu.Lock()
				theSpawner.dead = make(chan struct{})
				theSpawner.mu.Unlock()
			}
			p := startT(t, Spec{Args: []string{"echo"}})
			if got := roundTrip(t, p, "after crash"); got != "after crash" {
				t.Fatalf("echo: %q", got)
			}
			cur, _, _ := spawnerNow(t)
			if cur == old || cur.Pid == old.Pid {
				t.Fatalf("spawner %d was not replaced", old.Pid)
			}
			if err := cur.Signal(syscall.Signal(0)); err != nil {
				t.Fatalf("new spawner %d: %v", cur.Pid, err)
			}
		})
	}
}

// Requests the spawner must refuse, sent straight to its socket as a
// compromised or buggy caller would: each is answered with an error, no
// process is cloned, and the spawner keeps serving.
func TestSpawnerRefusesBadRequests(t *testing.T) {
	sp, _, _ := spawnerNow(t)
	children := hostChildren(t)
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	good := spawnRequest{Self: true, Argv: []string{"cordon-sandbox", confine.Marker, "x"}, Files: []int{-1, -1, 0}}
	dir := t.TempDir()
	garbage := writeExecutable(t, dir, "garbage", []byte("\x00not a program at all, but mode 0755"))
	script := writeExecutable(t, dir, "script", []byte("#!/bin/sh\nexit 0\n"))
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	self[18], self[19] = 0xff, 0x7f // e_machine: not this machine's
	foreign := writeExecutable(t, dir, "foreign", self)
	cases := map[string]struct {
		req    any
		rights []int
	}{
		"garbage":         {req: "not a request"},
		"no marker":       {req: mod(good, func(r *spawnRequest) { r.Self, r.Binary, r.Argv = false, "/bin/sh", []string{"sh", "-c", "id"} }), rights: []int{int(devnull.Fd())}},
		"relative binary": {req: mod(good, func(r *spawnRequest) { r.Self, r.Binary = false, "sh" }), rights: []int{int(devnull.Fd())}},
		"missing binary":  {req: mod(good, func(r *spawnRequest) { r.Self, r.Binary = false, "/nonexistent/cordon" }), rights: []int{int(devnull.Fd())}},
		// Executable files whose exec would fail after the clone, leaving
		// a zombie nobody knows the pid of: refused before cloning.
		"executable garbage":   {req: mod(good, func(r *spawnRequest) { r.Self, r.Binary = false, garbage }), rights: []int{int(devnull.Fd())}},
		"script":               {req: mod(good, func(r *spawnRequest) { r.Self, r.Binary = false, script }), rights: []int{int(devnull.Fd())}},
		"other architecture":   {req: mod(good, func(r *spawnRequest) { r.Self, r.Binary = false, foreign }), rights: []int{int(devnull.Fd())}},
		"CLONE_VM":             {req: mod(good, func(r *spawnRequest) { r.Cloneflags = unix.CLONE_VM }), rights: []int{int(devnull.Fd())}},
		"CLONE_NEWCGROUP only": {req: mod(good, func(r *spawnRequest) { r.Cloneflags = unix.CLONE_NEWCGROUP }), rights: []int{int(devnull.Fd())}},
		"ambient ptrace": {req: mod(good, func(r *spawnRequest) {
			r.Cloneflags, r.AmbientCaps = unix.CLONE_NEWUSER, []uintptr{unix.CAP_SYS_PTRACE}
		}), rights: []int{int(devnull.Fd())}},
		"setuid without userns": {req: mod(good, func(r *spawnRequest) { r.Credential = true }), rights: []int{int(devnull.Fd())}},
		"missing descriptor":    {req: good},
		"extra descriptor":      {req: good, rights: []int{int(devnull.Fd()), int(devnull.Fd())}},
		"out of range file":     {req: mod(good, func(r *spawnRequest) { r.Files = []int{5} }), rights: []int{int(devnull.Fd())}},
		// A sealed executable travels as the last descriptor: it must be
		// there, alone, and a memory file with every seal.
		"sealed and self":          {req: mod(good, func(r *spawnRequest) { r.Sealed = true }), rights: []int{int(devnull.Fd()), sealedExeFD(t)}},
		"sealed, no executable":    {req: mod(good, func(r *spawnRequest) { r.Self, r.Sealed = false, true }), rights: []int{int(devnull.Fd())}},
		"sealed, a plain file":     {req: mod(good, func(r *spawnRequest) { r.Self, r.Sealed = false, true }), rights: []int{int(devnull.Fd()), int(devnull.Fd())}},
		"sealed, an unsealed copy": {req: mod(good, func(r *spawnRequest) { r.Self, r.Sealed = false, true }), rights: []int{int(devnull.Fd()), unsealedMemfd(t)}},
	}
	for name, c := range cases {
		b, err := json.Marshal(c.req)
		if err != nil {
			t.Fatal(err)
		}
		rep := rawSpawnerRequest(t, b, c.rights)
		if rep.Err == "" || rep.Pid != 0 {
			t.Errorf("%s: spawner answered %+v", name, rep)
		} else {
			t.Logf("%s: refused: %s", name, rep.Err)
		}
	}
	cur, _, _ := spawnerNow(t)
	if cur != sp {
		t.Fatalf("the spawner did not survive the bad requests")
	}
	if now := hostChildren(t); !maps.Equal(now, children) {
		t.Errorf("the host's children changed: %v, then %v", children, now)
	}
	p := startT(t, Spec{Args: []string{"echo"}})
	if got := roundTrip(t, p, "still serving"); got != "still serving" {
		t.Fatalf("echo: %q", got)
	}
}

func writeExecutable(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// hostChildren lists the host's children, zombies included.
func hostChildren(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil || len(files) == 0 {
		t.Fatalf("no /proc/self/task/*/children: %v", err)
	}
	out := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that exited
		}
		for _, pid := range strings.Fields(string(b)) {
			out[pid] = true
		}
	}
	return out
}

func mod(r spawnRequest, f func(*spawnRequest)) spawnRequest {
	r.Argv = append([]string(nil), r.Argv...)
	r.Files = append([]int(nil), r.Files...)
	f(&r)
	return r
}

func rawSpawnerRequest(t *testing.T, b []byte, rights []int) spawnReply {
	t.Helper()
	c := &theSpawner
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ensure(); err != nil {
		t.Fatal(err)
	}
	var oob []byte
	if len(rights) > 0 {
		oob = unix.UnixRights(rights...)
	}
	_ = c.conn.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.conn.SetDeadline(time.Time{})
	if _, _, err := c.conn.WriteMsgUnix(b, oob, nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var rep spawnReply
	if err := json.Unmarshal(buf[:n], &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// A host that dies takes its spawner with it, and the sandbox the spawner
// cloned (whose parent is the host: CLONE_PARENT).
func TestSpawnerDiesWithHost(t *testing.T) {
	cmd, out := helper(t, "spawner-pdeathsig", nil, "")
	pids := map[string]int{}
	for _, key := range []string{"PID", "SPAWNER"} {
		line, err := out.ReadString('\n')
		v, ok := strings.CutPrefix(strings.TrimSpace(line), key+" ")
		if err != nil || !ok {
			t.Fatalf("helper: %q %v", line, err)
		}
		pids[key], _ = strconv.Atoi(v)
	}
	if ppid := procStatus(t, pids["PID"], "PPid"); ppid != strconv.Itoa(cmd.Process.Pid) {
		t.Fatalf("sandbox's parent is %s, not the helper host %d", ppid, cmd.Process.Pid)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	for what, pid := range pids {
		deadline := time.Now().Add(30 * time.Second)
		for !gone(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("%s %d survived its host", what, pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// gone: the process no longer runs (exited, a zombie, or reaped).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// On cgroup v2, Start sets CLONE_INTO_CGROUP; the spawner cannot honour it
// (clone3 refuses CLONE_PARENT with an exit signal), so it says so and the
// host attaches the child by pid before the go-ahead, as on v1. This
// machine's controllers are on v1, so the test mounts a cgroup2 hierarchy
// of its own (no controllers are needed to place a process) and checks
// both halves: the spawner reports the child outside the cgroup, and the
// host's join puts it there.
func TestSpawnerCgroupV2Attach(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a cgroup2 hierarchy")
	}
	root := t.TempDir()
	if err := unix.Mount("cgroup2", root, "cgroup2", 0, ""); err != nil {
		t.Skipf("no cgroup2 here: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	dir := filepath.Join(root, fmt.Sprintf("cordon-spawner-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(dir) })
	cgfd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cgfd)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	host, child := os.NewFile(uintptr(fds[0]), "host"), os.NewFile(uintptr(fds[1]), "child")
	defer host.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	// No layers: the worker waits for the go-ahead on fd 3, long enough
	// to be looked at.
	argv := []string{"cordon-sandbox", confine.Marker, confine.Config{NoFile: NoFileLimit}.Arg(), "hang"}
	attr := &os.ProcAttr{Dir: "/", Env: []string{}, Files: []*os.File{nil, nil, devnull, child},
		Sys: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: cgfd}}
	_, _, before := spawnerNow(t)
	p, inCgroup, err := spawnSandbox(runExe{path: selfExe(), fd: -1, self: true}, argv, attr, time.Now().Add(20*time.Second))
	child.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Kill(); _, _ = p.Wait() }()
	theSpawner.mu.Lock()
	served := theSpawner.served
	theSpawner.mu.Unlock()
	if served != before+1 {
		t.Fatalf("not cloned by the spawner (served %d -> %d)", before, served)
	}
	line := "0::/" + filepath.Base(dir) + "\n"
	in := func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.Pid))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(string(b), line)
	}
	if inCgroup || in() {
		t.Fatalf("the spawner claims CLONE_INTO_CGROUP (%v) or the child is in the cgroup already (%v)", inCgroup, in())
	}
	cg := &cgroup{version: cgroupV2, dirs: []string{dir}}
	if err := cg.join(p.Pid); err != nil {
		t.Fatal(err)
	}
	if !in() {
		t.Fatalf("after the join the sandbox is not in %s", dir)
	}
	if pids := cg.pids(); len(pids) != 1 || pids[0] != p.Pid {
		t.Fatalf("%s holds %v, want [%d]", dir, pids, p.Pid)
	}
}

// Concurrent Starts share the one spawner: each gets its own sandbox (the
// host's child, talking on its own socket).
func TestSpawnerConcurrentStarts(t *testing.T) {
	_, _, before := spawnerNow(t)
	const n = 6
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			s, _ := rootlessSpec(Spec{Label: "concurrent", Args: []string{"echo"}})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			p, err := Start(ctx, s)
			if err != nil {
				errs <- err
				return
			}
			defer func() { p.Kill(); p.Wait(); p.Conn().Close() }()
			msg := fmt.Sprintf("sandbox %d", i)
			if _, err := p.Conn().Write([]byte(msg)); err != nil {
				errs <- err
				return
			}
			_ = p.Conn().SetReadDeadline(time.Now().Add(30 * time.Second))
			b := make([]byte, 64)
			k, err := p.Conn().Read(b)
			if err != nil || string(b[:k]) != msg {
				errs <- fmt.Errorf("echo %q: %q %v", msg, b[:k], err)
				return
			}
			b, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
			if err != nil || !strings.Contains(string(b), fmt.Sprintf("\nPPid:\t%d\n", os.Getpid())) {
				errs <- fmt.Errorf("sandbox %d is not the host's child (%v)", p.Pid(), err)
				return
			}
			errs <- nil
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	theSpawner.mu.Lock()
	served := theSpawner.served
	theSpawner.mu.Unlock()
	if served != before+n {
		t.Fatalf("spawner served %d, want %d", served-before, n)
	}
}

// sealedExeFD is the host's sealed copy of its own executable.
func sealedExeFD(t *testing.T) int {
	t.Helper()
	p := selfExe()
	fd, err := strconv.Atoi(strings.TrimPrefix(p, "/proc/self/fd/"))
	if err != nil {
		t.Skipf("no sealed copy here: %s (%v)", p, exeErr)
	}
	return fd
}

// unsealedMemfd is an executable memory file of the host's executable's
// bytes that anyone holding it could still rewrite.
func unsealedMemfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	b, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(fd, b); err != nil {
		t.Fatal(err)
	}
	return fd
}
