package faultinject

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SyncFaults installs a seccomp filter on every thread of this process
// that sends its fdatasync calls to a user notification listener in the
// same process, and returns arm: arm(n) fails the n-th fdatasync from
// then on with EIO (the others run). It cannot be undone: call it in a
// Child. The filter checks x86-64 syscall numbers; where the kernel
// refuses it, the test is skipped.
func SyncFaults(t testing.TB) (arm func(n int64)) {
	t.Helper()
	runtime.LockOSThread() // the filter is installed from this thread, synced to the others
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	ld := func(off uint32) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: off}
	}
	jeq := func(k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: k, Jt: jt, Jf: jf}
	}
	ret := func(k uint32) unix.SockFilter { return unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: k} }
	prog := []unix.SockFilter{
		ld(4), // arch
		jeq(unix.AUDIT_ARCH_X86_64, 0, 3),
		ld(0), // nr
		jeq(unix.SYS_FDATASYNC, 0, 1),
		ret(unix.SECCOMP_RET_USER_NOTIF),
		ret(unix.SECCOMP_RET_ALLOW),
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	fd, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC|unix.SECCOMP_FILTER_FLAG_TSYNC_ESRCH|unix.SECCOMP_FILTER_FLAG_NEW_LISTENER, uintptr(unsafe.Pointer(&fprog)))
	if e != 0 {
		t.Skipf("install a seccomp filter with a listener: %v", e)
	}
	var countdown atomic.Int64 // 0: disarmed
	go func() {
		type notif struct {
			ID    uint64
			Pid   uint32
			Flags uint32
			Nr    int32
			Arch  uint32
			IP    uint64
			Args  [6]uint64
		}
		type resp struct {
			ID    uint64
			Val   int64
			Error int32
			Flags uint32
		}
		for {
			var n notif // the kernel wants it zeroed
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.SECCOMP_IOCTL_NOTIF_RECV, uintptr(unsafe.Pointer(&n))); e != 0 {
				if e == unix.EINTR || e == unix.ENOENT {
					continue
				}
				fmt.Fprintln(os.Stderr, "sync faults: receive:", e)
				os.Exit(6)
			}
			r := resp{ID: n.ID, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE}
			if c := countdown.Load(); c > 0 && countdown.Add(-1) == 0 {
				r = resp{ID: n.ID, Error: -int32(unix.EIO)}
			}
			_, _, _ = unix.Syscall(unix.SYS_IOCTL, fd, unix.SECCOMP_IOCTL_NOTIF_SEND, uintptr(unsafe.Pointer(&r)))
		}
	}()
	return func(n int64) { countdown.Store(n) }
}
