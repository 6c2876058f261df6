package homedir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// refused asserts that Check refuses home naming path, for why.
func refused(t *testing.T, home, path, why string) *UnsafeError {
	t.Helper()
	err := Check(home)
	var ue *UnsafeError
	if !errors.As(err, &ue) {
		t.Fatalf("Check(%s) accepted it: %v", home, err)
	}
	if ue.Path != path || !strings.Contains(err.Error(), why) || ue.Fix == "" {
		t.Fatalf("Check(%s): %q; want path %s and %q", home, err, path, why)
	}
	return ue
}

// A home is refused when a directory above it lets another user rename
// the home (or a directory on the way) and put their own in its place;
// /tmp's sticky bit keeps an entry its owner's, so a home of one's own in
// /tmp (like every t.TempDir()) is fine.
func TestCheckWalksTheDirectoriesAbove(t *testing.T) {
	mkdir := func(t *testing.T, p string, mode os.FileMode) string {
		t.Helper()
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		chmod(t, p, mode)
		return p
	}
	t.Run("temp dir", func(t *testing.T) {
		if err := Check(t.TempDir()); err != nil {
			t.Fatalf("t.TempDir(): %v", err)
		}
		if err := Check(newHome(t)); err != nil {
			t.Fatalf("a home in t.TempDir(): %v", err)
		}
	})
	t.Run("world-writable parent", func(t *testing.T) {
		parent := mkdir(t, filepath.Join(t.TempDir(), "shared"), 0o777)
		home := mkdir(t, filepath.Join(parent, "home"), 0o700)
		refused(t, home, parent, "lets other users rename "+home)
		// Further up, and through a relative path with "..".
		deep := mkdir(t, filepath.Join(home, "a"), 0o700)
		refused(t, filepath.Join(deep, "..", "a"), parent, "lets other users rename "+home)
	})
	t.Run("group-writable grandparent", func(t *testing.T) {
		gp := mkdir(t, filepath.Join(t.TempDir(), "group"), 0o770)
		home := mkdir(t, filepath.Join(mkdir(t, filepath.Join(gp, "p"), 0o755), "home"), 0o700)
		refused(t, home, gp, "mode 0770")
	})
	t.Run("sticky parent, own home", func(t *testing.T) {
		parent := mkdir(t, filepath.Join(t.TempDir(), "tmp"), os.ModeSticky|0o777)
		home := mkdir(t, filepath.Join(parent, "home"), 0o700)
		if err := Check(home); err != nil {
			t.Fatalf("own home in a sticky directory: %v", err)
		}
		// Not made yet: another user could make it first.
		ue := refused(t, filepath.Join(parent, "new", "home"), filepath.Join(parent, "new"), "lets other users make it first")
		if ue.Fix != "mkdir -m 700 "+filepath.Join(parent, "new") {
			t.Fatalf("fix %q", ue.Fix)
		}
	})
	t.Run("symbolic links on the way", func(t *testing.T) {
		base := t.TempDir()
		home := mkdir(t, filepath.Join(base, "home"), 0o700)
		link := filepath.Join(base, "link")
		if err := os.Symlink("home", link); err != nil {
			t.Fatal(err)
		}
		if err := Check(link); err != nil {
			t.Fatalf("a home through a link in a safe directory: %v", err)
		}
		// A link from a safe place to a home under a 0777 directory.
		open := mkdir(t, filepath.Join(base, "open"), 0o777)
		theirs := mkdir(t, filepath.Join(open, "home"), 0o700)
		toOpen := filepath.Join(base, "to-open")
		if err := os.Symlink(theirs, toOpen); err != nil {
			t.Fatal(err)
		}
		refused(t, toOpen, open, "lets other users rename "+theirs)
		// A link that lies in a 0777 directory, to a safe home.
		inOpen := filepath.Join(open, "link")
		if err := os.Symlink(home, inOpen); err != nil {
			t.Fatal(err)
		}
		refused(t, inOpen, open, "lets other users rename "+inOpen)
		// A loop ends.
		loop := filepath.Join(base, "loop")
		if err := os.Symlink("loop", loop); err != nil {
			t.Fatal(err)
		}
		if err := Check(filepath.Join(loop, "home")); err == nil || !strings.Contains(err.Error(), "symbolic links") {
			t.Fatalf("a loop: %v", err)
		}
	})
	t.Run("shared directory as home", func(t *testing.T) {
		shared := mkdir(t, filepath.Join(t.TempDir(), "tmp"), os.ModeSticky|0o777)
		ue := refused(t, shared, shared, "a shared directory")
		want := filepath.Join(shared, "cordon-")
		if !strings.HasPrefix(ue.Instead, want) || ue.Fix != "mkdir -m 700 "+ue.Instead || strings.Contains(ue.Error(), "chmod") {
			t.Fatalf("a sticky world-writable home: %q", ue)
		}
	})
}

// Directories and links on the way that another user owns are refused
// (root's are fine: root can do anything anyway).
func TestCheckRefusesOthersDirectoriesAbove(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	theirs := filepath.Join(base, "theirs")
	if err := os.Mkdir(theirs, 0o755); err != nil {
		t.Fatal(err)
	}
	chown(t, theirs)
	home := filepath.Join(theirs, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	refused(t, home, theirs, "owned by uid 65534")
	// In a sticky directory, a link another user owns is theirs to
	// replace.
	sticky := filepath.Join(base, "tmp")
	if err := os.Mkdir(sticky, 0o700); err != nil {
		t.Fatal(err)
	}
	chmod(t, sticky, os.ModeSticky|0o777)
	own := filepath.Join(base, "own")
	if err := os.Mkdir(own, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(sticky, "link")
	if err := os.Symlink(own, link); err != nil {
		t.Fatal(err)
	}
	if err := Check(link); err != nil {
		t.Fatalf("own link in a sticky directory: %v", err)
	}
	chown(t, link)
	refused(t, link, link, "owned by uid 65534")
}
