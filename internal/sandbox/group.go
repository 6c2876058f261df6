package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A node's sandboxes share one cgroup, their group, with a hard memory
// limit on all of them together. Each sandbox's own limit bounds that
// sandbox; without the group, a node of many sandboxes, each within its
// limit, could still hold all the machine's memory between two of the
// host's measurements (sandbox.memory_budget evicts idle ones, but only
// when it looks). The kernel charges every page to the sandbox's cgroup
// and its ancestors at the moment it is allocated, so the sum can never
// pass the group's limit: an allocation beyond it reclaims or OOM-kills
// inside the group (the sandbox's whole cgroup on v2, memory.oom.group),
// never outside it.
//
//   - v2: one directory, memory.max (memory.swap.max 0), the controllers
//     enabled for its children; memory.oom.group stays 0 on the group, so
//     an OOM kill takes one sandbox, not all.
//   - v1: one directory per controller (memory, pids, cpu);
//     memory.limit_in_bytes (and memory.memsw.limit_in_bytes), with
//     memory.use_hierarchy 1, without which a v1 parent's limit does not
//     bound its children.
//
// Its CPU weight (v2 cpu.weight, v1 cpu.shares) is that of as many tasks as
// the machine has cores (groupCPUWeight): all of a node's sandboxes
// together, against every other process group of the host, weigh what the
// node's own threads would running executions on every core in-process.
//
// The group is named as sandbox cgroups are (cordon.<pid>.<seq>.<label>),
// so the sweep of a later host removes what a crashed one left.

// ErrNoCgroupLayer says a node's group cannot exist: the cgroup layer is
// unavailable on this host (Doctor says why).
var ErrNoCgroupLayer = errors.New("no cgroup layer")

// Group is the cgroup that holds a node's sandboxes (Spec.Group).
type Group struct {
	setup   *cgroupSetup // where its sandboxes' cgroups go: under dirs
	dirs    []string     // v1: memory, pids, cpu; v2: one
	memFile string       // the file of its memory limit
	limit   uint64       // the memory limit as the kernel reads it back
	removed atomic.Bool
}

// NewGroup makes a group cgroup with memory limit memoryMax (bytes,
// rounded down to a page) for the sandboxes of one node. Its error wraps
// ErrNoCgroupLayer where this host has no cgroup layer; otherwise it is a
// *LayerError of the cgroup layer.
func NewGroup(label string, memoryMax uint64) (*Group, error) {
	av := getAvailability()
	if !av.layers[LayerCgroup] {
		return nil, fmt.Errorf("%w: %s", ErrNoCgroupLayer, av.detail[LayerCgroup])
	}
	g, err := av.cgroups.newGroup(label, memoryMax)
	if err != nil {
		return nil, &LayerError{Layer: LayerCgroup, Err: fmt.Errorf("node group: %w", err)}
	}
	return g, nil
}

// Dir is the group's directory (v1: in the memory hierarchy).
func (g *Group) Dir() string { return g.dirs[0] }

// MemoryLimit is the group's memory limit in bytes.
func (g *Group) MemoryLimit() uint64 { return g.limit }

// String says where the group is and its limit.
func (g *Group) String() string {
	return fmt.Sprintf("node group %s memory=%d", g.dirs[0], g.limit)
}

// newGroup makes the group's directories and limit (see Group).
func (s *cgroupSetup) newGroup(label string, memoryMax uint64) (*Group, error) {
	sweepOnce.Do(s.sweep)
	page := uint64(os.Getpagesize())
	memoryMax -= memoryMax % page
	if memoryMax == 0 {
		return nil, errors.New("memory limit below one page")
	}
	name := cgroupName(label)
	g := &Group{}
	fail := func(err error) (*Group, error) {
		_ = g.Close()
		return nil, err
	}
	limit := strconv.FormatUint(memoryMax, 10)
	child := *s
	child.override = true // the group is no place for the host itself
	if s.version == cgroupV1 {
		child.parents = map[string]string{}
		for _, c := range cgroupControllers {
			d := filepath.Join(s.parents[c], name)
			if err := os.Mkdir(d, 0o755); err != nil {
				return fail(mkdirError(d, err))
			}
			g.dirs = append(g.dirs, d)
			child.parents[c] = d
		}
		mem := g.dirs[0]
		// Set before anything is created inside (the kernel refuses a
		// change once there are children); kernels since 5.16 have it
		// always on.
		if b, err := os.ReadFile(filepath.Join(mem, "memory.use_hierarchy")); err == nil && strings.TrimSpace(string(b)) == "0" {
			if err := writeFile(filepath.Join(mem, "memory.use_hierarchy"), "1"); err != nil {
				return fail(fmt.Errorf("memory.use_hierarchy: %w (without it the group's limit would not bound its sandboxes)", err))
			}
		}
		g.memFile = filepath.Join(mem, "memory.limit_in_bytes")
		if err := writeFile(g.memFile, limit); err != nil {
			return fail(fmt.Errorf("memory limit: %w", err))
		}
		if _, err := os.Stat(filepath.Join(mem, "memory.memsw.limit_in_bytes")); err == nil {
			if err := writeFile(filepath.Join(mem, "memory.memsw.limit_in_bytes"), limit); err != nil {
				return fail(fmt.Errorf("memory+swap limit: %w", err))
			}
		}
		shares := strconv.Itoa(groupCPUWeight(runtime.NumCPU(), 1024, 262144))
		if err := writeFile(filepath.Join(g.dirs[2], "cpu.shares"), shares); err != nil {
			return fail(fmt.Errorf("cpu shares: %w", err))
		}
	} else {
		d := filepath.Join(s.parent, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			return fail(mkdirError(d, err))
		}
		g.dirs = []string{d}
		child.parent = d
		g.memFile = filepath.Join(d, "memory.max")
		if err := writeFile(g.memFile, limit); err != nil {
			return fail(fmt.Errorf("memory limit: %w", err))
		}
		if _, err := os.Stat(filepath.Join(d, "memory.swap.max")); err == nil {
			if err := writeFile(filepath.Join(d, "memory.swap.max"), "0"); err != nil {
				return fail(fmt.Errorf("swap limit: %w", err))
			}
		}
		// The sandboxes' controllers, enabled for the group's children
		// as prepare enabled them for the parent's.
		want := []string{"+memory", "+pids", "+cpu"}
		if s.hugetlb.ok && s.hugetlb.parent == "" {
			want = append(want, "+hugetlb")
		}
		if err := enableControllers(filepath.Join(d, "cgroup.subtree_control"), want, &child.hugetlb); err != nil {
			return fail(fmt.Errorf("enable %s in %s: %w", strings.Join(want, " "), d, err))
		}
		weight := strconv.Itoa(groupCPUWeight(runtime.NumCPU(), 100, 10000))
		if err := writeFile(filepath.Join(d, "cpu.weight"), weight); err != nil {
			return fail(fmt.Errorf("cpu weight: %w", err))
		}
	}
	got, err := readMemoryLimit(g.memFile)
	if err != nil {
		return fail(err)
	}
	if got > memoryMax {
		return fail(fmt.Errorf("%s is %d after writing %d", g.memFile, got, memoryMax))
	}
	g.limit = got
	child.detail = g.String()
	g.setup = &child
	return g, nil
}

// groupCPUWeight is the group's CPU weight: one task's (task: v1 1024
// shares, v2 100) for each of cores, at most the kernel's maximum. With one
// task's weight, as the group first had, a node's sandboxes together got
// one task's share of a loaded machine: ten busy processes left 100
// canisters' queries a tenth of a core between them, where an in-process
// node's threads took their share on every core (BENCHMARKS.md, "Sandboxed
// queries under CPU contention"). Against the host itself it leaves the
// host one core's worth while busy sandboxes fill every core.
func groupCPUWeight(cores, task, maximum int) int {
	return min(max(cores, 1)*task, maximum)
}

// readMemoryLimit reads a memory limit file (v2 "max": no limit).
func readMemoryLimit(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v := strings.TrimSpace(string(b))
	if v == "max" {
		return unlimited, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %q", path, v)
	}
	return n, nil
}

// check says whether the group's memory limit is still in place and dirs
// (a sandbox's cgroup directories) are inside the group.
func (g *Group) check(dirs []string) error {
	got, err := readMemoryLimit(g.memFile)
	if err != nil {
		return fmt.Errorf("node group: %w", err)
	}
	if got > g.limit {
		v := strconv.FormatUint(got, 10)
		if got == unlimited {
			v = "max"
		}
		return fmt.Errorf("node group: %s reads %s, set to %d", g.memFile, v, g.limit)
	}
	for i, d := range g.dirs {
		if i < len(dirs) && filepath.Dir(dirs[i]) != d {
			return fmt.Errorf("node group: the sandbox's cgroup %s is not in %s", dirs[i], d)
		}
	}
	return nil
}

// MemoryPeak is the most memory the group was ever charged: v1
// memory.max_usage_in_bytes, v2 memory.peak (Linux 5.19).
func (g *Group) MemoryPeak() (uint64, error) {
	name := "memory.peak"
	if g.setup.version == cgroupV1 {
		name = "memory.max_usage_in_bytes"
	}
	return readMemoryLimit(filepath.Join(g.dirs[0], name))
}

// Close removes the group's directories once its sandboxes are gone (their
// cgroups are removed when they are reaped). It retries briefly: the kernel
// frees a cgroup a moment after its last child. A group it cannot remove
// is left to the sweep of a later host.
func (g *Group) Close() error {
	if g == nil || g.removed.Swap(true) {
		return nil
	}
	for i := len(g.dirs) - 1; i >= 0; i-- {
		d := g.dirs[i]
		var err error
		for try := 0; try < 50; try++ {
			err = unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			time.Sleep(time.Duration(try+1) * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("remove node group %s: %w", d, err)
		}
	}
	return nil
}

// MachineMemory returns MemTotal from /proc/meminfo, or 0: what the
// defaults of a node's memory bounds are shares of.
func MachineMemory() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			fs := strings.Fields(v)
			if len(fs) == 2 && fs[1] == "kB" {
				if kb, err := strconv.ParseUint(fs[0], 10, 64); err == nil {
					return kb << 10
				}
			}
		}
	}
	return 0
}
