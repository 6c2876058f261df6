package sandbox

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// FuzzLogLimiter: a sandbox's stderr is hostile bytes. Whatever it writes,
// in whatever chunks and at whatever pace, every line the host delivers is
// valid UTF-8 without control characters (tabs aside), format characters
// or line separators, at most maxLogOutput bytes plus the cut mark; the
// limiter holds at most maxLogLine bytes of a line; and every line is
// delivered or counted as dropped. The escaping reads back one way: what
// sanitize makes of the stream unescapes to the stream, so no text the
// sandbox writes reads as an escape.
func FuzzLogLimiter(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), []byte{3, 0x80})
	f.Add([]byte("a\x1b[31mred\x00\r\nbad \xff utf8\n\xc2\x9b2J\n"), []byte{1, 2, 3})
	f.Add([]byte("ok \u202egnp.exe\u2028[fake] host: all good\u200b\n"), []byte{0x7f})
	f.Add(bytes.Repeat([]byte("y\x01"), 3000), []byte{0xff, 0x7f, 0})
	f.Add([]byte(strings.Repeat("line\n", 400)), []byte{0x10, 0x90, 0x10})
	f.Add([]byte(`looks escaped: \x1b[31m \\x00 \`+"\x1b\n"), []byte{0x05})
	f.Fuzz(func(t *testing.T, stream, steps []byte) {
		// Longer streams find nothing shorter ones do not (a line is cut
		// at 1 KiB, escaping at most quadruples it), and would make each
		// input slow.
		stream = stream[:min(len(stream), 6<<10)]
		if s, cut := sanitize(stream, 4*len(stream)); cut || unescapeLog(t, s) != string(bytes.TrimRight(stream, "\r")) {
			t.Fatalf("%q sanitized to %q (cut %v), which reads back as %q", stream, s, cut, unescapeLog(t, s))
		}
		// A canister line that reads like a drop report would make the
		// count below ambiguous; the limiter gives '[' no meaning.
		stream = bytes.ReplaceAll(stream, []byte("["), []byte("("))
		clk := &fakeClock{t: time.Unix(0, 0)}
		var out []string
		g := newLogLimiter(func(s string) { out = append(out, s) }, clk.now)
		if len(steps) > 0 && steps[0]&1 == 1 {
			g.node = newNodeLogBudget(clk.now())
		}
		// Each step: chunk length (low 7 bits, times 17) and whether the
		// clock moves on by a second (high bit) before the next chunk.
		lines := bytes.Count(stream, []byte{'\n'})
		if n := len(stream); n > 0 && stream[n-1] != '\n' {
			lines++ // the last line, ended by close
		}
		for i := 0; len(stream) > 0; i++ {
			n := len(stream)
			if len(steps) > 0 {
				s := steps[i%len(steps)]
				n = min(n, 1+int(s&0x7f)*17)
				if s&0x80 != 0 {
					clk.advance(time.Second)
				}
			}
			g.write(stream[:n])
			stream = stream[n:]
			if cap(g.line) > maxLogLine {
				t.Fatalf("the limiter holds %d bytes of a line", cap(g.line))
			}
			if d := g.wait(); d < 0 || d > maxLogWait {
				t.Fatalf("wait %v", d)
			}
		}
		g.close()
		delivered, dropped := account(t, out)
		for _, l := range delivered {
			if len(l) > maxLogOutput+len(cutMark) {
				t.Fatalf("a line of %d bytes delivered", len(l))
			}
			if !utf8.ValidString(l) {
				t.Fatalf("%q is not UTF-8", l)
			}
			for _, r := range l {
				if (unicode.IsControl(r) && r != '\t') || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
					t.Fatalf("%+q delivered with control or format character %U", l, r)
				}
			}
		}
		if len(delivered)+dropped != lines {
			t.Fatalf("%d delivered + %d dropped, the stream had %d lines", len(delivered), dropped, lines)
		}
	})
}

// unescapeLog reverses sanitize: \\ is a backslash, \xNN a byte; any other
// backslash fails the test.
func unescapeLog(t *testing.T, s string) string {
	t.Helper()
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b = append(b, s[i])
			continue
		}
		switch {
		case i+1 < len(s) && s[i+1] == '\\':
			b = append(b, '\\')
			i++
		case i+3 < len(s) && s[i+1] == 'x':
			v, err := strconv.ParseUint(s[i+2:i+4], 16, 8)
			if err != nil {
				t.Fatalf("%q: a bad escape at %d", s, i)
			}
			b = append(b, byte(v))
			i += 3
		default:
			t.Fatalf("%q: a bare backslash at %d", s, i)
		}
	}
	return string(b)
}
