package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Mistakes on the command line are usage errors (exit 2) on one line that
// say what was given and what is expected, found before anything is done:
// no canister is created, no Go package's wording leaks.
func TestUsageErrors(t *testing.T) {
	home := t.TempDir()
	counter := filepath.Join(corpus, "counter.wasm")
	id := "rwlgt-iiaaa-aaaaa-aaaaa-cai"
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"install", "--mode", "bogus", counter}, "--mode \"bogus\": must be install, reinstall or upgrade"},
		{[]string{"install", "--mode", "upgrade", counter}, "--mode upgrade needs --id"},
		{[]string{"install", "--mode", "reinstall", counter}, "--mode reinstall needs --id"},
		{[]string{"install", "--output", "xml", counter}, `--output "xml": want text or json`},
		{[]string{"install", "--cycles", "abc", counter}, `--cycles "abc"`},
		{[]string{"install", "--wasm-memory-persistence", "bogus", counter}, `--wasm-memory-persistence "bogus": want keep or replace`},
		{[]string{"install", "--skip-pre-upgrade", counter}, "--skip-pre-upgrade needs --mode upgrade"},
		{[]string{"install", "--canister-isolation", "bogus", counter}, `--canister-isolation "bogus": want sandbox or inprocess`},
		{[]string{"install", "--id", "not-a-principal", counter}, `--id "not-a-principal"`},
		{[]string{"install", "--caller", "nope", counter}, `--caller "nope"`},
		{[]string{"status", "--output", "xml"}, `--output "xml"`},
		{[]string{"status", "--output", "xml", id}, `--output "xml"`},
		{[]string{"status", "not-a-principal"}, `canister id "not-a-principal"`},
		{[]string{"call", "not-a-principal", "get"}, `canister id "not-a-principal"`},
		{[]string{"call", "--output", "xml", id, "get"}, `--output "xml": want candid, raw or json`},
		{[]string{"call", "--type", "hex", id, "get"}, `--type "hex"`},
		{[]string{"call", "--type", "raw", id, "add", "zz"}, `"zz" is not hex: 'z' at offset 0 is not a hex digit`},
		{[]string{"candid", "decode", "4449z"}, `'z' at offset 4`},
		{[]string{"candid", "decode", "abc"}, "odd number of hex digits"},
		{[]string{"logs", "--since", "-1", id}, `--since "-1": want a whole number, 0 or more`},
		{[]string{"delete", "not-a-principal"}, `canister id "not-a-principal"`},
		{[]string{"stop", "not-a-principal"}, `canister id "not-a-principal"`},
		{[]string{"bogus"}, `unknown command "bogus" for "cordon" (did you mean logs?)`},
		{[]string{"candid", "bogus"}, `unknown command "bogus" for "cordon candid"`},
		{[]string{"config", "bogus"}, `unknown command "bogus" for "cordon config"`},
		{[]string{"doctor", "extra"}, "accepts 0 arg(s), received 1"},
		{[]string{"bench", "extra"}, "accepts 0 arg(s), received 1"}, // Args fail before anything runs
		{[]string{"serve", "--strict=maybe"}, `--strict "maybe": want true or false`},
	}
	for _, c := range cases {
		r := cordon(t, home, c.args...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args, r.code, r.stderr, ExitUsage, c.want)
		}
		for _, leak := range []string{`\n`, "\n", "strconv.", "encoding/hex", "Canister  not found", "context canceled"} {
			if strings.Contains(r.stderr, leak) {
				t.Errorf("%v: stderr %q contains %q", c.args, r.stderr, leak)
			}
		}
	}
	// Nothing was created, and the store was never made.
	if _, err := os.Stat(filepath.Join(home, "cordon.db")); !os.IsNotExist(err) {
		t.Fatalf("a usage error opened the store: %v", err)
	}
	// A group alone prints its help.
	if r := cordon(t, home, "candid"); r.code != 0 || !strings.Contains(r.stdout, "encode") {
		t.Errorf("candid alone: %+v", r)
	}
	// A configuration file that cannot be read is an error, not a usage
	// error (a directory: root reads any file whatever its mode).
	if r := cordon(t, home, "--config", t.TempDir(), "status"); r.code != ExitError || !strings.Contains(r.stderr, "read configuration") {
		t.Errorf("unreadable configuration: %+v", r)
	}
}

// Candid text whose values do not fit the method's types is a usage error
// that says where, what was given and what is expected, once.
func TestCandidValueErrorMessages(t *testing.T) {
	home := t.TempDir()
	id := must(t, cordon(t, home, "--isolation", "inprocess", "install", filepath.Join(corpus, "counter.wasm")))
	for arg, want := range map[string]string{
		"(-1 : int)": "at 1:2: type mismatch: a value of type int cannot be of type nat",
		"(-1)":       "at 1:2: -1 is negative, it cannot be a nat",
		`("x")`:      "at 1:2: a text cannot be of type nat",
	} {
		r := cordon(t, home, "--isolation", "inprocess", "call", id, "add", arg)
		if r.code != ExitUsage || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "expected (nat)") ||
			strings.Contains(r.stderr, "syntax error") || strings.Count(r.stderr, "candid:") != 1 {
			t.Errorf("add %s: exit %d, %q; want %q", arg, r.code, r.stderr, want)
		}
	}
}

// Every flag's help names its value with a word, not with a phrase that
// pflag took from backquotes; serve's --strict shows that it is on.
func TestFlagPlaceholders(t *testing.T) {
	root := newRoot(&globals{stdout: io.Discard, stderr: io.Discard})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		check := func(f *pflag.Flag) {
			name, _ := pflag.UnquoteUsage(f)
			if strings.ContainsAny(name, " '") || strings.Contains(name, "cordon") {
				t.Errorf("%s --%s: value placeholder %q", c.CommandPath(), f.Name, name)
			}
		}
		c.LocalFlags().VisitAll(check)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	r := cordon(t, t.TempDir(), "serve", "--help")
	for _, want := range []string{"--listen HOST:PORT", "--tls-cert FILE", "--tls-key FILE", "(default true)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("serve --help lacks %q", want)
		}
	}
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.Contains(l, "--strict") && !strings.Contains(l, "(default true)") {
			t.Errorf("serve --help: %s", l)
		}
	}
	// The metrics example sends the token, as /metrics requires.
	if !strings.Contains(r.stdout, `-H "Authorization: Bearer $(cat`) {
		t.Errorf("serve --help: the curl example lacks the token:\n%s", r.stdout)
	}
}

// The examples of call and query work as written on the counter canister
// (the first canister of a home).
func TestCallQueryExamplesRun(t *testing.T) {
	home := t.TempDir()
	if id := must(t, cordon(t, home, "--isolation", "inprocess", "install", filepath.Join(corpus, "counter.wasm"))); id != "rwlgt-iiaaa-aaaaa-aaaaa-cai" {
		t.Fatalf("first id %s", id)
	}
	root := newRoot(&globals{stdout: io.Discard, stderr: io.Discard})
	n := 0
	for _, c := range root.Commands() {
		if c.Name() != "call" && c.Name() != "query" {
			continue
		}
		for _, line := range strings.Split(c.Example, "\n") {
			args := shellWords(t, strings.TrimSpace(line))
			if len(args) < 2 || args[0] != "cordon" {
				t.Fatalf("example %q", line)
			}
			n++
			if r := cordon(t, home, append([]string{"--isolation", "inprocess"}, args[1:]...)...); r.code != 0 {
				t.Errorf("example %q: exit %d: %s", line, r.code, r.stderr)
			}
		}
	}
	if n < 6 {
		t.Fatalf("%d examples", n)
	}
}

// shellWords splits an example line as a shell would (single quotes only).
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	in, any := false, false
	for _, r := range line {
		switch {
		case r == '\'':
			in, any = !in, true
		case r == ' ' && !in:
			if any {
				words = append(words, cur.String())
			}
			cur.Reset()
			any = false
		default:
			cur.WriteRune(r)
			any = true
		}
	}
	if in {
		t.Fatalf("unbalanced quote: %s", line)
	}
	if any {
		words = append(words, cur.String())
	}
	return words
}

// status shows each setting once, all of them, and the canister's
// isolation override (text and JSON).
func TestStatusShowsEverySetting(t *testing.T) {
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", "--canister-isolation", "inprocess", filepath.Join(corpus, "counter.wasm")))
	must(t, cordon(t, home, "call", "aaaaa-aa", "update_settings",
		`(record { canister_id = principal "`+id+`"; settings = record { freezing_threshold = opt 100; compute_allocation = opt 7 } })`))
	text := must(t, cordon(t, home, "status", id))
	for _, want := range []string{
		"freezing threshold:", "100 s", "compute allocation:", "7 %", "reserved cycles limit:", "memory allocation:",
		"wasm memory limit:", "wasm memory threshold:", "log visibility:", "controllers:",
		"isolation:", "inprocess (this canister's override",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
	for _, l := range regexp.MustCompile(`(?m)^([a-z /]+):`).FindAllStringSubmatch(text, -1) {
		if l[1] != "env" && strings.Count(text, "\n"+l[1]+":")+boolInt(strings.HasPrefix(text, l[1]+":")) != 1 {
			t.Errorf("status shows %q more than once:\n%s", l[1], text)
		}
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(must(t, cordon(t, home, "status", "--output", "json", id))), &st); err != nil {
		t.Fatal(err)
	}
	if st["isolation"] != "inprocess" || st["isolation_override"] != "inprocess" || st["reserved_cycles_limit"] == nil ||
		fmt.Sprint(st["freezing_threshold"]) != "100" || fmt.Sprint(st["compute_allocation"]) != "7" {
		t.Errorf("status json: isolation %v override %v reserved %v freezing %v compute %v", st["isolation"],
			st["isolation_override"], st["reserved_cycles_limit"], st["freezing_threshold"], st["compute_allocation"])
	}
	// A canister that follows the node says so.
	id2 := must(t, cordon(t, home, "install", filepath.Join(corpus, "counter.wasm")))
	if text := must(t, cordon(t, home, "status", id2)); !strings.Contains(text, "sandbox (the node's mode)") {
		t.Errorf("status of a canister following the node:\n%s", text)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// install --cycles too few for the install: the canister it created is
// gone, so the error says so and how many cycles an install needs, and
// that many is enough.
func TestInstallTooFewCycles(t *testing.T) {
	home := t.TempDir()
	counter := filepath.Join(corpus, "counter.wasm")
	r := cordon(t, home, "--isolation", "inprocess", "install", "--cycles", "1000", counter)
	m := regexp.MustCompile(`install --cycles (\d+)\)`).FindStringSubmatch(r.stderr)
	if r.code != ExitRejected || !strings.Contains(r.stderr, "the canister was not kept") || strings.Contains(r.stderr, "top up") || m == nil {
		t.Fatalf("install --cycles 1000: %+v", r)
	}
	if got := must(t, cordon(t, home, "status")); strings.Contains(got, "-cai") {
		t.Fatalf("the canister was kept:\n%s", got)
	}
	must(t, cordon(t, home, "--isolation", "inprocess", "install", "--cycles", m[1], counter))
}

// Interrupted while waiting for an update's reply: exit 130 and what that
// means for the call, never Go's "context canceled"; the node opened by
// the command lets the message finish before closing.
func TestInterruptedCall(t *testing.T) {
	defer func(f func(io.Writer) bool, d time.Duration) { isTerminal, progressDelay = f, d }(isTerminal, progressDelay)
	home := t.TempDir()
	set := []string{"--home", home, "--isolation", "inprocess", "--set", "limits.update_instructions=1_000_000_000"}
	var out, ierr bytes.Buffer
	if code := Run(context.Background(), append(set, "install", filepath.Join(corpus, "compute.wasm")), strings.NewReader(""), &out, &ierr); code != 0 {
		t.Fatalf("install: %d %s", code, ierr.String())
	}
	id := strings.TrimSpace(out.String())
	// The spinner's line tells the test that the call is under way.
	isTerminal, progressDelay = func(io.Writer) bool { return true }, 0
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, append(set, "call", id, "spin"), strings.NewReader(""), io.Discard, &errb)
	}()
	waitUntil(t, "the call to be under way", func() bool { return strings.Contains(errb.String(), "waiting for the reply of spin") })
	cancel(signalCause{syscall.SIGINT})
	code := <-done
	msg := errb.String()
	if code != ExitInterrupted || !strings.Contains(msg, "cordon: interrupted while waiting for the reply of spin") ||
		!strings.Contains(msg, "cordon status "+id) || strings.Contains(msg, "context canceled") {
		t.Fatalf("interrupted call: exit %d: %q", code, msg)
	}
}

// The exit code of an interrupt is 128 + its signal's number.
func TestInterruptExitCode(t *testing.T) {
	for cause, want := range map[error]int{nil: 130, signalCause{syscall.SIGINT}: 130, signalCause{syscall.SIGTERM}: 143} {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(cause)
		if got := interruptExit(ctx); got != want {
			t.Errorf("cause %v: exit %d, want %d", cause, got, want)
		}
	}
}

// A second serve on a served home fails at once, naming the running
// server; a serve.json a dead server left does not stop one.
func TestSecondServeFailsAtOnce(t *testing.T) {
	home := t.TempDir()
	defer func(d time.Duration) { storeWait = d }(storeWait)
	storeWait = 5 * time.Second // without the check: it would wait, then give up
	_, stop := startServe(t, home)
	waitServing(t, home)
	b, err := os.ReadFile(filepath.Join(home, "serve.json"))
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Addr string `json:"addr"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatal(err)
	}
	var errb lockedBuffer
	code := Run(context.Background(), []string{"--home", home, "serve", "--listen", "127.0.0.1:0"}, strings.NewReader(""), io.Discard, &errb)
	msg := errb.String()
	if code != ExitError || !strings.Contains(msg, "already running") || !strings.Contains(msg, fmt.Sprintf("pid %d", os.Getpid())) ||
		!strings.Contains(msg, info.Addr) || strings.Contains(msg, "waiting") {
		t.Fatalf("second serve: exit %d: %s", code, msg)
	}
	stop()

	// A serve.json whose process is gone is stale.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf(`{"addr":%q,"pid":%d,"token":true}`, info.Addr, dead.Process.Pid)
	if err := os.WriteFile(filepath.Join(home, "serve.json"), []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stop = startServe(t, home)
	waitUntil(t, "the new server's serve.json", func() bool {
		b, _ := os.ReadFile(filepath.Join(home, "serve.json"))
		return len(b) > 0 && string(b) != stale
	})
	stop()
}

// What packages log through slog's default logger (the sandbox
// executable's checks) comes out in the configured format.
func TestDefaultLoggerFollowsLogFormat(t *testing.T) {
	defer func(l *slog.Logger) { slog.SetDefault(l) }(slog.Default())
	var errb lockedBuffer
	if code := Run(context.Background(), []string{"--home", t.TempDir(), "--log-format", "json", "--isolation", "inprocess", "status"},
		strings.NewReader(""), io.Discard, &errb); code != 0 {
		t.Fatalf("status: %d %s", code, errb.String())
	}
	slog.Warn("sandbox executable: not using the worker-only binary next to cordon", "path", "/x")
	var rec map[string]any
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	line := lines[len(lines)-1]
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["level"] != "WARN" || rec["path"] != "/x" {
		t.Fatalf("default logger output %q: %v", line, err)
	}
}
