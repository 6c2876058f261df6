package sandbox

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// TestOOMScoreAdj: a live sandbox's oom_score_adj, read by the host from
// /proc, is the one every sandbox gives itself, so that the kernel's OOM
// killer takes it before the host (0, the host's own, without the layer);
// Verify checks it too.
func TestOOMScoreAdj(t *testing.T) {
	p := startT(t, Spec{Args: []string{"echo"}, Strict: true})
	roundTrip(t, p, "x")
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid()) + "/oom_score_adj")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != strconv.Itoa(confine.OOMScoreAdj) {
		t.Fatalf("oom_score_adj %s, want %d", got, confine.OOMScoreAdj)
	}
	self, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(self)) == strconv.Itoa(confine.OOMScoreAdj) {
		t.Fatal("the host's own oom_score_adj is the sandboxes'")
	}
	checks, err := p.Verify()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		if c.Layer == LayerOOMScore && (!c.Applied || !c.Verified) {
			t.Fatalf("oom_score_adj layer: %+v", c)
		}
	}
}

// TestOOMScoreSteered: while a sandbox executes, the host lowers its
// oom_score_adj (so the kernel takes idle sandboxes first) and raises it
// again when the last execution in flight ends; executions in flight are
// counted, so one of two ending leaves it lowered. Verify accepts the value
// the host last set and nothing else. In the unprivileged runs too: the
// host opened the file before the sandbox stopped being dumpable.
func TestOOMScoreSteered(t *testing.T) {
	busy, err := busyScore()
	if err != nil {
		t.Skipf("no steering on this host: %v", err)
	}
	p := startT(t, Spec{Args: []string{"echo"}, Strict: true})
	roundTrip(t, p, "x")
	if d := p.Layers()[LayerOOMScore].Detail; !strings.Contains(d, "lowers it to "+strconv.Itoa(busy)) {
		t.Fatalf("the sandbox is not steered: %s", d)
	}
	file := "/proc/" + strconv.Itoa(p.Pid()) + "/oom_score_adj"
	expect := func(want int) {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != strconv.Itoa(want) {
			t.Fatalf("oom_score_adj %s, want %d", got, want)
		}
		if p.OOMScoreAdj() != want {
			t.Fatalf("the host expects %d, the sandbox has %d", p.OOMScoreAdj(), want)
		}
		checks, err := p.Verify()
		if err != nil {
			t.Fatalf("Verify at oom_score_adj %d: %v", want, err)
		}
		for _, c := range checks {
			if c.Layer == LayerOOMScore && (!c.Applied || !c.Verified) {
				t.Fatalf("oom_score_adj layer: %+v", c)
			}
		}
	}
	expect(confine.OOMScoreAdj)
	p.BeginExecution()
	expect(busy)
	roundTrip(t, p, "busy") // it works as before meanwhile
	p.BeginExecution()      // a second one in flight
	expect(busy)
	p.EndExecution()
	expect(busy) // one still executes
	p.EndExecution()
	expect(confine.OOMScoreAdj)
	p.EndExecution() // unmatched: no effect
	expect(confine.OOMScoreAdj)

	// A value the host did not set fails the check (written here as root;
	// the sandbox has no /proc to open it with).
	switch err := os.WriteFile(file, []byte("900"), 0); {
	case err == nil:
		_, err := p.Verify()
		if l, ok := FailedLayer(err); !ok || l != LayerOOMScore {
			t.Fatalf("Verify of an oom_score_adj the host did not set: %v", err)
		}
		p.BeginExecution()
		p.EndExecution()
		expect(confine.OOMScoreAdj)
	case os.Geteuid() != 0 && errors.Is(err, os.ErrPermission):
		// Why the host opens it before the go-ahead: a sandbox that is
		// not dumpable has its /proc files owned by root.
		t.Logf("unprivileged, the sandbox's file cannot be opened now: %v", err)
	default:
		t.Fatal(err)
	}

	// A sandbox that is gone: nothing to steer, and nothing fails.
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	p.Wait()
	p.BeginExecution()
	p.EndExecution()
}

// BenchmarkOOMScoreSteer is what steering adds to each message: an
// execution's begin and end, two writes to the sandbox's oom_score_adj
// through the descriptor the host keeps (compare a sandboxed query, about
// 220 µs on the 2-core VM).
func BenchmarkOOMScoreSteer(b *testing.B) {
	if _, err := busyScore(); err != nil {
		b.Skipf("no steering on this host: %v", err)
	}
	p := startT(b, Spec{Args: []string{"echo"}, Strict: true})
	for b.Loop() {
		p.BeginExecution()
		p.EndExecution()
	}
	if p.OOMScoreAdj() != confine.OOMScoreAdj {
		b.Fatalf("oom_score_adj %d after the loop", p.OOMScoreAdj())
	}
}

// TestNewGroupMatchesDoctor: a node's group can be made exactly where
// Doctor reports the cgroup layer; elsewhere NewGroup says why with
// ErrNoCgroupLayer (what a node without the layer runs without).
func TestNewGroupMatchesDoctor(t *testing.T) {
	var cgroup LayerReport
	for _, l := range Doctor().Layers {
		if l.Layer == LayerCgroup {
			cgroup = l
		}
	}
	g, err := NewGroup("test-doctor", 64<<20)
	if cgroup.Available {
		if err != nil {
			t.Fatalf("Doctor reports the cgroup layer (%s), NewGroup fails: %v", cgroup.Detail, err)
		}
		if !strings.Contains(cgroup.Detail, "group cgroup with a hard memory limit") {
			t.Errorf("Doctor's cgroup detail does not mention the node's group: %s", cgroup.Detail)
		}
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(g.Dir()); !os.IsNotExist(err) {
			t.Fatalf("group %s still exists after Close", g.Dir())
		}
		return
	}
	if !errors.Is(err, ErrNoCgroupLayer) {
		t.Fatalf("no cgroup layer (%s), NewGroup: %v", cgroup.Detail, err)
	}
	if !strings.Contains(cgroup.Detail, "no hard limit holds all sandboxes together") {
		t.Errorf("Doctor's cgroup detail does not say what is missing: %s", cgroup.Detail)
	}
}

// oomSlack is what a group's charge may pass its limit by: the kernel
// lets a task it is OOM-killing charge a few pages more on its way out.
const oomSlack = 1 << 20

func newGroupT(t *testing.T, limit uint64) *Group {
	t.Helper()
	needCgroup(t)
	g, err := NewGroup("test-node", limit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Error(err)
		}
	})
	return g
}

// TestGroupCPUWeight: a node's group weighs one task for each core against
// the host's other process groups (v1 cpu.shares, v2 cpu.weight), so that a
// loaded machine leaves all of a node's sandboxes together more than one
// task's share; at most what the kernel accepts.
func TestGroupCPUWeight(t *testing.T) {
	g := newGroupT(t, 64<<20)
	file, task, most := "cpu.weight", 100, 10000
	dir := g.dirs[0]
	if g.setup.version == cgroupV1 {
		file, task, most = "cpu.shares", 1024, 262144
		dir = g.dirs[2]
	}
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	want := min(runtime.NumCPU()*task, most)
	if got := strings.TrimSpace(string(b)); got != strconv.Itoa(want) {
		t.Fatalf("%s %s, want %d (%d cores)", filepath.Join(dir, file), got, want, runtime.NumCPU())
	}
	if w := groupCPUWeight(512, 1024, 262144); w != 262144 {
		t.Errorf("512 cores: shares %d, want the kernel's most, 262144", w)
	}
	if w := groupCPUWeight(0, 100, 10000); w != 100 {
		t.Errorf("no cores known: weight %d, want one task's, 100", w)
	}
}

// TestOwnLimitInGroupIsOwnOOM: a sandbox in a node group that reaches its
// own memory limit, well within the group's, is OOM-killed for its own
// limit (ErrOutOfMemory, the canister's doing), not for the node's.
func TestOwnLimitInGroupIsOwnOOM(t *testing.T) {
	g := newGroupT(t, 512<<20)
	bomb := startT(t, Spec{Label: "bomb", Args: []string{"membomb", "1024"}, Group: g, MemoryBytes: 96 << 20, Strict: true})
	if got := recvT(t, bomb); got != "allocating" {
		t.Fatal(got)
	}
	if st := bomb.Wait(); !errors.Is(st.Err, ErrOutOfMemory) || errors.Is(st.Err, ErrNodeOutOfMemory) || st.Signal != syscall.SIGKILL {
		t.Fatalf("the sandbox past its own limit in a group: want an OOM kill for its own limit, got %+v", st)
	}
	checkCgroupGone(t, bomb)
}

// TestNodeGroupBoundsAllSandboxes: sandboxes in a node's group share its
// memory limit. One whose own limit is far above it allocates past it and
// is OOM-killed, in its own cgroup, while its neighbour in the group lives
// on (and so does the host). The kill is its own doing (ErrOutOfMemory,
// which the host charges), not the node's: it alone took the group past
// its limit. With the defaults every sandbox's own limit (8 GiB) is above
// the group's (a quarter of the machine's memory) on a machine of less
// than 32 GiB, so a sandbox that allocated until the kernel killed it was
// reported as killed for the node's memory, uncharged and retried.
func TestNodeGroupBoundsAllSandboxes(t *testing.T) {
	const limit = 96 << 20
	g := newGroupT(t, limit)
	if got, err := readMemoryLimit(g.memFile); err != nil || got != limit || g.MemoryLimit() != limit {
		t.Fatalf("%s: %d (%v), MemoryLimit %d, want %d", g.memFile, got, err, g.MemoryLimit(), limit)
	}
	neighbour := startT(t, Spec{Args: []string{"echo"}, Group: g, MemoryBytes: 1 << 30, Strict: true})
	bomb := startT(t, Spec{Label: "bomb", Args: []string{"membomb", "512"}, Group: g, MemoryBytes: 1 << 30, Strict: true})
	for _, p := range []*Process{neighbour, bomb} {
		for i, d := range p.cg.dirs[:len(g.dirs)] {
			if filepath.Dir(d) != g.dirs[i] {
				t.Fatalf("sandbox cgroup %s is not in the group %s", d, g.dirs[i])
			}
		}
		if d := p.Layers()[LayerCgroup].Detail; !strings.Contains(d, g.String()) {
			t.Errorf("cgroup layer detail %q does not name the group", d)
		}
	}
	if got := recvT(t, bomb); got != "allocating" {
		t.Fatal(got)
	}
	st := bomb.Wait()
	// Within its own limit, but holding nearly all of the group's.
	if !errors.Is(st.Err, ErrOutOfMemory) || errors.Is(st.Err, ErrNodeOutOfMemory) || st.Signal != syscall.SIGKILL {
		t.Fatalf("the sandbox that alone took the group past its limit: want an OOM kill of its own doing, got %+v", st)
	}
	checkCgroupGone(t, bomb)
	// The sandboxes together reached the group's limit, never more (but
	// for what the kernel lets a task it is killing take on its way out).
	if peak, err := g.MemoryPeak(); err != nil || peak > limit+oomSlack || peak < limit-8<<20 {
		t.Errorf("the group's peak charge is %d (%v), its limit %d", peak, err, limit)
	}
	if got := roundTrip(t, neighbour, "still here"); got != "still here" {
		t.Fatalf("the neighbour answered %q", got)
	}
}

// TestNodeOOMOfASandboxHoldingLessThanHalf: when the sandboxes of a group
// together reach its limit, the kernel kills the largest; one that held
// less than half of the group, the rest held by its neighbours, was killed
// for the node's memory (ErrNodeOutOfMemory, not charged), though it was
// the one allocating.
func TestNodeOOMOfASandboxHoldingLessThanHalf(t *testing.T) {
	const limit = 256 << 20
	g := newGroupT(t, limit)
	var holders []*Process
	for range 4 {
		h := startT(t, Spec{Label: "holder", Args: []string{"membomb", "36"}, Group: g, MemoryBytes: 1 << 30, Strict: true})
		if got := recvT(t, h); got != "allocating" {
			t.Fatal(got)
		}
		if got := recvT(t, h); got != "survived 36" {
			t.Fatal(got)
		}
		holders = append(holders, h)
	}
	bomb := startT(t, Spec{Label: "bomb", Args: []string{"membomb", "512"}, Group: g, MemoryBytes: 1 << 30, Strict: true})
	if got := recvT(t, bomb); got != "allocating" {
		t.Fatal(got)
	}
	st := bomb.Wait()
	if !errors.Is(st.Err, ErrNodeOutOfMemory) || st.Signal != syscall.SIGKILL {
		t.Fatalf("the sandbox killed as the group reached its limit, holding less than half of it: want an OOM kill for the node's memory, got %+v", st)
	}
	for _, h := range holders {
		select {
		case <-h.Done():
			t.Fatalf("a holder died: %+v", h.Wait())
		default:
		}
	}
}

// TestNodeGroupVerified: Verify checks from the host that the group's
// limit is still in place; raised behind the host's back, it fails the
// cgroup layer.
func TestNodeGroupVerified(t *testing.T) {
	g := newGroupT(t, 128<<20)
	p := startT(t, Spec{Args: []string{"echo"}, Group: g, Strict: true})
	if _, err := p.Verify(); err != nil {
		t.Fatal(err)
	}
	// v1 refuses a memory limit above memory+swap's: that one first.
	if memsw := filepath.Join(g.Dir(), "memory.memsw.limit_in_bytes"); g.setup.version == cgroupV1 {
		if _, err := os.Stat(memsw); err == nil {
			if err := writeFile(memsw, strconv.Itoa(256<<20)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := writeFile(g.memFile, strconv.Itoa(256<<20)); err != nil {
		t.Fatal(err)
	}
	_, err := p.Verify()
	if l, ok := FailedLayer(err); !ok || l != LayerCgroup || !strings.Contains(err.Error(), "node group") {
		t.Fatalf("Verify with the group's limit raised: %v", err)
	}
}

// TestGroupV2Files checks, on a stand-in directory (this machine's memory,
// pids and cpu controllers may be on v1), what a v2 group gets and that
// sandbox cgroups go inside it.
func TestGroupV2Files(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a stand-in's files are created mode 0, which only root reads back")
	}
	dir := t.TempDir()
	for f, content := range map[string]string{"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc", "cgroup.subtree_control": ""} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := &cgroupSetup{version: cgroupV2, parent: dir}
	if err := s.prepare(); err != nil {
		t.Fatal(err)
	}
	g, err := s.newGroup("node", 1<<30+5) // rounded down to a page
	if err != nil {
		t.Fatal(err)
	}
	read := func(d, f string) string {
		_ = os.Chmod(filepath.Join(d, f), 0o600) // a stand-in's files are mode 0
		b, _ := os.ReadFile(filepath.Join(d, f))
		return string(b)
	}
	if got := read(g.Dir(), "memory.max"); got != strconv.Itoa(1<<30) {
		t.Errorf("memory.max %q", got)
	}
	if got := read(g.Dir(), "cgroup.subtree_control"); got != "+memory +pids +cpu +hugetlb" {
		t.Errorf("subtree_control %q", got)
	}
	if _, err := os.Stat(filepath.Join(g.Dir(), "memory.oom.group")); err == nil {
		t.Error("the group has memory.oom.group set: an OOM kill would take every sandbox")
	}
	if got, want := read(g.Dir(), "cpu.weight"), strconv.Itoa(min(100*runtime.NumCPU(), 10000)); got != want {
		t.Errorf("cpu.weight %q, want %s", got, want)
	}
	cg, err := g.setup.create("canister/1", cgroupLimits{memory: 2 << 30, pids: 64})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(cg.dirs[0]) != g.Dir() {
		t.Fatalf("sandbox cgroup %s not in the group %s", cg.dirs[0], g.Dir())
	}
}

// TestSweepRemovesStaleGroup: the group of a host that died, with the
// cgroups its sandboxes left, goes at the next host's sweep.
func TestSweepRemovesStaleGroup(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(dead.Process.Pid)
	dir := t.TempDir()
	group := filepath.Join(dir, "cordon."+pid+".1.node")
	for _, d := range []string{group, filepath.Join(group, "cordon."+pid+".2.canister"), filepath.Join(dir, "cordon."+pid+".3.compiler")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	(&cgroupSetup{version: cgroupV2, parent: dir}).sweep()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left after the sweep: %v", ents)
	}
}
