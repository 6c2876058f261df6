package sandbox

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/attack"
	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// Attacks run natively inside a live sandbox. Each returns nil if the
// forbidden thing worked (a failure of the sandbox), else the error that
// stopped it. Under the full filter most of them never return: the host
// kills the sandbox on the system call.

func errnoOf(r1 uintptr, e syscall.Errno) error {
	if e != 0 {
		return e
	}
	return nil
}

func raw(nr uintptr, a ...uintptr) error {
	var args [6]uintptr
	copy(args[:], a)
	r1, _, e := unix.RawSyscall6(nr, args[0], args[1], args[2], args[3], args[4], args[5])
	return errnoOf(r1, e)
}

func cstr(s string) uintptr {
	b := append([]byte(s), 0)
	return uintptr(unsafe.Pointer(&b[0]))
}

// hostPid is the pid of the host as the test passes it (args).
var hostPid int

var attacks = map[string]func() error{
	// Filesystem: nothing of the host is visible or writable.
	"read_passwd": func() error { _, err := os.ReadFile("/etc/passwd"); return err },
	"list_root": func() error {
		_, err := os.ReadDir("/")
		return err
	},
	"write_file":   func() error { return os.WriteFile("/pwned", []byte("x"), 0o644) },
	"proc_environ": func() error { _, err := os.ReadFile("/proc/1/environ"); return err },
	// Back to the host's oom_score_adj, so the OOM killer would take the
	// host first: /proc is beyond reach (the value stays: TestOOMScoreAdj).
	"oom_score_adj_lower": func() error { return os.WriteFile("/proc/self/oom_score_adj", []byte("0"), 0) },
	"exec_sh": func() error {
		argv := []uintptr{cstr("/bin/sh"), 0}
		return raw(unix.SYS_EXECVE, cstr("/bin/sh"), uintptr(unsafe.Pointer(&argv[0])), 0)
	},
	"execveat_self": func() error {
		return raw(unix.SYS_EXECVEAT, 3, cstr(""), 0, 0, unix.AT_EMPTY_PATH)
	},
	"chroot": func() error { return raw(unix.SYS_CHROOT, cstr("/")) },
	"mknod":  func() error { return raw(unix.SYS_MKNODAT, uintptr(atFDCWD), cstr("/null"), unix.S_IFCHR|0o666, 0x103) },
	"mount":  func() error { return raw(unix.SYS_MOUNT, cstr("none"), cstr("/"), cstr("tmpfs"), 0, 0) },
	"umount": func() error { return raw(unix.SYS_UMOUNT2, cstr("/"), unix.MNT_DETACH) },
	"pivot":  func() error { return raw(unix.SYS_PIVOT_ROOT, cstr("/"), cstr("/")) },
	"open_by_handle_at": func() error {
		h := make([]byte, 8+128)
		return raw(unix.SYS_OPEN_BY_HANDLE_AT, 2, uintptr(unsafe.Pointer(&h[0])), 0)
	},
	"name_to_handle_at": func() error {
		h := make([]byte, 8+128)
		var mnt int32
		return raw(unix.SYS_NAME_TO_HANDLE_AT, uintptr(atFDCWD), cstr("/"), uintptr(unsafe.Pointer(&h[0])), uintptr(unsafe.Pointer(&mnt)), 0)
	},

	// Network: no sockets at all.
	"socket_inet":    func() error { return raw(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0) },
	"socket_unix":    func() error { return raw(unix.SYS_SOCKET, unix.AF_UNIX, unix.SOCK_STREAM, 0) },
	"socket_netlink": func() error { return raw(unix.SYS_SOCKET, unix.AF_NETLINK, unix.SOCK_RAW, 0) },
	"socketpair": func() error {
		var fds [2]int32
		return raw(unix.SYS_SOCKETPAIR, unix.AF_UNIX, unix.SOCK_STREAM, 0, uintptr(unsafe.Pointer(&fds)))
	},
	"connect_abstract": func() error {
		// On the IPC socket the sandbox already holds (fd 3 was dup'ed by
		// Enter; any unix socket fd will do: the call itself is refused).
		sa := []byte("\x01\x00\x00cordon-test-abstract")
		return raw(unix.SYS_CONNECT, uintptr(ipcFd), uintptr(unsafe.Pointer(&sa[0])), uintptr(len(sa)))
	},
	"io_uring_setup": func() error {
		p := make([]byte, 120)
		return raw(unix.SYS_IO_URING_SETUP, 8, uintptr(unsafe.Pointer(&p[0])))
	},

	// Other processes: the host and the kernel.
	"ptrace_host":      func() error { return raw(unix.SYS_PTRACE, unix.PTRACE_ATTACH, uintptr(hostPid)) },
	"process_vm_readv": func() error { return raw(unix.SYS_PROCESS_VM_READV, uintptr(hostPid), 0, 0, 0, 0, 0) },
	"kill_host":        func() error { return raw(unix.SYS_KILL, uintptr(hostPid), 0) },
	"kill_all":         func() error { return raw(unix.SYS_KILL, ^uintptr(0), uintptr(unix.SIGKILL)) },
	"tgkill_host":      func() error { return raw(unix.SYS_TGKILL, uintptr(hostPid), uintptr(hostPid), 0) },
	"pidfd_open":       func() error { return raw(unix.SYS_PIDFD_OPEN, 1, 0) },
	"getppid": func() error {
		r, _, _ := unix.RawSyscall(unix.SYS_GETPPID, 0, 0, 0)
		return fmt.Errorf("getppid=%d", r)
	},
	"bpf":         func() error { return raw(unix.SYS_BPF, 0 /* BPF_MAP_CREATE */, 0, 0) },
	"keyctl":      func() error { return raw(unix.SYS_KEYCTL, 0 /* GET_KEYRING_ID */, ^uintptr(3), 0) },
	"add_key":     func() error { return raw(unix.SYS_ADD_KEY, cstr("user"), cstr("x"), 0, 0, ^uintptr(1)) },
	"userfaultfd": func() error { return raw(unix.SYS_USERFAULTFD, 0) },
	"perf_event_open": func() error {
		a := make([]byte, 128)
		return raw(unix.SYS_PERF_EVENT_OPEN, uintptr(unsafe.Pointer(&a[0])), 0, ^uintptr(0), ^uintptr(0), 0)
	},
	"init_module": func() error { return raw(unix.SYS_INIT_MODULE, 0, 0, cstr("")) },
	"reboot": func() error {
		return raw(unix.SYS_REBOOT, unix.LINUX_REBOOT_MAGIC1, unix.LINUX_REBOOT_MAGIC2, unix.LINUX_REBOOT_CMD_CAD_OFF)
	},
	"sethostname":   func() error { return raw(unix.SYS_SETHOSTNAME, cstr("x"), 1) },
	"unshare_user":  func() error { return raw(unix.SYS_UNSHARE, unix.CLONE_NEWUSER) },
	"setns":         func() error { return raw(unix.SYS_SETNS, 2, 0) },
	"clone_newuser": func() error { return raw(unix.SYS_CLONE, unix.CLONE_NEWUSER|uintptr(unix.SIGCHLD), 0, 0, 0, 0) },
	"clone_thread_newns": func() error {
		return raw(unix.SYS_CLONE, unix.CLONE_VM|unix.CLONE_FS|unix.CLONE_FILES|unix.CLONE_SIGHAND|unix.CLONE_THREAD|unix.CLONE_SYSVSEM|unix.CLONE_NEWNS, 0, 0, 0, 0)
	},
	"fork":      func() error { return raw(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0, 0, 0) },
	"vfork":     func() error { return raw(unix.SYS_VFORK) },
	"clone3":    func() error { a := make([]uint64, 11); return raw(unix.SYS_CLONE3, uintptr(unsafe.Pointer(&a[0])), 88) },
	"setuid":    func() error { return raw(unix.SYS_SETUID, 0) },
	"setresuid": func() error { return raw(unix.SYS_SETRESUID, 0, 0, 0) },
	"capset": func() error {
		h := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		d := [2]unix.CapUserData{{Effective: ^uint32(0), Permitted: ^uint32(0)}, {}}
		return raw(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&h)), uintptr(unsafe.Pointer(&d[0])))
	},
	"prctl_seccomp_off":  func() error { return raw(unix.SYS_PRCTL, unix.PR_SET_SECCOMP, 0) },
	"seccomp_new_filter": func() error { return raw(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_STRICT, 0, 0) },
	"x32_getpid":         func() error { return raw(confine.X32Bit | unix.SYS_GETPID) },
	"i386_getpid": func() error {
		r := attack.Int80(20)
		return fmt.Errorf("int80 returned %d", r)
	},
	"ioctl_tiocsti": func() error {
		c := byte('x')
		return raw(unix.SYS_IOCTL, 2, unix.TIOCSTI, uintptr(unsafe.Pointer(&c)))
	},
	"fcntl_setown": func() error { return raw(unix.SYS_FCNTL, 2, unix.F_SETOWN, uintptr(hostPid)) },
	"memfd_secret": func() error { return raw(unix.SYS_MEMFD_SECRET, 0) },

	// Stdio: nothing behind fds 0 and 1.
	"write_fd0": func() error { _, err := unix.Write(0, []byte("x")); return err },
	"write_fd1": func() error { _, err := unix.Write(1, []byte("x")); return err },

	// Resources.
	"fd_exhaustion": func() error {
		n := 0
		for ; n < 10000; n++ {
			if _, err := unix.FcntlInt(2, unix.F_DUPFD_CLOEXEC, 0); err != nil {
				return fmt.Errorf("%w after %d", err, n)
			}
		}
		return nil
	},
	"thread_bomb": func() error {
		n, e := attack.ThreadBomb(10000)
		if e == 0 {
			return nil
		}
		return fmt.Errorf("%w after %d threads", e, n)
	},
}

var atFDCWD = unix.AT_FDCWD

// ipcFd is the fd of the sandbox's IPC connection (set by the scenario).
var ipcFd int

func init() {
	// attack NAME HOSTPID: run one attack, report, wait.
	scenarios["attack"] = func(c *child) int {
		hostPid, _ = strconv.Atoi(c.args[1])
		if rc, err := c.conn.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { ipcFd = int(fd) })
		}
		a, ok := attacks[c.args[0]]
		if !ok {
			c.send("unknown attack")
			return 1
		}
		if err := a(); err != nil {
			c.send("failed: %s", errText(err))
		} else {
			c.send("succeeded")
		}
		c.recv()
		return 0
	}
}

func errText(err error) string {
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e) + " " + err.Error()
	}
	return err.Error()
}

// Attacks for the defence-in-depth test: with the seccomp layer turned off,
// the other layers must hold by themselves.
func init() {
	attacks["net_connect_host"] = func() error {
		// The host listens on 127.0.0.1; the sandbox's lo is down and its
		// own anyway.
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(hostPort))
		if err == nil {
			c.Close()
		}
		return err
	}
	attacks["net_connect_internet"] = func() error {
		c, err := net.Dial("udp", "1.1.1.1:53")
		if err == nil {
			_, err = c.Write([]byte("x"))
			c.Close()
		}
		return err
	}
	attacks["tcp_bind"] = func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Bind(fd, &unix.SockaddrInet4{Port: 8080})
	}
	attacks["abstract_connect_host"] = func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Connect(fd, &unix.SockaddrUnix{Name: "@" + hostAbstract})
	}
	attacks["interfaces_up"] = func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		var names []string
		for _, i := range ifs {
			names = append(names, i.Name+"/"+i.Flags.String())
			if i.Flags&net.FlagUp != 0 || i.Name != "lo" {
				return nil // an interface that is up, or not lo: failure
			}
		}
		return fmt.Errorf("only %v", names)
	}
	attacks["landlock_dirfd"] = func() error {
		// fd 4 is a host directory the test passed on purpose: DAC would
		// allow reading the file in it, Landlock must not, on any thread:
		// try from several OS threads (the Go runtime's, and new ones).
		errs := make(chan error, 16)
		for i := 0; i < 16; i++ {
			go func() {
				runtime.LockOSThread() // exits with the goroutine: a fresh thread each time
				fd, err := unix.Openat(4, "secret", unix.O_RDONLY, 0)
				if err == nil {
					unix.Close(fd)
				}
				errs <- err
			}()
		}
		var first error
		for i := 0; i < 16; i++ {
			err := <-errs
			if err == nil {
				return nil
			}
			if first == nil {
				first = err
			} else if err != first {
				return fmt.Errorf("threads disagree: %v vs %v", first, err)
			}
		}
		return first
	}
	attacks["landlock_dirfd_create"] = func() error {
		fd, err := unix.Openat(4, "new", unix.O_CREAT|unix.O_WRONLY, 0o666)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	attacks["identity"] = func() error {
		// Not an attack: what the sandbox sees of itself.
		var u unix.Utsname
		_ = unix.Uname(&u)
		host, _, _ := strings.Cut(string(u.Nodename[:]), "\x00")
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var caps [2]unix.CapUserData
		_ = unix.Capget(&hdr, &caps[0])
		nnp, _ := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
		var lim [5]unix.Rlimit
		for i, r := range []int{unix.RLIMIT_CORE, unix.RLIMIT_FSIZE, unix.RLIMIT_NOFILE, unix.RLIMIT_AS, unix.RLIMIT_NPROC} {
			_ = unix.Getrlimit(r, &lim[i])
		}
		return fmt.Errorf("host=%s pid=%d ppid=%d uid=%d gid=%d caps=%x,%x,%x nnp=%d core=%d fsize=%d nofile=%d as=%d nproc=%d env=%q",
			host, os.Getpid(), os.Getppid(), os.Getuid(), os.Getgid(), caps[0].Effective|caps[1].Effective, caps[0].Permitted|caps[1].Permitted,
			caps[0].Inheritable|caps[1].Inheritable, nnp, lim[0].Max, lim[1].Max, lim[2].Max, lim[3].Max, lim[4].Max, os.Environ())
	}
}

// hostPort and hostAbstract are a TCP port and an abstract unix socket the
// host test listens on (passed in args).
var (
	hostPort     int
	hostAbstract string
)

func init() {
	orig := scenarios["attack"]
	scenarios["attack"] = func(c *child) int {
		if len(c.args) >= 4 {
			hostPort, _ = strconv.Atoi(c.args[2])
			hostAbstract = c.args[3]
		}
		return orig(c)
	}
}
