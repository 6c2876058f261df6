package sandbox

import (
	"errors"
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
	// The text of an escape, written by the sandbox: not the escape.
	g.write([]byte(`fake \x1b[31m \\x00 \` + "\n"))
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
		`fake \\x1b[31m \\\\x00 \\`,
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

// TestLogLimiterOutputBytes: escaping turns one byte into four; what the
// host delivers is bounded in output bytes, per line and per second.
func TestLogLimiterOutputBytes(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	var out []string
	g := newLogLimiter(func(s string) { out = append(out, s) }, clk.now)
	ctrl := []byte(strings.Repeat("\x01", maxLogLine) + "\n")
	short := []byte(strings.Repeat("\x01", maxLogOutput/4+1) + "\n") // within the input cut, over the output one
	const n = 1000
	for range n {
		g.write(ctrl)
		g.write(short)
	}
	lines, _ := account(t, out)
	if len(lines) == 0 {
		t.Fatal("nothing delivered")
	}
	bytes := 0
	for i, l := range lines {
		if len(l) > maxLogOutput+len(cutMark) {
			t.Fatalf("line %d is %d bytes, over %d plus the mark", i, len(l), maxLogOutput)
		}
		if !strings.HasSuffix(l, cutMark) || !strings.HasPrefix(l, `\x01\x01`) {
			t.Fatalf("line %d not marked as cut: %.40q…%.40q", i, l, l[max(0, len(l)-40):])
		}
		bytes += len(l)
	}
	if bytes > logByteBurst+maxLogOutput+len(cutMark) {
		t.Fatalf("%d bytes in %d lines delivered with no time passing, over the byte burst %d", bytes, len(lines), logByteBurst)
	}
	// One second later, about logByteRate more bytes.
	clk.advance(time.Second)
	before := bytes
	for range n {
		g.write(ctrl)
	}
	g.close()
	lines, dropped := account(t, out)
	bytes = 0
	for _, l := range lines {
		bytes += len(l)
	}
	if got := bytes - before; got > logByteRate+2*(maxLogOutput+len(cutMark)) {
		t.Fatalf("%d bytes delivered in the next second, over the rate %d", got, logByteRate)
	}
	if len(lines)+dropped != 3*n {
		t.Fatalf("%d delivered + %d dropped, want all %d lines accounted for", len(lines), dropped, 3*n)
	}
	// A line within both cuts is delivered whole, unmarked.
	out = out[:0]
	clk.advance(time.Hour)
	g = newLogLimiter(func(s string) { out = append(out, s) }, clk.now)
	g.write([]byte(strings.Repeat("\x01", maxLogOutput/4) + "\n"))
	if len(out) != 1 || len(out[0]) != maxLogOutput || strings.HasSuffix(out[0], cutMark) {
		t.Fatalf("a line escaping to exactly %d bytes: %d lines, %.40q", maxLogOutput, len(out), out)
	}
}

// TestLogLimiterNodeBudget: many sandboxes flooding at once share one
// node-wide budget; together they deliver no more than it allows, and every
// line is delivered or counted as dropped.
func TestLogLimiterNodeBudget(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	node := newNodeLogBudget(clk.now())
	const sandboxes = 256
	outs := make([][]string, sandboxes)
	gs := make([]*logLimiter, sandboxes)
	for i := range gs {
		gs[i] = newLogLimiter(func(s string) { outs[i] = append(outs[i], s) }, clk.now)
		gs[i].node = node
	}
	line := []byte(strings.Repeat("x", maxLogLine) + "\n")
	written := 0
	total := func() (lines, bytes int) {
		for i := range outs {
			ls, _ := account(t, outs[i])
			lines += len(ls)
			for _, l := range ls {
				bytes += len(l)
			}
		}
		return lines, bytes
	}
	const maxOut = maxLogOutput + len(cutMark)
	for step := 0; step <= 10; step++ {
		for _, g := range gs {
			for range 20 {
				g.write(line)
				written++
			}
			if d := g.wait(); d < 0 {
				t.Fatalf("negative wait %v", d)
			}
		}
		lines, bytes := total()
		// In step seconds: the burst plus step seconds of the rate (plus a
		// line of overshoot, as a line's size is known after the check).
		if max := nodeLogByteBurst + step*nodeLogByteRate + maxOut; bytes > max {
			t.Fatalf("after %d s: %d bytes delivered by %d sandboxes, over the node's %d", step, bytes, sandboxes, max)
		}
		if max := nodeLogBurst + step*nodeLogRate + 1; lines > max {
			t.Fatalf("after %d s: %d lines delivered, over the node's %d", step, lines, max)
		}
		clk.advance(time.Second)
	}
	for _, g := range gs {
		g.close()
	}
	lines, bytes := total()
	dropped := 0
	for i := range outs {
		_, d := account(t, outs[i])
		dropped += d
	}
	t.Logf("%d sandboxes: %d of %d lines (%d bytes) delivered in 10 s, %d dropped", sandboxes, lines, written, bytes, dropped)
	if lines+dropped != written {
		t.Fatalf("%d delivered + %d dropped = %d, want %d", lines, dropped, lines+dropped, written)
	}
	if lines < nodeLogByteBurst/maxOut {
		t.Fatalf("only %d lines delivered: the node budget starves everyone", lines)
	}
}

func init() {
	// log_flood_ctrl: stderr lines of maxLogLine control bytes (each
	// escaped to four bytes) for two seconds.
	attacks["log_flood_ctrl"] = func() error {
		line := []byte(strings.Repeat("\x01", maxLogLine) + "\n")
		end := time.Now().Add(2 * time.Second)
		for time.Now().Before(end) {
			if _, err := os.Stderr.Write(line); err != nil {
				return err
			}
		}
		return errors.New("flooded")
	}
}

// TestLogFloodControlChars: what a live sandbox writing escape-heavy lines
// puts into the host's log is bounded in bytes: no delivered line longer
// than the output cap, no more bytes than the sandbox's byte budget allows
// in the time it ran.
func TestLogFloodControlChars(t *testing.T) {
	var mu sync.Mutex
	var lines, bytes, longest int
	t0 := time.Now()
	reply, _ := liveAttack(t, "log_flood_ctrl", Spec{Strict: true, Stderr: func(l string) {
		mu.Lock()
		defer mu.Unlock()
		if dropReport.MatchString(l) {
			return
		}
		lines++
		bytes += len(l)
		longest = max(longest, len(l))
	}}, startOpts{}, nil)
	el := time.Since(t0)
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%q: %d lines, %d bytes delivered to the host's log in %v (%.0f KiB/s), longest %d bytes",
		reply, lines, bytes, el, float64(bytes)/1024/el.Seconds(), longest)
	if reply != "failed: flooded" {
		t.Fatalf("the flood did not run: %q", reply)
	}
	if longest > maxLogOutput+len(cutMark) {
		t.Errorf("a delivered line is %d bytes, over the %d-byte output cap", longest, maxLogOutput)
	}
	if max := logByteBurst + int(el.Seconds()*logByteRate) + maxLogOutput + len(cutMark); bytes > max {
		t.Errorf("%d bytes delivered in %v, over the budget of %d", bytes, el, max)
	}
}

// TestLogLimiterQuietSandboxUnderFlood: sandboxes flooding together spend
// the node's budget down to its reserved floor and no further; a quiet
// sandbox's crash message, arriving any time during the flood, is
// delivered from its reserve, and all of them together stay within the
// node's budget.
func TestLogLimiterQuietSandboxUnderFlood(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	node := newNodeLogBudget(clk.now())
	// Enough flooders to ask for four times the node's rate; their own
	// reserves together fit in the floor.
	const flooders = 64
	delivered := 0 // bytes, every reader
	emit := func(s string) {
		if !dropReport.MatchString(s) {
			delivered += len(s)
		}
	}
	gs := make([]*logLimiter, flooders)
	for i := range gs {
		gs[i] = newLogLimiter(emit, clk.now)
		gs[i].node = node
	}
	line := []byte(strings.Repeat("\x01", maxLogLine) + "\n")
	crash := []byte("panic: runtime error: invalid memory address or nil pointer dereference\n" +
		"[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x4a5b6c]\n\ngoroutine 1 [running]:\n")
	const maxOut = maxLogOutput + len(cutMark)
	for step := 0; step <= 10; step++ {
		for _, g := range gs {
			for range 100 {
				g.write(line)
			}
		}
		node.mu.Lock()
		above := node.b.okAbove(node.floor(false))
		node.mu.Unlock()
		if above {
			t.Fatalf("after %d s the flood left the node's budget above its floor: not a flood", step)
		}
		var got []string
		quiet := newLogLimiter(func(s string) { got = append(got, s); emit(s) }, clk.now)
		quiet.node = node
		quiet.write(crash)
		quiet.close()
		if len(got) == 0 || !strings.HasPrefix(got[0], "panic: runtime error") {
			t.Fatalf("after %d s of flood a quiet sandbox's crash message came out as %q", step, got)
		}
		if max := nodeLogByteBurst + step*nodeLogByteRate + maxOut; delivered > max {
			t.Fatalf("after %d s: %d bytes delivered, over the node's %d", step, delivered, max)
		}
		clk.advance(time.Second)
	}
}

// TestLogFloodQuietCrashLogged: live sandboxes flood their stderr until the
// node's budget is spent down to its floor (the budget is made small and
// slow here, so that they surely do); then a quiet sandbox crashes, and its
// panic line reaches the host's log all the same. What every sandbox
// delivered stays within the node's budget.
func TestLogFloodQuietCrashLogged(t *testing.T) {
	const extra, extraBytes = 100, 16 << 10 // the budget above the floor
	budget := newSharedLogBudget(nodeLogReserve+extra, 1e-3, nodeLogByteReserve+extraBytes, 1e-3, time.Now())
	budget.floorLines, budget.floorBytes = nodeLogReserve, nodeLogByteReserve
	saved := nodeLogs
	nodeLogs = budget
	t.Cleanup(func() { nodeLogs = saved })

	var mu sync.Mutex
	var lines, bytes int
	count := func(l string) {
		mu.Lock()
		defer mu.Unlock()
		if !dropReport.MatchString(l) {
			lines++
			bytes += len(l)
		}
	}
	const flooders = 4
	for range flooders {
		p := startT(t, Spec{Args: []string{"floodforever"}, Strict: true, Stderr: count})
		if got := recvT(t, p); got != "flooding" {
			t.Fatalf("flooder: %q", got)
		}
	}
	spent := func() bool {
		budget.mu.Lock()
		defer budget.mu.Unlock()
		return !budget.b.okAbove(budget.floor(false))
	}
	for deadline := time.Now().Add(time.Minute); !spent(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the flood never spent the node's budget")
		}
	}

	var crashLines []string
	p := startT(t, Spec{Args: []string{"crash"}, Strict: true, Stderr: func(l string) {
		count(l)
		mu.Lock()
		crashLines = append(crashLines, l)
		mu.Unlock()
	}})
	if got := recvT(t, p); got != "crashing" {
		t.Fatalf("quiet sandbox: %q", got)
	}
	if st := p.Wait(); st.Code != 2 {
		t.Fatalf("the quiet sandbox exited with %+v, want code 2 (a Go panic)", st)
	}
	<-p.logs.done // its pipe is read to the end
	mu.Lock()
	defer mu.Unlock()
	t.Logf("the quiet sandbox's lines: %q; all sandboxes: %d lines, %d bytes delivered", crashLines, lines, bytes)
	if len(crashLines) == 0 || !strings.HasPrefix(crashLines[0], "panic: runtime error") {
		t.Fatalf("the quiet sandbox's crash did not reach the host's log: %q", crashLines)
	}
	// The whole budget (the rates are next to nothing), and each reader
	// may overshoot by one line.
	if max := nodeLogByteReserve + extraBytes + (flooders+1)*(maxLogOutput+len(cutMark)); bytes > max {
		t.Fatalf("%d bytes delivered, over the node's budget of %d", bytes, max)
	}
	if max := nodeLogReserve + extra + flooders + 1; lines > max {
		t.Fatalf("%d lines delivered, over the node's budget of %d", lines, max)
	}
}
