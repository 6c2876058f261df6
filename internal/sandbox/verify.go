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
	limits     []rlimitMax // each limit at most this (rlimits layer)
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

// verifyLive checks from the host what the sandbox reported: on every
// thread the capability sets, no_new_privs and seccomp mode; that each
// planned namespace differs from the host's; that it is in each of its
// cgroup directories, its rlimits are at most the planned ones, and its
// mount table is the one read-only root. A planned layer that is not in
// effect fails the start (strict or not): Layers() would report it applied.
// Landlock has no view from outside; its ready bit is the child's word.
func verifyLive(pid int, plan map[Layer]bool, exp liveExpect) error {
	if err := verifyProc(pid, plan, exp); err != nil {
		return err
	}
	threads, err := ReadThreads(pid)
	if os.IsNotExist(err) {
		return nil // already gone: nothing left to confine
	}
	if err != nil {
		return err
	}
	if len(threads) == 0 {
		return fmt.Errorf("no threads")
	}
	for _, t := range threads {
		if plan[LayerCaps] && (t.CapInh|t.CapPrm|t.CapEff|t.CapBnd|t.CapAmb) != 0 {
			return fmt.Errorf("thread %d has capabilities: %+v", t.Tid, t)
		}
		if plan[LayerNoNewPrivs] && t.NoNewPrivs != 1 {
			return fmt.Errorf("thread %d: NoNewPrivs %d", t.Tid, t.NoNewPrivs)
		}
		if plan[LayerSeccomp] && t.Seccomp != 2 {
			return fmt.Errorf("thread %d: Seccomp %d", t.Tid, t.Seccomp)
		}
	}
	hostNS := hostNamespaces()
	nsDir := "/proc/" + strconv.Itoa(pid) + "/ns/"
	for l, f := range nsFiles {
		if !plan[l] {
			continue
		}
		mine, err1 := hostNS[f].link, hostNS[f].err
		theirs, err2 := os.Readlink(nsDir + f)
		if os.IsNotExist(err2) {
			return nil
		}
		if err1 != nil || err2 != nil {
			return fmt.Errorf("namespace %s: %v %v", f, err1, err2)
		}
		if mine == theirs {
			return fmt.Errorf("namespace %s not new: %s", f, theirs)
		}
	}
	return nil
}

// verifyProc checks the sandbox's cgroups, rlimits and mounts from /proc.
func verifyProc(pid int, plan map[Layer]bool, exp liveExpect) error {
	proc := "/proc/" + strconv.Itoa(pid)
	if plan[LayerCgroup] {
		for _, d := range exp.cgroupDirs {
			b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			if err != nil {
				return fmt.Errorf("layer cgroup: %w", err)
			}
			if !slices.Contains(strings.Fields(string(b)), strconv.Itoa(pid)) {
				self, _ := os.ReadFile(proc + "/cgroup")
				return fmt.Errorf("layer cgroup: the sandbox is not in %s (it is in %q)", d, strings.TrimSpace(string(self)))
			}
		}
	}
	if plan[LayerRlimits] {
		b, err := os.ReadFile(proc + "/limits")
		if err != nil {
			return fmt.Errorf("layer rlimits: %w", err)
		}
		live, err := parseLimits(b)
		if err != nil {
			return fmt.Errorf("layer rlimits: %s/limits: %w", proc, err)
		}
		for _, w := range exp.limits {
			got, ok := live[w.name]
			if !ok {
				return fmt.Errorf("layer rlimits: %s/limits has no %q", proc, w.name)
			}
			if got[0] > w.max || got[1] > w.max {
				return fmt.Errorf("layer rlimits: %s is %s, planned %d", w.name, fmtLimit(got), w.max)
			}
		}
	}
	if plan[LayerPivotRoot] {
		b, err := os.ReadFile(proc + "/mountinfo")
		if err != nil {
			return fmt.Errorf("layer pivot_root: %w", err)
		}
		if err := checkMountinfo(b); err != nil {
			return fmt.Errorf("layer pivot_root: %w", err)
		}
	}
	return nil
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
