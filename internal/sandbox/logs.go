package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// The sandbox's fd 2 is a pipe the host reads. Everything on it is hostile:
// lines are cut at maxLogLine bytes of input, control characters (C0, DEL
// and C1), format characters, line and paragraph separators and invalid
// UTF-8 escaped (\xNN, four bytes for one; a backslash doubled, so the
// text "\x1b" does not read as an escape), and the escaped line cut again
// at maxLogOutput bytes, so no delivered line is longer than maxLogOutput
// plus the cut mark, whatever bytes the sandbox wrote. Two token buckets per sandbox bound what reaches the host's log:
// lines (a burst of logBurst, then logRate per second) and bytes of
// delivered output (logByteBurst, then logByteRate per second); one more
// pair, shared by every sandbox's reader (nodeLogs), bounds them all
// together, so many sandboxes flooding at once cannot exceed a fixed rate
// into the host's log either. Dropped lines are
// counted and reported.
//
// The node's budget is not first come, first served: its last
// nodeLogReserve lines and nodeLogByteReserve bytes are reserved. A reader
// takes from them only through a small reserve of its own (reserveBurst
// lines and reserveByteBurst bytes, refilled slowly) and only once the rest
// is spent, so sandboxes flooding together exhaust only the part above the
// floor, and a quiet sandbox's crash message (its reserve untouched) still
// gets through. What all readers deliver together stays within the node's
// one pair of buckets.
//
// A flood must cost the host next to nothing, so the budget is checked
// before any per-line work: once a bucket is empty, whole chunks are
// dropped by counting their newlines (no copying, no sanitizing), and the
// reader waits for the next token before it reads again. While it waits the
// pipe fills and the flooding sandbox blocks in write(2), spending its own
// CPU quota instead of the host's.
const (
	maxLogLine   = 1024 // input bytes of a line kept
	maxLogOutput = 1024 // bytes of a delivered line after escaping (then the cut mark)
	logBurst     = 200
	logRate      = 50 // lines per second
	logByteBurst = 64 << 10
	logByteRate  = 16 << 10 // bytes per second
	tailLines    = 8
	logChunk     = 64 << 10 // one pipe buffer

	// Node-wide, all sandboxes together.
	nodeLogBurst     = 4000
	nodeLogRate      = 1000 // lines per second
	nodeLogByteBurst = 1 << 20
	nodeLogByteRate  = 256 << 10 // bytes per second
	// The node budget's floor only readers' reserves may go below.
	nodeLogReserve     = 1000
	nodeLogByteReserve = 256 << 10

	// Each reader's reserve: a crash message's few lines, then slowly.
	reserveBurst     = tailLines
	reserveRate      = 1 // lines per second
	reserveByteBurst = 2 << 10
	reserveByteRate  = 256 // bytes per second

	// maxLogWait bounds a reader's sleep, so it sees its pipe's end soon
	// after the sandbox exits, whatever the buckets say.
	maxLogWait = time.Second

	cutMark = "…[truncated]"
)

// nodeLogs is the budget every sandbox's log reader shares.
var nodeLogs = newNodeLogBudget(time.Now())

// newNodeLogBudget is the node's budget with its reserved floor.
func newNodeLogBudget(now time.Time) *sharedLogBudget {
	s := newSharedLogBudget(nodeLogBurst, nodeLogRate, nodeLogByteBurst, nodeLogByteRate, now)
	s.floorLines, s.floorBytes = nodeLogReserve, nodeLogByteReserve
	return s
}

// bucket is a token bucket. Spending may take it below zero (a line's size
// is known only once it is escaped): the debt is repaid before the next
// line, so the long-run rate holds.
type bucket struct {
	tokens, rate, burst float64
	last                time.Time
}

func (b *bucket) refill(t time.Time) {
	if t.After(b.last) {
		b.tokens = min(b.burst, b.tokens+t.Sub(b.last).Seconds()*b.rate)
		b.last = t
	}
}

// wait is how long until the bucket holds need tokens (0: it does), at most
// maxLogWait.
func (b *bucket) wait(need float64) time.Duration {
	if b.tokens >= need {
		return 0
	}
	if s := (need - b.tokens) / b.rate; b.rate > 0 && s < maxLogWait.Seconds() {
		return time.Duration(s * float64(time.Second))
	}
	return maxLogWait
}

// logBudget is a pair of buckets: lines, and bytes of delivered output.
type logBudget struct {
	lines, bytes bucket
}

func newLogBudget(lineBurst, lineRate, byteBurst, byteRate float64, now time.Time) logBudget {
	return logBudget{
		lines: bucket{tokens: lineBurst, rate: lineRate, burst: lineBurst, last: now},
		bytes: bucket{tokens: byteBurst, rate: byteRate, burst: byteBurst, last: now},
	}
}

func (b *logBudget) refill(t time.Time) { b.lines.refill(t); b.bytes.refill(t) }

// ok says whether one more line may be delivered.
func (b *logBudget) ok() bool { return b.okAbove(0, 0) }

// okAbove says whether one more line may be delivered leaving the floor of
// lines and bytes untouched.
func (b *logBudget) okAbove(lines, bytes float64) bool {
	return b.lines.tokens >= lines+1 && b.bytes.tokens >= bytes+1
}

func (b *logBudget) spend(n int) { b.lines.tokens--; b.bytes.tokens -= float64(n) }

func (b *logBudget) wait() time.Duration { return b.waitAbove(0, 0) }

func (b *logBudget) waitAbove(lines, bytes float64) time.Duration {
	return max(b.lines.wait(lines+1), b.bytes.wait(bytes+1))
}

// sharedLogBudget is a logBudget several readers use at once. Its floor is
// for readers' reserves only (reserved true); the rest is anyone's.
type sharedLogBudget struct {
	mu                     sync.Mutex
	b                      logBudget
	floorLines, floorBytes float64
}

func newSharedLogBudget(lineBurst, lineRate, byteBurst, byteRate float64, now time.Time) *sharedLogBudget {
	return &sharedLogBudget{b: newLogBudget(lineBurst, lineRate, byteBurst, byteRate, now)}
}

// floor is what a reader may not take: the reserved part, unless it
// spends from its reserve.
func (s *sharedLogBudget) floor(reserved bool) (lines, bytes float64) {
	if reserved {
		return 0, 0
	}
	return s.floorLines, s.floorBytes
}

func (s *sharedLogBudget) ok(t time.Time, reserved bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.refill(t)
	return s.b.okAbove(s.floor(reserved))
}

func (s *sharedLogBudget) spend(n int) {
	s.mu.Lock()
	s.b.spend(n)
	s.mu.Unlock()
}

func (s *sharedLogBudget) wait(t time.Time, reserved bool) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.refill(t)
	return s.b.waitAbove(s.floor(reserved))
}

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
	emit    func(string)
	now     func() time.Time
	own     logBudget
	reserve logBudget        // what it may take of the node's reserved part
	node    *sharedLogBudget // shared with other sandboxes' limiters; nil: none
	// fromReserve: the line available allowed comes out of the reserve.
	fromReserve bool

	dropped int    // lines dropped since the last report
	line    []byte // the current line's first maxLogLine bytes
	lineLen int    // the current line's length so far
}

// newLogLimiter makes a limiter with its own budget only; the log reader
// adds the node's.
func newLogLimiter(emit func(string), now func() time.Time) *logLimiter {
	t := now()
	return &logLimiter{emit: emit, now: now, own: newLogBudget(logBurst, logRate, logByteBurst, logByteRate, t),
		reserve: newLogBudget(reserveBurst, reserveRate, reserveByteBurst, reserveByteRate, t),
		line:    make([]byte, 0, maxLogLine)}
}

// available refills the buckets and says whether a line may be delivered:
// within its own budget, and within the node's above the floor, or else
// within its reserve and the node's reserved part.
func (g *logLimiter) available() bool {
	t := g.now()
	g.own.refill(t)
	g.fromReserve = false
	switch {
	case !g.own.ok():
		return false
	case g.node == nil || g.node.ok(t, false):
		return true
	}
	g.reserve.refill(t)
	if g.reserve.ok() && g.node.ok(t, true) {
		g.fromReserve = true
		return true
	}
	return false
}

// write consumes one chunk of the stream.
func (g *logLimiter) write(b []byte) {
	for len(b) > 0 {
		if !g.available() {
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
		if g.available() {
			g.endLine()
		} else {
			g.dropped++
			g.resetLine()
		}
	}
	g.report()
}

// wait returns how long until a line may be delivered, or 0 if one may now
// (at most maxLogWait). Refused by the node's budget, it waits at least a
// line's time of its own budget: readers held back by the others do not
// all wake at each token.
func (g *logLimiter) wait() time.Duration {
	t := g.now()
	g.own.refill(t)
	d := g.own.wait()
	if g.node != nil {
		if n := g.node.wait(t, false); n > 0 {
			g.reserve.refill(t)
			n = min(n, max(g.reserve.wait(), g.node.wait(t, true)))
			if n > 0 {
				d = max(d, n, time.Second/logRate)
			}
		}
	}
	return min(d, maxLogWait)
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

// endLine delivers the current line, spending from the budgets (the caller
// checked they allow a line) what it costs in output bytes.
func (g *logLimiter) endLine() {
	g.report()
	s, cut := sanitize(g.line, maxLogOutput)
	if cut || g.lineLen > maxLogLine {
		s += cutMark
	}
	g.resetLine()
	g.own.spend(len(s))
	if g.node != nil {
		g.node.spend(len(s))
	}
	if g.fromReserve {
		g.reserve.spend(len(s))
	}
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
	g.node = nodeLogs
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

// sanitize escapes control characters and invalid UTF-8 (\xNN a byte) and
// doubles backslashes, so every escape reads one way, and keeps
// at most limit bytes of the result, whole characters and escapes only; cut
// says whether anything was left out.
func sanitize(b []byte, limit int) (s string, cut bool) {
	b = bytes.TrimRight(b, "\r")
	var sb strings.Builder
	sb.Grow(min(limit, 4*len(b)))
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		// Escaped byte by byte: invalid UTF-8, control characters, C1
		// ones (U+0080–U+009F) too, which some terminals obey (U+009B is
		// CSI) and JSON logs keep as they are, and what can make a line
		// look like another or like several (format characters such as
		// bidirectional overrides, line and paragraph separators), as the
		// CLI escapes them.
		esc := (r == utf8.RuneError && n <= 1) || (r < 0x20 && r != '\t') || (r >= 0x7f && r <= 0x9f) ||
			r == 0x2028 || r == 0x2029 || (r > 0x9f && unicode.Is(unicode.Cf, r))
		size := n
		switch {
		case esc:
			size = 4 * n
		case r == '\\':
			// Doubled, so the text \x1b a sandbox writes cannot read as
			// an escaped control character.
			size = 2
		}
		if sb.Len()+size > limit {
			return sb.String(), true
		}
		switch {
		case esc:
			const hex = "0123456789abcdef"
			for _, c := range b[:n] {
				sb.WriteString(`\x`)
				sb.WriteByte(hex[c>>4])
				sb.WriteByte(hex[c&0xf])
			}
		case r == '\\':
			sb.WriteString(`\\`)
		default:
			sb.Write(b[:n])
		}
		b = b[n:]
	}
	return sb.String(), false
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
