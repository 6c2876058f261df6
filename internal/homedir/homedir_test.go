package homedir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// nobody is another user's uid: the files an attacker plants are its.
const nobody = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
}

// newHome is a home as cordon makes it: 0700, with each entry as cordon
// writes it.
func newHome(t *testing.T) string {
	t.Helper()
	home := filepath.Join(t.TempDir(), "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, e := range Entries {
		p := filepath.Join(home, e.Name)
		var err error
		if e.Kind == Dir {
			err = os.Mkdir(p, 0o700)
		} else {
			err = os.WriteFile(p, []byte("x"), 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return home
}

func TestCheckAcceptsOwnHome(t *testing.T) {
	home := newHome(t)
	if err := Check(home); err != nil {
		t.Fatalf("a home cordon made: %v", err)
	}
	// A config.toml may be world-readable (it holds no secret).
	if err := os.Chmod(filepath.Join(home, "config.toml"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Check(home); err != nil {
		t.Fatalf("config.toml 0644: %v", err)
	}
	if err := Check(filepath.Join(home, "not-yet")); err != nil {
		t.Fatalf("a home not made yet: %v", err)
	}
}

func TestCheckRefusesOthersHome(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name   string
		plant  func(t *testing.T, home string)
		path   string // the path the error names (relative to home)
		reason string
	}{
		{"home world-writable", func(t *testing.T, home string) { chmod(t, home, 0o777) }, "", "lets other users change it"},
		{"home group-writable", func(t *testing.T, home string) { chmod(t, home, 0o770) }, "", "lets other users change it"},
		{"home owned by nobody", func(t *testing.T, home string) { chown(t, home) }, "", "owned by uid 65534"},
		{"config planted by nobody", func(t *testing.T, home string) { chown(t, filepath.Join(home, "config.toml")) }, "config.toml", "owned by uid 65534"},
		{"root key chosen by nobody", func(t *testing.T, home string) { chown(t, filepath.Join(home, "ic_root_key")) }, "ic_root_key", "owned by uid 65534"},
		{"db replaced by nobody", func(t *testing.T, home string) { chown(t, filepath.Join(home, "cordon.db")) }, "cordon.db", "owned by uid 65534"},
		{"serve.json by nobody", func(t *testing.T, home string) { chown(t, filepath.Join(home, "serve.json")) }, "serve.json", "owned by uid 65534"},
		{"artifacts by nobody", func(t *testing.T, home string) { chown(t, filepath.Join(home, "artifacts")) }, "artifacts", "owned by uid 65534"},
		{"artifacts world-writable", func(t *testing.T, home string) { chmod(t, filepath.Join(home, "artifacts"), 0o777) }, "artifacts", "lets other users change it"},
		{"config world-writable", func(t *testing.T, home string) { chmod(t, filepath.Join(home, "config.toml"), 0o666) }, "config.toml", "lets other users change it"},
		{"token readable", func(t *testing.T, home string) { chmod(t, filepath.Join(home, "token"), 0o640) }, "token", "readable by others"},
		{"node key readable", func(t *testing.T, home string) { chmod(t, filepath.Join(home, "ic_node_key"), 0o604) }, "ic_node_key", "readable by others"},
		{"config a symlink", func(t *testing.T, home string) {
			p := filepath.Join(home, "config.toml")
			other := filepath.Join(t.TempDir(), "theirs.toml")
			if err := os.WriteFile(other, []byte(`isolation = "inprocess"`), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(other, p); err != nil {
				t.Fatal(err)
			}
		}, "config.toml", "symbolic link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := newHome(t)
			tc.plant(t, home)
			err := Check(home)
			var ue *UnsafeError
			if !errors.As(err, &ue) {
				t.Fatalf("Check accepted it: %v", err)
			}
			want := home
			if tc.path != "" {
				want = filepath.Join(home, tc.path)
			}
			if ue.Path != want || !strings.Contains(err.Error(), tc.reason) || ue.Fix == "" {
				t.Fatalf("error %q: want path %s and %q", err, want, tc.reason)
			}
			if tc.path != "" {
				if _, err := ReadFile(want, kindOf(tc.path)); !errors.As(err, &ue) && tc.path != "artifacts" {
					t.Fatalf("ReadFile accepted it: %v", err)
				}
			}
		})
	}
}

func TestReadConfigFileAllowsRoot(t *testing.T) {
	needRoot(t)
	p := filepath.Join(t.TempDir(), "cordon.toml")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadConfigFile(p); err != nil {
		t.Fatalf("root's own file: %v", err)
	}
	chown(t, p)
	if _, err := ReadConfigFile(p); err == nil {
		t.Fatal("a config file nobody owns was accepted")
	}
}

func kindOf(name string) Kind {
	for _, e := range Entries {
		if e.Name == name {
			return e.Kind
		}
	}
	return File
}

func chmod(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func chown(t *testing.T, p string) {
	t.Helper()
	if err := os.Lchown(p, nobody, nobody); err != nil {
		t.Fatal(err)
	}
}
