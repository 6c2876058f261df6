package confine

import (
	"errors"
	"fmt"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Action is what the filter does with a system call.
type Action int

const (
	// Allow lets the call through (possibly after an argument check).
	Allow Action = iota
	// Errno fails the call with Rule.Errno without running it.
	Errno
)

// Rule is one entry of the allowlist. Every system call absent from the
// table, every call whose Check fails, every non-x86_64 call (i386 via int
// 0x80) and every x32 number is sent to the host as a seccomp user
// notification; the host records the syscall and SIGKILLs the sandbox. The
// call itself never runs.
type Rule struct {
	Name  string
	Nr    uint32
	Act   Action
	Errno unix.Errno
	// Check, if set, is an argument condition for Allow (see the check* kinds).
	Check check
	// Rare marks calls that a typical execution may not make (error paths,
	// fallbacks, timing-dependent runtime work): the drift test does not
	// require observing them.
	Rare bool
	Why  string
}

type check int

const (
	noCheck       check = iota
	checkThread         // clone: exactly a thread (CLONE_THREAD|CLONE_VM|...), nothing else
	checkSelf           // kill/tgkill: arg0 == our own pid
	checkFcntl          // fcntl: only the commands in fcntlAllowed
	checkIoctl          // ioctl: PAGEMAP_SCAN on the sandbox's pagemap fd; any other: the rule's errno
	checkMmap           // mmap: never PROT_EXEC (new code only appears through mprotect, which MDWE ends), never MAP_HUGETLB
	checkMprotect       // mprotect: never PROT_WRITE and PROT_EXEC together
	checkClose          // close: never the pagemap fd (its number is what the ioctl rule trusts)
	checkPrctl          // prctl: only PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN)
	checkMemfd          // memfd_create: never MFD_HUGETLB
	checkMadvise        // madvise: never MADV_MERGEABLE
)

// fcntlAllowed are the fcntl commands the sandbox may use.
var fcntlAllowed = []uint32{
	unix.F_GETFD, unix.F_SETFD, unix.F_GETFL, unix.F_SETFL, unix.F_DUPFD_CLOEXEC,
	unix.F_ADD_SEALS, unix.F_GET_SEALS,
}

// Allowlist is the filter, in one table: what the sandbox worker (Go runtime,
// cgo, wasmtime, the IPC loop) needs after confine.Enter, measured by
// TestSyscallsMeasured on real canister executions (compile, run, traps,
// 32- and 64-bit memories). Entries not marked Rare were all observed there.
// Everything else goes to the host, which kills the sandbox (see Rule).
var Allowlist = []Rule{
	// Memory: the Go heap, wasmtime's linear memories, code and guard pages.
	// W^X: no mapping is ever writable and executable at once, and mmap never
	// creates executable memory; code becomes executable only by mprotect
	// (wasmtime publishing a module's code), which the canister worker ends
	// with PR_SET_MDWE once its module is loaded (see ForbidNewCode).
	// No hugetlb pages: they come from the host's global pool and are not
	// charged to the sandbox's memory cgroup (transparent huge pages, which
	// the Go runtime asks for with madvise, are ordinary charged memory).
	{Name: "mmap", Check: checkMmap, Why: "Go heap and stacks, wasmtime memories and code, mapping fds the host passes; never PROT_EXEC, never MAP_HUGETLB"},
	{Name: "munmap", Why: "release the same"},
	{Name: "mprotect", Check: checkMprotect, Why: "wasmtime: make code executable (RW then RX), grow memories inside reservations; glibc thread guard pages; never PROT_WRITE|PROT_EXEC"},
	{Name: "madvise", Check: checkMadvise, Why: "Go scavenger and THP hints; wasmtime resets memories with MADV_DONTNEED; never MADV_MERGEABLE (KSM merging is a cross-process timing side channel)"},
	{Name: "brk", Why: "glibc malloc (wasmtime's Rust allocations); only when the heap arena must grow", Rare: true},
	{Name: "mremap", Rare: true, Why: "glibc realloc of large blocks"},
	{Name: "memfd_create", Check: checkMemfd, Why: "wasmtime: copy-on-write images of initial linear memory; never MFD_HUGETLB"},

	// Threads and scheduling.
	{Name: "clone", Check: checkThread, Why: "threads for the Go runtime and glibc (pthread_create): thread flags only, never a process or namespace"},
	{Name: "clone3", Act: Errno, Errno: unix.ENOSYS, Why: "its flags are behind a pointer a filter cannot read: ENOSYS makes glibc fall back to clone"},
	{Name: "futex", Why: "Go runtime and glibc locks, thread parking"},
	{Name: "set_robust_list", Why: "glibc: every new thread"},
	{Name: "rseq", Why: "glibc: every new thread registers restartable sequences"},
	{Name: "sched_getaffinity", Why: "Rust std (wasmtime): available parallelism"},
	{Name: "sched_yield", Rare: true, Why: "Go runtime spinning (timing-dependent)"},
	{Name: "gettid", Rare: true, Why: "Go runtime and glibc: thread identity (timing-dependent)"},
	{Name: "getpid", Rare: true, Why: "Go runtime: signalling its own threads (with tgkill; timing-dependent)"},
	{Name: "tgkill", Check: checkSelf, Rare: true, Why: "Go preemption (SIGURG) and crash signals to its own threads; own process only (timing-dependent)"},
	{Name: "kill", Check: checkSelf, Rare: true, Why: "Go runtime raising a fatal signal on itself; own process only"},
	{Name: "exit", Rare: true, Why: "a thread ending"},
	{Name: "exit_group", Why: "the process ending"},
	{Name: "nanosleep", Rare: true, Why: "Go runtime usleep (sysmon; timing-dependent)"},
	{Name: "clock_nanosleep", Rare: true, Why: "glibc sleeps"},
	{Name: "clock_gettime", Rare: true, Why: "time when the vDSO cannot answer"},
	{Name: "restart_syscall", Rare: true, Why: "kernel restart of an interrupted sleep"},

	// Signals: Go's runtime signal handling and wasmtime's trap handlers.
	{Name: "rt_sigaction", Why: "wasmtime installs its trap handlers (SIGSEGV, SIGILL, SIGFPE, SIGBUS) on first use"},
	{Name: "rt_sigprocmask", Why: "Go runtime and glibc thread creation mask signals"},
	{Name: "rt_sigreturn", Why: "return from every signal handler (Go preemption, wasmtime traps)"},
	{Name: "sigaltstack", Why: "Go runtime and wasmtime: a signal stack per thread"},

	// I/O on the fds the sandbox holds: the IPC socket, the log pipe, passed
	// files, wasmtime's memfds, the Go netpoller (created before the filter).
	{Name: "read", Why: "IPC socket, passed files"},
	{Name: "write", Why: "log pipe (fd 2), IPC socket, wasmtime filling its memfds"},
	{Name: "pread64", Rare: true, Why: "read passed files at an offset: a kept query instance reads the committed heap back into the pages a query wrote (engine/keep.go)"},
	{Name: "pwrite64", Rare: true, Why: "write memfds at an offset"},
	{Name: "recvmsg", Why: "IPC messages (with fds)"},
	{Name: "sendmsg", Why: "IPC messages (with fds); also hands the seccomp listener to the host"},
	{Name: "close", Check: checkClose, Why: "fds the worker is done with; never the pagemap fd, so its number keeps meaning the pagemap (dup2, dup3, close_range are not allowed and F_DUPFD_CLOEXEC takes a free number)"},
	{Name: "fcntl", Check: checkFcntl, Why: "wasmtime seals its memfds; Go: flags, close-on-exec, dup; nothing else (no F_SETOWN, leases, notify)"},
	{Name: "fstat", Rare: true, Why: "size of passed files"},
	{Name: "lseek", Rare: true, Why: "position in passed files; a heap image's data extents (SEEK_DATA/SEEK_HOLE, engine/holes.go)"},
	{Name: "ftruncate", Rare: true, Why: "size a memfd (RLIMIT_FSIZE bounds it)"},
	{Name: "epoll_ctl", Rare: true, Why: "Go netpoller: register pollable fds"},
	{Name: "epoll_pwait", Why: "Go netpoller: wait for the IPC socket"},
	{Name: "getrandom", Why: "Go runtime and Rust std seeds"},
	{Name: "prctl", Check: checkPrctl, Why: "PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN) once the module is loaded (ForbidNewCode); no other option"},

	// Probes that benign library code makes and that could only fail in
	// the sandbox anyway (empty root, Landlock): answered without running.
	{Name: "ioctl", Check: checkIoctl, Errno: unix.ENOTTY, Why: "PAGEMAP_SCAN on the sandbox's own pagemap (the engine finds written pages); any other fails with ENOTTY (isatty(2) from Rust std), none reaches a driver"},
	{Name: "openat", Act: Errno, Errno: unix.ENOENT, Why: "Rust std reads /proc/self/cgroup, glibc /proc/sys/vm/overcommit_memory: nothing exists"},
	{Name: "open", Act: Errno, Errno: unix.ENOENT, Why: "as openat (legacy entry point)"},
}

// Learn-mode bootstrap: the only call the filter lets through unseen, so
// Enter can hand the notification fd to the host.
var learnBootstrap = []string{"sendmsg"}

func init() {
	for i := range Allowlist {
		nr, ok := syscallNumber(Allowlist[i].Name)
		if !ok {
			panic("confine: unknown syscall in allowlist: " + Allowlist[i].Name)
		}
		Allowlist[i].Nr = nr
	}
}

// syscallNumber finds a system call's number by name: a scan of the static
// table (a few dozen names, once, at init), cheaper than building a map of
// every name in each sandbox.
func syscallNumber(name string) (uint32, bool) {
	for nr, n := range syscallNames {
		if n == name && n != "" {
			return uint32(nr), true
		}
	}
	return 0, false
}

// AllowlistSummary describes the table in a few words.
func AllowlistSummary() string {
	allow, errno := 0, 0
	for _, r := range Allowlist {
		if r.Act == Allow {
			allow++
		} else {
			errno++
		}
	}
	return fmt.Sprintf("%d syscalls allowed, %d answered with an errno, all others kill", allow, errno)
}

// X32Bit marks the x32 ABI's system call numbers on x86_64.
const X32Bit = 0x40000000

// SyscallName names a system call reported by a seccomp notification: the
// x86_64 name, "x32:<name>" for x32 numbers, "arch-<hex>:<nr>" for other ABIs.
func SyscallName(arch uint32, nr int32) string {
	if arch != unix.AUDIT_ARCH_X86_64 {
		return fmt.Sprintf("arch-%#x:%d", arch, nr)
	}
	n := uint32(nr)
	prefix := ""
	if n&X32Bit != 0 {
		prefix, n = "x32:", n&^X32Bit
	}
	if n < uint32(len(syscallNames)) && syscallNames[n] != "" {
		return prefix + syscallNames[n]
	}
	return prefix + "syscall_" + strconv.FormatUint(uint64(n), 10)
}

// ViolationName names a refused system call for the host's report: the
// syscall's name (SyscallName), with the refused argument where the filter
// checks one (PROT_WRITE|PROT_EXEC, PROT_EXEC, MAP_HUGETLB, MFD_HUGETLB,
// MADV_MERGEABLE, the pagemap descriptor).
func ViolationName(n Notification) string {
	name := SyscallName(n.Arch, n.Nr)
	if n.Arch != unix.AUDIT_ARCH_X86_64 {
		return name
	}
	prot := uint32(n.Args[2])
	wx := uint32(unix.PROT_WRITE | unix.PROT_EXEC)
	switch name {
	case "mmap", "mprotect":
		switch {
		case prot&wx == wx:
			return name + "(PROT_WRITE|PROT_EXEC)"
		case name == "mmap" && prot&unix.PROT_EXEC != 0:
			return name + "(PROT_EXEC)"
		case name == "mmap" && uint32(n.Args[3])&unix.MAP_HUGETLB != 0:
			return name + "(MAP_HUGETLB)"
		}
	case "memfd_create":
		// The filter refuses one flag only.
		return name + "(MFD_HUGETLB)"
	case "madvise":
		return name + "(MADV_MERGEABLE)"
	case "close":
		// The filter refuses close on one descriptor only.
		return "close(pagemap)"
	}
	return name
}

// ForbidNewCode makes the calling process unable to create executable
// memory from now on: PR_SET_MDWE with PR_MDWE_REFUSE_EXEC_GAIN (Linux
// 6.3) refuses mprotect adding PROT_EXEC to a mapping that lacked it, and
// writable+executable mappings; the seccomp filter already refuses
// PROT_EXEC in mmap. It cannot be undone, and it stops wasmtime from
// loading another module (it maps code writable, then executable): the
// canister worker calls it once its one module is loaded.
func ForbidNewCode() error {
	return unix.Prctl(unix.PR_SET_MDWE, unix.PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)
}

// MDWEAvailable reports whether the kernel has PR_SET_MDWE (PR_GET_MDWE
// answers).
func MDWEAvailable() bool {
	_, err := unix.PrctlRetInt(unix.PR_GET_MDWE, 0, 0, 0, 0)
	return err == nil
}

// BPF building blocks (classic BPF as seccomp runs it).
const (
	offNr   = 0
	offArch = 4
	offArgs = 16

	retAllow  = unix.SECCOMP_RET_ALLOW
	retNotify = unix.SECCOMP_RET_USER_NOTIF
	retErrno  = unix.SECCOMP_RET_ERRNO

	cloneThreadRequired = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
		unix.CLONE_THREAD | unix.CLONE_SYSVSEM
	cloneThreadAllowed = cloneThreadRequired | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID |
		unix.CLONE_CHILD_CLEARTID | unix.CLONE_CHILD_SETTID
)

type prog []unix.SockFilter

func (p *prog) ld(off uint32) {
	*p = append(*p, unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: off})
}
func (p *prog) ret(v uint32) { *p = append(*p, unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: v}) }
func (p *prog) and(k uint32) {
	*p = append(*p, unix.SockFilter{Code: unix.BPF_ALU | unix.BPF_AND | unix.BPF_K, K: k})
}

// jeq: if A == k skip jt instructions else skip jf.
func (p *prog) jeq(k uint32, jt, jf uint8) {
	*p = append(*p, unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: k, Jt: jt, Jf: jf})
}
func (p *prog) jge(k uint32, jt, jf uint8) {
	*p = append(*p, unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, K: k, Jt: jt, Jf: jf})
}

// argLo/argHi are the offsets of the two 32-bit halves of argument i.
func argLo(i int) uint32 { return offArgs + 8*uint32(i) }
func argHi(i int) uint32 { return offArgs + 8*uint32(i) + 4 }

// PagemapScan is the PAGEMAP_SCAN ioctl command (Linux 6.7, uapi fs.h):
// _IOWR('f', 16, struct pm_scan_arg), a 96-byte argument.
const PagemapScan = 3<<30 | 96<<16 | 'f'<<8 | 16

// checkBlock emits the argument check of a rule; it ends in returns only.
// pagemapFD is the only descriptor PAGEMAP_SCAN is allowed on (-1: none).
func checkBlock(c check, pid uint32, pagemapFD int, errno unix.Errno) prog {
	var b prog
	switch c {
	case checkThread:
		// flags (arg0) high half must be 0, no flag outside the thread set,
		// every flag of the thread set present.
		b.ld(argHi(0))
		b.jeq(0, 1, 0)
		b.ret(retNotify)
		b.ld(argLo(0))
		b.and(^uint32(cloneThreadAllowed))
		b.jeq(0, 1, 0)
		b.ret(retNotify)
		b.ld(argLo(0))
		b.and(cloneThreadRequired)
		b.jeq(cloneThreadRequired, 0, 1)
		b.ret(retAllow)
		b.ret(retNotify)
	case checkSelf:
		b.ld(argHi(0))
		b.jeq(0, 1, 0)
		b.ret(retNotify)
		b.ld(argLo(0))
		b.jeq(pid, 0, 1)
		b.ret(retAllow)
		b.ret(retNotify)
	case checkFcntl:
		// cmd (arg1) in fcntlAllowed.
		b.ld(argHi(1))
		b.jeq(0, 1, 0)
		b.ret(retNotify)
		b.ld(argLo(1))
		for i, c := range fcntlAllowed {
			b.jeq(c, uint8(len(fcntlAllowed)-i), 0)
		}
		b.ret(retNotify)
		b.ret(retAllow)
	case checkIoctl:
		// fd (arg0) == pagemapFD and cmd (arg1) == PAGEMAP_SCAN, whole
		// 64-bit values; anything else fails with the rule's errno.
		deny := retErrno | uint32(errno)
		if pagemapFD < 0 {
			b.ret(deny)
			break
		}
		b.ld(argHi(0))
		b.jeq(0, 1, 0)
		b.ret(deny)
		b.ld(argLo(0))
		b.jeq(uint32(pagemapFD), 1, 0)
		b.ret(deny)
		b.ld(argHi(1))
		b.jeq(0, 1, 0)
		b.ret(deny)
		b.ld(argLo(1))
		b.jeq(PagemapScan, 0, 1)
		b.ret(retAllow)
		b.ret(deny)
	case checkMmap:
		// prot (arg2): the kernel reads PROT_EXEC from the low half;
		// flags (arg3): MAP_HUGETLB is a low bit too.
		b.ld(argLo(2))
		b.and(unix.PROT_EXEC)
		b.jeq(0, 1, 0)
		b.ret(retNotify)
		b.ld(argLo(3))
		b.and(unix.MAP_HUGETLB)
		b.jeq(0, 0, 1)
		b.ret(retAllow)
		b.ret(retNotify)
	case checkMemfd:
		// flags (arg1) is an unsigned int: the low half.
		b.ld(argLo(1))
		b.and(unix.MFD_HUGETLB)
		b.jeq(0, 0, 1)
		b.ret(retAllow)
		b.ret(retNotify)
	case checkMadvise:
		// advice (arg2) is an int: the low half.
		b.ld(argLo(2))
		b.jeq(unix.MADV_MERGEABLE, 0, 1)
		b.ret(retNotify)
		b.ret(retAllow)
	case checkMprotect:
		b.ld(argLo(2))
		b.and(unix.PROT_WRITE | unix.PROT_EXEC)
		b.jeq(unix.PROT_WRITE|unix.PROT_EXEC, 0, 1)
		b.ret(retNotify)
		b.ret(retAllow)
	case checkClose:
		// close takes an unsigned int: only the low half names the fd.
		if pagemapFD < 0 {
			b.ret(retAllow)
			break
		}
		b.ld(argLo(0))
		b.jeq(uint32(pagemapFD), 0, 1)
		b.ret(retNotify)
		b.ret(retAllow)
	case checkPrctl:
		// option (an int: low half) and arg2 (whole).
		b.ld(argLo(0))
		b.jeq(unix.PR_SET_MDWE, 1, 0)
		b.ret(retNotify)
		b.ld(argHi(1))
		b.jeq(0, 1, 0)
		b.ret(retNotify)
		b.ld(argLo(1))
		b.jeq(unix.PR_MDWE_REFUSE_EXEC_GAIN, 0, 1)
		b.ret(retAllow)
		b.ret(retNotify)
	default:
		panic("confine: unknown check")
	}
	return b
}

// BuildFilter assembles the allowlist filter for a process whose pid (in its
// own pid namespace) is pid. With learn set, every call but the bootstrap is
// sent to the host instead (tests measure the set of calls that way).
// PAGEMAP_SCAN is allowed on no descriptor; see BuildFilterPagemap.
func BuildFilter(pid uint32, learn bool) ([]unix.SockFilter, error) {
	return BuildFilterPagemap(pid, -1, learn)
}

// BuildFilterPagemap is BuildFilter allowing the PAGEMAP_SCAN ioctl on
// descriptor pagemapFD (the process's own pagemap).
func BuildFilterPagemap(pid uint32, pagemapFD int, learn bool) ([]unix.SockFilter, error) {
	var p prog
	// Architecture: anything but the x86_64 ABI goes to the host (and dies).
	p.ld(offArch)
	p.jeq(unix.AUDIT_ARCH_X86_64, 1, 0)
	p.ret(retNotify)
	p.ld(offNr)
	// x32 numbers (bit 30) are the same kernel entry points under other
	// numbers: refuse them all.
	p.jge(X32Bit, 0, 1)
	p.ret(retNotify)
	if learn {
		for _, n := range learnBootstrap {
			nr, _ := syscallNumber(n)
			p.jeq(nr, 0, 1)
			p.ret(retAllow)
		}
		for _, r := range Allowlist {
			if r.Act == Errno {
				p.jeq(r.Nr, 0, 1)
				p.ret(retErrno | uint32(r.Errno))
			}
		}
		p.ret(retNotify)
		return p, nil
	}
	for _, r := range Allowlist {
		switch {
		case r.Act == Errno:
			p.jeq(r.Nr, 0, 1)
			p.ret(retErrno | uint32(r.Errno))
		case r.Check != noCheck:
			b := checkBlock(r.Check, pid, pagemapFD, r.Errno)
			if len(b) > 255 {
				return nil, errors.New("check block too long")
			}
			p.jeq(r.Nr, 0, uint8(len(b)))
			p = append(p, b...)
		default:
			p.jeq(r.Nr, 0, 1)
			p.ret(retAllow)
		}
	}
	p.ret(retNotify)
	if len(p) > unix.BPF_MAXINSNS {
		return nil, errors.New("filter too long")
	}
	return p, nil
}

// Notification mirrors struct seccomp_notif.
type Notification struct {
	ID    uint64
	Pid   uint32
	Flags uint32
	Nr    int32
	Arch  uint32
	IP    uint64
	Args  [6]uint64
}

type notifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// RecvNotification reads one pending notification from a listener fd. Call
// it only when the fd is readable (it blocks otherwise).
func RecvNotification(fd int) (Notification, error) {
	var n Notification
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SECCOMP_IOCTL_NOTIF_RECV, uintptr(unsafe.Pointer(&n)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return n, e
		}
		return n, nil
	}
}

// ContinueNotification lets the notified call run (learn mode only).
func ContinueNotification(fd int, id uint64) error {
	r := notifResp{ID: id, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SECCOMP_IOCTL_NOTIF_SEND, uintptr(unsafe.Pointer(&r)))
	if e != 0 {
		return e
	}
	return nil
}
