package sandbox

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Cgroups, written by hand: a sandbox gets its own cgroup with memory, pids
// and cpu limits, nested under the host's own cgroup (so the host's limits
// still bound it), created before the child runs untrusted code and removed
// after it exits.
//
//   - cgroup v2 (unified): one directory; the host writes the child's pid
//     into it before the go-ahead, as on v1 (the spawner cannot use clone3
//     CLONE_INTO_CGROUP, see spawner.go; a host cloning itself does).
//   - cgroup v1 (legacy or hybrid, as on hosts where memory/pids/cpu are v1
//     hierarchies): one directory per controller; the host writes the child's
//     pid into each before sending the go-ahead the child's early confinement
//     waits for, so again no untrusted code runs outside it.
//
// hugetlb pages come from the host's global pool and are not charged to the
// memory controller: where the hugetlb controller exists (its own v1
// hierarchy, the v2 cgroup itself, or the v2 hierarchy beside v1
// controllers on a hybrid host), the sandbox's limit for every huge page
// size is 0. Best effort: without the controller the seccomp filter alone
// keeps hugetlb pages out (it refuses MAP_HUGETLB and MFD_HUGETLB).
//
// A node's sandboxes share a group cgroup under that parent, with a hard
// memory limit on all of them (group.go, Spec.Group).
//
// The parent can be set with CORDON_CGROUP_PARENT (a path inside each
// hierarchy, e.g. a systemd-delegated cgroup). Stale directories left by a
// crashed host (cordon.<pid>.* with <pid> dead) are removed on first use.

var cgroupControllers = []string{"memory", "pids", "cpu"}

type cgroupVersion int

const (
	cgroupNone cgroupVersion = iota
	cgroupV1
	cgroupV2
)

// cgroupSetup is where sandbox cgroups go on this host.
type cgroupSetup struct {
	version  cgroupVersion
	parents  map[string]string // v1: controller -> parent directory
	parent   string            // v2: parent directory
	detail   string            // why unavailable, or where
	override bool              // the parent came from CORDON_CGROUP_PARENT
	hugetlb  hugetlbSetup
}

// hugetlbSetup is where a sandbox's hugetlb limits go.
type hugetlbSetup struct {
	found  bool   // a hierarchy with the controller was found
	parent string // its own hierarchy: the parent directory; "" for the sandbox's v2 cgroup itself
	v2     bool   // limit files are hugetlb.<size>.max, else hugetlb.<size>.limit_in_bytes
	ok     bool   // prepared: sandboxes get limits
	detail string
}

type mountInfo struct {
	root, point, fstype, super string
}

func parseMountinfo(b []byte) []mountInfo {
	var out []mountInfo
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		sep := -1
		for i, x := range f {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 6 || len(f) < sep+4 {
			continue
		}
		out = append(out, mountInfo{root: unescapeMount(f[3]), point: unescapeMount(f[4]), fstype: f[sep+1], super: f[sep+3]})
	}
	return out
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// parseOwnCgroups parses /proc/self/cgroup: v1 controller -> path, and the v2 path.
func parseOwnCgroups(b []byte) (v1 map[string]string, v2 string) {
	v1 = map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		p := strings.SplitN(line, ":", 3)
		if len(p) != 3 {
			continue
		}
		if p[0] == "0" && p[1] == "" {
			v2 = p[2]
			continue
		}
		for _, c := range strings.Split(p[1], ",") {
			v1[c] = p[2]
		}
	}
	return v1, v2
}

// join maps a cgroup path onto a mount of its hierarchy.
func joinMount(m mountInfo, path string) (string, bool) {
	rel := path
	if m.root != "/" {
		if path != m.root && !strings.HasPrefix(path, m.root+"/") {
			return "", false
		}
		rel = strings.TrimPrefix(path, m.root)
	}
	return filepath.Join(m.point, rel), true
}

func detectCgroups() *cgroupSetup {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return &cgroupSetup{detail: "read mountinfo: " + err.Error()}
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return &cgroupSetup{detail: "read /proc/self/cgroup: " + err.Error()}
	}
	return detectCgroupsFrom(mi, cg, os.Getenv("CORDON_CGROUP_PARENT"))
}

// detectCgroupsFrom decides where sandbox cgroups go from the contents of
// /proc/self/mountinfo and /proc/self/cgroup.
func detectCgroupsFrom(mountinfo, selfCgroup []byte, override string) *cgroupSetup {
	mounts := parseMountinfo(mountinfo)
	own1, own2 := parseOwnCgroups(selfCgroup)
	// v1 hierarchies for our controllers.
	v1 := map[string]string{}
	for _, m := range mounts {
		if m.fstype != "cgroup" {
			continue
		}
		for _, opt := range strings.Split(m.super, ",") {
			for _, c := range cgroupControllers {
				if opt == c {
					if _, dup := v1[c]; dup {
						continue
					}
					path := own1[c]
					if override != "" {
						path = override
					}
					if dir, ok := joinMount(m, path); ok {
						v1[c] = dir
					}
				}
			}
		}
	}
	if len(v1) == len(cgroupControllers) {
		return &cgroupSetup{version: cgroupV1, parents: v1, override: override != "", detail: "v1: " + v1["memory"] + ", " + v1["pids"] + ", " + v1["cpu"],
			hugetlb: findHugetlbV1(mounts, own1, own2, override)}
	}
	if len(v1) > 0 {
		return &cgroupSetup{detail: "controllers split between cgroup v1 and v2 (unsupported)"}
	}
	for _, m := range mounts {
		if m.fstype != "cgroup2" {
			continue
		}
		path := own2
		if override != "" {
			path = override
		}
		dir, ok := joinMount(m, path)
		if !ok {
			continue
		}
		return &cgroupSetup{version: cgroupV2, parent: dir, override: override != "", detail: "v2: " + dir,
			hugetlb: hugetlbSetup{found: true, v2: true}}
	}
	return &cgroupSetup{detail: "no cgroup hierarchy with memory, pids and cpu"}
}

// findHugetlbV1 finds the hugetlb controller on a host whose memory, pids
// and cpu controllers are v1: a v1 hierarchy of its own, or else the v2
// hierarchy (hybrid hosts, where unbound controllers live there).
func findHugetlbV1(mounts []mountInfo, own1 map[string]string, own2, override string) hugetlbSetup {
	for _, m := range mounts {
		if m.fstype != "cgroup" || !contains(strings.Split(m.super, ","), "hugetlb") {
			continue
		}
		path := own1["hugetlb"]
		if override != "" {
			path = override
		}
		if dir, ok := joinMount(m, path); ok {
			return hugetlbSetup{found: true, parent: dir}
		}
	}
	for _, m := range mounts {
		if m.fstype != "cgroup2" {
			continue
		}
		path := own2
		if override != "" {
			path = override
		}
		if dir, ok := joinMount(m, path); ok {
			return hugetlbSetup{found: true, parent: dir, v2: true}
		}
	}
	return hugetlbSetup{detail: "no hugetlb controller"}
}

// prepare makes the parent usable (v2: controllers enabled for children)
// and checks that we may create cgroups there. It returns an error saying
// why the cgroup layer is unavailable.
func (s *cgroupSetup) prepare() error {
	switch s.version {
	case cgroupNone:
		return errors.New(s.detail)
	case cgroupV1:
		for _, c := range cgroupControllers {
			if err := unix.Access(s.parents[c], unix.W_OK); err != nil {
				return fmt.Errorf("%s: not writable: %w", s.parents[c], err)
			}
		}
		s.prepareHugetlb()
		return nil
	}
	// v2: the controllers must be available in the parent and enabled
	// for its children.
	avail, err := os.ReadFile(filepath.Join(s.parent, "cgroup.controllers"))
	if err != nil {
		return err
	}
	have := strings.Fields(string(avail))
	for _, c := range cgroupControllers {
		if !contains(have, c) {
			return fmt.Errorf("%s: controller %s not available", s.parent, c)
		}
	}
	if err := unix.Access(s.parent, unix.W_OK); err != nil {
		return fmt.Errorf("%s: not writable: %w", s.parent, err)
	}
	enabled, _ := os.ReadFile(filepath.Join(s.parent, "cgroup.subtree_control"))
	var missing []string
	for _, c := range cgroupControllers {
		if !contains(strings.Fields(string(enabled)), c) {
			missing = append(missing, "+"+c)
		}
	}
	// hugetlb too where the kernel has it (best effort, see below).
	h := &s.hugetlb
	h.ok = contains(have, "hugetlb")
	if !h.ok {
		h.detail = "no hugetlb controller in " + s.parent
	} else if !contains(strings.Fields(string(enabled)), "hugetlb") {
		missing = append(missing, "+hugetlb")
	}
	defer s.describeHugetlb()
	if len(missing) == 0 {
		return nil
	}
	ctl := filepath.Join(s.parent, "cgroup.subtree_control")
	err = enableControllers(ctl, missing, h)
	if errors.Is(err, syscall.EBUSY) && !s.override {
		// "No internal processes": the host itself lives in the parent.
		// Move it into a leaf of its own, then enable the controllers.
		leaf := filepath.Join(s.parent, "cordon-host")
		if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			return fmt.Errorf("move host into %s: %w", leaf, err)
		}
		err = enableControllers(ctl, missing, h)
	}
	if err != nil {
		return fmt.Errorf("enable %s in %s: %w", strings.Join(missing, " "), ctl, err)
	}
	return nil
}

// enableControllers enables controllers for the children of a v2 cgroup
// (one write: the kernel takes all or none). If hugetlb is among them and
// the write fails, it tries again without it: hugetlb is best effort.
func enableControllers(ctl string, controllers []string, h *hugetlbSetup) error {
	err := os.WriteFile(ctl, []byte(strings.Join(controllers, " ")), 0)
	if err == nil || !contains(controllers, "+hugetlb") {
		return err
	}
	rest := slices.DeleteFunc(slices.Clone(controllers), func(c string) bool { return c == "+hugetlb" })
	if err2 := os.WriteFile(ctl, []byte(strings.Join(rest, " ")), 0); err2 != nil {
		return err // the first error says more
	}
	h.ok, h.detail = false, fmt.Sprintf("cannot enable hugetlb in %s: %v", ctl, err)
	return nil
}

// prepareHugetlb makes the hugetlb controller's own hierarchy usable on a
// v1 host, or says why not. It never fails the cgroup layer.
func (s *cgroupSetup) prepareHugetlb() {
	h := &s.hugetlb
	defer s.describeHugetlb()
	if !h.found {
		return
	}
	if err := unix.Access(h.parent, unix.W_OK); err != nil {
		h.detail = fmt.Sprintf("hugetlb: %s not writable: %v", h.parent, err)
		return
	}
	if h.v2 {
		// The v2 hierarchy beside v1 controllers (hybrid host): hugetlb
		// must be available there and enabled for children.
		avail, _ := os.ReadFile(filepath.Join(h.parent, "cgroup.controllers"))
		if !contains(strings.Fields(string(avail)), "hugetlb") {
			h.detail = "no hugetlb controller"
			return
		}
		ctl := filepath.Join(h.parent, "cgroup.subtree_control")
		enabled, _ := os.ReadFile(ctl)
		if !contains(strings.Fields(string(enabled)), "hugetlb") {
			if err := os.WriteFile(ctl, []byte("+hugetlb"), 0); err != nil {
				h.detail = fmt.Sprintf("cannot enable hugetlb in %s: %v", ctl, err)
				return
			}
		}
	}
	h.ok = true
}

// describeHugetlb adds the hugetlb limits (or why there are none) to the
// cgroup layer's detail.
func (s *cgroupSetup) describeHugetlb() {
	h := &s.hugetlb
	switch {
	case h.ok && h.parent != "":
		s.detail += "; hugetlb limited to 0 in " + h.parent
	case h.ok:
		s.detail += "; hugetlb limited to 0"
	case h.detail != "":
		s.detail += "; " + h.detail + " (hugetlb pages kept out by seccomp only)"
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

type cgroupLimits struct {
	memory     uint64
	pids       uint64
	cpuPercent int
}

// cgroup is one sandbox's cgroup.
type cgroup struct {
	version cgroupVersion
	dirs    []string // v1: one per controller (memory first); v2: one; then the hugetlb hierarchy's, if separate
	hugetlb bool     // hugetlb limits set (to 0)
	removed atomic.Bool

	// The memory charge file, opened on first use and kept open: the host
	// reads it after every exchange, and opening it by path each time cost
	// four times the read (a walk through cgroupfs, fstat, a second read to
	// see its end, close) on every query. Under usageMu; closed by remove.
	usageMu   sync.Mutex
	usageFD   int
	usageOpen bool
}

// usageOpens counts the memory charge files opened (tests).
var usageOpens atomic.Int64

var (
	cgroupSeq atomic.Uint64
	sweepOnce sync.Once
)

// cgroupName is cordon.<host pid>.<sequence>.<label, restricted to [A-Za-z0-9_-]>.
func cgroupName(label string) string {
	b := []byte(label)
	if len(b) > 64 {
		b = b[:64]
	}
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return fmt.Sprintf("cordon.%d.%d.%s", os.Getpid(), cgroupSeq.Add(1), b)
}

// sweep removes empty cgroups of dead cordon hosts.
func (s *cgroupSetup) sweep() {
	var parents []string
	if s.version == cgroupV1 {
		for _, c := range cgroupControllers {
			parents = append(parents, s.parents[c])
		}
	} else {
		parents = []string{s.parent}
	}
	if s.hugetlb.ok && s.hugetlb.parent != "" {
		parents = append(parents, s.hugetlb.parent)
	}
	for _, p := range parents {
		ents, err := os.ReadDir(p)
		if err != nil {
			continue
		}
		for _, e := range ents {
			f := strings.SplitN(e.Name(), ".", 4)
			if !e.IsDir() || len(f) != 4 || f[0] != "cordon" {
				continue
			}
			pid, err := strconv.Atoi(f[1])
			if err != nil || pid == os.Getpid() || unix.Kill(pid, 0) == nil {
				continue
			}
			d := filepath.Join(p, e.Name())
			// A node's group (group.go) holds its sandboxes' cgroups.
			if sub, err := os.ReadDir(d); err == nil {
				for _, c := range sub {
					if c.IsDir() && strings.HasPrefix(c.Name(), "cordon.") {
						_ = unix.Rmdir(filepath.Join(d, c.Name()))
					}
				}
			}
			_ = unix.Rmdir(d)
		}
	}
}

func writeFile(path, v string) error {
	return os.WriteFile(path, []byte(v), 0)
}

// mkdirError says which cgroup could not be made, and the errno.
func mkdirError(dir string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("create %s: %w", dir, err)
}

func (s *cgroupSetup) create(label string, lim cgroupLimits) (*cgroup, error) {
	sweepOnce.Do(s.sweep)
	name := cgroupName(label)
	cg := &cgroup{version: s.version}
	fail := func(err error) (*cgroup, error) {
		_ = cg.remove()
		return nil, err
	}
	if s.version == cgroupV1 {
		for _, c := range cgroupControllers {
			d := filepath.Join(s.parents[c], name)
			if err := os.Mkdir(d, 0o755); err != nil {
				return fail(mkdirError(d, err))
			}
			cg.dirs = append(cg.dirs, d)
		}
		mem, pids, cpu := cg.dirs[0], cg.dirs[1], cg.dirs[2]
		if err := writeFile(filepath.Join(mem, "memory.limit_in_bytes"), strconv.FormatUint(lim.memory, 10)); err != nil {
			return fail(fmt.Errorf("memory limit: %w", err))
		}
		// No swap: memory+swap limited to the same amount (absent without swap accounting).
		if _, err := os.Stat(filepath.Join(mem, "memory.memsw.limit_in_bytes")); err == nil {
			if err := writeFile(filepath.Join(mem, "memory.memsw.limit_in_bytes"), strconv.FormatUint(lim.memory, 10)); err != nil {
				return fail(fmt.Errorf("memory+swap limit: %w", err))
			}
		}
		_ = writeFile(filepath.Join(mem, "memory.swappiness"), "0")
		if err := writeFile(filepath.Join(pids, "pids.max"), strconv.FormatUint(lim.pids, 10)); err != nil {
			return fail(fmt.Errorf("pids limit: %w", err))
		}
		if lim.cpuPercent > 0 {
			if err := writeFile(filepath.Join(cpu, "cpu.cfs_period_us"), "100000"); err != nil {
				return fail(fmt.Errorf("cpu period: %w", err))
			}
			if err := writeFile(filepath.Join(cpu, "cpu.cfs_quota_us"), strconv.Itoa(lim.cpuPercent*1000)); err != nil {
				return fail(fmt.Errorf("cpu quota: %w", err))
			}
		}
		if err := s.limitHugetlb(cg, name, ""); err != nil {
			return fail(err)
		}
		return cg, nil
	}
	d := filepath.Join(s.parent, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		return fail(mkdirError(d, err))
	}
	cg.dirs = []string{d}
	if err := writeFile(filepath.Join(d, "memory.max"), strconv.FormatUint(lim.memory, 10)); err != nil {
		return fail(fmt.Errorf("memory limit: %w", err))
	}
	if _, err := os.Stat(filepath.Join(d, "memory.swap.max")); err == nil {
		if err := writeFile(filepath.Join(d, "memory.swap.max"), "0"); err != nil {
			return fail(fmt.Errorf("swap limit: %w", err))
		}
	}
	// Kill the whole cgroup on OOM, not one task of it.
	_ = writeFile(filepath.Join(d, "memory.oom.group"), "1")
	if err := writeFile(filepath.Join(d, "pids.max"), strconv.FormatUint(lim.pids, 10)); err != nil {
		return fail(fmt.Errorf("pids limit: %w", err))
	}
	if lim.cpuPercent > 0 {
		if err := writeFile(filepath.Join(d, "cpu.max"), fmt.Sprintf("%d 100000", lim.cpuPercent*1000)); err != nil {
			return fail(fmt.Errorf("cpu limit: %w", err))
		}
	}
	if err := s.limitHugetlb(cg, name, d); err != nil {
		return fail(err)
	}
	return cg, nil
}

// limitHugetlb sets every hugetlb limit of the sandbox's cgroup to 0 (usage
// and reservations, every huge page size): in its v2 cgroup dir, or in a
// new cgroup of the controller's own hierarchy, which joins cg.dirs.
func (s *cgroupSetup) limitHugetlb(cg *cgroup, name, dir string) error {
	h := s.hugetlb
	if !h.ok {
		return nil
	}
	if h.parent != "" {
		dir = filepath.Join(h.parent, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("hugetlb cgroup: %w", err)
		}
		cg.dirs = append(cg.dirs, dir)
	}
	suffix := ".limit_in_bytes"
	if h.v2 {
		suffix = ".max"
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("hugetlb cgroup: %w", err)
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "hugetlb.") && strings.HasSuffix(n, suffix) {
			if err := writeFile(filepath.Join(dir, n), "0"); err != nil {
				return fmt.Errorf("hugetlb limit: %w", err)
			}
			cg.hugetlb = true
		}
	}
	return nil
}

// openDir returns an O_PATH|O_DIRECTORY fd of a v2 cgroup, for
// CLONE_INTO_CGROUP.
func (c *cgroup) openDir() (int, error) {
	return unix.Open(c.dirs[0], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// join moves a process into its cgroup (every v1 controller, or the v2 one).
func (c *cgroup) join(pid int) error {
	for _, d := range c.dirs {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("join %s: %w", d, err)
		}
	}
	return nil
}

// pids lists the processes in the cgroup.
func (c *cgroup) pids() []int {
	b, err := os.ReadFile(filepath.Join(c.dirs[0], "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// killAll SIGKILLs everything in the cgroup.
func (c *cgroup) killAll() {
	if c.version == cgroupV2 {
		if writeFile(filepath.Join(c.dirs[0], "cgroup.kill"), "1") == nil {
			return
		}
	}
	for _, p := range c.pids() {
		_ = unix.Kill(p, unix.SIGKILL)
	}
}

// oomKilled reports whether the kernel's OOM killer acted in this cgroup.
func (c *cgroup) oomKilled() bool {
	killed, _ := c.oomCause(0)
	return killed
}

// oomCause reports whether the kernel's OOM killer acted in this cgroup
// and, if so, whether the cgroup's own memory limit was reached. A kill
// without it came from an ancestor's limit (the node group's: the kernel
// picks its largest sandbox, whichever pushed it over) or the machine's,
// not from what this sandbox was allowed. Evidence of its own limit: its
// peak charge reached it (within ownLimitSlack), or the kernel counted a
// failed charge here (v1 memory.failcnt, which recent kernels may leave
// at 0; v2 memory.events "max" and "oom", kept where the limit failed and
// its ancestors, never below). Unreadable counters say own: a kill stays
// the sandbox's doing unless the kernel shows otherwise.
//
// In a node group of memory limit groupLimit (0: none), a peak of half of
// it or more counts as its own limit too. The sandbox's own limit may be
// far above the group's (8 GiB by default, the group a quarter of the
// machine's memory), so one that took the group past its limit alone, or
// nearly, never reached its own: it held more than all the others
// together, and the kernel took it for what it took. The memory budget
// keeps idle sandboxes below that half, leaving the other half to
// executions.
func (c *cgroup) oomCause(groupLimit uint64) (killed, ownLimit bool) {
	name, key := "memory.events", "oom_kill"
	if c.version == cgroupV1 {
		name = "memory.oom_control"
	}
	if !counted(counter(filepath.Join(c.dirs[0], name), key)) {
		return false, false
	}
	return true, c.ownMemory(groupLimit)
}

// ownMemory reports whether the cgroup's counters show its own memory
// limit reached, or half of its node group's limit groupLimit held (see
// oomCause): what makes a failure for memory the sandbox's own doing.
func (c *cgroup) ownMemory(groupLimit uint64) bool {
	dir := c.dirs[0]
	file := func(name string) string { return filepath.Join(dir, name) }
	if c.version == cgroupV1 {
		return failedHere(file("memory.failcnt")) || failedHere(file("memory.memsw.failcnt")) ||
			reachedLimit(file("memory.max_usage_in_bytes"), file("memory.limit_in_bytes")) ||
			reachedLimit(file("memory.memsw.max_usage_in_bytes"), file("memory.memsw.limit_in_bytes")) ||
			heldMostOf(file("memory.max_usage_in_bytes"), groupLimit)
	}
	events := file("memory.events")
	return counter(events, "max") != 0 || counter(events, "oom") != 0 ||
		reachedLimit(file("memory.peak"), file("memory.max")) || heldMostOf(file("memory.peak"), groupLimit)
}

// heldMostOf says whether the peak in file peak was half of groupLimit or
// more (never, without a group). A file the kernel does not have says no;
// one it has but cannot be read, yes.
func heldMostOf(peak string, groupLimit uint64) bool {
	if groupLimit == 0 {
		return false
	}
	p, err := readMemoryLimit(peak)
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	return p >= groupLimit/2
}

// ownLimitSlack is how far below its limit a cgroup's peak may stay when a
// charge fails there: the charge that failed is not counted in the peak.
const ownLimitSlack = 4 << 20

// failedHere reads a v1 failcnt file: true if it counts a failure or
// cannot be read (but for a file the kernel does not have).
func failedHere(name string) bool {
	b, err := os.ReadFile(name)
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return err != nil || n > 0
}

// reachedLimit says whether the peak in file peak came within
// ownLimitSlack of the limit in file limit ("max": none). A file the
// kernel does not have says no; one it has but cannot be read, yes.
func reachedLimit(peak, limit string) bool {
	p, err := readMemoryLimit(peak)
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	l, err := readMemoryLimit(limit)
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	return p+ownLimitSlack >= l
}

// counted says whether a counter read something that happened.
func counted(n uint64) bool { return n != 0 && n != ^uint64(0) }

// counter reads key's value from a flat keyed cgroup file ("key value"
// lines); 0 if absent, ^0 if the file cannot be read or parsed.
func counter(file, key string) uint64 {
	b, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0
		}
		return ^uint64(0)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == key {
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return ^uint64(0)
			}
			return n
		}
	}
	return 0
}

// memoryUsage is the cgroup's charged memory: one pread of its charge file
// at offset 0, which makes the kernel format the value afresh.
func (c *cgroup) memoryUsage() (uint64, error) {
	name := "memory.current"
	if c.version == cgroupV1 {
		name = "memory.usage_in_bytes"
	}
	c.usageMu.Lock()
	defer c.usageMu.Unlock()
	if !c.usageOpen {
		if c.removed.Load() {
			return 0, fmt.Errorf("cgroup %s: removed", c.dirs[0])
		}
		path := filepath.Join(c.dirs[0], name)
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return 0, &os.PathError{Op: "open", Path: path, Err: err}
		}
		usageOpens.Add(1)
		c.usageFD, c.usageOpen = fd, true
	}
	var b [32]byte // a decimal uint64 and a newline
	n, err := unix.Pread(c.usageFD, b[:], 0)
	if err != nil {
		return 0, fmt.Errorf("read %s of %s: %w", name, c.dirs[0], err)
	}
	return strconv.ParseUint(strings.TrimSpace(string(b[:n])), 10, 64)
}

// closeUsage closes the memory charge file, if open.
func (c *cgroup) closeUsage() {
	c.usageMu.Lock()
	defer c.usageMu.Unlock()
	if c.usageOpen {
		_ = unix.Close(c.usageFD)
		c.usageOpen = false
	}
}

// remove deletes the cgroup directories, killing stragglers first. It
// retries briefly: the kernel frees a cgroup a moment after its last task.
func (c *cgroup) remove() error {
	if c == nil || c.removed.Swap(true) {
		return nil
	}
	c.closeUsage() // a removed cgroup is not kept alive by an open file of it
	var last error
	for _, d := range c.dirs {
		last = nil
		for i := 0; i < 100; i++ {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				last = nil
				break
			}
			last = err
			if i == 0 || i%10 == 0 {
				c.killAll()
			}
			time.Sleep(time.Duration(i+1) * time.Millisecond)
		}
		if last != nil {
			c.removed.Store(false)
			return fmt.Errorf("remove cgroup %s: %w", d, last)
		}
	}
	return nil
}
