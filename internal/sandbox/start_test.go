package sandbox

import (
	"context"
	"testing"
	"time"
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
