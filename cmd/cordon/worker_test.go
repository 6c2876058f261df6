package main

import (
	"io"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `go build -o DIR/ ./cmd/...` gives the fast path: cordon finds the
// worker-only binary next to itself, checks that it is of its own build
// (stamped alike here, as a release would be: this tree may be built without
// a version control stamp), and its sandboxes run it; anything else next to
// cordon under that name is passed over for cordon itself, and canisters
// still run.
func TestWorkerBinaryNextToCordon(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both binaries")
	}
	dir, err := os.MkdirTemp("", "cordon-pair-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const stamp = "-ldflags=-X=github.com/cordon-dev/cordon/internal/sandbox.buildStamp=pair-test"
	for _, pkg := range []string{".", "../cordon-sandbox"} {
		if out, err := osexec.Command("go", "build", stamp, "-o", dir+"/", pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v: %s", pkg, err, out)
		}
	}
	bin, worker := filepath.Join(dir, "cordon"), filepath.Join(dir, "cordon-sandbox")
	counter := counterPath
	run := func(home string, want ...string) {
		t.Helper()
		out, err := runCordon(bin, "--home", home, "doctor")
		if err != nil {
			t.Fatalf("doctor: %v: %s", err, out)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Fatalf("doctor lacks %q:\n%s", w, out)
			}
		}
		out, err = runCordon(bin, "--home", home, "install", counter)
		if err != nil {
			t.Fatalf("install: %v: %s", err, out)
		}
		id := strings.TrimSpace(out[strings.LastIndexByte(strings.TrimSpace(out), '\n')+1:])
		if out, err := runCordon(bin, "--home", home, "call", id, "inc"); err != nil || !strings.Contains(out, "(1 : nat)") {
			t.Fatalf("call: %v: %s", err, out)
		}
	}
	run(t.TempDir(), "sandbox executable: "+worker+", sealed in-memory copy; same build (stamp pair-test)")

	// Not the worker (cordon itself under the worker's name): cordon runs
	// itself, and says why.
	if err := os.Remove(worker); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(worker, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	run(t.TempDir(), "sandbox executable: cordon itself, sealed in-memory copy; not using "+worker, "not github.com/cordon-dev/cordon/cmd/cordon-sandbox")
}
