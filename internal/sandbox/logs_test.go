package sandbox

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand, so the limiter's decisions
// do not depend on how fast this machine runs.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

var dropReport = regexp.MustCompile(`^\[(\d+) lines dropped: rate limit\]$`)

// account splits delivered lines into canister lines and the number of
// lines the drop reports say were dropped.
func account(t testing.TB, out []string) (lines []string, dropped int) {
	t.Helper()
	for _, l := range out {
		if m := dropReport.FindStringSubmatch(l); m != nil {
			n, _ := strconv.Atoi(m[1])
			dropped += n
			continue
		}
		lines = append(lines, l)
	}
	return lines, dropped
}

func TestLogLimiterBudget(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	var out []string
	g := newLogLimiter(func(s string) { out = append(out, s) }, clk.now)

	var flood strings.Builder
	for i := range 5000 {
		fmt.Fprintf(&flood, "line %d\n", i)
	}
	b := []byte(flood.String())
	// Fed in odd-sized chunks, so lines straddle chunk boundaries.
	for len(b) > 0 {
		n := min(len(b), 777)
		g.write(b[:n])
		b = b[n:]
	}
	lines, dropped := account(t, out)
	if len(lines) != logBurst {
		t.Fatalf("%d lines delivered with no time passing, want the burst %d", len(lines), logBurst)
	}
	if dropped != 0 {
		t.Fatalf("%d drops reported before any later line was delivered or the stream ended", dropped)
	}
	for i, l := range lines {
		if want := fmt.Sprintf("line %d", i); l != want {
			t.Fatalf("line %d is %q, want %q", i, l, want)
		}
	}
	if g.wait() <= 0 {
		t.Fatal("an empty bucket asks for no wait")
	}

	// One second later logRate more lines get through.
	clk.advance(time.Second)
	for i := range 2 * logRate {
		fmt.Fprintf(&flood, "later %d\n", i)
		g.write([]byte(fmt.Sprintf("later %d\n", i)))
	}
	g.close()
	lines, dropped = account(t, out)
	if want := logBurst + logRate; len(lines) != want {
		t.Fatalf("%d lines delivered after one second, want %d", len(lines), want)
	}
	if total := len(lines) + dropped; total != 5000+2*logRate {
		t.Fatalf("%d delivered + %d dropped = %d, want every one of %d lines accounted for", len(lines), dropped, total, 5000+2*logRate)
	}
	if !dropReport.MatchString(out[len(out)-1]) {
		t.Fatalf("the stream ends without a drop report: %q", out[len(out)-1])
	}
}

func TestLogLimiterLongLineAndEscapes(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	var out []string
	g := newLogLimiter(func(s string) { out = append(out, s) }, clk.now)
	g.write([]byte("a\x1b[31mred\x00\r\n"))
	g.write([]byte("bad \xff utf8\n"))
	// A 10 MiB line without a newline: held to maxLogLine bytes.
	chunk := []byte(strings.Repeat("y", 64<<10))
	for range 160 {
		g.write(chunk)
	}
	if cap(g.line) > maxLogLine {
		t.Fatalf("a long line grew the buffer to %d bytes", cap(g.line))
	}
	g.write([]byte("tail\nno newline at the end"))
	g.close()
	want := []string{
		`a\x1b[31mred\x00`,
		`bad \xff utf8`,
		strings.Repeat("y", maxLogLine) + "…[truncated]",
		"no newline at the end",
	}
	if len(out) != len(want) {
		t.Fatalf("got %d lines %q, want %d", len(out), out, len(want))
	}
	for i := range want {
		if out[i] != want[i] {
			t.Errorf("line %d: got %.60q, want %.60q", i, out[i], want[i])
		}
	}
}

func init() {
	// floodforever: write stderr lines as fast as possible until killed.
	scenarios["floodforever"] = func(c *child) int {
		c.send("flooding")
		line := []byte("flood \x1b[31mred\x1b[0m " + strings.Repeat("z", 40) + "\n")
		for {
			if _, err := os.Stderr.Write(line); err != nil {
				return 1
			}
		}
	}
}

// BenchmarkLogFloodHostCPU measures what a sandbox that floods its stderr as
// fast as it can costs the host: the host process's CPU time (user+system,
// every thread) per second of wall time, in percent of one core, and how many
// lines the host read (delivered or dropped) per second.
func BenchmarkLogFloodHostCPU(b *testing.B) {
	var mu sync.Mutex
	lines := 0
	p := startT(b, Spec{Args: []string{"floodforever"}, Strict: true, Stderr: func(l string) {
		n := 1
		if m := dropReport.FindStringSubmatch(l); m != nil {
			n, _ = strconv.Atoi(m[1])
		}
		mu.Lock()
		lines += n
		mu.Unlock()
	}})
	defer func() { p.Kill(); p.Wait() }()
	recvT(b, p)
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	mu.Lock()
	l0 := lines
	mu.Unlock()
	c0, t0 := cpu(), time.Now()
	b.ResetTimer()
	for range b.N {
		time.Sleep(100 * time.Millisecond)
	}
	used, wall := cpu()-c0, time.Since(t0)
	mu.Lock()
	read := lines - l0
	mu.Unlock()
	b.ReportMetric(100*used.Seconds()/wall.Seconds(), "host-%cpu")
	b.ReportMetric(float64(read)/wall.Seconds(), "lines/s")
}
