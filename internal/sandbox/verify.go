package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// nsFiles are the /proc/<pid>/ns entries of the namespace layers.
var nsFiles = map[Layer]string{
	LayerUserNS: "user", LayerPidNS: "pid", LayerNetNS: "net", LayerMountNS: "mnt",
	LayerIPCNS: "ipc", LayerUTSNS: "uts", LayerCgroupNS: "cgroup",
}

// ThreadStatus is the confinement-relevant part of /proc/<pid>/task/<tid>/status.
type ThreadStatus struct {
	Tid                                    int
	CapInh, CapPrm, CapEff, CapBnd, CapAmb uint64
	NoNewPrivs                             int
	Seccomp                                int
}

// ReadThreads reads the status of every thread of a process.
func ReadThreads(pid int) ([]ThreadStatus, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []ThreadStatus
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "status"))
		if err != nil {
			continue // the thread exited
		}
		t := ThreadStatus{Tid: tid, NoNewPrivs: -1, Seccomp: -1}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			v = strings.TrimSpace(v)
			hex := func() uint64 { n, _ := strconv.ParseUint(v, 16, 64); return n }
			switch k {
			case "CapInh":
				t.CapInh = hex()
			case "CapPrm":
				t.CapPrm = hex()
			case "CapEff":
				t.CapEff = hex()
			case "CapBnd":
				t.CapBnd = hex()
			case "CapAmb":
				t.CapAmb = hex()
			case "NoNewPrivs":
				t.NoNewPrivs, _ = strconv.Atoi(v)
			case "Seccomp":
				t.Seccomp, _ = strconv.Atoi(v)
			}
		}
		out = append(out, t)
	}
	return out, nil
}

type nsLink struct {
	link string
	err  error
}

// hostNamespaces are the host's own namespaces, read once: the host never
// changes its own (it creates namespaces only for its children, at clone),
// so each verification reads only the sandbox's links, not the host's too.
var hostNamespaces = sync.OnceValue(func() map[string]nsLink {
	m := make(map[string]nsLink, len(nsFiles))
	for _, f := range nsFiles {
		l, err := os.Readlink("/proc/self/ns/" + f)
		m[f] = nsLink{l, err}
	}
	return m
})

// liveExpect is what verifyLive checks beyond the plan's layers: the
// sandbox's cgroup directories and its rlimits.
type liveExpect struct {
	cgroupDirs []string    // the sandbox must be in each (cgroup layer)
	group      *Group      // they must be in it, its limit in place (cgroup layer); nil: none
	limits     []rlimitMax // each limit at most this (rlimits layer)
	oom        *oomSteer   // what the host set its oom_score_adj to (oom_score_adj layer); nil: its own
}

// rlimitMax is an upper bound on one limit, by its /proc/<pid>/limits name.
type rlimitMax struct {
	name string // e.g. "Max open files"
	max  uint64
}

// plannedLimits are the bounds the child was asked to set (confine.Config;
// 0 for AS, NProc and Data means unlimited: not checked). The child only
// ever lowers a limit, so a live one may be lower, never higher.
func plannedLimits(cfg confine.Config) []rlimitMax {
	out := []rlimitMax{
		{"Max core file size", 0}, {"Max file size", cfg.FSize}, {"Max open files", cfg.NoFile},
		{"Max locked memory", 0}, {"Max msgqueue size", 0},
	}
	for _, l := range []rlimitMax{{"Max address space", cfg.AS}, {"Max processes", cfg.NProc}, {"Max data size", cfg.Data}} {
		if l.max != 0 {
			out = append(out, l)
		}
	}
	return out
}

// hostChecks says what the host checks of each layer it can see from
// outside (verifyLayers). The others it knows from how it spawned the
// sandbox (env, fds, session, pdeathsig, the namespaces' clone flags) or
// only from the sandbox's ready report (landlock, wx): nothing in /proc
// shows them.
var hostChecks = map[Layer]string{
	LayerUserNS:     "/proc/<pid>/ns/user is not the host's",
	LayerPidNS:      "/proc/<pid>/ns/pid is not the host's",
	LayerNetNS:      "/proc/<pid>/ns/net is not the host's",
	LayerMountNS:    "/proc/<pid>/ns/mnt is not the host's",
	LayerIPCNS:      "/proc/<pid>/ns/ipc is not the host's",
	LayerUTSNS:      "/proc/<pid>/ns/uts is not the host's",
	LayerCgroupNS:   "/proc/<pid>/ns/cgroup is not the host's",
	LayerPivotRoot:  "/proc/<pid>/mountinfo: one mount, a read-only root",
	LayerOOMScore:   fmt.Sprintf("/proc/<pid>/oom_score_adj is %d, or what the host set while it executes", confine.OOMScoreAdj),
	LayerCgroup:     "the pid is in cgroup.procs of each of its cgroup directories; their node group, if any, holds its memory limit",
	LayerRlimits:    "/proc/<pid>/limits: each limit at most the planned one",
	LayerCaps:       "every thread: no capability in any set",
	LayerNoNewPrivs: "every thread: NoNewPrivs 1",
	LayerSeccomp:    "every thread: Seccomp 2 (filter)",
}

// verifyLive checks from the host what the sandbox reported: on every
// thread the capability sets, no_new_privs and seccomp mode; that each
// planned namespace differs from the host's; that it is in each of its
// cgroup directories, its rlimits are at most the planned ones, and its
// mount table is the one read-only root. A planned layer that is not in
// effect fails the start (strict or not): Layers() would report it applied.
// The error is a *LayerError naming the first such layer. Landlock has no
// view from outside; its ready bit is the child's word. A sandbox that is
// gone passes: nothing is left to confine.
func verifyLive(pid int, plan map[Layer]bool, exp liveExpect) error {
	res, gone := verifyLayers(pid, plan, exp)
	if gone {
		return nil
	}
	for _, l := range AllLayers {
		if err := res[l]; err != nil {
			return &LayerError{Layer: l, Err: err}
		}
	}
	return nil
}

// verifyLayers makes verifyLive's checks, every one of them: the result
// has an entry for each planned layer in hostChecks, nil if it is in
// effect. gone: the process vanished while it was being checked.
func verifyLayers(pid int, plan map[Layer]bool, exp liveExpect) (res map[Layer]error, gone bool) {
	res = map[Layer]error{}
	proc := "/proc/" + strconv.Itoa(pid)
	if plan[LayerCgroup] {
		res[LayerCgroup] = checkCgroups(proc, pid, exp.cgroupDirs)
		if res[LayerCgroup] == nil && exp.group != nil {
			res[LayerCgroup] = exp.group.check(exp.cgroupDirs)
		}
	}
	if plan[LayerRlimits] {
		res[LayerRlimits] = checkLimits(proc, exp.limits)
	}
	if plan[LayerPivotRoot] {
		res[LayerPivotRoot] = checkMounts(proc)
	}
	if plan[LayerOOMScore] {
		res[LayerOOMScore] = checkOOMScore(proc, exp.oom)
	}
	if plan[LayerCaps] || plan[LayerNoNewPrivs] || plan[LayerSeccomp] {
		threads, err := ReadThreads(pid)
		if os.IsNotExist(err) {
			return res, true
		}
		if err == nil && len(threads) == 0 {
			err = errors.New("no threads")
		}
		for _, l := range []Layer{LayerCaps, LayerNoNewPrivs, LayerSeccomp} {
			if plan[l] {
				res[l] = err
			}
		}
		for _, t := range threads {
			if plan[LayerCaps] && res[LayerCaps] == nil && (t.CapInh|t.CapPrm|t.CapEff|t.CapBnd|t.CapAmb) != 0 {
				res[LayerCaps] = fmt.Errorf("thread %d has capabilities: %+v", t.Tid, t)
			}
			if plan[LayerNoNewPrivs] && res[LayerNoNewPrivs] == nil && t.NoNewPrivs != 1 {
				res[LayerNoNewPrivs] = fmt.Errorf("thread %d: NoNewPrivs %d", t.Tid, t.NoNewPrivs)
			}
			if plan[LayerSeccomp] && res[LayerSeccomp] == nil && t.Seccomp != 2 {
				res[LayerSeccomp] = fmt.Errorf("thread %d: Seccomp %d", t.Tid, t.Seccomp)
			}
		}
	}
	hostNS := hostNamespaces()
	for _, l := range AllLayers {
		f, ok := nsFiles[l]
		if !ok || !plan[l] {
			continue
		}
		mine, err1 := hostNS[f].link, hostNS[f].err
		theirs, err2 := os.Readlink(proc + "/ns/" + f)
		switch {
		case os.IsNotExist(err2):
			return res, true
		case err1 != nil || err2 != nil:
			res[l] = fmt.Errorf("namespace %s: %v %v", f, err1, err2)
		case mine == theirs:
			res[l] = fmt.Errorf("namespace %s not new: %s", f, theirs)
		default:
			res[l] = nil
		}
	}
	return res, false
}

// checkCgroups: the sandbox is in each of its cgroup directories.
func checkCgroups(proc string, pid int, dirs []string) error {
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			return err
		}
		if !slices.Contains(strings.Fields(string(b)), strconv.Itoa(pid)) {
			self, _ := os.ReadFile(proc + "/cgroup")
			return fmt.Errorf("the sandbox is not in %s (it is in %q)", d, strings.TrimSpace(string(self)))
		}
	}
	return nil
}

// checkLimits: each of the sandbox's rlimits is at most the planned one.
func checkLimits(proc string, limits []rlimitMax) error {
	b, err := os.ReadFile(proc + "/limits")
	if err != nil {
		return err
	}
	live, err := parseLimits(b)
	if err != nil {
		return fmt.Errorf("%s/limits: %w", proc, err)
	}
	for _, w := range limits {
		got, ok := live[w.name]
		if !ok {
			return fmt.Errorf("%s/limits has no %q", proc, w.name)
		}
		if got[0] > w.max || got[1] > w.max {
			return fmt.Errorf("%s is %s, planned %d", w.name, fmtLimit(got), w.max)
		}
	}
	return nil
}

// checkMounts: the sandbox's mount table is its one read-only root.
func checkMounts(proc string) error {
	b, err := os.ReadFile(proc + "/mountinfo")
	if err != nil {
		return err
	}
	return checkMountinfo(b)
}

// hostUnseen says, for each layer the host cannot check from outside, how
// it knows the layer was applied.
var hostUnseen = map[Layer]string{
	LayerEnv:       "not visible from the host: it set the environment at exec",
	LayerFds:       "not visible from the host: it passed only these; the sandbox reported closing the rest before it ran anything",
	LayerSession:   "not visible from the host: setsid at the clone",
	LayerPdeathsig: "not visible from the host: set at the clone, and again by the sandbox (its report)",
	LayerLandlock:  "not visible from the host: the sandbox's report",
	LayerWX:        "not visible from the host: its filter half is seccomp's; PR_SET_MDWE, set by the worker after its module load, has no view from outside",
}

// LayerCheck is one layer of a live sandbox as Verify saw it.
type LayerCheck struct {
	Layer   Layer
	Applied bool // Start applied it (Layers)
	// Verified: the host checked it from outside just now (/proc, the
	// cgroup filesystem) and it is in effect.
	Verified bool
	How      string // what the host checked, or how it knows an applied layer it cannot see
	Detail   string // Layers' detail: what was applied, or why not
	Err      error  // the check found it not in effect
}

// Verify checks again, from the host and while the sandbox runs, every
// layer Start applied, with the checks Start makes before it returns
// (verifyLive), now on every thread the sandbox has since started, and
// reports each layer in AllLayers order. The error names the first layer
// not in effect (a *LayerError), or says the sandbox is gone: a sandbox
// that exited has nothing left to check.
func (p *Process) Verify() ([]LayerCheck, error) {
	if p.plan == nil {
		return nil, errors.New("sandbox: Verify of a sandbox Start did not return")
	}
	select {
	case <-p.done:
		return nil, fmt.Errorf("sandbox %s: exited before its check: %v", p.label, p.status.Err)
	default:
	}
	res, gone := verifyLayers(p.proc.Pid, p.plan, p.expect)
	// The waiter reaps it only after done closes, so until then its pid
	// is its own: a check that saw it gone, or that ran while it exited,
	// says nothing.
	select {
	case <-p.done:
		gone = true
	default:
	}
	for _, err := range res {
		if err != nil && !gone {
			gone = exitsSoon(p.proc.Pid)
			break
		}
	}
	if gone {
		return nil, fmt.Errorf("sandbox %s: exited during its check", p.label)
	}
	var out []LayerCheck
	var first error
	for _, l := range AllLayers {
		st := p.layers[l]
		c := LayerCheck{Layer: l, Applied: st.Applied, Detail: st.Detail}
		if st.Applied {
			c.How = hostUnseen[l]
		}
		if err, checked := res[l]; checked {
			c.How = hostChecks[l]
			c.Err = err
			c.Verified = err == nil
			if err != nil && first == nil {
				first = fmt.Errorf("sandbox %s: verification: %w", p.label, &LayerError{Layer: l, Err: err})
			}
		}
		out = append(out, c)
	}
	return out, first
}

const unlimited = ^uint64(0)

func fmtLimit(l [2]uint64) string {
	f := func(v uint64) string {
		if v == unlimited {
			return "unlimited"
		}
		return strconv.FormatUint(v, 10)
	}
	return f(l[0]) + "/" + f(l[1])
}

// parseLimits parses /proc/<pid>/limits into name -> [soft, hard]
// ("unlimited" is the largest value). The name column is 26 bytes wide.
func parseLimits(b []byte) (map[string][2]uint64, error) {
	lines := strings.Split(string(b), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "Limit") {
		return nil, errors.New("unexpected format")
	}
	out := map[string][2]uint64{}
	for _, line := range lines[1:] {
		if len(line) <= 26 {
			continue
		}
		f := strings.Fields(line[26:])
		if len(f) < 2 {
			return nil, fmt.Errorf("unexpected line %q", line)
		}
		var v [2]uint64
		for i := range v {
			if f[i] == "unlimited" {
				v[i] = unlimited
				continue
			}
			n, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("unexpected line %q", line)
			}
			v[i] = n
		}
		out[strings.TrimSpace(line[:26])] = v
	}
	return out, nil
}

// checkMountinfo: the mount table (as the sandbox sees it) is a single
// read-only mount at /.
func checkMountinfo(b []byte) error {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 1 {
		return fmt.Errorf("%d mounts, want only the empty root; the first: %q", len(lines), lines[0])
	}
	f := strings.Fields(lines[0])
	if len(f) < 6 || f[4] != "/" || !slices.Contains(strings.Split(f[5], ","), "ro") {
		return fmt.Errorf("the only mount is not a read-only root: %q", lines[0])
	}
	return nil
}
