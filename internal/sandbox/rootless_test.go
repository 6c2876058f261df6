package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The suite also runs as an unprivileged user. Run as root, TestSuiteRootless
// re-executes this test binary as uid/gid 65534 (no capabilities, no
// supplementary groups; user namespaces are all it has) with rootlessEnv set,
// and fails if that run fails. The tests themselves adapt to an unprivileged
// host: a strict sandbox may lack the cgroup layer, and only that layer, when
// no cgroup hierarchy is delegated to the user (rootlessSpec, said in each
// test's log), every other layer is checked applied (checkRootlessLayers),
// and tests that measure cgroup limits skip with the reason (needCgroup).
// A user who runs `go test` unprivileged gets the same adaptations directly.
//
// The unprivileged suite runs twice: once as a typical rootless host (no
// cgroup hierarchy it may write), once with a cgroup v1 hierarchy delegated to
// uid 65534 (CORDON_CGROUP_PARENT), where the cgroup tests run too.

// rootlessEnv marks the unprivileged run; its value names the variant.
const rootlessEnv = "CORDON_SANDBOX_TEST_ROOTLESS"

// rootlessID is the user and group the unprivileged run uses.
const rootlessID = 65534

// rootlessSpec adapts a strict spec to an unprivileged host without a
// delegated cgroup hierarchy: the cgroup layer, and only it, may be missing
// (what `cordon serve --insecure-allow-missing cgroup` does). It returns why,
// or "" if nothing was relaxed; a privileged host is never relaxed.
func rootlessSpec(s Spec) (Spec, string) {
	av := getAvailability()
	if !s.Strict || !av.rootless || av.layers[LayerCgroup] || allowed(s.AllowMissing, LayerCgroup) {
		return s, ""
	}
	s.AllowMissing = append(append([]Layer(nil), s.AllowMissing...), LayerCgroup)
	return s, fmt.Sprintf("unprivileged host (uid %d) without a delegated cgroup hierarchy: the cgroup layer is allowed to be missing (%s); RLIMIT_NPROC bounds threads instead",
		os.Geteuid(), av.detail[LayerCgroup])
}

// checkRootlessLayers: on an unprivileged host, every layer of a started
// sandbox is applied except the cgroup layer (when unavailable) and those the
// test turned off on purpose.
func checkRootlessLayers(t testing.TB, p *Process, off []Layer) {
	t.Helper()
	av := getAvailability()
	if !av.rootless || allowed(off, LayerUserNS) {
		return
	}
	for l, st := range p.Layers() {
		if st.Applied || allowed(off, l) || (l == LayerCgroup && !av.layers[LayerCgroup]) ||
			(l == LayerWX && allowed(off, LayerSeccomp)) { // half of it is the filter
			continue
		}
		t.Errorf("unprivileged host: layer %s not applied: %s", l, st.Detail)
	}
}

// needCgroup skips a test that measures the cgroup layer where it is
// unavailable, saying why.
func needCgroup(t *testing.T) {
	t.Helper()
	av := getAvailability()
	if av.layers[LayerCgroup] {
		return
	}
	if av.rootless {
		t.Skipf("needs the cgroup layer, unavailable to this unprivileged host (uid %d) without a delegated cgroup hierarchy (CORDON_CGROUP_PARENT): %s",
			os.Geteuid(), av.detail[LayerCgroup])
	}
	t.Skip("cgroup layer unavailable: " + av.detail[LayerCgroup])
}

// copyTestBinary copies this test binary into a new 0755 directory, so that
// an unprivileged user can run it.
func copyTestBinary(t *testing.T) (dir, bin string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "cordon-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "sandbox.test")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

// othersCanRead reports why uid 65534 could not reach path (every ancestor
// searchable by others, the path itself readable), or "".
func othersCanRead(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err.Error()
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err.Error()
		}
		need := os.FileMode(0o001)
		if p == abs {
			need = 0o004
			if fi.IsDir() {
				need = 0o005
			}
		}
		if fi.Mode().Perm()&need != need {
			return fmt.Sprintf("%s is mode %v", p, fi.Mode().Perm())
		}
		if p == "/" {
			return ""
		}
	}
}

// Tests that must run, not skip, in every unprivileged run (the attack and
// confinement suite); with a delegated cgroup hierarchy, the cgroup tests too.
var (
	rootlessMustPass = []string{
		"TestSuiteRootless", "TestStartEcho", "TestAttacksKilled", "TestAttacksRefused", "TestLayersWithoutSeccomp",
		"TestNoHostFdsOrEnv", "TestCrashAndHang", "TestStderrLabelledAndRateLimited", "TestStrictMode",
		"TestStartCancelled", "TestDoctor", "TestDying", "TestParentDeathKillsSandbox", "TestSyscallsMeasured", "TestCanisterConfined",
		"TestSpawnerClonesHostChildren", "TestSpawnerRestartsAfterCrash", "TestSpawnerRefusesBadRequests",
		"TestSpawnerDiesWithHost", "TestSpawnerConcurrentStarts", "TestOOMScoreAdj", "TestOOMScoreSteered",
	}
	rootlessCgroupTests = []string{"TestCgroupLimitsAndRemoval", "TestMemoryBomb", "TestCPULimit", "TestNodeGroupBoundsAllSandboxes", "TestNodeGroupVerified"}
)

// TestSuiteRootless: as root, run this package's tests again as an
// unprivileged user; inside that run, check that it is one.
func TestSuiteRootless(t *testing.T) {
	if v := os.Getenv(rootlessEnv); v != "" {
		checkUnprivileged(t, v)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("already unprivileged: every test of this run is a rootless one")
	}
	for _, rel := range []string{".", "../../examples", "../../../shared/canisters"} {
		if why := othersCanRead(rel); why != "" {
			t.Skipf("uid %d cannot read the test files (%s): make the checkout and ../shared readable by others to run the suite unprivileged", rootlessID, why)
		}
	}
	_, bin := copyTestBinary(t)
	t.Run("no-cgroup", func(t *testing.T) {
		runRootless(t, bin, "no-cgroup", "", rootlessMustPass)
	})
	t.Run("delegated-cgroup", func(t *testing.T) {
		parent := delegateCgroup(t)
		runRootless(t, bin, "delegated-cgroup", parent, append(rootlessMustPass[:len(rootlessMustPass):len(rootlessMustPass)], rootlessCgroupTests...))
	})
}

// checkUnprivileged runs inside the unprivileged run: no root, no
// capabilities, user namespaces available, every layer but (without a
// delegated hierarchy) the cgroup layer.
func checkUnprivileged(t *testing.T, variant string) {
	if os.Getuid() == 0 || os.Geteuid() == 0 || os.Getgid() == 0 || os.Getegid() == 0 {
		t.Fatalf("the unprivileged run is uid %d/%d gid %d/%d", os.Getuid(), os.Geteuid(), os.Getgid(), os.Getegid())
	}
	if groups, _ := os.Getgroups(); len(groups) != 0 {
		t.Errorf("supplementary groups %v", groups)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && (k == "CapEff" || k == "CapPrm" || k == "CapAmb" || k == "CapInh") {
			if n, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64); n != 0 {
				t.Errorf("%s = %s", k, strings.TrimSpace(v))
			}
		}
	}
	r := Doctor()
	if !r.Rootless {
		t.Fatal("Doctor does not report rootless")
	}
	want := []Layer{LayerCgroup}
	if variant == "delegated-cgroup" {
		want = nil
	}
	for _, l := range r.Layers {
		t.Logf("%-13s %-5v %s", l.Layer, l.Available, l.Detail)
		if !l.Available && !allowed(want, l.Layer) {
			t.Errorf("layer %s unavailable to uid %d: %s", l.Layer, os.Geteuid(), l.Detail)
		}
	}
	t.Logf("uid %d gid %d, no capabilities, %s: missing %v", os.Geteuid(), os.Getegid(), variant, r.Missing())
}

// delegateCgroup creates, as root, a cgroup v1 directory per controller
// (memory, pids, cpu) owned by the unprivileged user, as an administrator
// delegating a subtree would, and returns its path for CORDON_CGROUP_PARENT.
func delegateCgroup(t *testing.T) string {
	t.Helper()
	av := getAvailability()
	if !av.layers[LayerCgroup] {
		t.Skip("cgroup layer unavailable even to root: " + av.detail[LayerCgroup])
	}
	if av.cgroups.version != cgroupV1 {
		// A v2 delegation also needs the unprivileged host itself inside
		// the delegated subtree (the common ancestor rule for moving
		// processes); not done here.
		t.Skip("delegating a cgroup v2 subtree to the unprivileged run is not implemented (this host's memory, pids and cpu are on v2)")
	}
	mi, err1 := os.ReadFile("/proc/self/mountinfo")
	self, err2 := os.ReadFile("/proc/self/cgroup")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	roots := detectCgroupsFrom(mi, self, "/") // the hierarchies' roots
	if roots.version != cgroupV1 {
		t.Skip("cgroup v1 hierarchies not mounted at their roots: " + roots.detail)
	}
	rel := fmt.Sprintf("/cordon-rootless-test.%d", os.Getpid())
	for _, c := range cgroupControllers {
		d := filepath.Join(roots.parents[c], rel)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Sandbox cgroups the unprivileged run left (it removes its own).
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				if e.IsDir() {
					if err := unix.Rmdir(filepath.Join(d, e.Name())); err != nil {
						t.Errorf("left behind: %s: %v", filepath.Join(d, e.Name()), err)
					}
				}
			}
			if err := unix.Rmdir(d); err != nil {
				t.Errorf("remove %s: %v", d, err)
			}
		})
		if err := os.Chown(d, rootlessID, rootlessID); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("delegated %s in the memory, pids and cpu hierarchies to uid %d", rel, rootlessID)
	return rel
}

var (
	resultLine = regexp.MustCompile(`^(\s*)--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+s)\)`)
	logLine    = regexp.MustCompile(`^    \S+\.go:\d+: (.*)$`)
)

// runRootless runs the whole test binary as uid/gid 65534 and checks that
// it passed, with every test of mustPass run and passed (none skipped).
func runRootless(t *testing.T, bin, variant, cgroupParent string, mustPass []string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(bin), variant+"-tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(tmp, rootlessID, rootlessID); err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.v", "-test.count=1", "-test.timeout=120s")
	cmd.Dir = wd
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "TMPDIR", "GOCOVERDIR", "CORDON_CGROUP_PARENT", helperEnv, rootlessEnv, "HOME":
			continue
		}
		env = append(env, kv)
	}
	env = append(env, rootlessEnv+"="+variant, "TMPDIR="+tmp, "HOME="+tmp)
	if cgroupParent != "" {
		env = append(env, "CORDON_CGROUP_PARENT="+cgroupParent)
	}
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: rootlessID, Gid: rootlessID, Groups: []uint32{}},
		Pdeathsig:  syscall.SIGKILL,
	}
	cmd.WaitDelay = 10 * time.Second // should anything it started hold its output open
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(t0)

	// -v output: "=== RUN   TestX", its log lines ("    file.go:N: ..."),
	// then "--- PASS|FAIL|SKIP: TestX (d)"; subtests indented further.
	type result struct{ status, dur, lastLog string }
	top := map[string]*result{}
	var order []string
	subs := map[string]int{}
	lastLog := map[string]string{}
	current := ""
	sc := bufio.NewScanner(bytes.NewReader(out.Bytes()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "=== RUN   "); ok && !strings.Contains(name, "/") {
			current = name
			continue
		}
		if m := logLine.FindStringSubmatch(line); m != nil && current != "" {
			lastLog[current] = m[1]
			continue
		}
		if m := resultLine.FindStringSubmatch(line); m != nil {
			if m[1] != "" {
				subs[m[2]]++
				continue
			}
			top[m[3]] = &result{status: m[2], dur: m[4], lastLog: lastLog[m[3]]}
			order = append(order, m[3])
		}
	}
	failed := runErr != nil
	for _, name := range mustPass {
		if r := top[name]; r == nil || r.status != "PASS" {
			t.Errorf("%s did not pass in the unprivileged run: %+v", name, r)
			failed = true
		}
	}
	if failed {
		t.Errorf("unprivileged run (uid %d, %s): %v after %v; its output:\n%s", rootlessID, variant, runErr, elapsed.Round(time.Millisecond), out.String())
		return
	}
	sort.SliceStable(order, func(i, j int) bool { return top[order[i]].status < top[order[j]].status })
	var b strings.Builder
	fmt.Fprintf(&b, "unprivileged run (uid %d, no capabilities, %s) passed in %v; %d subtests passed:", rootlessID, variant, elapsed.Round(time.Millisecond), subs["PASS"])
	for _, name := range order {
		r := top[name]
		fmt.Fprintf(&b, "\n  %s %s (%s)", r.status, name, r.dur)
		if r.status == "SKIP" || name == "TestSuiteRootless" {
			fmt.Fprintf(&b, ": %s", r.lastLog)
		}
	}
	t.Log(b.String())
}
