package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// verifyLive checks from the host what the sandbox reported: on every
// thread the capability sets, no_new_privs and seccomp mode; and that each
// planned namespace differs from the host's.
func verifyLive(pid int, plan map[Layer]bool) error {
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
