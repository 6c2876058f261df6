package host

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// A commit whose last sync fails (after bbolt wrote its meta page) at the
// host: the message is rejected, yet the store reads the transaction as
// committed. See store/audit_syncfault_test.go for the mechanism; here
// the fault is injected the same way, in a child node.

// syncFaults installs a seccomp filter on every thread of this process
// that sends fdatasync to a listener in it, and returns arm: arm(n) fails
// the n-th fdatasync from then on with EIO (the others run).
func syncFaults(t *testing.T) (arm func(n int64)) {
	t.Helper()
	runtime.LockOSThread()
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
		ld(4), jeq(unix.AUDIT_ARCH_X86_64, 0, 3),
		ld(0), jeq(unix.SYS_FDATASYNC, 0, 1),
		ret(unix.SECCOMP_RET_USER_NOTIF),
		ret(unix.SECCOMP_RET_ALLOW),
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	fd, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC|unix.SECCOMP_FILTER_FLAG_TSYNC_ESRCH|unix.SECCOMP_FILTER_FLAG_NEW_LISTENER, uintptr(unsafe.Pointer(&fprog)))
	if e != 0 {
		t.Skipf("install a seccomp filter with a listener: %v", e)
	}
	var countdown atomic.Int64
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

// syncFaultNodeChild sends cycles from relay to wallet twice, the first
// commit's last sync failing, and says what each got.
func syncFaultNodeChild(t *testing.T, home string) {
	ids := strings.Split(os.Getenv("CORDON_CRASH_IDS"), ",")
	relay, err := principal.FromText(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	wallet, err := principal.FromText(ids[1])
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(crashCfg(home), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, home: home, node: n}
	f.query(relay, "self", noArgs) // loaded: nothing to commit on the way
	f.query(wallet, "total", noArgs)
	arm := syncFaults(t)
	arm(2) // the relay's commit: its meta page's sync
	for _, which := range []string{"FIRST", "SECOND"} {
		_, err := n.Update(t.Context(), Message{Canister: relay, Method: "sendCycles", Arg: sendCyclesArg(wallet, durSend), Caller: user})
		fmt.Printf("%s %v\n", which, err)
	}
	if err := n.Close(); err != nil {
		fmt.Printf("CLOSE %v\n", err)
	}
	os.Exit(0)
}

// A message whose commit's last sync fails is rejected; whatever the
// node does next, the store it leaves must keep the cycles count: the
// failed commit's cycles in flight must not stay recorded under a balance
// that later commits wrote without them (a restart would return them to
// the caller, making cycles from nothing).
func TestFailedSyncKeepsCyclesConserved(t *testing.T) {
	if home := os.Getenv("CORDON_CRASH_HOME"); home != "" {
		syncFaultNodeChild(t, home)
		return
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter checks the x86-64 syscall numbers")
	}
	f := crashFixture(t)
	relay := f.install(module(t, corpusDir, "relay"), noArgs)
	wallet := f.install(module(t, corpusDir, "wallet"), noArgs)
	f.storeConserved()
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFailedSyncKeepsCyclesConserved$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CORDON_CRASH_HOME="+f.home, "CORDON_CRASH_IDS="+relay.String()+","+wallet.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	f.open()
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "SECOND") {
		t.Fatalf("child: %v; output:\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
	if strings.Contains(string(out), "FIRST <nil>") {
		t.Fatal("the failed sync did not fail the first message's commit: the fault was not injected")
	}
	f.storeConserved()
	f.checkConservation()
}
