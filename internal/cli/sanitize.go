package cli

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// printable returns s with everything that could act on a terminal, or
// make one line look like several, shown as an escape instead: C0 and C1
// control characters (ESC starts terminal sequences; CR and LF would let a
// canister print a line that looks like the host's), DEL, invalid UTF-8, and
// Unicode format characters and line separators (bidirectional overrides
// can reorder what is shown). Tabs stay. A canister's debug_print text, a
// reject message and a trap message come from canister code and pass
// through here before they reach a terminal.
func printable(s string) string {
	clean := utf8.ValidString(s)
	for _, r := range s {
		if needsEscape(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 && r != '\t', r == 0x7f, r >= 0x80 && r <= 0x9f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case needsEscape(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func needsEscape(r rune) bool {
	switch {
	case r == '\t':
		return false
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r == 0x2028, r == 0x2029, unicode.Is(unicode.Cf, r):
		return true
	}
	return false
}

// jsonPrintable replaces, in encoded JSON, the non-ASCII characters
// printable would escape by \u escapes. Outside strings JSON is ASCII, so
// only string contents change, and they decode to the same text.
func jsonPrintable(b []byte) []byte {
	s := string(b)
	clean := true
	for _, r := range s {
		if r >= 0x80 && needsEscape(r) {
			clean = false
			break
		}
	}
	if clean {
		return b
	}
	var out strings.Builder
	for _, r := range s {
		switch {
		case r < 0x80 || !needsEscape(r):
			out.WriteRune(r)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(&out, `\u%04x\u%04x`, r1, r2)
		default:
			fmt.Fprintf(&out, `\u%04x`, r)
		}
	}
	return []byte(out.String())
}
