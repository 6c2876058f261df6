package sandbox

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// lyingReady is the scenario of a sandbox that lies in its ready report:
// sandboxMain runs it instead of confine.Enter (which sends the honest
// report), with the lie's name after it.
const lyingReady = "lying-ready"

// lyingFdName names the memfds the lies send, so that the host's test
// counts exactly those among its descriptors.
const lyingFdName = "cordon-lying-ready"

// readyLies are the packets a lying sandbox sends for its ready report:
// their bytes and how many descriptors come with them.
var readyLies = map[string]struct {
	data string
	fds  int
}{
	// An empty packet: Go reports io.EOF for it on a SOCK_SEQPACKET
	// socket, though the kernel installed its descriptors in the host.
	"empty": {"", 2},
	// More descriptors than the host's control buffer holds
	// (MSG_CTRUNC): those that fit are installed.
	"too many": {confine.ReadyPrefix + " 0xffffffffffffffff 0", 6},
	"two":      {confine.ReadyPrefix + " 0xffffffffffffffff 0", 2},
	// One descriptor, but not a seccomp listener (or none expected).
	"not a listener": {confine.ReadyPrefix + " 0xffffffffffffffff 0", 1},
	"failure":        {confine.FormatFailure(confine.LPivot, "pivot_root", unix.EINVAL), 2},
	"malformed":      {"cordon-ready and then some", 2},
	"too long":       {confine.ReadyPrefix + " " + strings.Repeat("0", confine.MaxReady) + " 0", 2},
}

// lieReady sends the lie named by args[0] on the IPC socket (fd 3), then
// waits for the host to hang up or kill it.
func lieReady(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "lying-ready: which lie?")
		return 4
	}
	lie, ok := readyLies[args[0]]
	if !ok {
		fmt.Fprintln(os.Stderr, "lying-ready: no lie", args[0])
		return 4
	}
	fds := make([]int, lie.fds)
	for i := range fds {
		fd, err := unix.MemfdCreate(lyingFdName, unix.MFD_CLOEXEC)
		if err != nil {
			fmt.Fprintln(os.Stderr, "lying-ready: memfd:", err)
			return 3
		}
		fds[i] = fd
	}
	oob := unix.UnixRights(fds...)
	// sendmsg itself: x/sys's Sendmsg sends a byte of its own with
	// control data and no data on anything but a datagram socket.
	var h unix.Msghdr
	var iov unix.Iovec
	data := []byte(lie.data)
	if len(data) > 0 {
		iov.Base = &data[0]
		iov.SetLen(len(data))
		h.Iov = &iov
		h.SetIovlen(1)
	}
	h.Control = &oob[0]
	h.SetControllen(len(oob))
	if _, _, e := unix.Syscall(unix.SYS_SENDMSG, 3, uintptr(unsafe.Pointer(&h)), unix.MSG_NOSIGNAL); e != 0 {
		fmt.Fprintln(os.Stderr, "lying-ready: sendmsg:", e)
		return 3
	}
	var b [1]byte
	_, _ = unix.Read(3, b[:])
	return 0
}

// lyingDescriptors counts the host's descriptors of the lies' memfds.
func lyingDescriptors(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "/memfd:"+lyingFdName) {
			n++
		}
	}
	return n
}

// Whatever a sandbox sends with its ready report, Start fails and leaves
// none of the descriptors that came with it open in the host: the kernel
// installs them before the host has read a byte. An empty packet leaked
// them (Go reports it as io.EOF, and the host read no control data after
// an error), so a sandbox that lied at every start took two of the host's
// descriptors each time.
func TestReadyLiesLeakNoDescriptors(t *testing.T) {
	const rounds = 10
	names := make([]string, 0, len(readyLies))
	for name := range readyLies {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			before := lyingDescriptors(t)
			for range rounds {
				err := startFails(t, Spec{Label: "liar", Args: []string{lyingReady, name}}, startOpts{})
				if name == "too many" && !strings.Contains(err.Error(), "more descriptors than it may carry") {
					t.Errorf("too many descriptors: %v", err)
				}
			}
			if n := lyingDescriptors(t); n != before {
				t.Fatalf("%d rounds of a sandbox that lies with its ready report left %d of its descriptors open in the host", rounds, n-before)
			}
		})
	}
}
