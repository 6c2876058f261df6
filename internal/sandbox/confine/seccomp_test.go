package confine

import (
	"testing"

	"golang.org/x/sys/unix"
)

func eval(t *testing.T, f []unix.SockFilter, nr uint32, arch uint32, args ...uint64) uint32 {
	t.Helper()
	d := SeccompData{Nr: int32(nr), Arch: arch}
	copy(d.Args[:], args)
	r, err := RunFilter(f, d)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestFilterDecisions checks the assembled filter on crafted calls; the live
// tests in package sandbox check the same from inside real sandboxes.
func TestFilterDecisions(t *testing.T) {
	const pid = 1
	f, err := BuildFilter(pid, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d instructions for %d rules", len(f), len(Allowlist))
	x86 := uint32(unix.AUDIT_ARCH_X86_64)
	const (
		allow  = unix.SECCOMP_RET_ALLOW
		notify = unix.SECCOMP_RET_USER_NOTIF
	)
	glibcThread := uint64(0x3d0f00)
	goThread := uint64(unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_SYSVSEM | unix.CLONE_THREAD)
	cases := []struct {
		name string
		nr   uint32
		arch uint32
		args []uint64
		want uint32
	}{
		{"read", unix.SYS_READ, x86, nil, allow},
		{"read as i386", 3, unix.AUDIT_ARCH_I386, nil, notify},
		{"x32 read", X32Bit | unix.SYS_READ, x86, nil, notify},
		{"x32 high number", 0x7fffffff, x86, nil, notify},
		{"unknown number", 999, x86, nil, notify},
		{"socket", unix.SYS_SOCKET, x86, nil, notify},
		{"connect", unix.SYS_CONNECT, x86, nil, notify},
		{"execve", unix.SYS_EXECVE, x86, nil, notify},
		{"io_uring_setup", unix.SYS_IO_URING_SETUP, x86, nil, notify},
		{"io_uring_enter", unix.SYS_IO_URING_ENTER, x86, nil, notify},
		{"ptrace", unix.SYS_PTRACE, x86, nil, notify},
		{"clone glibc thread", unix.SYS_CLONE, x86, []uint64{glibcThread}, allow},
		{"clone go thread", unix.SYS_CLONE, x86, []uint64{goThread}, allow},
		{"clone thread+newuser", unix.SYS_CLONE, x86, []uint64{glibcThread | unix.CLONE_NEWUSER}, notify},
		{"clone thread+newns", unix.SYS_CLONE, x86, []uint64{goThread | unix.CLONE_NEWNS}, notify},
		{"clone thread+vfork", unix.SYS_CLONE, x86, []uint64{goThread | unix.CLONE_VFORK}, notify},
		{"clone thread+pidfd", unix.SYS_CLONE, x86, []uint64{goThread | unix.CLONE_PIDFD}, notify},
		{"clone without CLONE_THREAD", unix.SYS_CLONE, x86, []uint64{goThread &^ unix.CLONE_THREAD}, notify},
		{"clone without CLONE_VM", unix.SYS_CLONE, x86, []uint64{goThread &^ unix.CLONE_VM}, notify},
		{"fork", unix.SYS_CLONE, x86, []uint64{uint64(unix.SIGCHLD)}, notify},
		{"clone high bits", unix.SYS_CLONE, x86, []uint64{goThread | 1<<40}, notify},
		{"clone3", unix.SYS_CLONE3, x86, nil, unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{"tgkill self", unix.SYS_TGKILL, x86, []uint64{pid, 5, 23}, allow},
		{"tgkill other", unix.SYS_TGKILL, x86, []uint64{2, 2, 9}, notify},
		{"tgkill other high", unix.SYS_TGKILL, x86, []uint64{1<<32 | pid, 2, 9}, notify},
		{"kill self", unix.SYS_KILL, x86, []uint64{pid, 6}, allow},
		{"kill all", unix.SYS_KILL, x86, []uint64{^uint64(0), 9}, notify},
		{"kill group", unix.SYS_KILL, x86, []uint64{0, 9}, notify},
		{"fcntl setfl", unix.SYS_FCNTL, x86, []uint64{3, unix.F_SETFL}, allow},
		{"fcntl seals", unix.SYS_FCNTL, x86, []uint64{3, unix.F_ADD_SEALS}, allow},
		{"fcntl dupfd_cloexec", unix.SYS_FCNTL, x86, []uint64{3, unix.F_DUPFD_CLOEXEC}, allow},
		{"fcntl setown", unix.SYS_FCNTL, x86, []uint64{3, unix.F_SETOWN}, notify},
		{"fcntl setlease", unix.SYS_FCNTL, x86, []uint64{3, unix.F_SETLEASE}, notify},
		{"fcntl notify", unix.SYS_FCNTL, x86, []uint64{3, unix.F_NOTIFY}, notify},
		{"ioctl", unix.SYS_IOCTL, x86, []uint64{2, unix.TIOCSTI}, unix.SECCOMP_RET_ERRNO | uint32(unix.ENOTTY)},
		{"openat", unix.SYS_OPENAT, x86, nil, unix.SECCOMP_RET_ERRNO | uint32(unix.ENOENT)},
	}
	for _, c := range cases {
		if got := eval(t, f, c.nr, c.arch, c.args...); got != c.want {
			t.Errorf("%s: got %#x want %#x", c.name, got, c.want)
		}
	}
	// Every syscall the kernel knows that the table does not name is refused.
	named := map[uint32]bool{}
	for _, r := range Allowlist {
		named[r.Nr] = true
	}
	for i := range syscallNames { // the numbers without a name too
		if nr := uint32(i); !named[nr] {
			if got := eval(t, f, nr, x86); got != notify {
				t.Errorf("%s (%d) not in the table but gets %#x", syscallNames[nr], nr, got)
			}
		}
	}
	// Every prctl option but PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN) goes to
	// the host, whatever its arguments.
	for opt := uint64(0); opt < 100; opt++ {
		for _, arg := range []uint64{0, 1, 2, 3, 1 << 32, 1<<32 | unix.PR_MDWE_REFUSE_EXEC_GAIN} {
			want := uint32(notify)
			if opt == unix.PR_SET_MDWE && arg == unix.PR_MDWE_REFUSE_EXEC_GAIN {
				want = allow
			}
			if got := eval(t, f, unix.SYS_PRCTL, x86, opt, arg); got != want {
				t.Errorf("prctl(%d, %#x): got %#x want %#x", opt, arg, got, want)
			}
			if got := eval(t, f, unix.SYS_PRCTL, x86, 1<<32|opt, arg); got != want {
				t.Errorf("prctl(1<<32|%d, %#x): got %#x want %#x (the kernel reads an int)", opt, arg, got, want)
			}
		}
	}
}

// TestFilterWX: no mapping writable and executable, mmap never executable
// and never of hugetlb pages (nor memfds of them), madvise never KSM;
// the pagemap descriptor cannot be closed (so nothing else can take its
// number), any other can.
func TestFilterWX(t *testing.T) {
	const pagemap = 9
	f, err := BuildFilterPagemap(1, pagemap, false)
	if err != nil {
		t.Fatal(err)
	}
	x86 := uint32(unix.AUDIT_ARCH_X86_64)
	const (
		allow  = unix.SECCOMP_RET_ALLOW
		notify = unix.SECCOMP_RET_USER_NOTIF
	)
	r, w, x := uint64(unix.PROT_READ), uint64(unix.PROT_WRITE), uint64(unix.PROT_EXEC)
	cases := []struct {
		name string
		nr   uint32
		args []uint64
		want uint32
	}{
		{"mmap rw", unix.SYS_MMAP, []uint64{0, 4096, r | w}, allow},
		{"mmap none", unix.SYS_MMAP, []uint64{0, 4096, 0}, allow},
		{"mmap rwx", unix.SYS_MMAP, []uint64{0, 4096, r | w | x}, notify},
		{"mmap wx", unix.SYS_MMAP, []uint64{0, 4096, w | x}, notify},
		{"mmap rx", unix.SYS_MMAP, []uint64{0, 4096, r | x}, notify},
		{"mmap x", unix.SYS_MMAP, []uint64{0, 4096, x}, notify},
		{"mmap rx high bits", unix.SYS_MMAP, []uint64{0, 4096, 1<<40 | r | x}, notify},
		{"mmap rw private anonymous", unix.SYS_MMAP, []uint64{0, 4096, r | w, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS}, allow},
		{"mmap rw noreserve fixed", unix.SYS_MMAP, []uint64{0, 4096, r | w, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_NORESERVE | unix.MAP_FIXED}, allow},
		{"mmap hugetlb", unix.SYS_MMAP, []uint64{0, 2 << 20, r | w, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_HUGETLB}, notify},
		{"mmap hugetlb 1G", unix.SYS_MMAP, []uint64{0, 1 << 30, r | w, unix.MAP_SHARED | unix.MAP_ANONYMOUS | unix.MAP_HUGETLB | unix.MAP_HUGE_1GB}, notify},
		{"mmap hugetlb high bits", unix.SYS_MMAP, []uint64{0, 2 << 20, r | w, 1<<40 | unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_HUGETLB}, notify},
		{"mmap rx hugetlb", unix.SYS_MMAP, []uint64{0, 2 << 20, r | x, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_HUGETLB}, notify},
		{"mprotect rx", unix.SYS_MPROTECT, []uint64{0, 4096, r | x}, allow},
		{"mprotect rw", unix.SYS_MPROTECT, []uint64{0, 4096, r | w}, allow},
		{"mprotect none", unix.SYS_MPROTECT, []uint64{0, 4096, 0}, allow},
		{"mprotect rwx", unix.SYS_MPROTECT, []uint64{0, 4096, r | w | x}, notify},
		{"mprotect wx", unix.SYS_MPROTECT, []uint64{0, 4096, w | x}, notify},
		{"mprotect rwx growsdown", unix.SYS_MPROTECT, []uint64{0, 4096, unix.PROT_GROWSDOWN | r | w | x}, notify},
		{"mprotect rwx high bits", unix.SYS_MPROTECT, []uint64{0, 4096, 1<<40 | r | w | x}, notify},
		{"pkey_mprotect", unix.SYS_PKEY_MPROTECT, []uint64{0, 4096, r, 0}, notify},
		{"close other", unix.SYS_CLOSE, []uint64{8}, allow},
		{"close pagemap", unix.SYS_CLOSE, []uint64{pagemap}, notify},
		{"close pagemap high bits", unix.SYS_CLOSE, []uint64{1<<32 | pagemap}, notify},
		{"dup2 onto pagemap", unix.SYS_DUP2, []uint64{3, pagemap}, notify},
		{"dup3 onto pagemap", unix.SYS_DUP3, []uint64{3, pagemap, 0}, notify},
		{"close_range", unix.SYS_CLOSE_RANGE, []uint64{pagemap, pagemap, 0}, notify},
		{"fcntl F_DUPFD", unix.SYS_FCNTL, []uint64{3, unix.F_DUPFD, pagemap}, notify},
		{"pagemap scan", unix.SYS_IOCTL, []uint64{pagemap, PagemapScan}, allow},
		{"memfd_create", unix.SYS_MEMFD_CREATE, []uint64{0, unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING}, allow},
		{"memfd_create hugetlb", unix.SYS_MEMFD_CREATE, []uint64{0, unix.MFD_CLOEXEC | unix.MFD_HUGETLB}, notify},
		{"memfd_create hugetlb 2M", unix.SYS_MEMFD_CREATE, []uint64{0, unix.MFD_HUGETLB | unix.MFD_HUGE_2MB}, notify},
	}
	for _, c := range cases {
		if got := eval(t, f, c.nr, x86, c.args...); got != c.want {
			t.Errorf("%s: got %#x want %#x", c.name, got, c.want)
		}
	}
	// madvise: every advice but MADV_MERGEABLE (the Go runtime and wasmtime
	// use DONTNEED, FREE, HUGEPAGE, NOHUGEPAGE, COLLAPSE).
	for advice := uint64(0); advice < 128; advice++ {
		for _, hi := range []uint64{0, 1 << 32} {
			want := uint32(allow)
			if advice == unix.MADV_MERGEABLE {
				want = notify
			}
			if got := eval(t, f, unix.SYS_MADVISE, x86, 0, 4096, hi|advice); got != want {
				t.Errorf("madvise(%#x): got %#x want %#x", hi|advice, got, want)
			}
		}
	}
	// Without a pagemap, close is unrestricted.
	f, err = BuildFilter(1, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := eval(t, f, unix.SYS_CLOSE, x86, pagemap); got != allow {
		t.Errorf("close without a pagemap: %#x", got)
	}
}

func TestViolationName(t *testing.T) {
	x86 := uint32(unix.AUDIT_ARCH_X86_64)
	for _, c := range []struct {
		nr   int32
		args [6]uint64
		want string
	}{
		{unix.SYS_MPROTECT, [6]uint64{0, 0, unix.PROT_READ | unix.PROT_WRITE | unix.PROT_EXEC}, "mprotect(PROT_WRITE|PROT_EXEC)"},
		{unix.SYS_MMAP, [6]uint64{0, 0, unix.PROT_WRITE | unix.PROT_EXEC}, "mmap(PROT_WRITE|PROT_EXEC)"},
		{unix.SYS_MMAP, [6]uint64{0, 0, unix.PROT_READ | unix.PROT_EXEC}, "mmap(PROT_EXEC)"},
		{unix.SYS_CLOSE, [6]uint64{9}, "close(pagemap)"},
		{unix.SYS_MMAP, [6]uint64{0, 0, unix.PROT_READ, unix.MAP_PRIVATE | unix.MAP_ANONYMOUS | unix.MAP_HUGETLB}, "mmap(MAP_HUGETLB)"},
		{unix.SYS_MEMFD_CREATE, [6]uint64{0, unix.MFD_HUGETLB}, "memfd_create(MFD_HUGETLB)"},
		{unix.SYS_MADVISE, [6]uint64{0, 4096, unix.MADV_MERGEABLE}, "madvise(MADV_MERGEABLE)"},
		{unix.SYS_SOCKET, [6]uint64{2, 1}, "socket"},
		{unix.SYS_PRCTL, [6]uint64{unix.PR_SET_SECCOMP}, "prctl"},
	} {
		if got := ViolationName(Notification{Arch: x86, Nr: c.nr, Args: c.args}); got != c.want {
			t.Errorf("%d %v: %q want %q", c.nr, c.args, got, c.want)
		}
	}
	if got := ViolationName(Notification{Arch: unix.AUDIT_ARCH_I386, Nr: 125, Args: [6]uint64{0, 0, 7}}); got != "arch-0x40000003:125" {
		t.Errorf("i386 mprotect: %q", got)
	}
}

func TestAllowlistTable(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Allowlist {
		if seen[r.Name] {
			t.Errorf("%s listed twice", r.Name)
		}
		seen[r.Name] = true
		if r.Why == "" {
			t.Errorf("%s has no reason", r.Name)
		}
	}
	// Never on the list, whatever the measurement says.
	for _, n := range []string{"socket", "socketpair", "connect", "bind", "listen", "accept4", "execve", "execveat",
		"ptrace", "process_vm_readv", "process_vm_writev", "bpf", "mount", "umount2", "pivot_root", "chroot",
		"unshare", "setns", "keyctl", "add_key", "request_key", "userfaultfd", "perf_event_open",
		"io_uring_setup", "io_uring_enter", "io_uring_register", "clone3", "fork", "vfork",
		"init_module", "finit_module", "kexec_load", "open_by_handle_at", "seccomp", "prctl",
		"setuid", "setgid", "capset", "mknod", "mknodat", "pidfd_open", "pidfd_getfd", "memfd_secret",
		"dup2", "dup3", "close_range", "pkey_mprotect", "remap_file_pages", "shmat"} {
		for _, r := range Allowlist {
			// prctl is allowed for one option only (PR_SET_MDWE, which
			// only takes rights away); TestFilterDecisions checks the rest.
			if r.Name == n && r.Act == Allow && !(n == "prctl" && r.Check == checkPrctl) {
				t.Errorf("%s must not be allowed", n)
			}
		}
	}
}

func TestSyscallName(t *testing.T) {
	for _, c := range []struct {
		arch uint32
		nr   int32
		want string
	}{
		{unix.AUDIT_ARCH_X86_64, unix.SYS_SOCKET, "socket"},
		{unix.AUDIT_ARCH_X86_64, X32Bit | unix.SYS_GETPID, "x32:getpid"},
		{unix.AUDIT_ARCH_X86_64, 5000, "syscall_5000"},
		{unix.AUDIT_ARCH_I386, 20, "arch-0x40000003:20"},
	} {
		if got := SyscallName(c.arch, c.nr); got != c.want {
			t.Errorf("%v: %q want %q", c, got, c.want)
		}
	}
}
