package fdpass

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const testFdName = "cordon-fdpass-test"

// open counts this process's descriptors of the memfds named testFdName.
func open(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "/memfd:"+testFdName) {
			n++
		}
	}
	return n
}

// received makes n descriptors as a receive would have installed them,
// and the SCM_RIGHTS message that carried them.
func received(t *testing.T, n int) []byte {
	t.Helper()
	fds := make([]int, n)
	for i := range fds {
		fd, err := unix.MemfdCreate(testFdName, unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		fds[i] = fd
	}
	return unix.UnixRights(fds...)
}

// header is a control message header (x86-64 and the other 64-bit
// layouts: length, level, type).
func header(length uint64, level, typ int32) []byte {
	b := binary.NativeEndian.AppendUint64(nil, length)
	b = binary.NativeEndian.AppendUint32(b, uint32(level))
	return binary.NativeEndian.AppendUint32(b, uint32(typ))
}

// Control data Take cannot read whole is refused, and every descriptor
// in it (before the fault too) is closed: none is left to leak.
func TestTakeClosesOnHostileControlData(t *testing.T) {
	if unix.SizeofCmsghdr != 16 {
		t.Skip("the hand-built headers are of the 64-bit layout")
	}
	before := open(t)
	cases := map[string]func() []byte{
		"header overruns":  func() []byte { return append(received(t, 2), header(1<<20, unix.SOL_SOCKET, unix.SCM_RIGHTS)...) },
		"header too short": func() []byte { return append(received(t, 2), header(4, unix.SOL_SOCKET, unix.SCM_RIGHTS)...) },
		"not SCM_RIGHTS": func() []byte {
			return append(received(t, 3), header(unix.SizeofCmsghdr, unix.SOL_SOCKET, unix.SCM_CREDENTIALS)...)
		},
		"bytes after": func() []byte { return append(received(t, 1), 1, 2, 3) },
		"partial fd": func() []byte {
			b := received(t, 1) // its padding read as part of it
			binary.NativeEndian.PutUint64(b, uint64(unix.CmsgLen(4+2)))
			return b
		},
		"rights then credentials": func() []byte {
			creds := unix.UnixCredentials(&unix.Ucred{Pid: 1})
			return append(append(received(t, 1), creds...), received(t, 1)...)
		},
	}
	for name, oob := range cases {
		fds, err := Take(oob())
		if err == nil || fds != nil {
			t.Errorf("%s: Take = %v, %v; want an error and nothing", name, fds, err)
		}
		if n := open(t) - before; n != 0 {
			t.Fatalf("%s: %d descriptors left open (%v)", name, n, err)
		}
	}

	// What is whole is taken whole, in order, across messages.
	oob := append(received(t, 2), received(t, 3)...)
	fds, err := Take(oob)
	if err != nil || len(fds) != 5 || open(t)-before != 5 {
		t.Fatalf("Take = %v, %v with %d open", fds, err, open(t)-before)
	}
	Close(fds)
	if n := open(t) - before; n != 0 {
		t.Fatalf("Close left %d open", n)
	}
	if fds, err := Take(nil); fds != nil || err != nil {
		t.Fatalf("no control data: %v %v", fds, err)
	}
}
