// Package sandbox spawns confined sandbox processes: the host side of
// cordon's process isolation (DESIGN.md §4). Package confine is the child
// side. A sandbox runs the same cordon binary in a hidden mode (argv[1] is
// confine.Marker); the host assumes it is fully attacker-controlled once it
// has read its first byte of input, so every layer below is in place before
// that, on every thread, and checked from the outside.
//
// # Start-up, step by step
//
// Host (Start):
//
//  1. Plan: Doctor-style probes (cached) say which layers this kernel and
//     user allow. In strict mode a missing layer is an error unless listed in
//     Spec.AllowMissing; a layer started without is logged as a warning.
//  2. cgroup: a directory per sandbox (cordon.<hostpid>.<seq>.<label>) under
//     the node's group cgroup (Spec.Group, group.go: a hard memory limit on
//     all of a node's sandboxes together), else under the host's own
//     cgroup, with memory (and memory+swap), pids and cpu limits; v1 (one directory per controller) or v2 (cgroup.kill,
//     memory.oom.group). Made while the spawner clones (step 3), unless
//     the host clones into it itself (v2, no spawner); a cgroup that
//     cannot be made or attached after the clone kills and reaps the child.
//  3. fork/exec with a SOCK_SEQPACKET socketpair and a log pipe:
//     - env: exactly GOMAXPROCS=<n> and TZ= (never the host's environment);
//     - fds: 0 and 1 closed, 2 = log pipe, 3 = IPC socket, 4.. = Spec.Files;
//     - session: setsid; pdeathsig: SIGKILL if the host dies;
//     - userns: CLONE_NEWUSER, the sandbox is uid/gid 65534 inside, mapped to
//     65534 outside when the host is root (which also drops its own uid,
//     gid and supplementary groups at fork), to the host user when rootless;
//     CAP_SYS_ADMIN and CAP_SETPCAP are passed as ambient capabilities
//     (valid in the new user namespace only) for the early confinement, which
//     drops them;
//     - pidns, netns, mountns, ipcns, utsns: clone flags (the sandbox is pid 1
//     of its pid namespace, so killing it kills everything in it; its network
//     namespace has only lo, down);
//     - the clone is the spawner's (spawner.go), with CLONE_PARENT: the
//     sandbox is the host's child; only a host without a spawner clones
//     itself, and then, on v2, with clone3 CLONE_INTO_CGROUP.
//  4. Unless cloned into it, the host writes the pid into each controller's
//     cgroup.procs (v1), or the one cgroup.procs (v2), before the go-ahead.
//  5. The host sends the go-ahead byte on the IPC socket, then waits (bounded
//     by ctx, else 10 s) for the ready packet, which carries the bitmask of
//     applied layers and, as SCM_RIGHTS, the seccomp listener fd; or for the
//     failure packet of a step that failed (its layer bit, errno and step:
//     confine.ParseFailure), which fails Start with a *LayerError.
//  6. Verification from outside: for every thread in /proc/<pid>/task,
//     CapInh/CapPrm/CapEff/CapBnd/CapAmb = 0, NoNewPrivs = 1, Seccomp = 2,
//     each namespace differs from the host's, the cgroup membership (and the
//     group's memory limit), oom_score_adj, rlimits and mount table. Any mismatch kills the sandbox and fails Start, naming
//     the layer; Process.Verify makes the same checks again later.
//
// Child, in a C constructor (confine/early.c) that runs before the Go
// runtime has started any thread, so everything per-thread is inherited by
// every thread created later:
//
//  1. pdeathsig again (credential changes clear it).
//  2. Check it is single-threaded; fds: close_range everything above the
//     passed files. Open /proc/self/pagemap with the effective capability
//     set emptied for the open (restored after), so the file shows no
//     physical frame numbers even to a sandbox that starts as real root.
//     oom_score_adj: raise its own to 1000 (no privilege needed; /proc is
//     still reachable), so the kernel's OOM killer takes it before the host.
//  3. mountns + pivot_root: make / private, mount a 4 KiB tmpfs (mode 0111),
//     pivot_root(".", ".") into it, detach the old root with everything
//     beneath it, remount the new root read-only, nosuid, nodev, noexec.
//     Nothing of the host's filesystem is reachable by path.
//  4. utsns: hostname and domain name "cordon".
//  5. Block until the go-ahead: by then it is in its cgroup (the host
//     attaches it while steps 1-4 run); EOF means the host is gone. Then
//     cgroupns: unshare(CLONE_NEWCGROUP), rooted at its own cgroup.
//  6. rlimits (only ever lowered): CORE 0, FSIZE = the memory limit (only
//     memfds are writable, and wasmtime sizes its memory images with them),
//     NOFILE 64, AS 256 GiB (wasmtime reserves 4 GiB + guards per
//     instance's memory, up to 32 of them; the cgroup is the real memory
//     bound), MEMLOCK 0, MSGQUEUE 0,
//     NPROC = the pids limit when there is no pids cgroup (RLIMIT_NPROC counts
//     per user namespace, so it bounds this sandbox alone).
//  7. PR_SET_DUMPABLE 0 (no ptrace by other processes of the same host uid).
//  8. caps: lock securebits (NOROOT, NO_SETUID_FIXUP, KEEP_CAPS_LOCKED,
//     NO_CAP_AMBIENT_RAISE, all locked), drop the whole bounding set, clear
//     ambient, capset all sets to zero. (Root host without a user namespace:
//     also setgroups/setresgid/setresuid to 65534.)
//  9. no_new_privs.
//  10. Landlock: a ruleset handling every filesystem access right of the
//     kernel's ABI (execute, read, write, truncate, ioctl on devices, refer,
//     make-*, remove-*), TCP bind and connect (ABI 4+), abstract unix sockets
//     and signals outside the domain (ABI 6+), with no rule: no right at all.
//  11. fds 0 and 1 get an O_PATH placeholder (the Go runtime refuses to start
//     with them closed and /dev/null no longer exists).
//
// Child, in Go (confine.Enter, called first by the worker):
//
//  12. Wrap fd 3 as a *net.UnixConn and fds 4.. as files, then close the
//     placeholders 0 and 1.
//  13. seccomp, last: the allowlist in confine.Allowlist, installed with
//     SECCOMP_FILTER_FLAG_TSYNC (every thread, including the Go runtime's
//     existing ones) and NEW_LISTENER. The architecture is checked
//     (AUDIT_ARCH_X86_64), x32 numbers (bit 30) refused, clone allowed only
//     with thread flags, clone3 answered ENOSYS (its flags are behind a
//     pointer; glibc falls back to clone), ioctl ENOTTY, open/openat ENOENT;
//     W^X: mmap never with PROT_EXEC, mmap/mprotect never with
//     PROT_WRITE|PROT_EXEC; no hugetlb pages (mmap MAP_HUGETLB, memfd_create
//     MFD_HUGETLB) and no madvise(MADV_MERGEABLE); close never on the
//     pagemap fd (the ioctl rule trusts its number; dup2, dup3 and
//     close_range are not allowed);
//     prctl only as PR_SET_MDWE; everything else is a user notification.
//  14. Send the ready packet with the listener fd, close the fd, return.
//
// Child, in the canister worker (internal/worker), after its one module is
// loaded: PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN) (confine.ForbidNewCode):
// from then on no memory can become executable, so nothing the canister
// writes can ever run. wasmtime loads a module by mapping its code writable
// and then executable, which is why this comes after the load, and why a
// module change gets a fresh sandbox (the layer "wx").
//
// # Violations
//
// A call the filter refuses is not executed: the calling thread blocks in
// the kernel while the host, reading the listener fd, records the syscall
// (ExitStatus.SeccompSyscall, e.g. "socket", "x32:getpid",
// "arch-0x40000003:20" for an int 0x80 call, "mprotect(PROT_WRITE|PROT_EXEC)",
// "close(pagemap)") and SIGKILLs the sandbox. The
// sandbox cannot forge or suppress the report (it no longer holds the
// listener), and if the host is gone the call fails with ENOSYS.
//
// # Threads
//
// Capabilities, the bounding set, no_new_privs and the Landlock domain are
// per-thread; they are applied in the C constructor while the process has
// exactly one thread (checked), so every thread inherits them. seccomp is
// installed with TSYNC. Start verifies all of it for every thread.
//
// # Rootless
//
// With user namespaces but no privileges, every layer but cgroup works
// (cgroup directories are not writable); strict mode then needs
// AllowMissing: [cgroup], and RLIMIT_NPROC stands in for the pids limit.
// With a cgroup hierarchy delegated to the user (CORDON_CGROUP_PARENT),
// every layer works. A sandbox is not dumpable, so the kernel makes its
// /proc/<pid>/fd and environ root's even for a host of the same uid; the
// host's checks use only what stays readable (status, namespaces). Run as
// root, TestSuiteRootless runs this package's tests again as uid 65534, in
// both setups.
//
// # What the worker must know
//
// After Enter, fds 0 and 1 are closed (never write to os.Stdout), fd 2 goes
// to the host's log (rate-limited, labelled), there is no filesystem, no
// network, no new processes; the system calls allowed are exactly those in
// confine.Allowlist. TestSyscallsMeasured measures a real canister workload
// against it; StartMeasuring lets other packages do the same.
package sandbox
