package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The IC clients' tests (@dfinity/agent, @icp-sdk/core, icp-cli) need node
// and npm and the npm registry. A developer's machine without them skips
// those tests; CI sets CORDON_REQUIRE_NODE=1 (.ci/run), which turns a
// missing tool or an unreachable registry into a failure, so the tests
// cannot silently stop running there.
func requireNode() bool { return os.Getenv("CORDON_REQUIRE_NODE") == "1" }

// skipOrFail skips the test, or fails it where node is required.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if requireNode() {
		t.Fatalf("CORDON_REQUIRE_NODE=1: "+format, args...)
	}
	t.Skipf(format, args...)
}

// nodeTools finds node and npm.
func nodeTools(t *testing.T) (node, npm string) {
	t.Helper()
	if testing.Short() {
		skipOrFail(t, "installs packages from npm")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		skipOrFail(t, "node is not installed")
	}
	npm, err = exec.LookPath("npm")
	if err != nil {
		skipOrFail(t, "npm is not installed")
	}
	return node, npm
}

// npmInstall installs pinned packages into a directory of their own and
// returns it. With CORDON_NPM_CACHE set, the directory is kept there under
// the packages' digest, so a machine installs each set once (CI caches it
// between its runs); otherwise it is the test's temporary directory.
func npmInstall(ctx context.Context, t *testing.T, npm string, pkgs ...string) string {
	t.Helper()
	dir := t.TempDir()
	if cache := os.Getenv("CORDON_NPM_CACHE"); cache != "" {
		sum := sha256.Sum256([]byte(strings.Join(pkgs, "\n")))
		dir = filepath.Join(cache, hex.EncodeToString(sum[:8]))
		if _, err := os.Stat(filepath.Join(dir, ".installed")); err == nil {
			return dir
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"private":true,"type":"module"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	install := exec.CommandContext(ctx, npm, append([]string{"install", "--no-audit", "--no-fund", "--silent"}, pkgs...)...)
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		s := string(out)
		if strings.Contains(s, "ENOTFOUND") || strings.Contains(s, "EAI_AGAIN") || strings.Contains(s, "ECONNREFUSED") ||
			strings.Contains(s, "ETIMEDOUT") || strings.Contains(s, "ENETUNREACH") || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			skipOrFail(t, "npm cannot reach the registry: %v\n%s", err, s)
		}
		t.Fatalf("npm install: %v\n%s", err, s)
	}
	if err := os.WriteFile(filepath.Join(dir, ".installed"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runNode writes script into dir as file (where node resolves the
// installed packages), runs it and returns the last line it printed.
func runNode(ctx context.Context, t *testing.T, node, dir, file, script string, args ...string) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, file), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	run := exec.CommandContext(ctx, node, append([]string{file}, args...)...)
	run.Dir = dir
	out, err := run.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("node %s: %v\n%s\n%s", file, err, out, ee.Stderr)
		}
		t.Fatalf("node %s: %v", file, err)
	}
	return lastLine(string(out))
}
