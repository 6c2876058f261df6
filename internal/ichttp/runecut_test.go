package ichttp

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// A cut at 64 bytes that falls inside a multi-byte character cuts before
// it: the result stays valid UTF-8 (it goes into messages and JSON).
func TestClipAtRuneBoundary(t *testing.T) {
	a := strings.Repeat("a", 63)
	for _, c := range []struct{ in, want string }{
		{strings.Repeat("a", 64), strings.Repeat("a", 64)},
		{strings.Repeat("a", 65), strings.Repeat("a", 64) + "…"},
		{a + "é", a + "…"}, // é (2 bytes) ends at 65: across the cut
		{a + "éb", a + "…"},
		{a + "€b", a + "…"}, // 3 bytes
		{strings.Repeat("a", 62) + "😀b", strings.Repeat("a", 62) + "…"}, // 4 bytes
		{strings.Repeat("a", 64) + "é", strings.Repeat("a", 64) + "…"},  // at the boundary: whole
		{strings.Repeat("é", 40), strings.Repeat("é", 32) + "…"},
		{a + "\x80\x80\x80\x80\x80", a + "\x80" + "…"}, // invalid input: cut at 64
	} {
		got := clip(c.in)
		if got != c.want {
			t.Errorf("%q: got %q, want %q", c.in, got, c.want)
		}
		if utf8.ValidString(c.in) && !utf8.ValidString(got) {
			t.Errorf("%q: cut into invalid UTF-8 %q", c.in, got)
		}
	}
}
