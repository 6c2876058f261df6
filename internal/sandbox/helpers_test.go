package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sandbox/attack"
)

// The test binary also runs as a host of its own ("helper"), for what needs
// another process: a host that dies (pdeathsig) and a host that is not root.
const helperEnv = "CORDON_SANDBOX_TEST_HELPER"

func helperMain(mode string) int {
	fail := func(format string, a ...any) int {
		fmt.Printf("FAIL "+format+"\n", a...)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch mode {
	case "int80":
		// Unconfined: does this kernel have the i386 entry at all?
		fmt.Printf("INT80 %d\n", attack.Int80(20))
		return 0
	case "pdeathsig":
		spec, why := rootlessSpec(Spec{Label: "orphan", Args: []string{"hang"}, Strict: true})
		if why != "" {
			fmt.Fprintln(os.Stderr, why)
		}
		p, err := Start(ctx, spec)
		if err != nil {
			return fail("%v", err)
		}
		fmt.Printf("PID %d\n", p.Pid())
		if p.cg != nil {
			fmt.Printf("CGROUP %s\n", p.cg.dirs[0])
		} else {
			fmt.Println("NOCGROUP") // an unprivileged host without a delegated hierarchy
		}
		select {} // until the test kills us
	case "spawner-pdeathsig":
		if err := StartSpawner(); err != nil {
			return fail("%v", err)
		}
		spec, _ := rootlessSpec(Spec{Label: "orphan", Args: []string{"hang"}, Strict: true})
		p, err := Start(ctx, spec)
		if err != nil {
			return fail("%v", err)
		}
		theSpawner.mu.Lock()
		sp := theSpawner.proc.Pid
		theSpawner.mu.Unlock()
		fmt.Printf("PID %d\nSPAWNER %d\n", p.Pid(), sp)
		select {} // until the test kills us
	case "rootless":
		r := Doctor()
		fmt.Printf("INFO uid=%d rootless=%v missing=%v\n", os.Getuid(), r.Rootless, r.Missing())
		if !r.Rootless {
			return fail("not rootless")
		}
		_, err := Start(ctx, Spec{Label: "rootless", Args: []string{"echo"}, Strict: true})
		if err == nil || !strings.Contains(err.Error(), "cgroup") {
			return fail("strict start without the cgroup layer: %v", err)
		}
		fmt.Printf("INFO strict refused: %v\n", err)
		p, err := Start(ctx, Spec{Label: "rootless", Args: []string{"echo"}, Strict: true, AllowMissing: []Layer{LayerCgroup}})
		if err != nil {
			return fail("%v", err)
		}
		if _, err := p.Conn().Write([]byte("ping")); err != nil {
			return fail("%v", err)
		}
		b := make([]byte, 16)
		if n, err := p.Conn().Read(b); err != nil || string(b[:n]) != "ping" {
			return fail("echo: %q %v", b[:n], err)
		}
		for l, st := range p.Layers() {
			if !st.Applied && l != LayerCgroup {
				return fail("layer %s not applied: %s", l, st.Detail)
			}
		}
		threads, err := ReadThreads(p.Pid())
		if err != nil {
			return fail("%v", err)
		}
		for _, t := range threads {
			if t.CapEff|t.CapPrm|t.CapBnd|t.CapAmb|t.CapInh != 0 || t.NoNewPrivs != 1 || t.Seccomp != 2 {
				return fail("thread %+v", t)
			}
		}
		fmt.Printf("INFO %d threads confined\n", len(threads))
		p.Kill()
		p.Wait()
		// A violation is still caught and named by an unprivileged host.
		q, err := Start(ctx, Spec{Label: "rootless", Args: []string{"attack", "socket_inet", "0", "0", ""}, Strict: true, AllowMissing: []Layer{LayerCgroup}})
		if err != nil {
			return fail("%v", err)
		}
		if st := q.Wait(); st.SeccompSyscall != "socket" {
			return fail("socket attack: %+v", st)
		}
		// Without a pids cgroup, RLIMIT_NPROC (per user namespace) bounds threads.
		q, err = Start(ctx, Spec{Label: "rootless", Args: []string{"attack", "thread_bomb", "0", "0", ""}, Pids: 32, Strict: true, AllowMissing: []Layer{LayerCgroup}})
		if err != nil {
			return fail("%v", err)
		}
		b = make([]byte, 256)
		n, err := q.Conn().Read(b)
		reply := ""
		if err == nil {
			reply = string(b[:n])
		}
		q.Kill()
		q.Wait()
		if !strings.HasPrefix(reply, "failed: EAGAIN") {
			return fail("thread bomb: %q", reply)
		}
		fmt.Printf("INFO thread bomb: %s\n", reply)
		fmt.Println("OK")
		return 0
	}
	return fail("unknown helper %q", mode)
}

// helper starts the test binary in a helper mode.
func helper(t *testing.T, mode string, cred *syscall.Credential, binary string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	if binary == "" {
		binary = os.Args[0]
	}
	cmd := exec.Command(binary, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	// Pdeathsig: a helper (and so its sandboxes) never outlives the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, bufio.NewReader(out)
}

// TestParentDeathKillsSandbox: a host that dies takes its sandboxes with it.
func TestParentDeathKillsSandbox(t *testing.T) {
	cmd, out := helper(t, "pdeathsig", nil, "")
	line, err := out.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "PID ") {
		t.Fatalf("helper: %q %v", line, err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "PID ")))
	cgLine, _ := out.ReadString('\n')
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		t.Fatalf("sandbox not running: %v", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err == nil {
			s := string(b)
			if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 0 && (f[0] == "Z" || f[0] == "X") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %d survived its host", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Its cgroup is left behind by the dead host; the next host sweeps it.
	if strings.TrimSpace(cgLine) == "NOCGROUP" {
		t.Log("the sandbox had no cgroup (unprivileged host): nothing to sweep")
	}
	if dir, ok := strings.CutPrefix(strings.TrimSpace(cgLine), "CGROUP "); ok {
		av := getAvailability()
		for i := 0; i < 100; i++ {
			av.cgroups.sweep()
			if _, err := os.Stat(dir); os.IsNotExist(err) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("stale cgroup %s not swept", dir)
		}
	}
}

// TestRootless runs a host as uid 65534 (no capabilities, user namespaces
// only): strict mode refuses without the cgroup layer, allowing it starts a
// sandbox with every other layer.
func TestRootless(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to an unprivileged user")
	}
	// The binary must be reachable by uid 65534.
	_, bin := copyTestBinary(t)
	cmd, out := helper(t, "rootless", &syscall.Credential{Uid: 65534, Gid: 65534}, bin)
	ok := false
	for {
		line, err := out.ReadString('\n')
		if line != "" {
			t.Log(strings.TrimSpace(line))
		}
		if strings.HasPrefix(line, "OK") {
			ok = true
		}
		if err != nil {
			break
		}
	}
	if err := cmd.Wait(); err != nil || !ok {
		t.Fatalf("rootless helper: %v", err)
	}
}

// kernelHasI386Entry reports whether this kernel takes i386 system calls
// (int $0x80) at all: a kernel built without IA32 emulation, or booted with
// ia32_emulation=0, answers the instruction with SIGSEGV before any
// seccomp filter sees a system call. Probed once, unconfined.
var kernelHasI386Entry = sync.OnceValues(func() (bool, string) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=int80")
	out, err := cmd.CombinedOutput()
	if err == nil && strings.HasPrefix(string(out), "INT80 ") {
		return true, ""
	}
	return false, fmt.Sprintf("int $0x80 outside any sandbox: %v: %.200s", err, out)
})
