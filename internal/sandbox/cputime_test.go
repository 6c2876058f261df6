package sandbox

import (
	"os"
	"strconv"
	"testing"
	"time"
)

func init() {
	// spin: at the first message, start a thread that never stops
	// computing and say so; then wait for EOF.
	scenarios["spin"] = func(c *child) int {
		if c.recv() == "" {
			return 1
		}
		go func() {
			for i := uint64(0); ; i++ {
				spinSink = i
			}
		}()
		c.send("spinning")
		for c.recv() != "" {
		}
		return 0
	}
}

var spinSink uint64

// A sandbox's CPU time is read from its process CPU clock: to the
// nanosecond (the exec package charges a few milliseconds of it against a
// watchdog, where /proc's 10 ms ticks are all or nothing), at least what
// /proc said a moment before, and not at all once the process has been
// reaped (its pid may be another's then).
func TestCPUTimeOfASpinningSandbox(t *testing.T) {
	p := startT(t, Spec{Args: []string{"spin"}})
	defer func() { _ = p.Kill(); p.Wait() }()
	if got := roundTrip(t, p, "spin"); got != "spinning" {
		t.Fatalf("sandbox said %q", got)
	}
	start, err := p.CPUTime()
	if err != nil {
		t.Fatal(err)
	}
	var proc, d time.Duration
	for limit := time.Now().Add(time.Minute); d-start < 100*time.Millisecond; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(limit) {
			t.Fatalf("a spinning sandbox used %s of CPU in a minute", d-start)
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid()) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		if proc, err = parseStatCPU(string(b)); err != nil {
			t.Fatal(err)
		}
		if d, err = p.CPUTime(); err != nil {
			t.Fatal(err)
		}
		if d < proc {
			t.Fatalf("CPUTime %s, less than /proc's %s read before it", d, proc)
		}
	}
	// One chance in 10^7 that a nanosecond count falls on a tick.
	if d%clockTick == 0 {
		t.Fatalf("CPUTime %s is in /proc's 10 ms ticks", d)
	}
	_ = p.Kill()
	p.Wait()
	if d, err := p.CPUTime(); err == nil {
		t.Fatalf("CPUTime of a reaped sandbox: %s", d)
	}
}
