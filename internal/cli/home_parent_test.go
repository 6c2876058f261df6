package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A home inside a directory other users may write is refused: they could
// swap the home for their own between the check and its use (the token,
// serve.json and the store are found by name under it). A sticky
// directory (/tmp) is fine for a home of one's own, and /tmp itself is
// answered with a directory to make in it, not a chmod of /tmp.
func TestHomeInWorldWritableParentRefused(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(parent, 0o777); err != nil { // no sticky bit
		t.Fatal(err)
	}
	home := filepath.Join(parent, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	r := cordon(t, home, "status")
	if r.code != ExitError || !strings.Contains(r.stderr, "refusing to use "+parent+":") || !strings.Contains(r.stderr, "chmod go-w "+parent) {
		t.Fatalf("home %s under a directory of mode 0777: exit %d: %q %q", home, r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(home, "cordon.db")); err == nil {
		t.Fatal("a store was made in the refused home")
	}
	// Sticky: a home of one's own in it is used.
	if err := os.Chmod(parent, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	must(t, cordon(t, home, "status"))
	// The sticky directory itself as the home.
	r = cordon(t, parent, "status")
	mine := filepath.Join(parent, fmt.Sprintf("cordon-%d", os.Geteuid()))
	if r.code != ExitError || !strings.Contains(r.stderr, "`mkdir -m 700 "+mine+"`, then --home "+mine) || strings.Contains(r.stderr, "chmod") {
		t.Fatalf("a sticky world-writable home: exit %d: %s", r.code, r.stderr)
	}
}
