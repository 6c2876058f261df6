package sandbox

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// startFails starts a sandbox that must fail, and returns the error.
func startFails(t *testing.T, s Spec, o startOpts) error {
	t.Helper()
	var lines []string
	s.Stderr = func(line string) { lines = append(lines, line) }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := start(ctx, s, o)
	if err == nil {
		p.Kill()
		p.Wait()
		p.Conn().Close()
		t.Fatalf("Start succeeded; want it to fail")
	}
	t.Logf("Start: %v", err)
	return err
}

// A layer that cannot be applied in a real spawn fails Start with an error
// that names it, the step and the errno: the sandbox's own report (its
// failure packet, decoded by the host) for the layers it applies, the host's
// for the cgroup it makes.
func TestStartFailureNamesLayer(t *testing.T) {
	av := getAvailability()
	t.Run("landlock", func(t *testing.T) {
		if !av.layers[LayerLandlock] {
			t.Skip("no Landlock in this kernel")
		}
		// landlock_restrict_self needs no_new_privs, or CAP_SYS_ADMIN,
		// which the caps layer (or an unprivileged host) has taken away.
		err := startFails(t, Spec{Label: "nolandlock", Args: []string{"echo"}}, startOpts{unavailable: []Layer{LayerNoNewPrivs}})
		wantLayer(t, err, LayerLandlock, unix.EPERM, "sandbox nolandlock: confine: landlock: restrict self: operation not permitted")
	})
	t.Run("seccomp", func(t *testing.T) {
		if !av.layers[LayerSeccomp] {
			t.Skip("no seccomp user notification in this kernel")
		}
		// Installing a filter needs no_new_privs or CAP_SYS_ADMIN, too.
		err := startFails(t, Spec{Label: "noseccomp", Args: []string{"echo"}}, startOpts{unavailable: []Layer{LayerNoNewPrivs, LayerLandlock}})
		wantLayer(t, err, LayerSeccomp, unix.EACCES, "sandbox noseccomp: confine: seccomp: load filter: permission denied")
	})
	t.Run("cgroup", func(t *testing.T) {
		needCgroup(t)
		// The parent the cgroups go in is gone (a delegated cgroup
		// removed under the host).
		gone := filepath.Join(t.TempDir(), "gone")
		cg := *av.cgroups
		cg.parent, cg.parents = gone, map[string]string{}
		for _, c := range cgroupControllers {
			cg.parents[c] = filepath.Join(gone, c)
		}
		cg.hugetlb = hugetlbSetup{}
		err := startFails(t, Spec{Label: "nocgroup", Args: []string{"echo"}}, startOpts{cgroups: &cg})
		wantLayer(t, err, LayerCgroup, unix.ENOENT, "sandbox nocgroup: cgroup: create "+gone)
	})
	t.Run("cgroup memory", func(t *testing.T) {
		needCgroup(t)
		// A memory limit no process can start in: the sandbox is killed
		// before it can say anything, and the host finds out why.
		err := startFails(t, Spec{Label: "nomemory", Args: []string{"echo"}, MemoryBytes: 256 << 10}, startOpts{})
		wantLayer(t, err, LayerCgroup, 0, "sandbox nomemory: cgroup: the sandbox exceeded its memory limit of 262144 bytes while starting")
	})
}

func wantLayer(t *testing.T, err error, layer Layer, errno unix.Errno, prefix string) {
	t.Helper()
	if l, ok := FailedLayer(err); !ok || l != layer {
		t.Errorf("Start's error names layer %q (%v), want %q: %v", l, ok, layer, err)
	}
	if errno != 0 && !errors.Is(err, errno) {
		t.Errorf("Start's error does not wrap %v: %v", errno, err)
	}
	if !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("Start's error\n\t%v\nwant it to start with\n\t%s", err, prefix)
	}
}

// A child that failed before the go-ahead has exited by the time the host
// sends it: the host's write fails, and the report it queued is read
// without waiting; a child that queued nothing leaves nothing to read.
func TestQueuedFailurePacket(t *testing.T) {
	conns := func() (*net.UnixConn, *os.File) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		host := os.NewFile(uintptr(fds[0]), "host")
		c, err := net.FileConn(host)
		host.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn), os.NewFile(uintptr(fds[1]), "child")
	}
	host, child := conns()
	if _, err := child.Write([]byte(confine.FormatFailure(confine.LPivot, "pivot_root", unix.EINVAL))); err != nil {
		t.Fatal(err)
	}
	child.Close()
	if _, err := host.Write([]byte{confine.GoByte}); err == nil {
		t.Fatal("the go-ahead to a closed child was sent")
	}
	buf := make([]byte, confine.MaxReady+1)
	b := queuedPacket(host, buf)
	err := childFailure(b)
	if l, _ := FailedLayer(err); l != LayerPivotRoot || !errors.Is(err, unix.EINVAL) || err.Error() != "confine: pivot_root: pivot_root: invalid argument" {
		t.Fatalf("queued report: %q -> %v", b, err)
	}

	host, child = conns()
	child.Close()
	if b := queuedPacket(host, buf); b != nil {
		t.Fatalf("nothing was queued, read %q", b)
	}
}

// What the sandbox reports is decoded with bounds, into an error that
// names no layer when it is malformed, and never panics.
func TestChildFailureHostile(t *testing.T) {
	for _, b := range []string{
		"cordon-failed 0x100 1 restrict self",
		"cordon-failed 0x300 1 two layers",
		"cordon-failed 0x400 1 the setuid bit is no layer of its own",
		"cordon-failed 0x800 1 nor the wx bit",
		"cordon-failed 0x1000 13 open /proc/self/oom_score_adj",
		"cordon-failed 0x100 99999 errno",
		"cordon-failed 0x100 -1 errno",
		"cordon-failed 0x100 1 \x1b[31mred",
		"cordon-failed 0x100 1",
		"cordon-failed",
		"cordon-failed 0 0 x" + strings.Repeat("a", confine.MaxReady),
		"cordon-failed 0 22 bad configuration argument",
	} {
		err := childFailure([]byte(b))
		l, named := FailedLayer(err)
		t.Logf("%.40q: %v", b, err)
		switch b {
		case "cordon-failed 0x100 1 restrict self":
			if !named || l != LayerLandlock {
				t.Errorf("%q: %v", b, err)
			}
		case "cordon-failed 0x1000 13 open /proc/self/oom_score_adj":
			if !named || l != LayerOOMScore {
				t.Errorf("%q: %v", b, err)
			}
		default:
			if named {
				t.Errorf("%.40q names layer %s: %v", b, l, err)
			}
		}
		if len(err.Error()) > 2*confine.MaxReady {
			t.Errorf("%.40q: error of %d bytes", b, len(err.Error()))
		}
	}
}
