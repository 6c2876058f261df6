package sandbox

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func startT(t testing.TB, s Spec) *Process {
	t.Helper()
	if s.Label == "" {
		s.Label = "test"
	}
	if s.Stderr == nil {
		s.Stderr = func(line string) { t.Logf("sandbox stderr: %s", line) }
	}
	s, why := rootlessSpec(s)
	if why != "" {
		t.Log(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := Start(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(); p.Wait(); p.Conn().Close() })
	checkRootlessLayers(t, p, nil)
	return p
}

func roundTrip(t testing.TB, p *Process, msg string) string {
	t.Helper()
	if _, err := p.Conn().Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = p.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1<<16)
	n, err := p.Conn().Read(b)
	if err != nil {
		t.Fatalf("read: %v (status %+v)", err, p.exitNow())
	}
	return string(b[:n])
}

// exitNow returns the exit status if the process has exited.
func (p *Process) exitNow() any {
	select {
	case <-p.done:
		return p.status
	case <-time.After(200 * time.Millisecond):
		return "running"
	}
}

func TestStartEcho(t *testing.T) {
	p := startT(t, Spec{Args: []string{"echo"}})
	for l, st := range p.Layers() {
		t.Logf("%-13s %v %s", l, st.Applied, st.Detail)
	}
	if got := roundTrip(t, p, "hello"); got != "hello" {
		t.Fatalf("echo: %q", got)
	}
	p.Conn().Close()
	st := p.Wait()
	t.Logf("exit: %+v", st)
	if st.Code != 0 || st.Err != nil {
		t.Fatalf("exit %+v", st)
	}
}

// TestStartCgroupFailureAfterClone: when the cgroup attach of a child
// cloned outside its cgroup (the spawner's clones) fails, Start fails, and
// the child — which by then may be running its C constructor — is killed
// and reaped, and its cgroup removed: nothing leaks.
func TestStartCgroupFailureAfterClone(t *testing.T) {
	s, why := rootlessSpec(Spec{Label: "attachfail", Args: []string{"echo"}})
	if why != "" {
		t.Log(why)
	}
	if !getAvailability().layers[LayerCgroup] {
		t.Skip("no cgroup on this host: there is no attach to fail")
	}
	pid := 0
	var dirs []string
	injected := errors.New("injected attach failure")
	o := startOpts{attach: func(p int, cg *cgroup) error {
		pid, dirs = p, append([]string(nil), cg.dirs...)
		return injected
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := start(ctx, s, o)
	if err == nil {
		p.Kill()
		p.Wait()
		p.Conn().Close()
		t.Fatal("Start succeeded although the cgroup attach failed")
	}
	if !errors.Is(err, injected) {
		t.Fatalf("Start: %v, want the attach failure", err)
	}
	t.Logf("Start: %v", err)
	if pid <= 0 || len(dirs) == 0 {
		t.Fatalf("the attach hook did not run (pid %d, dirs %q)", pid, dirs)
	}
	// Reaped: no longer a child of ours (not even a zombie).
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); !errors.Is(err, unix.ECHILD) {
		t.Fatalf("child %d not reaped: waitid = %v", pid, err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("cgroup %s left behind: %v", d, err)
		}
	}
}
