package boundary

import (
	"errors"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// PageWait bounds the time the host waits for an answer's pages after its
// header, counting only the time its reader is blocked on an empty socket:
// the sandbox had nothing in flight while the host was ready to read. The
// time the host spends elsewhere (filing the pages it received, waiting
// for memory, descheduled under load or the race detector) is not counted,
// so a slow host does not make an honest sandbox late; a sandbox that
// stalls or dribbles its pages is still cut off once its waits add up to
// the budget, however they are spread. Arm sets the budget (the host's
// Reserve, once the pages are reserved); until then the connection's own
// deadline is in force. It is used by the goroutine that reads the answer.
type PageWait struct {
	armed   bool
	left    time.Duration
	waited  time.Duration
	stopped func() bool
	// AfterPacket, if set, runs after each packet of pages is filed: tests
	// slow the host's reading with it.
	AfterPacket func()
}

// Arm gives the pages budget of the host's waiting. The caller has lifted
// the connection's read deadline (or set one in the past, to end the
// exchange at once). stopped, if set, reports that the exchange was
// abandoned (its context ended): a deadline the reader sets is then put in
// the past, so a deadline set concurrently to stop the read is never
// undone.
func (w *PageWait) Arm(budget time.Duration, stopped func() bool) {
	w.armed, w.left, w.waited, w.stopped = true, budget, 0, stopped
}

// Waited is the time the host's reader has been blocked for the pages since
// Arm.
func (w *PageWait) Waited() time.Duration { return w.waited }

// setDeadline sets c's read deadline to t, or in the past if the exchange
// was abandoned: checked after setting, so a concurrent stop (which sets
// it in the past after its context ended) wins either way.
func (w *PageWait) setDeadline(c *net.UnixConn, t time.Time) {
	_ = c.SetReadDeadline(t)
	if w.stopped != nil && w.stopped() {
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
}

func (w *PageWait) spend(d time.Duration) {
	w.left -= d
	w.waited += d
}

// readPaced is readPacket for an answer's pages, the time the host is
// blocked waiting for them counted against w (unarmed or nil: readPacket).
// A read that finds a packet queued costs what readPacket costs: one
// recvmsg, no clock read, no deadline change. Only a read that finds the
// socket empty notes the time and sets the read deadline to the budget
// left, and clears it once woken, so the deadline never runs while the
// host is busy elsewhere.
func (c *Conn) readPaced(w *PageWait) (*packet, error) {
	if w == nil || !w.armed || c.pending != nil || c.pendingErr != nil {
		return c.readPacket()
	}
	rc, err := c.c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		n, oobn, flags int
		rerr           error
		since          time.Time // when the socket was found empty; zero: not waiting
	)
	err = rc.Read(func(fd uintptr) bool {
		if !since.IsZero() {
			w.spend(time.Since(since))
			since = time.Time{}
			w.setDeadline(c.c, time.Time{})
		}
		for {
			// As net.UnixConn.ReadMsgUnix receives: descriptors close-on-exec.
			n, oobn, flags, _, rerr = unix.Recvmsg(int(fd), c.rbuf, c.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
			if !errors.Is(rerr, unix.EINTR) {
				break
			}
		}
		if errors.Is(rerr, unix.EAGAIN) {
			since = time.Now()
			w.setDeadline(c.c, since.Add(w.left))
			return false // wait for readability, or the deadline
		}
		return true
	})
	if !since.IsZero() {
		// The wait ended without a packet: its deadline, or the exchange
		// was stopped.
		w.spend(time.Since(since))
	}
	if err != nil {
		return nil, &net.OpError{Op: "read", Net: "unixpacket", Err: err}
	}
	if rerr != nil {
		rerr = &net.OpError{Op: "read", Net: "unixpacket", Err: os.NewSyscallError("recvmsg", rerr)}
	}
	return c.packetOf(n, oobn, flags, rerr)
}
