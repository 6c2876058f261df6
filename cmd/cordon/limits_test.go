package main

import (
	"os/exec"
	"strings"
	"testing"
)

// Under a low open file limit cordon still runs canisters in sandboxes: it
// lowers the node's bounds to fit and places its sealed executable within
// the limit. Under one too low for any node it refuses at once, saying what
// to raise, instead of failing at some spawn with EMFILE.
func TestLowOpenFileLimit(t *testing.T) {
	bin := cordonBinary(t)
	home := t.TempDir()
	counter := counterPath
	run := func(limit string, args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command("sh", append([]string{"-c", `ulimit -n "$0" && exec "$@"`, limit, bin, "--home", home, "--log-level", "info"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("200", "install", counter)
	if err != nil {
		t.Fatalf("install under 200 descriptors: %v: %s", err, out)
	}
	if !strings.Contains(out, "lowered to fit") || !strings.Contains(out, "limit=200") {
		t.Fatalf("install under 200 descriptors does not say it lowered its bounds:\n%s", out)
	}
	if strings.Contains(out, "not sealed") || strings.Contains(out, "invalid argument") {
		t.Fatalf("the sandbox executable was not sealed under 200 descriptors:\n%s", out)
	}
	id := strings.TrimSpace(out[strings.LastIndexByte(strings.TrimSpace(out), '\n')+1:])
	if out, err := run("200", "call", id, "inc"); err != nil || !strings.Contains(out, "(1 : nat)") {
		t.Fatalf("call under 200 descriptors: %v: %s", err, out)
	}
	out, err = run("40", "call", id, "inc")
	if err == nil || !strings.Contains(out, "the open file limit (RLIMIT_NOFILE) is 40; a node needs at least") {
		t.Fatalf("call under 40 descriptors: %v: %s", err, out)
	}
	if out, err := exec.Command(bin, "--home", home, "query", id, "get").CombinedOutput(); err != nil || !strings.Contains(string(out), "(1 : nat)") {
		t.Fatalf("query under the test's own limit: %v: %s", err, out)
	}
	// serve refuses to start under 40, and doctor, which checks a sandbox
	// with serve's configuration, says so (with serve's count: its
	// connections' descriptors included).
	need := map[string]string{}
	for _, args := range [][]string{{"serve", "--listen", "127.0.0.1:0"}, {"doctor"}} {
		out, err = run("40", args...)
		_, after, found := strings.Cut(out, "the open file limit (RLIMIT_NOFILE) is 40; a node needs at least ")
		if err == nil || !found {
			t.Fatalf("%s under 40 descriptors: %v: %s", args[0], err, out)
		}
		need[args[0]], _, _ = strings.Cut(after, " ")
	}
	if need["serve"] != need["doctor"] {
		t.Fatalf("under 40 descriptors serve needs %s, doctor says %s", need["serve"], need["doctor"])
	}
}
