package host

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sandbox"
)

// CheckSandbox compiles and runs the check canister in real sandboxes, as
// a node with the same configuration would, and reports each layer of the
// canister's sandbox as the host checked it after the canister ran; with a
// configuration no sandbox can start in, it fails and names the layer.
func TestCheckSandbox(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := testConfig(t, "sandbox")
	// What this host lacks, allowed: the check runs with what it has.
	for _, l := range sandbox.Doctor().Missing() {
		cfg.Sandbox.AllowMissing = append(cfg.Sandbox.AllowMissing, string(l))
	}
	cfg.Sandbox.Strict = true
	c := CheckSandbox(ctx, cfg, testLogger(t))
	if c.Err != nil {
		t.Fatalf("check failed at %s: %v", c.Stage, c.Err)
	}
	if string(c.Reply) != "ok" || c.Pid <= 0 || len(c.Layers) != len(sandbox.AllLayers) {
		t.Fatalf("check: reply %q, pid %d, %d layers", c.Reply, c.Pid, len(c.Layers))
	}
	verified := 0
	for _, l := range c.Layers {
		t.Logf("%-13s applied=%-5v verified=%-5v %s", l.Layer, l.Applied, l.Verified, l.How)
		if l.Err != nil || (l.Verified && !l.Applied) || (l.Applied && l.How == "") {
			t.Errorf("layer %s: %+v", l.Layer, l)
		}
		if l.Verified {
			verified++
		}
		// What the host can see of an applied layer, it checked.
		if l.Applied && l.Layer == sandbox.LayerSeccomp && !l.Verified {
			t.Errorf("seccomp applied but not checked from the host: %+v", l)
		}
	}
	if verified == 0 {
		t.Fatal("no layer verified from the host")
	}

	// A memory limit no sandbox starts in: the canister sandbox fails,
	// and the check says which layer (the compiler sandbox has a limit of
	// its own).
	for _, l := range sandbox.Doctor().Missing() {
		if l == sandbox.LayerCgroup {
			t.Skip("no cgroup layer here: a memory limit is no cgroup's")
		}
	}
	cfg.Sandbox.MemoryBytes = 256 << 10
	var logs bytes.Buffer
	c = CheckSandbox(ctx, cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	t.Log(logs.String())
	if !strings.Contains(logs.String(), `msg="sandbox start failed"`) || !strings.Contains(logs.String(), " layer=cgroup") {
		t.Errorf("the log does not name the layer:\n%s", logs.String())
	}
	if l, ok := c.FailedLayer(); c.Err == nil || c.Stage != CheckRun || !ok || l != sandbox.LayerCgroup {
		t.Fatalf("check with a 256 KiB sandbox: stage %q, layer %q, %v", c.Stage, l, c.Err)
	}
	if !strings.Contains(c.Err.Error(), "cgroup: the sandbox exceeded its memory limit") {
		t.Fatalf("check with a 256 KiB sandbox: %v", c.Err)
	}
	t.Log(c.Err)
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, nil))
}
