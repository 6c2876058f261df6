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
	var countdown atomic.Int64 // 0: disarmed
	syscallFaults(t, "sync faults", func(fd int32) bool {
		c := countdown.Load()
		return c > 0 && countdown.Add(-1) == 0
	}, unix.SYS_FDATASYNC)
	return func(n int64) { countdown.Store(n) }
}

// DirSyncFaults installs a seccomp filter on every thread of this process
// that sends its fsync and fdatasync calls to a user notification listener
// in the same process, which fails those of a directory with EIO (the
// others run) and counts them in failed. It cannot be undone: call it in
// a Child. Where the kernel refuses the filter, or the machine is not
// x86-64 (the filter checks its syscall numbers), the test is skipped.
func DirSyncFaults(t testing.TB) (failed *atomic.Int64) {
	t.Helper()
	failed = new(atomic.Int64)
	syscallFaults(t, "dir sync faults", func(fd int32) bool {
		// The syncing thread is this process's: its fd is in our table.
		fi, err := os.Stat(fmt.Sprintf("/proc/self/fd/%d", fd))
		if err != nil || !fi.IsDir() {
			return false
		}
		failed.Add(1)
		return true
	}, unix.SYS_FSYNC, unix.SYS_FDATASYNC)
	return failed
}

// syscallFaults installs a seccomp filter on every thread of this process
// that sends the system calls nrs (each taking a file descriptor first) to
// a user notification listener in the same process: fail(fd) tells
// whether one fails with EIO, else it runs. The listener is a goroutine
// of this process; should it fail to receive, the process ends with
// status 6, saying so after name.
func syscallFaults(t testing.TB, name string, fail func(fd int32) bool, nrs ...uint32) {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter checks the x86-64 syscall numbers")
	}
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
	n := uint8(len(nrs))
	prog := []unix.SockFilter{
		ld(4),                               // arch
		jeq(unix.AUDIT_ARCH_X86_64, 0, n+2), // another: allow
		ld(0),                               // nr
	}
	for i, nr := range nrs {
		// One of nrs: on to the notification after the other comparisons;
		// none of them (the last compared): past it, to allow.
		jf := uint8(0)
		if i == len(nrs)-1 {
			jf = 1
		}
		prog = append(prog, jeq(nr, n-1-uint8(i), jf))
	}
	prog = append(prog, ret(unix.SECCOMP_RET_USER_NOTIF), ret(unix.SECCOMP_RET_ALLOW))
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	fd, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC|unix.SECCOMP_FILTER_FLAG_TSYNC_ESRCH|unix.SECCOMP_FILTER_FLAG_NEW_LISTENER, uintptr(unsafe.Pointer(&fprog)))
	if e != 0 {
		t.Skipf("install a seccomp filter with a listener: %v", e)
	}
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
				fmt.Fprintln(os.Stderr, name+": receive:", e)
				os.Exit(6)
			}
			r := resp{ID: n.ID, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE}
			if fail(int32(n.Args[0])) {
				r = resp{ID: n.ID, Error: -int32(unix.EIO)}
			}
			_, _, _ = unix.Syscall(unix.SYS_IOCTL, fd, unix.SECCOMP_IOCTL_NOTIF_SEND, uintptr(unsafe.Pointer(&r)))
		}
	}()
}
