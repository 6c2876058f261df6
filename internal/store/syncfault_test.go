package store

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/state"
)

// A sync that fails after bbolt wrote a transaction's meta page.
//
// bbolt commits a transaction by writing its pages, fdatasync, writing its
// meta page, fdatasync. When that last sync fails, Commit returns the
// error, yet the meta page is in the page cache, which bbolt reads its
// state from (a shared mapping of the file): the transaction is what the
// process sees from then on, and may well be durable. Nothing tells
// whether it is; an fsync error is how a disk or a network file system
// reports a write it lost. A caller told the commit failed must not find
// it applied, and must not build later commits on it.
//
// The fault is injected with a seccomp filter in a child process: its
// fdatasync calls go to a user notification listener in the same
// process, which fails the chosen one with EIO and lets the others run.

// syncFaults installs the filter on every thread of this process and
// returns arm: arm(n) fails the n-th fdatasync from then on with EIO.
func syncFaults(t *testing.T) (arm func(n int64)) {
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
			var n notif
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

// faultChange is a commit to canister 1 at version v writing byte b into
// page idx of its 4-page heap, with balance 100-v.
func faultChange(v uint64, idx uint64, b byte) Change {
	const pages = 4
	return Change{ID: []byte{1}, Meta: Meta{ID: "fault", Version: v, HeapSize: pages * state.PageSize},
		Heap: &MemoryChange{Delta: state.Delta{Size: pages * state.PageSize, Pages: []state.DirtyPage{{Index: idx, Data: pageOf(b)}}}}}
}

// syncFaultChild commits A, then B with the meta page's sync failing,
// then C (what a caller told B failed commits next: built on A), and
// says what it saw.
func syncFaultChild(t *testing.T) {
	s, err := Open(os.Getenv("CORDON_AUDIT_DIR"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(faultChange(1, 0, 0xA1)); err != nil {
		t.Fatal(err)
	}
	arm := syncFaults(t)
	arm(2) // the next commit's second fdatasync: after its meta page is written
	errB := s.Commit(faultChange(2, 1, 0xB2))
	fmt.Printf("B %v\n", errB)
	if c, err := s.Load([]byte{1}); err == nil {
		fmt.Printf("SEEN %d\n", c.Meta.Version)
		c.Release()
	}
	errC := s.Commit(faultChange(3, 2, 0xC3))
	fmt.Printf("C %v\n", errC)
	if err := s.Close(); err != nil {
		fmt.Printf("CLOSE %v\n", err)
	}
	os.Exit(0)
}

// A commit whose meta page's sync fails returns an error; the store must
// then not show it, nor commit anything over it: either the transaction
// is not what the process sees (and later commits go on from before it),
// or the store refuses every later commit until it is opened again (its
// state unknown). What the next Open finds is then one commit or the
// other whole, never a later commit laid over one its caller was told
// failed.
func TestFailedSyncIsNotBuiltOn(t *testing.T) {
	if os.Getenv("CORDON_AUDIT_CHILD") == "syncfault" {
		syncFaultChild(t)
		return
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter checks the x86-64 syscall numbers")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFailedSyncIsNotBuiltOn$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CORDON_AUDIT_CHILD=syncfault", "CORDON_AUDIT_DIR="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	lines := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		lines[k] = v
	}
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil || lines["B"] == "" {
		t.Fatalf("child: %v; output:\n%s", err, out)
	}
	t.Logf("commit B (meta sync failed): %s; the process then saw version %s; commit C: %s", lines["B"], lines["SEEN"], lines["C"])
	if lines["B"] == "<nil>" {
		t.Fatal("the failed sync did not fail commit B: the fault was not injected")
	}
	s := openTest(t, dir)
	defer s.Close()
	c, err := s.Load([]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	has := func(i uint64) bool { return c.Heap.Page(i) != nil }
	t.Logf("after reopening: version %d, pages A %v, B %v, C %v", c.Meta.Version, has(0), has(1), has(2))
	if lines["SEEN"] == "2" && lines["C"] == "<nil>" {
		t.Errorf("commit B failed, yet the store showed it and accepted commit C over it")
	}
	if has(1) && has(2) {
		t.Fatalf("the store holds commit C laid over commit B, whose Commit failed: version %d", c.Meta.Version)
	}
}
