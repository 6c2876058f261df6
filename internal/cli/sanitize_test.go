package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// hostileText is what a canister prints to attack the operator's terminal:
// clear the screen and switch colour (ESC sequences), a line that looks
// like one of `cordon logs`' own ("\n[fake line] …"), a carriage return
// that overwrites the start of the line, a right-to-left override, a NUL,
// the one-byte C1 CSI, and a byte that is not UTF-8.
const hostileText = "\x1b[2J\x1b[31mred\n[fake line] 2026-01-01T00:00:00.000Z [7] host: all good\rCR\u202eRLO\x00NUL\u009bCSI\xffbad"

// hostileWat prints hostileText with debug_print (update print) or rejects
// with it, less the invalid UTF-8 ic0.msg_reject refuses (update reject).
func hostileWat() string {
	var data strings.Builder
	for i := 0; i < len(hostileText); i++ {
		fmt.Fprintf(&data, `\%02x`, hostileText[i])
	}
	n := len(hostileText)
	return fmt.Sprintf(`(module
  (import "ic0" "debug_print" (func $print (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reject" (func $reject (param i32 i32)))
  (memory 1)
  (data (i32.const 0) "%s")
  (func (export "canister_update print") (call $print (i32.const 0) (i32.const %d)) (call $reply))
  (func (export "canister_update reject") (call $reject (i32.const 0) (i32.const %d))))`, data.String(), n, n-len("\xffbad"))
}

// noControls fails when s holds a byte that acts on a terminal (other than
// the newlines that end lines) or a Unicode format character.
func noControls(t *testing.T, what, s string) {
	t.Helper()
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f {
			t.Fatalf("%s has a raw control byte %#x at %d: %q", what, c, i, s)
		}
	}
	for _, bad := range []string{"\u202e", "\u009b", "\xff"} {
		if strings.Contains(s, bad) {
			t.Fatalf("%s has %q raw: %q", what, bad, s)
		}
	}
}

// A canister's debug_print text reaches `cordon logs` escaped: one line
// per entry, no byte that drives the terminal, the attack visible as text.
// The canister runs in a sandbox (the CLI's default isolation). Its reject
// message, printed by `cordon call`, is escaped the same way.
func TestLogsEscapeCanisterText(t *testing.T) {
	home := t.TempDir()
	wasm, err := wasmtime.Wat2Wasm(hostileWat())
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "hostile.wasm")
	if err := os.WriteFile(file, wasm, 0o600); err != nil {
		t.Fatal(err)
	}
	id := must(t, cordon(t, home, "install", file))
	must(t, cordon(t, home, "call", "--type", "raw", "--output", "raw", id, "print", "4449444c0000"))
	must(t, cordon(t, home, "call", "--type", "raw", "--output", "raw", id, "print", "4449444c0000"))

	out := must(t, cordon(t, home, "logs", id))
	noControls(t, "cordon logs", out)
	lines := strings.Split(out, "\n")
	if len(lines) != 2 {
		t.Fatalf("2 entries printed as %d lines:\n%s", len(lines), out)
	}
	for i, l := range lines {
		if strings.HasPrefix(l, "[fake line]") || !strings.Contains(l, fmt.Sprintf(" [%d] ", i)) {
			t.Fatalf("line %d: %q", i, l)
		}
		// (The node keeps debug_print text as UTF-8: the byte 0xff
		// arrives as U+FFFD, which is harmless.)
		for _, want := range []string{`\x1b[2J\x1b[31mred\n[fake line]`, `all good\rCR`, `\u202eRLO`, `\x00NUL`, `\x9bCSI`, "\ufffdbad"} {
			if !strings.Contains(l, want) {
				t.Fatalf("line %d lacks %s: %q", i, want, l)
			}
		}
	}

	// JSON keeps the text itself (JSON escapes it).
	js := must(t, cordon(t, home, "logs", "--output", "json", id))
	noControls(t, "cordon logs --output json", js)
	if !strings.Contains(js, `\u001b[2J`) || !strings.Contains(js, `red\n[fake line]`) {
		t.Fatalf("json: %s", js)
	}

	// The canister's reject message on stderr.
	r := cordon(t, home, "call", "--type", "raw", id, "reject", "4449444c0000")
	if r.code != ExitRejected {
		t.Fatalf("reject: %+v", r)
	}
	noControls(t, "the reject message", r.stderr)
	if strings.Count(r.stderr, "\n") != 0 || !strings.Contains(r.stderr, `red\n[fake line]`) {
		t.Fatalf("reject message: %q", r.stderr)
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, ünïcödé, emoji 🎉, tab\there": "plain text, ünïcödé, emoji 🎉, tab\there",
		"a\nb\r\nc":              `a\nb\r\nc`,
		"\x1b]0;title\x07":       `\x1b]0;title\x07`,
		"x\u2028y\u2029z\u200bw": `x\u2028y\u2029z\u200bw`,
		"\x7f\xc2\x85":           `\x7f\x85`,
		"\xe2\x80":               `\xe2\x80`,
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}
