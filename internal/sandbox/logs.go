package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// The sandbox's fd 2 is a pipe the host reads line by line. Everything on it
// is hostile: lines are cut at maxLogLine bytes, control characters and
// invalid UTF-8 escaped, and the rate is limited by a token bucket (a burst
// of logBurst lines, then logRate per second); dropped lines are counted and
// reported.
const (
	maxLogLine = 1024
	logBurst   = 200
	logRate    = 50 // lines per second
	tailLines  = 8
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

func (l *logReader) run() {
	defer close(l.done)
	defer l.r.Close()
	br := bufio.NewReaderSize(l.r, maxLogLine)
	tokens := float64(logBurst)
	lastRefill := time.Now()
	dropped := 0
	for {
		line, err := readLine(br)
		if line == "" && err != nil {
			break
		}
		_ = io.EOF
		now := time.Now()
		tokens = min(logBurst, tokens+now.Sub(lastRefill).Seconds()*logRate)
		lastRefill = now
		if tokens < 1 {
			dropped++
			continue
		}
		tokens--
		if dropped > 0 {
			l.emit(fmt.Sprintf("[%d lines dropped: rate limit]", dropped))
			dropped = 0
		}
		l.emit(line)
		if err != nil {
			break
		}
	}
	if dropped > 0 {
		l.emit(fmt.Sprintf("[%d lines dropped: rate limit]", dropped))
	}
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

// readLine returns one sanitized line; a line longer than maxLogLine is cut
// and the rest of it discarded.
func readLine(br *bufio.Reader) (string, error) {
	b, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		s := sanitize(b) + "…[truncated]"
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = br.ReadSlice('\n')
		}
		return s, err
	}
	return sanitize(b), err
}

func sanitize(b []byte) string {
	b = []byte(strings.TrimRight(string(b), "\r\n"))
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
