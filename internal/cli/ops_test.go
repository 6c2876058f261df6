package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Every command's --help has examples.
func TestEveryCommandHasExamples(t *testing.T) {
	root := newRoot(&globals{stdout: io.Discard, stderr: io.Discard})
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		n++
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%q has no examples", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if n < 15 {
		t.Fatalf("only %d commands", n)
	}
	// And --help shows them.
	r := cordon(t, t.TempDir(), "logs", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "cordon logs -f") {
		t.Fatalf("logs --help: %+v", r)
	}
}

func TestCompletion(t *testing.T) {
	home := t.TempDir()
	for shell, want := range map[string]string{"bash": "__start_cordon", "zsh": "#compdef cordon", "fish": "complete -c cordon",
		"powershell": "Register-ArgumentCompleter"} {
		if r := cordon(t, home, "completion", shell); r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s: exit %d, %.200s", shell, r.code, r.stdout)
		}
	}
	if r := cordon(t, home, "completion", "tcsh"); r.code != ExitUsage {
		t.Errorf("completion tcsh: %+v", r)
	}
	// Canister ids complete from the store.
	id := must(t, cordon(t, home, "install", filepath.Join(corpus, "counter.wasm")))
	if r := cordon(t, home, "__complete", "call", ""); r.code != 0 || !strings.Contains(r.stdout, id) {
		t.Errorf("complete ids: %+v", r)
	}
	if r := cordon(t, home, "__complete", "--set", "limits.upd"); !strings.Contains(r.stdout, "limits.update_instructions=") {
		t.Errorf("complete --set: %+v", r)
	}
}

func TestConfigShowCommand(t *testing.T) {
	home := t.TempDir()
	os.WriteFile(filepath.Join(home, "config.toml"), []byte("[limits]\nlog_lines = 10\nupdate_instructions = 1000\n"), 0o600)
	t.Setenv("CORDON_LOG_FORMAT", "json")
	r := cordon(t, home, "--set", "limits.log_lines=20", "config", "show")
	if r.code != 0 {
		t.Fatalf("config show: %+v", r)
	}
	for _, want := range []string{"# file: " + filepath.Join(home, "config.toml"), `format = "json"`, "# env, CORDON_LOG_FORMAT",
		"log_lines = 20", "# flag, CORDON_LIMITS_LOG_LINES", "update_instructions = 1000", "# file, CORDON_LIMITS_UPDATE_INSTRUCTIONS",
		`level = "warn"`, "# default, CORDON_LOG_LEVEL", "gib_storage_per_second = 127_000", "# default, CORDON_FEES_GIB_STORAGE_PER_SECOND"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("config show lacks %q:\n%s", want, r.stdout)
		}
	}
	r = cordon(t, home, "config", "show", "--output", "json")
	var m map[string]map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || m["limits.log_lines"]["value"] != "10" || m["limits.log_lines"]["source"] != "file" {
		t.Fatalf("config show json: %v %s", err, r.stdout)
	}
	// The configuration reaches the node: 1000 instructions are not
	// enough for an update.
	id := must(t, cordon(t, home, "--set", "limits.update_instructions=40_000_000_000", "install", filepath.Join(corpus, "counter.wasm")))
	r = cordon(t, home, "call", id, "inc")
	if r.code != ExitRejected || !strings.Contains(r.stderr, "limit of instructions") {
		t.Fatalf("call with a 1000-instruction limit from the file: %+v", r)
	}
	must(t, cordon(t, home, "--set", "limits.update_instructions=40_000_000_000", "call", id, "inc"))
	// Mistakes are usage errors that say what is wrong.
	for _, args := range [][]string{
		{"--set", "limits.update_instrutions=5", "config", "show"},
		{"--set", "nonsense", "config", "show"},
		{"--isolation", "vm", "status"},
		{"--log-format", "xml", "status"},
	} {
		if r := cordon(t, home, args...); r.code != ExitUsage || r.stderr == "" {
			t.Errorf("%v: %+v", args, r)
		}
	}
	os.WriteFile(filepath.Join(home, "config.toml"), []byte("[limits]\nlogLines = 10\n"), 0o600)
	if r := cordon(t, home, "status"); r.code != ExitUsage || !strings.Contains(r.stderr, "did you mean limits.log_lines") {
		t.Errorf("unknown key in the file: %+v", r)
	}
}

// TestLogsFollowLocal: without a server, logs -f polls the store without
// keeping it locked, so other commands run meanwhile.
func TestLogsFollowLocal(t *testing.T) {
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", filepath.Join(corpus, "..", "canisters", "kv.wasm")))
	must(t, cordon(t, home, "call", id, "put", `("a", "1")`))
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"--home", home, "logs", "-f", id}, strings.NewReader(""), &out, &errb)
	}()
	waitUntil(t, "the first line", func() bool { return strings.Contains(out.String(), "put a") })
	must(t, cordon(t, home, "call", id, "put", `("b", "2")`))
	waitUntil(t, "the second line", func() bool { return strings.Contains(out.String(), "put b") })
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("logs -f: exit %d: %s", code, errb.String())
	}
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 2 {
		t.Fatalf("lines: %q", lines)
	}
	// --since and json.
	r := cordon(t, home, "logs", "--since", "1", "--output", "json", id)
	if r.code != 0 || strings.Contains(r.stdout, "put a") || !strings.Contains(r.stdout, "put b") {
		t.Fatalf("logs --since 1: %+v", r)
	}
	// A canister that does not exist.
	if r := cordon(t, home, "logs", "-f", "ryjl3-tyaaa-aaaaa-aaaba-cai"); r.code != ExitRejected {
		t.Fatalf("logs -f of a missing canister: %+v", r)
	}
}

// TestServeCommand runs `cordon serve` in-process: other commands reach it,
// logs -f follows through it, and cancelling (what SIGTERM does) shuts it
// down cleanly with exit 0.
func TestServeCommand(t *testing.T) {
	home := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var serr lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"--home", home, "serve", "--listen", "127.0.0.1:0", "--log-format", "json"}, strings.NewReader(""), io.Discard, &serr)
	}()
	waitUntil(t, "serve.json", func() bool { _, err := os.Stat(filepath.Join(home, "serve.json")); return err == nil })
	id := must(t, cordon(t, home, "install", filepath.Join(corpus, "kv.wasm")))
	must(t, cordon(t, home, "call", id, "put", `("a", "1")`))

	fctx, fcancel := context.WithCancel(context.Background())
	var out lockedBuffer
	fdone := make(chan int, 1)
	go func() {
		fdone <- Run(fctx, []string{"--home", home, "logs", "-f", id}, strings.NewReader(""), &out, io.Discard)
	}()
	waitUntil(t, "the first line", func() bool { return strings.Contains(out.String(), "put a") })
	must(t, cordon(t, home, "call", id, "put", `("b", "2")`))
	waitUntil(t, "the second line", func() bool { return strings.Contains(out.String(), "put b") })
	fcancel()
	<-fdone

	// The default isolation is the sandbox: the canister's sandbox is live.
	if r := cordon(t, home, "ps", "--output", "json"); r.code != 0 || !strings.Contains(r.stdout, `"canister": "`+id+`"`) || !strings.Contains(r.stdout, `"pid": `) {
		t.Errorf("ps: %+v", r)
	}
	// serve keeps a warm pool (sandbox.warm_pool, default 2): ps lists its
	// blank sandboxes, with no canister.
	waitUntil(t, "blank sandboxes in ps", func() bool {
		r := cordon(t, home, "ps")
		n := 0
		for _, l := range strings.Split(r.stdout, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "-" && f[1] == "blank" {
				n++
			}
		}
		return r.code == 0 && n == 2
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve: exit %d\n%s", code, serr.String())
		}
	case <-time.After(40 * time.Second):
		t.Fatal("serve did not stop")
	}
	if _, err := os.Stat(filepath.Join(home, "serve.json")); !os.IsNotExist(err) {
		t.Fatalf("serve.json left behind: %v", err)
	}
	// The logs are JSON, at info level for serve, and say it stopped.
	logs := serr.String()
	for _, want := range []string{`"msg":"sandbox check passed`, `"msg":"serving"`, `"level":"INFO"`, `"msg":"stopped cleanly"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("serve logs lack %s:\n%s", want, logs)
		}
	}
	// The state is there without the server.
	if got := must(t, cordon(t, home, "query", id, "size")); got != "(2 : nat)" {
		t.Fatalf("size after serve: %s", got)
	}
}

func TestProgress(t *testing.T) {
	defer func(f func(io.Writer) bool, d time.Duration) { isTerminal, progressDelay = f, d }(isTerminal, progressDelay)
	var b lockedBuffer
	isTerminal = func(io.Writer) bool { return false }
	stop := progress(&b, "compiling")
	time.Sleep(50 * time.Millisecond)
	stop()
	if b.String() != "" {
		t.Fatalf("progress on a non-terminal: %q", b.String())
	}
	isTerminal = func(io.Writer) bool { return true }
	progressDelay = 0
	stop = progress(&b, "compiling x.wasm")
	time.Sleep(250 * time.Millisecond)
	stop()
	stop() // idempotent
	s := b.String()
	if !strings.Contains(s, "compiling x.wasm") || !strings.HasSuffix(s, "\r\033[K") || strings.Count(s, "\r") < 3 {
		t.Fatalf("progress output %q", s)
	}
	// A quick operation shows nothing.
	progressDelay = time.Second
	var q lockedBuffer
	progress(&q, "quick")()
	if q.String() != "" {
		t.Fatalf("quick operation: %q", q.String())
	}
}

// TestSecondSignalForcesExit: the first SIGTERM cancels, the second exits
// with 128+15.
func TestSecondSignalForcesExit(t *testing.T) {
	exited := make(chan int, 1)
	defer func(f func(int)) { exit = f }(exit)
	exit = func(code int) { exited <- code }
	var errb lockedBuffer
	ctx, stop := notifyContext(&errb)
	defer stop()
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("first SIGTERM did not cancel")
	}
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case code := <-exited:
		if code != 143 || !strings.Contains(errb.String(), "second signal") {
			t.Fatalf("forced exit %d: %s", code, errb.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second SIGTERM did not force the exit")
	}
}
