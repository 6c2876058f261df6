package sandbox

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// Layer names one confinement layer.
type Layer string

// The layers, in the order they are applied.
const (
	LayerEnv        Layer = "env"           // explicit minimal environment
	LayerFds        Layer = "fds"           // only fds 2 (log pipe), 3 (IPC), 4.. (Spec.Files)
	LayerSession    Layer = "session"       // setsid
	LayerPdeathsig  Layer = "pdeathsig"     // SIGKILL when the host dies
	LayerUserNS     Layer = "userns"        // user namespace, mapped to an unprivileged id
	LayerPidNS      Layer = "pidns"         // pid namespace (the sandbox is its pid 1)
	LayerNetNS      Layer = "netns"         // network namespace: only lo, down
	LayerMountNS    Layer = "mountns"       // mount namespace
	LayerIPCNS      Layer = "ipcns"         // System V IPC / POSIX mqueue namespace
	LayerUTSNS      Layer = "utsns"         // hostname namespace
	LayerCgroupNS   Layer = "cgroupns"      // cgroup namespace rooted at the sandbox's cgroup
	LayerOOMScore   Layer = "oom_score_adj" // oom_score_adj 1000 (500 while executing): the kernel's OOM killer takes sandboxes before the host, idle ones first
	LayerPivotRoot  Layer = "pivot_root"    // empty read-only tmpfs root, host root detached
	LayerCgroup     Layer = "cgroup"        // memory, pids, cpu limits
	LayerRlimits    Layer = "rlimits"       // core 0, fsize 0, nofile, as, nproc, memlock 0, msgqueue 0
	LayerCaps       Layer = "caps"          // every capability set empty, securebits locked
	LayerNoNewPrivs Layer = "no_new_privs"  // PR_SET_NO_NEW_PRIVS
	LayerLandlock   Layer = "landlock"      // no filesystem rights at all
	LayerSeccomp    Layer = "seccomp"       // syscall allowlist, last, on every thread
	LayerWX         Layer = "wx"            // W^X: no writable+executable memory, no new code once the module is loaded
)

// AllLayers lists every layer in application order.
var AllLayers = []Layer{
	LayerEnv, LayerFds, LayerSession, LayerPdeathsig,
	LayerUserNS, LayerPidNS, LayerNetNS, LayerMountNS, LayerIPCNS, LayerUTSNS, LayerCgroupNS, LayerOOMScore, LayerPivotRoot,
	LayerCgroup, LayerRlimits, LayerCaps, LayerNoNewPrivs, LayerLandlock, LayerSeccomp, LayerWX,
}

// wxDetail describes the W^X layer.
const wxDetail = "seccomp kills mmap with PROT_EXEC and mmap/mprotect with PROT_WRITE|PROT_EXEC; " +
	"a canister sandbox sets PR_SET_MDWE (refuse exec gain) once its module is loaded, so no memory becomes executable after"

// oomDetail describes the oom_score_adj layer on this host.
func oomDetail() string {
	d := fmt.Sprintf("each sandbox raises its oom_score_adj to %d (no privilege needed) before anything untrusted runs: "+
		"when memory runs out, the kernel's OOM killer takes a sandbox before the host", confine.OOMScoreAdj)
	busy, err := busyScore()
	if err != nil {
		return d + fmt.Sprintf("; NOT lowered while a sandbox executes (%v): the kernel may take a busy sandbox before an idle one", err)
	}
	return d + fmt.Sprintf("; while one executes a message the host lowers it to %d (through /proc/<pid>/oom_score_adj, opened before the go-ahead, "+
		"while the sandbox is still dumpable), so an idle sandbox is taken before a busy one unless the busy one is larger by half the limit that ran out "+
		"(where the host cannot open it, the sandbox keeps %d: logged once, and the live check's detail says so)", busy, confine.OOMScoreAdj)
}

// LayerState says whether a layer was applied to a sandbox.
type LayerState struct {
	Applied bool
	Detail  string
}

// ParseLayers parses a comma-separated list of layer names (the
// --insecure-allow-missing flag).
func ParseLayers(s string) ([]Layer, error) {
	var out []Layer
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		ok := false
		for _, l := range AllLayers {
			if string(l) == f {
				out = append(out, l)
				ok = true
			}
		}
		if !ok {
			return nil, fmt.Errorf("unknown sandbox layer %q (known: %s)", f, layerList(AllLayers))
		}
	}
	return out, nil
}

func layerList(ls []Layer) string {
	s := make([]string, len(ls))
	for i, l := range ls {
		s[i] = string(l)
	}
	return strings.Join(s, ",")
}

// nsFlags are the clone flags of the namespace layers applied at clone time.
var nsFlags = map[Layer]uintptr{
	LayerPidNS:    syscall.CLONE_NEWPID,
	LayerNetNS:    syscall.CLONE_NEWNET,
	LayerMountNS:  syscall.CLONE_NEWNS,
	LayerIPCNS:    syscall.CLONE_NEWIPC,
	LayerUTSNS:    syscall.CLONE_NEWUTS,
	LayerCgroupNS: syscall.CLONE_NEWCGROUP,
}

var nsDetail = map[Layer]string{
	LayerPidNS:    "the sandbox is pid 1; the host is invisible",
	LayerNetNS:    "no interface but lo, down",
	LayerMountNS:  "private; host mounts detached",
	LayerIPCNS:    "own System V IPC and POSIX message queues",
	LayerUTSNS:    "hostname cordon",
	LayerCgroupNS: "rooted at the sandbox's cgroup",
}

// availability is what this kernel and this user allow.
type availability struct {
	rootless    bool // cannot map other ids: no CAP_SYS_ADMIN, or UnprivilegedID unmapped (privilegedHost)
	layers      map[Layer]bool
	detail      map[Layer]string
	cgroups     *cgroupSetup
	landlockABI int
}

var (
	availMu    sync.Mutex
	availCache *availability
)

// getAvailability probes once per process (cgroup writability is cheap and
// probed once too; a failure at start is still reported then).
func getAvailability() *availability {
	availMu.Lock()
	defer availMu.Unlock()
	if availCache == nil {
		availCache = probe()
	}
	return availCache
}

func hasCapSysAdmin() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[0].Effective&(1<<unix.CAP_SYS_ADMIN) != 0
}

// noCgroupBounds says what bounds a sandbox without the cgroup layer.
var noCgroupBounds = fmt.Sprintf("without it, memory is bounded by RLIMIT_DATA (the memory limit + %d MiB of writable private mappings, counted by size), "+
	"threads by RLIMIT_NPROC (per host user: shared by every sandbox of a rootless host), CPU only by each execution's instruction limit and the host's watchdog (no quota), "+
	"and no hard limit holds all sandboxes together: sandbox.memory_budget evicts idle ones by their RSS, and oom_score_adj makes them the kernel's first OOM victims", DataSlack>>20)

// mapsID reports whether id appears in a /proc/<pid>/{uid,gid}_map, i.e.
// is an id of this process's user namespace that the host may map.
func mapsID(idMap []byte, id uint32) bool {
	for _, line := range strings.Split(string(idMap), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		first, err1 := strconv.ParseUint(f[0], 10, 32)
		n, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 == nil && err2 == nil && uint64(id) >= first && uint64(id) < first+n {
			return true
		}
	}
	return false
}

// privilegedHost reports whether this process can do what Start does for
// a root host: map the sandbox to UnprivilegedID (or a host id of its own)
// and drop to it. CAP_SYS_ADMIN alone is not enough: capget answers for
// the current user namespace, and root of a namespace that maps only
// itself (`unshare -U -r`, a rootless container) has every capability
// there but no uid 65534 to map.
func privilegedHost() bool {
	if !hasCapSysAdmin() {
		return false
	}
	uids, err1 := os.ReadFile("/proc/self/uid_map")
	gids, err2 := os.ReadFile("/proc/self/gid_map")
	return err1 == nil && err2 == nil && mapsID(uids, confine.UnprivilegedID) && mapsID(gids, confine.UnprivilegedID)
}

// userNSAttr sets the user namespace of a clone exactly as Start does: a
// rootless host maps the sandbox to its own ids; a privileged one maps it
// to hostID and drops to UnprivilegedID at fork.
func userNSAttr(attr *syscall.SysProcAttr, rootless bool, hostID int) {
	attr.Cloneflags |= syscall.CLONE_NEWUSER
	hostUID, hostGID := os.Geteuid(), os.Getegid()
	if !rootless {
		hostUID, hostGID = hostID, hostID
		// Set inside the new namespace, where only UnprivilegedID is mapped.
		attr.Credential = &syscall.Credential{Uid: confine.UnprivilegedID, Gid: confine.UnprivilegedID}
		attr.GidMappingsEnableSetgroups = true
	}
	attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: confine.UnprivilegedID, HostID: hostUID, Size: 1}}
	attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: confine.UnprivilegedID, HostID: hostGID, Size: 1}}
}

// probeClone starts /proc/self/exe with the probe marker (the C constructor
// exits at once) in the given namespaces, with the user namespace mapped as
// Start maps it; it reports whether the kernel let us create them.
func probeClone(flags uintptr, userns, rootless bool) error {
	attr := &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	if userns {
		userNSAttr(attr, rootless, confine.UnprivilegedID)
	}
	cmd := exec.Command("/proc/self/exe", confine.ProbeMarker)
	cmd.Env = []string{}
	cmd.SysProcAttr = attr
	return cmd.Run()
}

func landlockABI() int {
	v, _, e := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, 1 /* LANDLOCK_CREATE_RULESET_VERSION */)
	if e != 0 {
		return 0
	}
	return int(v)
}

func seccompAvailable() (bool, string) {
	if _, err := unix.PrctlRetInt(unix.PR_GET_SECCOMP, 0, 0, 0, 0); err != nil {
		return false, "seccomp not supported: " + err.Error()
	}
	action := uint32(unix.SECCOMP_RET_USER_NOTIF)
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_ACTION_AVAIL, 0, uintptr(unsafe.Pointer(&action))); e != 0 {
		return false, "seccomp user notification unavailable (kernel < 5.0?): " + e.Error()
	}
	var sizes [3]uint16
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_NOTIF_SIZES, 0, uintptr(unsafe.Pointer(&sizes))); e != 0 {
		return false, "seccomp notification sizes: " + e.Error()
	}
	if sizes[0] != uint16(unsafe.Sizeof(confine.Notification{})) {
		return false, fmt.Sprintf("seccomp notification size %d unexpected", sizes[0])
	}
	return true, confine.AllowlistSummary() + " (reported to the host by user notification)"
}

func probe() *availability {
	a := &availability{layers: map[Layer]bool{}, detail: map[Layer]string{}}
	a.rootless = !privilegedHost()
	set := func(l Layer, ok bool, detail string) { a.layers[l], a.detail[l] = ok, detail }
	set(LayerEnv, true, "GOMAXPROCS and TZ only")
	set(LayerFds, true, "2 = log pipe, 3 = IPC socket, 4.. = passed files; 0, 1 closed")
	set(LayerSession, true, "setsid")
	set(LayerPdeathsig, true, "SIGKILL when the host dies")
	set(LayerRlimits, true, fmt.Sprintf("core 0, fsize = memory limit, nofile %d, as %d GiB, memlock 0, msgqueue 0; without the cgroup layer also nproc = pids limit, data = memory limit + %d MiB",
		NoFileLimit, AddressSpaceLimit>>30, DataSlack>>20))
	set(LayerNoNewPrivs, true, "")
	if _, err := os.Stat("/proc/self/oom_score_adj"); err != nil {
		set(LayerOOMScore, false, "no /proc/self/oom_score_adj: "+err.Error())
	} else {
		set(LayerOOMScore, true, oomDetail())
	}
	// User namespace.
	uerr := probeClone(0, true, a.rootless)
	userns := uerr == nil
	if userns {
		d := fmt.Sprintf("uid/gid %d inside; on the host, a uid of its own per sandbox from sandbox.host_ids (else 65534 for all)", confine.UnprivilegedID)
		if a.rootless {
			d = fmt.Sprintf("uid/gid %d inside; rootless: every sandbox is your uid on the host, so they share per-user kernel limits (RLIMIT_NPROC, descriptors in flight, inotify)", confine.UnprivilegedID)
		}
		set(LayerUserNS, true, d)
	} else {
		set(LayerUserNS, false, "cannot create a user namespace: "+uerr.Error())
	}
	privileged := userns || !a.rootless // may create the other namespaces
	for _, l := range []Layer{LayerPidNS, LayerNetNS, LayerMountNS, LayerIPCNS, LayerUTSNS, LayerCgroupNS} {
		if !privileged {
			set(l, false, "needs a user namespace or root")
			continue
		}
		if err := probeClone(nsFlags[l], userns, a.rootless); err != nil {
			set(l, false, err.Error())
		} else {
			set(l, true, nsDetail[l])
		}
	}
	set(LayerPivotRoot, a.layers[LayerMountNS], "empty read-only tmpfs")
	if !a.layers[LayerMountNS] {
		a.detail[LayerPivotRoot] = "needs the mount namespace"
	}
	set(LayerCaps, privileged, "all sets empty, securebits locked")
	if !privileged {
		a.detail[LayerCaps] = "cannot drop the bounding set without a user namespace or root"
	}
	// cgroups
	a.cgroups = detectCgroups()
	err := a.cgroups.prepare()
	if err == nil {
		// Sandbox cgroups without a node's group would leave the sum of
		// all sandboxes unbounded: the layer is both or neither.
		g, gerr := a.cgroups.newGroup("probe", 64<<20)
		if gerr != nil {
			err = fmt.Errorf("cannot make a node's group cgroup: %w", gerr)
		} else if gerr = g.Close(); gerr != nil {
			err = gerr
		}
	}
	if err != nil {
		set(LayerCgroup, false, err.Error()+"; "+noCgroupBounds)
		if a.layers[LayerCgroupNS] {
			// Unshared in the cgroup the sandbox starts in: the host's.
			a.detail[LayerCgroupNS] = "rooted at the host's own cgroup (no cgroup layer): the sandbox sees its path as /"
		}
	} else {
		set(LayerCgroup, true, a.cgroups.detail+"; a node's sandboxes in one group cgroup with a hard memory limit on all of them (sandbox.node_memory_bytes)")
	}
	a.landlockABI = landlockABI()
	if a.landlockABI > 0 {
		set(LayerLandlock, true, fmt.Sprintf("ABI %d, every filesystem right handled, none granted", a.landlockABI))
	} else {
		set(LayerLandlock, false, "Landlock not supported or not enabled in this kernel")
	}
	ok, d := seccompAvailable()
	set(LayerSeccomp, ok, d)
	switch {
	case !ok:
		set(LayerWX, false, "needs the seccomp layer")
	case !confine.MDWEAvailable():
		set(LayerWX, false, "the kernel has no PR_SET_MDWE (Linux < 6.3): seccomp still refuses writable+executable and executable mmap, but written memory could be made executable by mprotect")
	default:
		set(LayerWX, true, wxDetail)
	}
	return a
}
