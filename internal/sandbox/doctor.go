package sandbox

import (
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// LayerReport is one line of Doctor's report.
type LayerReport struct {
	Layer     Layer
	Available bool
	Detail    string
}

// Report is what this kernel and this user allow, layer by layer.
type Report struct {
	Layers   []LayerReport
	Rootless bool   // no CAP_SYS_ADMIN in the host's user namespace
	Kernel   string // uname release and version
	// CgroupEntry says how a new sandbox joins its cgroup and what that
	// waits for: not a layer, part of a cold spawn's latency.
	CgroupEntry CgroupEntry
}

// CgroupEntry is how a new sandbox joins its cgroup.
type CgroupEntry struct {
	// Expedited: the attach waits for an expedited RCU grace period, not a
	// normal one.
	Expedited bool
	Detail    string
}

// Missing lists the unavailable layers.
func (r Report) Missing() []Layer {
	var out []Layer
	for _, l := range r.Layers {
		if !l.Available {
			out = append(out, l.Layer)
		}
	}
	return out
}

// Doctor probes this kernel and user afresh (it starts tiny probe processes
// in new namespaces, checks cgroup writability, Landlock's ABI and seccomp's
// user notifications) and reports every layer. The result also replaces the
// cached availability Start uses.
func Doctor() Report {
	a := probe()
	availMu.Lock()
	availCache = a
	availMu.Unlock()
	r := Report{Rootless: a.rootless, Kernel: kernelVersion(),
		CgroupEntry: cgroupEntry(a.layers[LayerCgroup], sysctl("/sys/kernel/rcu_expedited"), sysctl("/sys/kernel/rcu_normal"))}
	for _, l := range AllLayers {
		r.Layers = append(r.Layers, LayerReport{Layer: l, Available: a.layers[l], Detail: a.detail[l]})
	}
	return r
}

func kernelVersion() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	cstr := func(b []byte) string { s, _, _ := strings.Cut(string(b), "\x00"); return s }
	return cstr(u.Sysname[:]) + " " + cstr(u.Release[:]) + " " + cstr(u.Machine[:])
}

// cgroupEntry describes how a sandbox joins its cgroup, given whether the
// cgroup layer is available and the contents of /sys/kernel/rcu_expedited
// and rcu_normal ("" if unreadable). The spawner cannot clone into a cgroup
// (spawnSandbox), so the host writes the child's pid to cgroup.procs. That
// takes the kernel's global cgroup threadgroup lock for writing, which
// waits for an RCU grace period unless another writer held it moments
// before: 2.6-3.3 ms of a 9-13 ms cold spawn on the 2-core VM, 0.2-0.3 ms
// with expedited grace periods (BENCHMARKS.md, "A cold spawn waits for an
// RCU grace period"). Expediting them is the administrator's choice, for
// the whole system (each one interrupts every CPU), so cordon reports it
// and does not set it.
func cgroupEntry(cgroup bool, expedited, normal string) CgroupEntry {
	switch {
	case !cgroup:
		return CgroupEntry{Detail: "no cgroup layer: nothing to join"}
	case normal == "1":
		return CgroupEntry{Detail: "attached by pid after the clone; /sys/kernel/rcu_normal is 1, so every attach waits for a full RCU grace period (milliseconds of each cold spawn)"}
	case expedited == "1":
		return CgroupEntry{Expedited: true, Detail: "attached by pid after the clone; /sys/kernel/rcu_expedited is 1, so the attach waits for an expedited RCU grace period (sub-millisecond)"}
	case expedited == "":
		return CgroupEntry{Detail: "attached by pid after the clone; /sys/kernel/rcu_expedited unreadable: the attach may wait for a full RCU grace period (milliseconds of each cold spawn)"}
	}
	return CgroupEntry{Detail: "attached by pid after the clone, which waits for a full RCU grace period (milliseconds of each cold spawn); " +
		"'echo 1 > /sys/kernel/rcu_expedited' shortens it to sub-millisecond, for the whole system (an expedited grace period interrupts every CPU)"}
}

// sysctl reads a one-line kernel setting ("" if unreadable).
func sysctl(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
