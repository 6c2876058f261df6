package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// The sandbox's fd 2 is a pipe the host reads. Everything on it is hostile:
// lines are cut at maxLogLine bytes, control characters and invalid UTF-8
// escaped, and the rate is limited by a token bucket (a burst of logBurst
// lines, then logRate per second); dropped lines are counted and reported.
//
// A flood must cost the host next to nothing, so the budget is checked
// before any per-line work: once the bucket is empty, whole chunks are
// dropped by counting their newlines (no copying, no sanitizing), and the
// reader waits for the next token before it reads again. While it waits the
// pipe fills and the flooding sandbox blocks in write(2), spending its own
// CPU quota instead of the host's.
const (
	maxLogLine = 1024
	logBurst   = 200
	logRate    = 50 // lines per second
	tailLines  = 8
	logChunk   = 64 << 10 // one pipe buffer
)

type logReader struct {
	r    *os.File
	sink func(string)
	done chan struct{}

	mu   sync.Mutex
	last []string // the last few lines, for error messages
}

func newLogReader(r *os.File, sink func(string)) *logReader {
	l := &logReader{r: r, sink: sink, done: make(chan struct{})}
	go l.run()
	return l
}

// logLimiter splits the byte stream into lines and decides, line by line,
// whether each is delivered or dropped. It holds no more than maxLogLine
// bytes of a line, however long the line is.
type logLimiter struct {
	emit func(string)
	now  func() time.Time

	tokens     float64
	lastRefill time.Time
	dropped    int    // lines dropped since the last report
	line       []byte // the current line's first maxLogLine bytes
	lineLen    int    // the current line's length so far
}

func newLogLimiter(emit func(string), now func() time.Time) *logLimiter {
	return &logLimiter{emit: emit, now: now, tokens: logBurst, lastRefill: now(), line: make([]byte, 0, maxLogLine)}
}

func (g *logLimiter) refill() {
	t := g.now()
	g.tokens = min(logBurst, g.tokens+t.Sub(g.lastRefill).Seconds()*logRate)
	g.lastRefill = t
}

// write consumes one chunk of the stream.
func (g *logLimiter) write(b []byte) {
	g.refill()
	for len(b) > 0 {
		if g.tokens < 1 {
			// Over budget: every line that ends in this chunk is dropped
			// without being looked at.
			last := bytes.LastIndexByte(b, '\n')
			if last < 0 {
				g.appendLine(b)
				return
			}
			g.dropped += bytes.Count(b[:last+1], []byte{'\n'})
			g.resetLine()
			g.appendLine(b[last+1:])
			return
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			g.appendLine(b)
			return
		}
		g.appendLine(b[:i])
		g.endLine()
		b = b[i+1:]
	}
}

// close ends the stream: a last line without a newline still counts, and
// what was dropped is reported.
func (g *logLimiter) close() {
	if g.lineLen > 0 {
		g.refill()
		if g.tokens >= 1 {
			g.endLine()
		} else {
			g.dropped++
			g.resetLine()
		}
	}
	g.report()
}

// wait returns how long until the next token, or 0 if one is there.
func (g *logLimiter) wait() time.Duration {
	g.refill()
	if g.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - g.tokens) / logRate * float64(time.Second))
}

func (g *logLimiter) appendLine(b []byte) {
	if room := maxLogLine - len(g.line); room > 0 {
		g.line = append(g.line, b[:min(room, len(b))]...)
	}
	g.lineLen += len(b)
}

func (g *logLimiter) resetLine() {
	g.line = g.line[:0]
	g.lineLen = 0
}

// endLine delivers the current line, spending a token (the caller checked
// there is one).
func (g *logLimiter) endLine() {
	g.tokens--
	g.report()
	s := sanitize(g.line)
	if g.lineLen > maxLogLine {
		s += "…[truncated]"
	}
	g.resetLine()
	g.emit(s)
}

func (g *logLimiter) report() {
	if g.dropped > 0 {
		g.emit(fmt.Sprintf("[%d lines dropped: rate limit]", g.dropped))
		g.dropped = 0
	}
}

func (l *logReader) run() {
	defer close(l.done)
	defer l.r.Close()
	g := newLogLimiter(l.emit, time.Now)
	buf := make([]byte, logChunk)
	for {
		n, err := l.r.Read(buf)
		g.write(buf[:n])
		if err != nil {
			break
		}
		if d := g.wait(); d > 0 {
			time.Sleep(d)
		}
	}
	g.close()
}

func (l *logReader) emit(s string) {
	l.mu.Lock()
	l.last = append(l.last, s)
	if len(l.last) > tailLines {
		l.last = l.last[len(l.last)-tailLines:]
	}
	l.mu.Unlock()
	if l.sink != nil {
		l.sink(s)
	}
}

func sanitize(b []byte) string {
	b = bytes.TrimRight(b, "\r")
	var sb strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&sb, `\x%02x`, b[0])
		case r < 0x20 && r != '\t', r == 0x7f:
			fmt.Fprintf(&sb, `\x%02x`, r)
		default:
			sb.WriteRune(r)
		}
		b = b[n:]
	}
	return sb.String()
}

// wait waits for the pipe to reach EOF (the sandbox has exited), at most d.
func (l *logReader) wait(d time.Duration) {
	select {
	case <-l.done:
	case <-time.After(d):
	}
}

// close stops reading (start-up failed before a child existed).
func (l *logReader) close() { l.r.Close() }

// tail returns the last lines, joined.
func (l *logReader) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.last, " | ")
}
