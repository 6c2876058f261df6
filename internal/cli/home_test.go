package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/sandbox"
)

// nobody is the uid of the other local user that plants files.
const nobody = 65534

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func chownNobody(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.Lchown(p, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
}

// A home another user owns or may write is refused before anything in it
// is read: a config.toml planted there would otherwise run canisters
// unconfined, an ic_root_key planted there would make the node sign with
// a key its planter chose.
func TestHomeOfAnotherUserRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	counter := filepath.Join(corpus, "counter.wasm")
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, home string)
		path  string // what the error names, relative to home
		why   string
	}{
		{"world-writable home, config planted by another user", func(t *testing.T, home string) {
			if err := os.Chmod(home, 0o777); err != nil {
				t.Fatal(err)
			}
			cfg := filepath.Join(home, "config.toml")
			writeFile(t, cfg, "isolation = \"inprocess\"\n", 0o644)
			chownNobody(t, cfg)
		}, "", "lets other users change it"},
		{"home owned by another user", func(t *testing.T, home string) {
			cfg, key := filepath.Join(home, "config.toml"), filepath.Join(home, "ic_root_key")
			writeFile(t, cfg, "isolation = \"inprocess\"\n", 0o600)
			writeFile(t, key, "chosen by nobody", 0o600)
			chownNobody(t, home, cfg, key)
		}, "", "owned by uid 65534"},
		{"own home, root key chosen by another user", func(t *testing.T, home string) {
			key := filepath.Join(home, "ic_root_key")
			writeFile(t, key, "chosen by nobody", 0o600)
			chownNobody(t, key)
		}, "ic_root_key", "owned by uid 65534"},
		{"own home, store of another user", func(t *testing.T, home string) {
			db := filepath.Join(home, "cordon.db")
			writeFile(t, db, "", 0o600)
			chownNobody(t, db)
		}, "cordon.db", "owned by uid 65534"},
		{"own home, config a symlink", func(t *testing.T, home string) {
			other := filepath.Join(t.TempDir(), "config.toml")
			writeFile(t, other, "isolation = \"inprocess\"\n", 0o644)
			if err := os.Symlink(other, filepath.Join(home, "config.toml")); err != nil {
				t.Fatal(err)
			}
		}, "config.toml", "symbolic link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := filepath.Join(t.TempDir(), "home")
			if err := os.Mkdir(home, 0o700); err != nil {
				t.Fatal(err)
			}
			tc.setup(t, home)
			want := home
			if tc.path != "" {
				want = filepath.Join(home, tc.path)
			}
			for _, args := range [][]string{{"install", counter}, {"config", "show"}} {
				r := cordon(t, home, args...)
				if r.code != ExitError || !strings.Contains(r.stderr, "refusing to use "+want+":") || !strings.Contains(r.stderr, tc.why) {
					t.Fatalf("%v: exit %d, want %d naming %s (%s)\nstdout: %s\nstderr: %s", args, r.code, ExitError, want, tc.why, r.stdout, r.stderr)
				}
				if strings.Contains(r.stderr, "INSECURE") {
					t.Fatalf("%v: the planted configuration was applied: %s", args, r.stderr)
				}
			}
			if _, err := os.Stat(filepath.Join(home, "cordon.db")); tc.path != "cordon.db" && err == nil {
				t.Fatal("a store was created in the refused home")
			}
		})
	}
}

// The default home, as cordon makes it, is accepted.
func TestOwnHomeAccepted(t *testing.T) {
	home := filepath.Join(t.TempDir(), "fresh")
	id := must(t, cordon(t, home, "install", filepath.Join(corpus, "counter.wasm")))
	fi, err := os.Stat(home)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("home made with %v: %v", fi.Mode(), err)
	}
	writeFile(t, filepath.Join(home, "config.toml"), "[log]\nlevel = \"warn\"\n", 0o644)
	if got := must(t, cordon(t, home, "call", id, "inc")); got != "(1 : nat)" {
		t.Fatalf("inc: %s", got)
	}
}

// A serve.json left by a server killed with SIGKILL is removed by the next
// command that takes the store: it names a port another user may bind.
func TestStaleServeFileRemoved(t *testing.T) {
	home := t.TempDir()
	stale := filepath.Join(home, "serve.json")
	writeFile(t, stale, `{"addr":"127.0.0.1:1","pid":999999999,"token":true}`+"\n", 0o600)
	writeFile(t, filepath.Join(home, "token"), "0123456789abcdef0123456789abcdef\n", 0o600)
	must(t, cordon(t, home, "ps"))
	must(t, cordon(t, home, "install", filepath.Join(corpus, "counter.wasm")))
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale serve.json still there: %v", err)
	}
}

// In-process isolation drops every confinement layer: each command that
// opens the node says so.
func TestInProcessWarns(t *testing.T) {
	home := t.TempDir()
	const warning = "INSECURE: canisters run unconfined in the host process"
	r := cordon(t, home, "--isolation", "inprocess", "install", filepath.Join(corpus, "counter.wasm"))
	if r.code != 0 || !strings.Contains(r.stderr, warning) || !strings.Contains(r.stderr, "level=WARN") {
		t.Fatalf("install --isolation inprocess: exit %d\n%s", r.code, r.stderr)
	}
	id := r.stdout
	writeFile(t, filepath.Join(home, "config.toml"), "isolation = \"inprocess\"\n", 0o600)
	r = cordon(t, home, "query", id, "get")
	if r.code != 0 || !strings.Contains(r.stderr, warning) {
		t.Fatalf("query with isolation = inprocess in config.toml: exit %d\n%s", r.code, r.stderr)
	}
	if r := cordon(t, home, "--isolation", "sandbox", "query", id, "get"); r.code != 0 || strings.Contains(r.stderr, warning) {
		t.Fatalf("sandboxed query: exit %d\n%s", r.code, r.stderr)
	}
}

// doctor exits with an error exactly when serve, with the same
// configuration, would refuse to start: a missing layer that strict mode
// (serve's default) does not allow, whether allowed by flag, environment
// or file.
func TestDoctorExitFollowsServe(t *testing.T) {
	real := doctorProbe
	t.Cleanup(func() { doctorProbe = real })
	doctorProbe = func() sandbox.Report {
		r := real()
		for i := range r.Layers {
			if r.Layers[i].Layer == sandbox.LayerCgroup {
				r.Layers[i].Available, r.Layers[i].Detail = false, "no cgroup here (test)"
			}
		}
		return r
	}
	home := t.TempDir()
	check := func(name string, wantCode int, wantStatus string, args ...string) {
		t.Helper()
		r := cordon(t, home, append([]string{"doctor"}, args...)...)
		if r.code != wantCode || !strings.Contains(r.stdout, wantStatus) {
			t.Fatalf("%s: exit %d (want %d), want cgroup %q\nstdout: %s\nstderr: %s", name, r.code, wantCode, wantStatus, r.stdout, r.stderr)
		}
		if wantCode != 0 && (!strings.Contains(r.stderr, "cordon serve would refuse to start") || !strings.Contains(r.stderr, "cgroup")) {
			t.Fatalf("%s: stderr %s", name, r.stderr)
		}
	}
	check("default", ExitError, "MISSING")
	check("default: no live sandbox", ExitError, "live sandbox: not run: cordon serve would refuse to start (above)")
	check("flag", 0, "missing (allowed)", "--insecure-allow-missing", "cgroup")
	check("not strict", 0, "missing (not strict)", "--strict=false")
	check("strict, allowed by --set", 0, "missing (allowed)", "--strict", "--set", "sandbox.allow_missing=cgroup")
	t.Setenv("CORDON_SANDBOX_ALLOW_MISSING", "cgroup")
	check("env", 0, "missing (allowed)", "--strict")
	t.Setenv("CORDON_SANDBOX_ALLOW_MISSING", "")
	writeFile(t, filepath.Join(home, "config.toml"), "[sandbox]\nallow_missing = \"cgroup\"\n", 0o600)
	check("file", 0, "missing (allowed)")
	writeFile(t, filepath.Join(home, "config.toml"), "[sandbox]\nstrict = false\n", 0o600)
	check("file not strict", 0, "missing (not strict)")
	check("flag over file", ExitError, "MISSING", "--strict")
	writeFile(t, filepath.Join(home, "config.toml"), "isolation = \"inprocess\"\n", 0o600)
	check("inprocess", 0, "isolation: inprocess: INSECURE")
	check("inprocess: no live sandbox", 0, "live sandbox: not run: isolation = inprocess")
}
