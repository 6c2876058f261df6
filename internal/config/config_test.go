package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/homedir"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	c, err := Load(Inputs{Home: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if c.Isolation != "sandbox" || c.Listen != "127.0.0.1:4943" || c.LogLevel != "warn" || c.LogFormat != "text" ||
		c.Host.UpdateInstructions != 40_000_000_000 || c.Host.HeapBytes32 != 4<<30 || c.File != "" {
		t.Fatalf("defaults: %+v", c)
	}
	for _, s := range Settings {
		if c.Source(s.Key) != FromDefault {
			t.Errorf("%s: source %s", s.Key, c.Source(s.Key))
		}
	}
	if c.Host.Home != c.Home || c.Host.Isolation != c.Isolation {
		t.Fatal("host config not filled in")
	}
}

// TestPrecedence: flags > env > file > defaults, per key.
func TestPrecedence(t *testing.T) {
	home := t.TempDir()
	file := `
isolation = "inprocess"

[log]
level = "debug"
format = "json"

[server]
listen = "127.0.0.1:9000"
request_timeout = "1m"

[limits]
update_instructions = 1_000_000
heap_bytes_32 = "1GiB"
log_lines = 50

[fees]
initial_cycles = "340282366920938463463374607431768211455"
`
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	env := envOf(map[string]string{
		"CORDON_LOG_LEVEL":                   "error",
		"CORDON_LIMITS_LOG_LINES":            "70",
		"CORDON_SERVER_LISTEN":               "127.0.0.1:9001",
		"CORDON_FEES_PER_INSTRUCTION":        "3",
		"CORDON_FEES_GIB_STORAGE_PER_SECOND": "317_500",
	})
	c, err := Load(Inputs{Home: home, Env: env, Flags: []Assignment{
		{Key: "limits.log_lines", Value: "90", Flag: "--set"},
		{Key: "server.listen", Value: "127.0.0.1:9002", Flag: "--listen"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key, value string
		src        Source
	}{
		{"isolation", "inprocess", FromFile},
		{"log.level", "error", FromEnv},
		{"log.format", "json", FromFile},
		{"server.listen", "127.0.0.1:9002", FromFlag},
		{"server.request_timeout", "1m0s", FromFile},
		{"server.shutdown_timeout", "30s", FromDefault},
		{"limits.update_instructions", "1000000", FromFile},
		{"limits.heap_bytes_32", "1073741824", FromFile},
		{"limits.log_lines", "90", FromFlag},
		{"fees.per_instruction", "3", FromEnv},
		{"fees.gib_storage_per_second", "317500", FromEnv},
		{"fees.canister_creation", "100000000000", FromDefault},
		{"fees.initial_cycles", "340282366920938463463374607431768211455", FromFile},
	} {
		s, _ := Lookup(tc.key)
		if got := s.Get(c); got != tc.value || c.Source(tc.key) != tc.src {
			t.Errorf("%s = %s (%s), want %s (%s)", tc.key, got, c.Source(tc.key), tc.value, tc.src)
		}
	}
	if c.File != filepath.Join(home, "config.toml") || c.Host.LogLines != 90 || c.RequestTimeout != time.Minute {
		t.Fatalf("config %+v", c)
	}

	// The annotated rendering names each source; the plain one is a
	// config file that loads back to the same values.
	shown := c.TOML(true)
	for _, want := range []string{`level = "error"`, "# env, CORDON_LOG_LEVEL", "log_lines = 90", "# flag, CORDON_LIMITS_LOG_LINES",
		"update_instructions = 1_000_000", "# file, CORDON_LIMITS_UPDATE_INSTRUCTIONS"} {
		if !strings.Contains(shown, want) {
			t.Errorf("config show lacks %q:\n%s", want, shown)
		}
	}
	other := t.TempDir()
	path := filepath.Join(other, "copy.toml")
	if err := os.WriteFile(path, []byte(c.TOML(false)), 0o600); err != nil {
		t.Fatal(err)
	}
	c2, err := Load(Inputs{Home: other, ConfigFile: path})
	if err != nil {
		t.Fatalf("reload the plain rendering: %v\n%s", err, c.TOML(false))
	}
	for _, s := range Settings {
		if s.Get(c) != s.Get(c2) {
			t.Errorf("%s: %s, reloaded %s", s.Key, s.Get(c), s.Get(c2))
		}
	}
}

func TestConfigFileSources(t *testing.T) {
	home := t.TempDir()
	// CORDON_CONFIG names a file, which must then exist.
	if _, err := Load(Inputs{Home: home, Env: envOf(map[string]string{"CORDON_CONFIG": "/nonexistent.toml"})}); err == nil {
		t.Fatal("missing CORDON_CONFIG file: no error")
	}
	if _, err := Load(Inputs{Home: home, ConfigFile: "/nonexistent.toml"}); err == nil {
		t.Fatal("missing --config file: no error")
	}
	// CORDON_HOME is the home when --home is not given.
	c, err := Load(Inputs{Env: envOf(map[string]string{"CORDON_HOME": home})})
	if err != nil || c.Home != home {
		t.Fatalf("CORDON_HOME: %v %v", c, err)
	}
}

func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		file string
		env  map[string]string
		set  []Assignment
		want string
	}{
		{file: "[limits]\nupdate_instrutions = 5\n", want: "did you mean limits.update_instructions"},
		{file: "update_instructions = 5\n", want: "did you mean limits.update_instructions"},
		{file: "[nonsense]\nx = 1\n", want: "unknown section [nonsense]"},
		{file: "[limits]\nupdate_instructions = -5\n", want: "non-negative integer"},
		{file: "[limits]\nheap_bytes_32 = \"4 parsecs\"\n", want: "byte count"},
		{file: "[log]\nlevel = \"loud\"\n", want: "want debug or info or warn or error"},
		{file: "[server]\nrequest_timeout = \"soon\"\n", want: "duration"},
		{file: "[server]\nlisten = [1, 2]\n", want: "want a string"},
		{file: "[limits\n", want: "At line"},
		{file: "[server]\ntls_cert = \"c.pem\"\n", want: "go together"},
		{env: map[string]string{"CORDON_ISOLATION": "vm"}, want: "CORDON_ISOLATION"},
		{env: map[string]string{"CORDON_SERVER_MAX_REQUESTS": "0"}, want: "from 1 to 2147483647"},
		{set: []Assignment{{Key: "limits.nope", Value: "1", Flag: "--set"}}, want: "unknown setting"},
		{set: []Assignment{{Key: "fees.initial_cycles", Value: "many", Flag: "--set"}}, want: "not a decimal"},
	} {
		home := t.TempDir()
		if tc.file != "" {
			os.WriteFile(filepath.Join(home, "config.toml"), []byte(tc.file), 0o600)
		}
		_, err := Load(Inputs{Home: home, Env: envOf(tc.env), Flags: tc.set})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q %v %v: %v, want an error containing %q", tc.file, tc.env, tc.set, err, tc.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "4096": 4096, "4_096": 4096, "4KiB": 4096, "4 KiB": 4096, "2MiB": 2 << 20,
		"4GiB": 4 << 30, "6gb": 6 << 30, "1TiB": 1 << 40, "010": 10} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "-1", "1.5GiB", "4 furlongs", "99999999999999999999", "20000000TiB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): no error", in)
		}
	}
}

func TestEnvNames(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Settings {
		e := s.Env()
		if !strings.HasPrefix(e, "CORDON_") || strings.ContainsAny(e, ".-") || seen[e] {
			t.Errorf("%s: env %s", s.Key, e)
		}
		seen[e] = true
		if s.Help == "" {
			t.Errorf("%s: no help", s.Key)
		}
	}
	if s, _ := Lookup("limits.heap_bytes_32"); s.Env() != "CORDON_LIMITS_HEAP_BYTES_32" {
		t.Fatal(s.Env())
	}
}

// limits.log_bytes bounds each canister's kept log: 64 KiB by default, a
// byte count with units, and never below what fetch_canister_logs needs.
func TestLogBytes(t *testing.T) {
	c, err := Load(Inputs{Home: t.TempDir()})
	if err != nil || c.Host.LogBytes != 64<<10 {
		t.Fatalf("default: %d, %v", c.Host.LogBytes, err)
	}
	c, err = Load(Inputs{Home: t.TempDir(), Env: envOf(map[string]string{"CORDON_LIMITS_LOG_BYTES": "128KiB"})})
	if err != nil || c.Host.LogBytes != 128<<10 || c.Source("limits.log_bytes") != FromEnv {
		t.Fatalf("from the environment: %d, %v", c.Host.LogBytes, err)
	}
	for _, v := range []string{"1KiB", "0", "2GiB", "lots"} {
		_, err := Load(Inputs{Home: t.TempDir(), Flags: []Assignment{{Key: "limits.log_bytes", Value: v, Flag: "--set"}}})
		if err == nil {
			t.Errorf("limits.log_bytes = %s accepted", v)
		}
	}
}

// A configuration file named with --config (or CORDON_CONFIG) is checked as
// a home is: a directory on the way to it that another user may write
// (not sticky) lets them swap the file for their own, and so does one on
// the way to a symbolic link's target; the file itself must be regular and
// writable by no one else. In a sticky directory (/tmp) a file of one's
// own is fine.
func TestConfigFileParentsChecked(t *testing.T) {
	home := t.TempDir()
	shared := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(shared, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o777); err != nil { // no sticky bit
		t.Fatal(err)
	}
	file := filepath.Join(shared, "cordon.toml")
	if err := os.WriteFile(file, []byte("[limits]\nlog_lines = 7\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	refused := func(what, path, wantPath, wantFix string, env bool) {
		t.Helper()
		in := Inputs{Home: home, ConfigFile: path}
		if env {
			in = Inputs{Home: home, Env: envOf(map[string]string{"CORDON_CONFIG": path})}
		}
		_, err := Load(in)
		var ue *homedir.UnsafeError
		if !errors.As(err, &ue) || ue.Path != wantPath || !strings.Contains(err.Error(), wantFix) {
			t.Fatalf("%s: %v, want a refusal of %s with %q", what, err, wantPath, wantFix)
		}
		t.Logf("%s: %v", what, err)
	}
	refused("--config in a directory of mode 0777", file, shared, "chmod go-w "+shared, false)
	refused("CORDON_CONFIG in a directory of mode 0777", file, shared, "chmod go-w "+shared, true)
	// A link in a safe directory to the file in the unsafe one.
	safe := t.TempDir()
	link := filepath.Join(safe, "cordon.toml")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	refused("a link to it", link, shared, "chmod go-w "+shared, false)
	// Sticky: the file is the user's own, and used.
	if err := os.Chmod(shared, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	c, err := Load(Inputs{Home: home, ConfigFile: link})
	if err != nil || c.Host.LogLines != 7 {
		t.Fatalf("a file of one's own in a sticky directory: %v", err)
	}
	// The file itself writable by others.
	if err := os.Chmod(file, 0o620); err != nil {
		t.Fatal(err)
	}
	refused("a group-writable file", file, file, "chmod go-w "+file, false)
}
