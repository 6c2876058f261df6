package faultinject

import (
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// GrowFaults installs a seccomp filter on every thread of this process,
// inherited by every process it starts from then on (sandboxes included),
// that fails with ENOMEM each mprotect of exactly length bytes to
// PROT_READ|PROT_WRITE: what a memory cgroup at its limit does to the
// mprotect by which wasmtime grows a linear memory inside its reservation
// (the charge for the split mapping fails inside the system call). A Wasm
// memory.grow of length/65536 pages then fails for the host's reason; other
// grows, and every other mprotect, run. The filter returns an errno and
// has no listener, so a sandbox can still install its own filter with
// one. It cannot be undone: call it in a Child. The filter checks x86-64
// syscall numbers; where the kernel refuses it, the test is skipped.
func GrowFaults(t testing.TB, length uint64) {
	t.Helper()
	runtime.LockOSThread() // the filter is installed from this thread, synced to the others
	ld := func(off uint32) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: off}
	}
	jeq := func(k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: k, Jt: jt, Jf: jf}
	}
	ret := func(k uint32) unix.SockFilter { return unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: k} }
	// struct seccomp_data: nr at 0, arch at 4, args at 16 (8 bytes each,
	// little-endian: the low word first).
	arg := func(i, word uint32) uint32 { return 16 + 8*i + 4*word }
	prog := []unix.SockFilter{
		ld(4), // arch
		jeq(unix.AUDIT_ARCH_X86_64, 0, 9),
		ld(0), // nr
		jeq(unix.SYS_MPROTECT, 0, 7),
		ld(arg(1, 0)), // len, low word
		jeq(uint32(length), 0, 5),
		ld(arg(1, 1)), // len, high word
		jeq(uint32(length>>32), 0, 3),
		ld(arg(2, 0)), // prot
		jeq(unix.PROT_READ|unix.PROT_WRITE, 0, 1),
		ret(unix.SECCOMP_RET_ERRNO | uint32(unix.ENOMEM)),
		ret(unix.SECCOMP_RET_ALLOW),
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	install := func() unix.Errno {
		_, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
			unix.SECCOMP_FILTER_FLAG_TSYNC|unix.SECCOMP_FILTER_FLAG_TSYNC_ESRCH, uintptr(unsafe.Pointer(&fprog)))
		return e
	}
	e := install()
	if e == unix.EACCES {
		// Without CAP_SYS_ADMIN a filter needs no_new_privs, which the
		// sandboxes set for themselves anyway.
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		e = install()
	}
	if e != 0 {
		t.Skipf("install a seccomp filter: %v", e)
	}
}
