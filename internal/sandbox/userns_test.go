package sandbox

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// userNSEnv marks the run of this test binary inside `unshare -U -r`.
const userNSEnv = "CORDON_SANDBOX_TEST_USERNS"

// Root of a user namespace that maps only itself (`unshare -U -r`, a
// rootless container) has every capability in it, but no uid 65534 to map
// a sandbox to. Doctor must say what Start can do there: it reports the
// host rootless, and a strict sandbox allowed exactly the layers Doctor
// calls missing starts, with every layer Doctor calls available applied.
func TestDoctorMatchesStartInUserNS(t *testing.T) {
	if os.Getenv(userNSEnv) != "" {
		r := Doctor()
		for _, l := range r.Layers {
			t.Logf("%-13s %-5v %s", l.Layer, l.Available, l.Detail)
		}
		if !r.Rootless {
			t.Error("Doctor does not report rootless in a user namespace mapping only uid 0")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		p, err := Start(ctx, Spec{Args: []string{"echo"}, Strict: true, AllowMissing: r.Missing(), MemoryBytes: 128 << 20})
		if err != nil {
			t.Fatalf("Doctor reports missing only %v, but a strict Start fails: %v", r.Missing(), err)
		}
		defer func() { p.Kill(); p.Wait(); p.Conn().Close() }()
		roundTrip(t, p, "x")
		ls := p.Layers()
		for _, l := range r.Layers {
			if l.Available && !ls[l.Layer].Applied {
				t.Errorf("Doctor says %s available; the sandbox lacks it: %s", l.Layer, ls[l.Layer].Detail)
			}
		}
		return
	}
	if os.Geteuid() != 0 || os.Getenv(rootlessEnv) != "" {
		t.Skip("needs root to make a user namespace that maps only uid 0 to itself")
	}
	cmd := exec.Command("unshare", "-U", "-r", os.Args[0], "-test.run=^TestDoctorMatchesStartInUserNS$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), userNSEnv+"=1")
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), "unshare: ") && !strings.Contains(string(out), "=== RUN") {
		t.Skipf("unshare -U -r: %s", out)
	}
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("inside unshare -U -r: %v\n%s", err, out)
	}
	t.Logf("inside unshare -U -r:\n%s", out)
}
