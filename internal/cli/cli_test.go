package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sandbox"
)

var corpus = filepath.Join("..", "..", "..", "shared", "canisters")

type run struct {
	code           int
	stdout, stderr string
}

func cordon(t *testing.T, home string, args ...string) run {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(append([]string{"--home", home}, args...), strings.NewReader(""), &out, &errb)
	return run{code, strings.TrimSpace(out.String()), strings.TrimSpace(errb.String())}
}

func must(t *testing.T, r run) string {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	return r.stdout
}

func TestCounterThroughCLI(t *testing.T) {
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", filepath.Join(corpus, "counter.wasm")))
	if id != "rwlgt-iiaaa-aaaaa-aaaaa-cai" {
		t.Fatalf("first canister id %q", id)
	}
	if got := must(t, cordon(t, home, "call", id, "inc")); got != "(1 : nat)" {
		t.Fatalf("inc: %s", got)
	}
	if got := must(t, cordon(t, home, "call", id, "add", "(41)")); got != "(42 : nat)" {
		t.Fatalf("add: %s", got)
	}
	if got := must(t, cordon(t, home, "query", id, "get", "--output", "raw")); got != "4449444c00017d2a" {
		t.Fatalf("get raw: %s", got)
	}
	if got := must(t, cordon(t, home, "call", "--type", "raw", id, "add", "4449444c00017d01", "--output", "raw")); got != "4449444c00017d2b" {
		t.Fatalf("add raw: %s", got)
	}
	if got := must(t, cordon(t, home, "query", id, "greet", `("cordon")`)); got != `("Hello, cordon!")` {
		t.Fatalf("greet: %s", got)
	}
	// Upgrade keeps the stable counter; reinstall resets it.
	must(t, cordon(t, home, "install", "--id", id, "--mode", "upgrade", filepath.Join(corpus, "counter.wasm")))
	if got := must(t, cordon(t, home, "query", id, "get")); got != "(43 : nat)" {
		t.Fatalf("get after upgrade: %s", got)
	}
	// Version: install, inc, add, add, upgrade (queries do not count).
	st := must(t, cordon(t, home, "status", id, "--output", "json"))
	if !strings.Contains(st, `"state_hash"`) || !strings.Contains(st, `"version": 5`) {
		t.Fatalf("status: %s", st)
	}
	must(t, cordon(t, home, "stop", id))
	r := cordon(t, home, "call", id, "inc")
	if r.code != ExitRejected || !strings.Contains(r.stderr, "code 5") || !strings.Contains(r.stderr, "stopped") {
		t.Fatalf("call to stopped: %+v", r)
	}
	must(t, cordon(t, home, "start", id))
	must(t, cordon(t, home, "delete", id))
	r = cordon(t, home, "status", id)
	if r.code != ExitRejected || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("status after delete: %+v", r)
	}
}

func TestBadInputThroughCLI(t *testing.T) {
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", filepath.Join(corpus, "counter.wasm")))
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown method", []string{"call", id, "nope"}, ExitRejected, "no update method 'nope'"},
		{"query to update", []string{"query", id, "inc"}, ExitRejected, "no query method 'inc'"},
		{"malformed raw", []string{"call", "--type", "raw", id, "add", "zz"}, ExitUsage, "not hex"},
		{"malformed candid", []string{"call", id, "add", "(1 +"}, ExitUsage, "argument"},
		{"wrong candid type", []string{"call", id, "add", `("text")`}, ExitUsage, "argument"},
		{"missing id", []string{"call"}, ExitUsage, "arg"},
		{"bad id", []string{"call", "not-a-principal", "inc"}, ExitUsage, "canister id"},
		{"missing canister", []string{"call", "ryjl3-tyaaa-aaaaa-aaaba-cai", "inc"}, ExitRejected, "not found"},
		{"missing file", []string{"install", "/nonexistent.wasm"}, ExitError, "read module"},
		{"bad mode", []string{"install", "--id", id, "--mode", "sideways", filepath.Join(corpus, "counter.wasm")}, ExitUsage, "mode"},
	}
	for _, c := range cases {
		r := cordon(t, home, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d stderr %q; want exit %d containing %q", c.name, r.code, r.stderr, c.code, c.want)
		}
	}
	// Invalid modules are refused and nothing changes.
	dir := t.TempDir()
	wasm, _ := os.ReadFile(filepath.Join(corpus, "counter.wasm"))
	trunc := filepath.Join(dir, "trunc.wasm")
	os.WriteFile(trunc, wasm[:1000], 0o600)
	r := cordon(t, home, "install", trunc)
	if r.code != ExitError || !strings.Contains(r.stderr, "invalid canister module") {
		t.Fatalf("truncated module: %+v", r)
	}
	if got := must(t, cordon(t, home, "status")); strings.Count(got, "-cai") != 1 {
		t.Fatalf("a failed install left a canister behind:\n%s", got)
	}
}

func TestTypesThroughCLI(t *testing.T) {
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", filepath.Join(corpus, "types.wasm")))
	profile := `(record { name = "Ada"; age = 36 : nat8; tags = vec { "math"; "engines" }; nickname = opt "countess"; owner = principal "2vxsx-fae"; balance = -1_000_000_000_000_000_000_000 : int })`
	got := must(t, cordon(t, home, "query", id, "echo", profile))
	for _, want := range []string{`name = "Ada"`, `age = 36 : nat8`, `"engines"`, `nickname = opt "countess"`, `principal "2vxsx-fae"`, `balance = -1_000_000_000_000_000_000_000 : int`} {
		if !strings.Contains(got, want) {
			t.Fatalf("echo: %s lacks %s", got, want)
		}
	}
	for arg, want := range map[string]string{
		`(variant { circle = 2.0 })`:                       "(12.566370614359172 : float64)",
		`(variant { rect = record { w = 3.0; h = 4.5 } })`: "(13.5 : float64)",
		`(variant { empty })`:                              "(0.0 : float64)",
	} {
		if got := must(t, cordon(t, home, "query", id, "area", arg)); got != want {
			t.Fatalf("area %s = %s, want %s", arg, got, want)
		}
	}
	if got := must(t, cordon(t, home, "query", id, "big", "(123_456_789_012_345_678_901_234_567_890)")); !strings.Contains(got, "1_881_676_372_353_657_772_546_716_040_589_641_726_257_477_229_849_409_426_207_693_797_722_198_701_224_860_897_069_000") {
		t.Fatalf("big: %s", got)
	}
	if got := must(t, cordon(t, home, "query", id, "maybe", "(opt 41)")); got != "(42 : nat)" {
		t.Fatalf("maybe: %s", got)
	}
	if got := must(t, cordon(t, home, "query", id, "reverse", `(blob "\01\02\03")`)); got != `(blob "\03\02\01")` {
		t.Fatalf("reverse: %s", got)
	}
}

func TestCandidCommands(t *testing.T) {
	home := t.TempDir()
	if got := must(t, cordon(t, home, "candid", "encode", `(42 : nat, "hi")`)); got != "4449444c00027d712a026869" {
		t.Fatalf("encode: %s", got)
	}
	if got := must(t, cordon(t, home, "candid", "decode", "4449444c00027d712a026869")); got != `(42 : nat, "hi")` {
		t.Fatalf("decode: %s", got)
	}
	if got := must(t, cordon(t, home, "candid", "decode", "4449444c00017d2a", "--types", "(nat)")); got != "(42 : nat)" {
		t.Fatalf("decode typed: %s", got)
	}
}

// doctor reports every layer and how written pages are found, in text and
// JSON, agreeing with the engine's own probe.
func TestDoctorCommand(t *testing.T) {
	home := t.TempDir()
	out := must(t, cordon(t, home, "doctor"))
	for _, want := range []string{"kernel:", "LAYER", "seccomp", "landlock", "dirty page tracking: ", "cgroup entry: "} {
		if !strings.Contains(out, want) {
			t.Fatalf("doctor output lacks %q:\n%s", want, out)
		}
	}
	var rep struct {
		Layers []struct {
			Layer     string `json:"layer"`
			Available bool   `json:"available"`
		} `json:"layers"`
		DirtyTracking struct {
			Available bool   `json:"available"`
			Detail    string `json:"detail"`
		} `json:"dirty_page_tracking"`
		CgroupEntry struct {
			Detail string `json:"detail"`
		} `json:"cgroup_entry"`
	}
	if err := json.Unmarshal([]byte(must(t, cordon(t, home, "doctor", "--output", "json"))), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Layers) < 10 || rep.DirtyTracking.Detail == "" || rep.CgroupEntry.Detail == "" {
		t.Fatalf("doctor json: %+v", rep)
	}
	if err := engine.ProbeWrittenPages(); (err == nil) != rep.DirtyTracking.Available {
		t.Fatalf("doctor says dirty tracking available=%v, probe says %v", rep.DirtyTracking.Available, err)
	}
}

// doctor reports the home's free space against the disk margin serve's
// store keeps, below it as a warning (serve still starts), not an error.
func TestDoctorReportsDiskMargin(t *testing.T) {
	home := filepath.Join(t.TempDir(), "home") // not made yet: its parent's file system
	out := must(t, cordon(t, home, "--isolation", "inprocess", "--set", "limits.disk_margin=1MiB", "doctor"))
	if !strings.Contains(out, "disk margin 1.0M (limits.disk_margin): ok") {
		t.Fatalf("doctor with a 1 MiB margin:\n%s", out)
	}
	out = must(t, cordon(t, home, "--isolation", "inprocess", "--set", "limits.disk_margin=1000000TiB", "doctor"))
	if !strings.Contains(out, "BELOW the disk margin") {
		t.Fatalf("doctor with a margin larger than any disk:\n%s", out)
	}
	var rep struct {
		Disk struct {
			Free   uint64 `json:"free_bytes"`
			Margin uint64 `json:"margin_bytes"`
			Below  bool   `json:"below_margin"`
		} `json:"disk"`
	}
	if err := json.Unmarshal([]byte(must(t, cordon(t, home, "--isolation", "inprocess", "--set", "limits.disk_margin=1000000TiB", "doctor", "--output", "json"))), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Disk.Below || rep.Disk.Margin != 1000000<<40 || rep.Disk.Free == 0 {
		t.Fatalf("doctor json: %+v", rep.Disk)
	}
}

// doctor starts a real sandbox as serve would, runs a test canister in it
// and reports each layer as the host checked it, exiting 0; with a
// configuration no sandbox starts in (a memory limit below what any
// process needs), the live check fails naming the layer, doctor exits with
// an error, and serve with the same configuration refuses to start.
func TestDoctorLiveSandbox(t *testing.T) {
	home := t.TempDir()
	r := cordon(t, home, "doctor")
	if r.code != 0 || !strings.Contains(r.stdout, "live sandbox: ok: a canister sandbox started as cordon serve starts them (pid ") {
		t.Fatalf("doctor: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	probe := sandbox.Doctor()
	live := r.stdout[strings.Index(r.stdout, "live sandbox:"):]
	for _, l := range probe.Layers {
		// Each layer has its row; seccomp, where this kernel has it, is
		// one the host verified on every thread.
		row := ""
		for _, line := range strings.Split(live, "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == string(l.Layer) {
				row = line
			}
		}
		if row == "" || strings.Contains(row, "FAILED") {
			t.Errorf("live table: layer %s: %q\n%s", l.Layer, row, live)
		}
		if l.Layer == sandbox.LayerSeccomp && l.Available && !strings.Contains(row, "verified  every thread: Seccomp 2") {
			t.Errorf("live table: seccomp not verified: %q", row)
		}
	}
	var rep struct {
		Live struct {
			Ran, OK bool
			Pid     int
			Layers  []struct {
				Layer    string
				Verified bool
			}
		} `json:"live_sandbox"`
	}
	if err := json.Unmarshal([]byte(must(t, cordon(t, home, "doctor", "--output", "json"))), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Live.Ran || !rep.Live.OK || rep.Live.Pid <= 0 || len(rep.Live.Layers) != len(sandbox.AllLayers) {
		t.Fatalf("doctor json: live_sandbox %+v", rep.Live)
	}

	for _, l := range probe.Missing() {
		if l == sandbox.LayerCgroup {
			t.Skip("no cgroup layer here: no memory limit to fail")
		}
	}
	const tiny = "sandbox.memory_bytes=262144"
	r = cordon(t, home, "doctor", "--set", tiny)
	if r.code != ExitError || !strings.Contains(r.stdout, "live sandbox: FAILED in layer cgroup (run): ") ||
		!strings.Contains(r.stderr, "sandbox check failed in layer cgroup") || !strings.Contains(r.stderr, "cordon serve would refuse to start") {
		t.Fatalf("doctor --set %s: exit %d\n%s\n%s", tiny, r.code, r.stdout, r.stderr)
	}
	// serve with the same configuration refuses to start (a serve that
	// starts is stopped, and fails the test).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var serr lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"--home", home, "serve", "--listen", "127.0.0.1:0", "--set", tiny}, strings.NewReader(""), io.Discard, &serr)
	}()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		select {
		case code := <-done:
			if code != ExitError || !strings.Contains(serr.String(), "sandbox check failed in layer cgroup") {
				t.Fatalf("serve --set %s: exit %d\n%s", tiny, code, serr.String())
			}
			return
		default:
		}
		if _, err := os.Stat(filepath.Join(home, "serve.json")); err == nil || time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("serve --set %s did not refuse to start (it serves, or still runs after 2 minutes), where doctor says it would refuse:\n%s", tiny, serr.String())
		}
	}
}

// doctor says which executable sandboxes run, and refuses a configured one
// that is not cordon's worker of this build (serve would not start).
func TestDoctorSandboxExecutable(t *testing.T) {
	home := t.TempDir()
	out := must(t, cordon(t, home, "doctor"))
	// This test binary has no cordon-sandbox next to it: cordon itself.
	if !strings.Contains(out, "sandbox executable: cordon itself") {
		t.Fatalf("doctor output:\n%s", out)
	}
	var rep struct {
		Executable struct {
			Path   string `json:"path"`
			Worker bool   `json:"worker"`
			Note   string `json:"note"`
			Error  string `json:"error"`
		} `json:"sandbox_executable"`
	}
	if err := json.Unmarshal([]byte(must(t, cordon(t, home, "doctor", "--output", "json"))), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Executable.Worker || rep.Executable.Path != "" || rep.Executable.Error != "" || rep.Executable.Note == "" {
		t.Fatalf("doctor json: %+v", rep.Executable)
	}
	script := filepath.Join(t.TempDir(), "cordon-sandbox")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := cordon(t, home, "doctor", "--sandbox-binary", script)
	if r.code == 0 || !strings.Contains(r.stdout, "sandbox executable: REFUSED") || !strings.Contains(r.stderr, "not from this build") {
		t.Fatalf("doctor with a foreign sandbox.binary: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}
