package boundary

import (
	"errors"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInterrupted is WatchIdle's answer when the host stopped the watch
// (StopWatch) to start an exchange.
var ErrInterrupted = errors.New("boundary: idle watch interrupted")

// WatchIdle blocks while the sandbox is idle, that is while the host has no
// request pending on the connection, and returns as soon as the sandbox
// sends anything or hangs up: a *Violation (VUnsolicited) for a packet,
// with or without descriptors, or ErrClosed when it closed its end (exited).
// Nothing is consumed: descriptors stay queued on the host's end and are
// released when the caller closes the connection, which it must do (the
// sandbox is either dead or broke the protocol). Between messages a sandbox
// has nothing to say, so anything queued while idle is hostile: a packet
// that pins memory or descriptors (memfds it sent before exiting) on the
// host until its canister's next message.
//
// StopWatch ends the watch (ErrInterrupted); the caller must wait for
// WatchIdle to return before using the connection, then call ResumeIO.
func (c *Conn) WatchIdle() error {
	n, err := c.peek()
	switch {
	case err != nil:
		return err
	case n == 0:
		// SOCK_SEQPACKET: end of file (the protocol never sends empty
		// packets; an empty one is as good as a hang-up).
		return ErrClosed
	}
	return violation(VUnsolicited, "a %d-byte packet while no request was pending", n)
}

// StopWatch interrupts a WatchIdle in progress (or makes the next one
// return at once).
func (c *Conn) StopWatch() { _ = c.c.SetReadDeadline(time.Unix(1, 0)) }

// ResumeIO clears what StopWatch set, once WatchIdle has returned.
func (c *Conn) ResumeIO() { _ = c.c.SetReadDeadline(time.Time{}) }

// AwaitReadable blocks until a packet (or the peer's hang-up) arrives on
// the connection, and receives that one packet: the next Recv (or
// Inflight.Next) starts from it without another system call, and checks
// it there. It returns nil when there is something to read, ErrInterrupted
// when the read deadline passed (StopWatch, or a watchdog) with nothing
// received, or the socket's error. Unlike WatchIdle it judges nothing:
// the caller has a request pending and reads what came through the usual,
// validating path. A goroutine waiting for its own answer uses it to read
// that answer itself instead of leaving it to a reader goroutine, and can
// still give up (a deadline) without leaving a message half read: what it
// received waits for whoever reads next. (It used to peek, then read what
// it had peeked: one receive call more per answer, which on a virtual
// machine costs microseconds.)
func (c *Conn) AwaitReadable() error {
	if c.pending != nil || c.pendingErr != nil {
		return nil
	}
	rc, err := c.c.SyscallConn()
	if err != nil {
		return err
	}
	var n, oobn, flags int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		// As net.UnixConn.ReadMsgUnix receives: descriptors close-on-exec.
		n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), c.rbuf, c.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		return !errors.Is(rerr, unix.EAGAIN) && !errors.Is(rerr, unix.EINTR)
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ErrInterrupted
	}
	if err != nil {
		return err
	}
	if rerr != nil {
		rerr = &net.OpError{Op: "read", Net: "unixpacket", Err: os.NewSyscallError("recvmsg", rerr)}
	}
	c.pending, c.pendingErr = c.packetOf(n, oobn, flags, rerr)
	return nil
}

// peek waits until a packet (or the peer's hang-up) is queued and returns
// the size of the first one (0: end of file) without consuming it. It
// peeks one byte without a control buffer: no descriptor is installed in
// the host, nothing leaves the queue. A passed read deadline is
// ErrInterrupted.
func (c *Conn) peek() (int, error) {
	rc, err := c.c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var got error
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		var rerr error
		n, _, rerr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT|unix.MSG_TRUNC)
		if errors.Is(rerr, unix.EAGAIN) || errors.Is(rerr, unix.EINTR) {
			return false // nothing yet: wait for readability
		}
		got = rerr
		return true
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, ErrInterrupted
	}
	if err != nil {
		return 0, err
	}
	return n, got
}
