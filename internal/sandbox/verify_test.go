package sandbox

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

func init() {
	// cowbomb MiB: map a memfd copy-on-write (as the engine maps a heap
	// image, engine/keep.go) and write every page of it.
	scenarios["cowbomb"] = func(c *child) int {
		n, _ := strconv.Atoi(c.args[0])
		fd, err := unix.MemfdCreate("image", unix.MFD_CLOEXEC)
		if err != nil {
			c.send("memfd: %v", err)
			return 0
		}
		size := n << 20
		// A sparse image as big as RLIMIT_FSIZE allows; the rest of the
		// mapping past EOF would fault, so map only the file's size.
		if err := unix.Ftruncate(fd, 64<<20); err != nil {
			c.send("ftruncate: %v", err)
			return 0
		}
		var keep [][]byte
		for done := 0; done < size; done += 64 << 20 {
			b, err := unix.Mmap(fd, 0, 64<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
			if err != nil {
				c.send("refused after %d MiB: %v", done>>20, err)
				c.recv()
				return 0
			}
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			keep = append(keep, b)
		}
		c.send("survived %d", len(keep)*64)
		c.recv()
		return 0
	}
}

// Without the cgroup layer (rootless, or --insecure-allow-missing cgroup),
// Spec.MemoryBytes still bounds a sandbox's memory: RLIMIT_DATA, at
// MemoryBytes + DataSlack. A sandbox
// allowed 128 MiB that touches 512 MiB of Go heap dies (the Go runtime
// cannot map more), and one that writes 512 MiB through copy-on-write
// mappings of a memfd (what a heap image is) is refused the mappings.
func TestMemoryBoundWithoutCgroup(t *testing.T) {
	for _, sc := range []string{"membomb", "cowbomb"} {
		t.Run(sc, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p, err := start(ctx, Spec{Args: []string{sc, "512"}, MemoryBytes: 128 << 20, Strict: true, AllowMissing: []Layer{LayerCgroup}, Stderr: func(string) {}},
				startOpts{unavailable: []Layer{LayerCgroup}})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { p.Kill(); p.Wait(); p.Conn().Close() }()
			if st := p.Layers()[LayerRlimits]; !strings.Contains(st.Detail, fmt.Sprintf("data=%d", 128<<20+DataSlack)) {
				t.Errorf("rlimits layer: %+v", st)
			}
			if sc == "membomb" {
				if got := recvT(t, p); got != "allocating" {
					t.Fatal(got)
				}
			}
			got, err := recv(p)
			rss, _ := p.RSS()
			t.Logf("%s 512 with MemoryBytes=128MiB, no cgroup: %q (%v), RSS %d MiB", sc, got, err, rss>>20)
			if strings.HasPrefix(got, "survived") {
				t.Fatalf("a sandbox with a 128 MiB memory limit and no cgroup holds %d MiB", rss>>20)
			}
		})
	}
}

// recv is recvT that returns the error (a sandbox that died) instead of failing.
func recv(p *Process) (string, error) {
	buf := make([]byte, 4096)
	_ = p.Conn().SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := p.Conn().Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// An attach that silently does nothing leaves the sandbox in the host's own
// cgroup, with no memory or pids limit: Start checks from the host that the
// sandbox is in its cgroup, and refuses it.
func TestVerifyCgroupAttach(t *testing.T) {
	needCgroup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, strict := range []bool{true, false} {
		p, err := start(ctx, Spec{Label: "noattach", Args: []string{"echo"}, Strict: strict, MemoryBytes: 64 << 20},
			startOpts{attach: func(pid int, cg *cgroup) error { return nil }})
		if err == nil {
			procs, _ := os.ReadFile(filepath.Join(p.cg.dirs[0], "cgroup.procs"))
			p.Kill()
			p.Wait()
			p.Conn().Close()
			t.Fatalf("strict=%v: Start returned a sandbox outside its cgroup (%s/cgroup.procs = %q), cgroup layer %+v", strict, p.cg.dirs[0], procs, p.Layers()[LayerCgroup])
		}
		if l, _ := FailedLayer(err); l != LayerCgroup {
			t.Errorf("strict=%v: refused, but not for its cgroup: %v", strict, err)
		}
		t.Logf("strict=%v: refused: %v", strict, err)
	}
}

// liveWithout starts a sandbox lacking some layers and returns it (cleaned
// up at the end of the test).
func liveWithout(t *testing.T, off ...Layer) *Process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := start(ctx, Spec{Args: []string{"echo"}, MemoryBytes: 64 << 20}, startOpts{unavailable: off})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(); p.Wait(); p.Conn().Close() })
	return p
}

// A sandbox whose rlimits are not the planned ones (here: none set) fails
// the host's check of /proc/<pid>/limits; one with them passes.
func TestVerifyRlimits(t *testing.T) {
	exp := liveExpect{limits: plannedLimits(confine.Config{NoFile: NoFileLimit, AS: AddressSpaceLimit, FSize: 64 << 20})}
	plan := map[Layer]bool{LayerRlimits: true}
	bare := liveWithout(t, LayerRlimits)
	err := verifyLive(bare.Pid(), plan, exp)
	if l, _ := FailedLayer(err); l != LayerRlimits {
		t.Fatalf("sandbox without rlimits passed the check: %v", err)
	}
	t.Log(err)
	if err := verifyLive(liveWithout(t).Pid(), plan, exp); err != nil {
		t.Fatalf("a confined sandbox fails the check: %v", err)
	}
}

// A sandbox that still sees the host's mounts (no pivot_root) fails the
// host's check of /proc/<pid>/mountinfo; a confined one passes.
func TestVerifyMountinfo(t *testing.T) {
	plan := map[Layer]bool{LayerPivotRoot: true}
	err := verifyLive(liveWithout(t, LayerPivotRoot).Pid(), plan, liveExpect{})
	if l, _ := FailedLayer(err); l != LayerPivotRoot {
		t.Fatalf("sandbox without its empty root passed the check: %v", err)
	}
	t.Log(err)
	if err := verifyLive(liveWithout(t).Pid(), plan, liveExpect{}); err != nil {
		t.Fatalf("a confined sandbox fails the check: %v", err)
	}
}

// Verify reports every layer of a live sandbox: those the host can see
// from outside checked again, the others with how the host knows them;
// a layer not in effect fails it, naming the layer; so does a sandbox that
// has exited, which has nothing left to check.
func TestProcessVerify(t *testing.T) {
	for _, l := range AllLayers {
		_, seen := hostChecks[l]
		_, unseen := hostUnseen[l]
		if seen == unseen {
			t.Errorf("layer %s: seen from the host %v, unseen %v: want exactly one", l, seen, unseen)
		}
	}
	p := startT(t, Spec{Args: []string{"echo"}})
	checks, err := p.Verify()
	if err != nil {
		t.Fatal(err)
	}
	if len(checks) != len(AllLayers) {
		t.Fatalf("%d layers reported", len(checks))
	}
	for i, c := range checks {
		if c.Layer != AllLayers[i] || c.Applied != p.Layers()[c.Layer].Applied || (c.Applied && c.How == "") || c.Err != nil {
			t.Errorf("layer %s: %+v", AllLayers[i], c)
		}
		_, seen := hostChecks[c.Layer]
		if c.Verified != (c.Applied && seen) {
			t.Errorf("layer %s: verified %v, applied %v, seen from the host %v", c.Layer, c.Verified, c.Applied, seen)
		}
	}

	// The same sandbox, as if Start had planned a mount table it does not
	// have (its empty root is the host's check of pivot_root): Verify names
	// that layer.
	q := liveWithout(t, LayerPivotRoot)
	q.plan = maps.Clone(q.plan)
	q.plan[LayerPivotRoot] = true
	_, err = q.Verify()
	if l, _ := FailedLayer(err); l != LayerPivotRoot {
		t.Fatalf("Verify of a sandbox without its empty root: %v", err)
	}
	t.Log(err)

	p.Kill()
	p.Wait()
	if _, err := p.Verify(); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("Verify of an exited sandbox: %v", err)
	}
}
