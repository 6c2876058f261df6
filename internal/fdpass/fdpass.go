// Package fdpass takes the descriptors that came with a message on a unix
// socket out of the control data recvmsg wrote (SCM_RIGHTS).
//
// The kernel installs every descriptor of a message in the receiving
// process before recvmsg returns, whatever the message says and whatever
// its receiver then makes of it: a receiver that drops one on any path
// (control data it cannot read, an error for the data, more descriptors
// than it expects) leaks it, and a peer that sends them again and again
// exhausts the receiver's descriptor table. Take returns all of them, or
// closes all of them.
package fdpass

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// Take returns the descriptors in oob, the control data one recvmsg wrote
// (its first oobn bytes), in order. Control data it cannot read whole (a
// header that overruns it, a message other than SCM_RIGHTS, bytes after
// the last message) is an error, and then Take has closed every
// descriptor it found and returns none. It does not look at the flags
// recvmsg returned: a caller that got MSG_CTRUNC has what fitted, which it
// must Close.
func Take(oob []byte) ([]int, error) {
	var fds []int
	var bad error
	for len(oob) > 0 {
		if len(oob) < unix.CmsgLen(0) {
			bad = fmt.Errorf("%d bytes after the last message", len(oob))
			break
		}
		// One message at a time, so that the descriptors of those before
		// a header that does not parse are closed with the rest.
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			bad = fmt.Errorf("a message header that does not fit its %d bytes: %w", len(oob), err)
			break
		}
		oob = rest
		if h.Level != unix.SOL_SOCKET || h.Type != unix.SCM_RIGHTS {
			// Its length is sound: the messages after it are read too,
			// for their descriptors.
			bad = fmt.Errorf("a message of level %d type %d, not SCM_RIGHTS", h.Level, h.Type)
			continue
		}
		for ; len(data) >= 4; data = data[4:] {
			fds = append(fds, int(int32(binary.NativeEndian.Uint32(data))))
		}
		if len(data) != 0 {
			bad = fmt.Errorf("SCM_RIGHTS with %d bytes that are not a whole descriptor", len(data))
		}
	}
	if bad != nil {
		Close(fds)
		return nil, fmt.Errorf("control data: %w", bad)
	}
	return fds, nil
}

// Close closes fds (what Take returned), ignoring what cannot be a
// descriptor.
func Close(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
	}
}
