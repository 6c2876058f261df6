// Early confinement of a cordon sandbox process.
//
// This file is compiled into every binary that imports package confine. Its
// constructor runs when the dynamic loader initialises the program, before the
// Go runtime starts any thread, so everything it applies to the one thread
// that exists here (capabilities, the bounding set, no_new_privs, the
// Landlock domain, rlimits) is inherited by every thread created later. It
// does nothing unless argv[1] is the sandbox marker.
//
// Order (see doc.go): pdeathsig, fds, oom_score_adj, mount namespace and pivot_root,
// hostname (these overlap the host's cgroup attach), then the host's
// go-ahead (the process is in its cgroup), cgroup namespace, rlimits,
// dumpable, capabilities, no_new_privs, Landlock. seccomp is installed later, when
// confine.Enter calls cordon_seal_and_report (with TSYNC).
//
// On any failure the process sends one packet on fd 3 naming the layer, the
// step and the errno, writes one line to fd 2 and exits with
// CORDON_EXIT_SETUP; the host decodes the packet (confine.ParseFailure)
// into the error Start returns.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/uio.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>

#include "early.h"

// Landlock constants, spelled out because the build host's headers may
// predate the running kernel's ABI.
#define LL_CREATE_RULESET_VERSION (1U << 0)
struct ll_ruleset_attr {
	uint64_t handled_access_fs;
	uint64_t handled_access_net;
	uint64_t scoped;
};

static int cordon_state;        // 0: not a sandbox; 1: confined; -1: failed
static uint64_t cordon_applied; // CORDON_L_* bits applied here
static int cordon_landlock_abi;
static int cordon_nfiles = -1;
static int cordon_pagemap = -1;
static char cordon_err[256];

int cordon_early_state(void) { return cordon_state; }
uint64_t cordon_early_applied(void) { return cordon_applied; }
int cordon_early_landlock_abi(void) { return cordon_landlock_abi; }
int cordon_early_nfiles(void) { return cordon_nfiles; }

int cordon_early_pagemap(void) { return cordon_pagemap; }
const char *cordon_early_error(void) { return cordon_err; }

// layer_name names a layer bit in the log line of die (the host names it
// from the bit, with package sandbox's names, which these mirror).
static const char *layer_name(uint64_t layer) {
	switch (layer) {
	case CORDON_L_PDEATHSIG: return "pdeathsig";
	case CORDON_L_FDS: return "fds";
	case CORDON_L_PIVOT: return "pivot_root";
	case CORDON_L_UTS: return "utsns";
	case CORDON_L_CGROUPNS: return "cgroupns";
	case CORDON_L_RLIMITS: return "rlimits";
	case CORDON_L_CAPS: return "caps";
	case CORDON_L_NNP: return "no_new_privs";
	case CORDON_L_LANDLOCK: return "landlock";
	case CORDON_L_OOM: return "oom_score_adj";
	}
	return "setup";
}

// die reports a setup failure and exits: one packet on the IPC socket (fd 3)
// that the host decodes into an error naming the layer, the step and the
// errno, and one line on fd 2 for the log. Either may fail (fd 3 not open
// yet, the host gone); the exit code says a setup failure anyway. layer is
// one CORDON_L_* bit, 0 for a step of no layer. Only async-signal-safe
// calls but snprintf.
static void die(uint64_t layer, const char *step, int err) {
	char buf[200];
	int n = snprintf(buf, sizeof buf, CORDON_FAILED_PREFIX " %#llx %d %s", (unsigned long long)layer, err, step);
	if (n > 0) {
		ssize_t w = send(3, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)w;
	}
	n = snprintf(buf, sizeof buf, "cordon-sandbox: setup failed: %s: %s: %s (errno %d)\n", layer_name(layer), step, strerror(err), err);
	if (n > 0) {
		ssize_t w = write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
		(void)w;
	}
	_exit(CORDON_EXIT_SETUP);
}

// parse_u64 reads a decimal or 0x-hex number up to a ':' or NUL.
static int parse_u64(const char **p, uint64_t *out) {
	const char *s = *p;
	char *end;
	if (*s == 0 || *s == ':') return -1;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno != 0 || (*end != ':' && *end != 0)) return -1;
	*out = v;
	*p = *end == ':' ? end + 1 : end;
	return 0;
}

static long landlock_create(const struct ll_ruleset_attr *a, size_t sz, uint32_t flags) {
	return syscall(__NR_landlock_create_ruleset, a, sz, flags);
}

// apply_landlock restricts the thread (and its future children) to no
// filesystem access at all, handling every access right the kernel knows, and
// on ABI >= 4 no TCP bind/connect, on ABI >= 6 no abstract unix sockets or
// signals outside the domain.
static void apply_landlock(void) {
	long abi = landlock_create(NULL, 0, LL_CREATE_RULESET_VERSION);
	if (abi < 1) die(CORDON_L_LANDLOCK, "kernel support", errno);
	cordon_landlock_abi = (int)abi;
	struct ll_ruleset_attr a = {0};
	size_t sz = sizeof(a.handled_access_fs);
	a.handled_access_fs = (1ULL << 13) - 1; // ABI 1: EXECUTE .. MAKE_SYM
	if (abi >= 2) a.handled_access_fs |= 1ULL << 13; // REFER
	if (abi >= 3) a.handled_access_fs |= 1ULL << 14; // TRUNCATE
	if (abi >= 4) {
		a.handled_access_net = (1ULL << 0) | (1ULL << 1); // BIND_TCP, CONNECT_TCP
		sz = offsetof(struct ll_ruleset_attr, scoped);
	}
	if (abi >= 5) a.handled_access_fs |= 1ULL << 15; // IOCTL_DEV
	if (abi >= 6) {
		a.scoped = (1ULL << 0) | (1ULL << 1); // ABSTRACT_UNIX_SOCKET, SIGNAL
		sz = sizeof a;
	}
	int fd = (int)landlock_create(&a, sz, 0);
	if (fd < 0) die(CORDON_L_LANDLOCK, "create ruleset", errno);
	// No rules: nothing is allowed beneath any path.
	if (syscall(__NR_landlock_restrict_self, fd, 0) != 0) die(CORDON_L_LANDLOCK, "restrict self", errno);
	close(fd);
}

static void drop_capabilities(uint64_t layers) {
	// Lock the process out of every way back to privilege: root is not
	// special, setuid does not touch capabilities, ambient raises refused.
	unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
			     SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
			     SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
	if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) != 0) die(CORDON_L_CAPS, "securebits", errno);
	for (int c = 0; c < 64; c++) {
		if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0) {
			if (errno == EINVAL) break; // past CAP_LAST_CAP
			die(CORDON_L_CAPS, "drop bounding set", errno);
		}
	}
	if (layers & CORDON_L_SETUID) {
		// No user namespace (root host, userns layer missing): leave root.
		gid_t g = (gid_t)CORDON_UNPRIVILEGED_ID;
		if (syscall(SYS_setgroups, 0, NULL) != 0) die(CORDON_L_CAPS, "setgroups", errno);
		if (syscall(SYS_setresgid, g, g, g) != 0) die(CORDON_L_CAPS, "setresgid", errno);
		if (syscall(SYS_setresuid, g, g, g) != 0) die(CORDON_L_CAPS, "setresuid", errno);
	}
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) die(CORDON_L_CAPS, "clear ambient", errno);
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof d);
	if (syscall(SYS_capset, &h, d) != 0) die(CORDON_L_CAPS, "capset", errno);
}

// open_pagemap opens /proc/self/pagemap with an empty effective capability
// set, restoring the set afterwards (the steps until drop_capabilities need
// it). The kernel shows physical frame numbers to a reader whose file was
// opened with CAP_SYS_ADMIN in the initial user namespace: it checks the
// credentials saved in the file at open time, for the file's whole life.
// Without a user namespace (a root host with the userns layer missing) this
// process is still real root with every capability here. Returns -1 (no
// pagemap) if the set cannot be lowered.
static int open_pagemap(void) {
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct saved[2], lowered[2];
	if (syscall(SYS_capget, &h, saved) != 0) return -1;
	memcpy(lowered, saved, sizeof saved);
	lowered[0].effective = lowered[1].effective = 0;
	if (syscall(SYS_capset, &h, lowered) != 0) return -1;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (syscall(SYS_capset, &h, saved) != 0) die(0, "pagemap: restore the effective capability set", errno);
	return fd;
}

// raise_oom_score_adj makes this process the kernel's first choice when
// memory runs out (before the empty root: it needs /proc). Raising one's own
// oom_score_adj needs no privilege; lowering it again would need /proc,
// which the sandbox no longer reaches after pivot_root, Landlock and seccomp.
static void raise_oom_score_adj(void) {
	char v[16];
	int n = snprintf(v, sizeof v, "%d", CORDON_OOM_SCORE_ADJ);
	int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
	if (fd < 0) die(CORDON_L_OOM, "open /proc/self/oom_score_adj", errno);
	ssize_t w = write(fd, v, (size_t)n);
	if (w != n) die(CORDON_L_OOM, "write /proc/self/oom_score_adj", w < 0 ? errno : EIO);
	close(fd);
}

// count_threads reads Threads: from /proc/self/status (before pivot_root).
static int count_threads(void) {
	int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	if (fd < 0) return -1;
	char buf[4096];
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0) return -1;
	buf[n] = 0;
	char *p = strstr(buf, "\nThreads:");
	if (!p) return -1;
	return atoi(p + 9);
}

static void enter_empty_root(void) {
	// Nothing we mount may propagate back to the host.
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) die(CORDON_L_PIVOT, "make / private", errno);
	// The new root: a tiny tmpfs, searchable but not listable, mounted over
	// a directory that exists everywhere (hidden only in this namespace).
	if (mount("cordon", "/proc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		  "size=4k,nr_inodes=2,mode=0111") != 0)
		die(CORDON_L_PIVOT, "mount tmpfs root", errno);
	if (chdir("/proc") != 0) die(CORDON_L_PIVOT, "chdir new root", errno);
	// pivot_root(".", "."): the old root ends up stacked on "." and is then
	// detached with everything beneath it.
	if (syscall(SYS_pivot_root, ".", ".") != 0) die(CORDON_L_PIVOT, "pivot_root", errno);
	if (umount2(".", MNT_DETACH) != 0) die(CORDON_L_PIVOT, "umount old root", errno);
	if (chdir("/") != 0) die(CORDON_L_PIVOT, "chdir /", errno);
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		die(CORDON_L_PIVOT, "remount root read-only", errno);
}

__attribute__((constructor(101))) static void cordon_early(int argc, char **argv, char **envp) {
	(void)envp;
	if (argc == 2 && argv != NULL && argv[1] != NULL && strcmp(argv[1], CORDON_PROBE_MARKER) == 0) _exit(0);
	// The spawner (package sandbox) keeps 0-2, its socket (3) and its
	// executable (4), and nothing else of the host's, before the Go
	// runtime opens descriptors of its own.
	if (argc == 2 && argv != NULL && argv[1] != NULL && strcmp(argv[1], CORDON_SPAWNER_MARKER) == 0) {
		if (syscall(SYS_close_range, 5, ~0U, 0) != 0) _exit(CORDON_EXIT_SETUP);
		return;
	}
	if (argc < 3 || argv == NULL || argv[1] == NULL || strcmp(argv[1], CORDON_MARKER) != 0) return;
	cordon_state = -1;

	// argv[2]: "<version>:<layers>:<nfiles>:<nofile>:<as>:<nproc>:<fsize>:<data>"
	const char *p = argv[2];
	uint64_t ver, layers, nfiles, nofile, as, nproc, fsize, data;
	if (parse_u64(&p, &ver) || ver != CORDON_CONFIG_VERSION || parse_u64(&p, &layers) ||
	    parse_u64(&p, &nfiles) || parse_u64(&p, &nofile) || parse_u64(&p, &as) || parse_u64(&p, &nproc) ||
	    parse_u64(&p, &fsize) || parse_u64(&p, &data) || *p != 0 || nfiles > 1000)
		die(0, "bad configuration argument", EINVAL);
	cordon_nfiles = (int)nfiles;

	// Parent-death signal again: Go's fork sets it, but credential changes
	// clear it, and we want it whatever happened between fork and here.
	if (layers & CORDON_L_PDEATHSIG) {
		if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) die(CORDON_L_PDEATHSIG, "PR_SET_PDEATHSIG", errno);
		cordon_applied |= CORDON_L_PDEATHSIG;
	}
	int threads = count_threads();
	if (threads != 1) die(0, "more than one thread before confinement", threads < 0 ? EIO : EBUSY);

	// Only fds 2 (log pipe), 3 (IPC) and 4.. (host's files) stay open.
	if (layers & CORDON_L_FDS) {
		if (fcntl(2, F_GETFD) < 0 || fcntl(3, F_GETFD) < 0) die(CORDON_L_FDS, "fds 2 and 3 must be open", EBADF);
		for (int i = 0; i < 4 + (int)nfiles; i++)
			if (i >= 2 && fcntl(i, F_GETFD) < 0) die(CORDON_L_FDS, "passed fd missing", EBADF);
		if (syscall(SYS_close_range, 4 + (unsigned)nfiles, ~0U, 0) != 0) die(CORDON_L_FDS, "close_range", errno);
		close(0);
		close(1);
		cordon_applied |= CORDON_L_FDS;
	}

	// The process's own page-table view, which the engine asks which pages
	// of a canister's memory a message wrote (PAGEMAP_SCAN). Opened now,
	// while /proc is still reachable, and with no effective capability, so
	// it shows no physical frame numbers (see open_pagemap). Moved above
	// the host's fds so the placeholders below cannot land on it. Optional:
	// without it the engine compares memories instead.
	{
		int fd = open_pagemap();
		if (fd >= 0) {
			cordon_pagemap = fcntl(fd, F_DUPFD_CLOEXEC, 4 + (int)nfiles);
			close(fd);
		}
	}
	if (layers & CORDON_L_OOM) {
		raise_oom_score_adj();
		cordon_applied |= CORDON_L_OOM;
	}
	if (layers & CORDON_L_PIVOT) {
		enter_empty_root();
		cordon_applied |= CORDON_L_PIVOT;
	}
	// The Go runtime insists on fds 0-2 being open at start (it would open
	// /dev/null, which no longer exists). Park an O_PATH handle to the empty
	// root there; confine.Enter closes both before any untrusted input.
	{
		int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0) die(0, "open placeholder", errno);
		if (fd != 0 && dup2(fd, 0) < 0) die(0, "dup2 placeholder", errno);
		if (dup2(0, 1) < 0) die(0, "dup2 placeholder", errno);
		if (fd != 0) close(fd);
	}
	if (layers & CORDON_L_UTS) {
		if (sethostname("cordon", 6) != 0) die(CORDON_L_UTS, "sethostname", errno);
		if (setdomainname("cordon", 6) != 0) die(CORDON_L_UTS, "setdomainname", errno);
		cordon_applied |= CORDON_L_UTS;
	}
	// Wait for the host's go-ahead on the IPC socket: by then the host has
	// put this process into its cgroup, which it does while the steps above
	// run (they need no cgroup: what they allocate is a few kernel objects,
	// charged to the spawner's cgroup, and nothing untrusted has run). The
	// cgroup namespace below must be rooted at the sandbox's cgroup, and
	// the Go runtime starts threads only once it is (pids limit). EOF means
	// the host is gone (also the race check for the parent-death signal set
	// above).
	{
		char b = 0;
		ssize_t n;
		do n = recv(3, &b, 1, 0);
		while (n < 0 && errno == EINTR);
		if (n < 0) die(0, "wait for host", errno);
		if (n != 1 || b != CORDON_GO_BYTE) _exit(CORDON_EXIT_SETUP);
	}
	if (layers & CORDON_L_CGROUPNS) {
		// Unshared here, after the host moved us into our cgroup, so the
		// namespace is rooted at the sandbox's own cgroup.
		if (unshare(CLONE_NEWCGROUP) != 0) die(CORDON_L_CGROUPNS, "unshare", errno);
		cordon_applied |= CORDON_L_CGROUPNS;
	}
	if (layers & CORDON_L_RLIMITS) {
		struct {
			int res;
			uint64_t v;
			const char *name;
		} lim[] = {
			{RLIMIT_CORE, 0, "RLIMIT_CORE"},
			{RLIMIT_FSIZE, fsize, "RLIMIT_FSIZE"},
			{RLIMIT_NOFILE, nofile, "RLIMIT_NOFILE"},
			{RLIMIT_AS, as, "RLIMIT_AS"},
			{RLIMIT_DATA, data, "RLIMIT_DATA"},
			{RLIMIT_NPROC, nproc, "RLIMIT_NPROC"},
			{RLIMIT_MEMLOCK, 0, "RLIMIT_MEMLOCK"},
			{RLIMIT_MSGQUEUE, 0, "RLIMIT_MSGQUEUE"},
		};
		for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
			struct rlimit r;
			if (getrlimit(lim[i].res, &r) != 0) die(CORDON_L_RLIMITS, lim[i].name, errno);
			rlim_t v = lim[i].v == 0 && (lim[i].res == RLIMIT_AS || lim[i].res == RLIMIT_DATA || lim[i].res == RLIMIT_NPROC)
					   ? RLIM_INFINITY
					   : (rlim_t)lim[i].v;
			// Only ever lower a limit (raising needs CAP_SYS_RESOURCE).
			if (r.rlim_max != RLIM_INFINITY && (v == RLIM_INFINITY || v > r.rlim_max)) v = r.rlim_max;
			r.rlim_cur = r.rlim_max = v;
			if (setrlimit(lim[i].res, &r) != 0) die(CORDON_L_RLIMITS, lim[i].name, errno);
		}
		cordon_applied |= CORDON_L_RLIMITS;
	}
	// Not dumpable: no core, and no ptrace attach from anyone without
	// CAP_SYS_PTRACE over the sandbox (e.g. other processes of the host uid).
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) die(0, "PR_SET_DUMPABLE", errno);
	if (layers & CORDON_L_CAPS) {
		drop_capabilities(layers);
		cordon_applied |= CORDON_L_CAPS;
		if (layers & CORDON_L_SETUID) cordon_applied |= CORDON_L_SETUID;
	}
	if (layers & CORDON_L_NNP) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die(CORDON_L_NNP, "PR_SET_NO_NEW_PRIVS", errno);
		cordon_applied |= CORDON_L_NNP;
	}
	if (layers & CORDON_L_LANDLOCK) {
		apply_landlock();
		cordon_applied |= CORDON_L_LANDLOCK;
	}
	cordon_state = 1;
}

// cordon_seal_and_report installs the seccomp filter and hands its listener to
// the host in one step that makes no system call but seccomp and sendmsg.
//
// Why in C, with signals blocked: in learn mode every call but sendmsg is
// sent to the listener, and nobody reads the listener until the host has it.
// Had Go code run on this thread between the two calls, an asynchronous
// preemption signal (sysmon) would end in rt_sigreturn, which would wait
// forever on an unread listener, and the sandbox would never report ready.
// Other threads may block on the listener meanwhile; the host answers them
// once the packet arrives.
int cordon_seal_and_report(int sock, const void *filter, unsigned short len,
                           const void *msg, size_t msglen, int *stage) {
	uint64_t all = ~(uint64_t)0, old = 0;
	if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof all) != 0) {
		*stage = 1;
		return -errno;
	}
	struct sock_fprog prog = {.len = len, .filter = (struct sock_filter *)filter};
	unsigned long flags = SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_TSYNC_ESRCH |
	                      SECCOMP_FILTER_FLAG_NEW_LISTENER;
	long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
	if (listener < 0) {
		int e = errno;
		syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, sizeof old);
		*stage = 1;
		return -e;
	}
	int fd = (int)listener;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} control;
	memset(&control, 0, sizeof control);
	struct iovec iov = {.iov_base = (void *)msg, .iov_len = msglen};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
	                    .msg_controllen = sizeof control.buf};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof fd);
	long n;
	do {
		n = syscall(SYS_sendmsg, sock, &mh, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	int e = n < 0 ? errno : 0;
	// After sendmsg every call may be notified: the host now answers them.
	syscall(SYS_close, fd);
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, sizeof old);
	if (e != 0) {
		*stage = 2;
		return -e;
	}
	if ((size_t)n != msglen) {
		*stage = 2;
		return -EMSGSIZE;
	}
	return 0;
}
