package boundary

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func hostFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// fdsLinkingTo counts this process's descriptors whose link starts with
// prefix.
func fdsLinkingTo(t *testing.T, prefix string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// What a sandbox sends while the host has nothing pending ends the watch as
// a violation, without consuming it or installing its descriptors in the
// host; a hang-up ends it as ErrClosed; StopWatch ends it without touching
// the queue.
func TestWatchIdle(t *testing.T) {
	t.Run("packet", func(t *testing.T) {
		host, sb := pair(t)
		res := make(chan error, 1)
		go func() { res <- host.WatchIdle() }()
		if err := sb.SendLog(0, LogInfo, "while idle"); err != nil {
			t.Fatal(err)
		}
		var v *Violation
		if err := <-res; !errors.As(err, &v) || v.Kind != VUnsolicited {
			t.Fatalf("want an unsolicited-message violation, got %v", err)
		}
		// Not consumed: the packet is still there to read.
		if _, err := host.Recv(Accept{KindLog: {MaxBody: 1024}}); err != nil {
			t.Fatalf("peeked packet gone: %v", err)
		}
	})
	t.Run("descriptors", func(t *testing.T) {
		host, sb := pair(t)
		fds0 := hostFDs(t)
		var memfds []int
		for i := 0; i < 8; i++ {
			fd, err := unix.MemfdCreate("sent", unix.MFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			memfds = append(memfds, fd)
		}
		if _, _, err := sb.Raw().WriteMsgUnix([]byte("x"), unix.UnixRights(memfds...), nil); err != nil {
			t.Fatal(err)
		}
		if n := fdsLinkingTo(t, "/memfd:sent"); n != len(memfds) {
			t.Fatalf("%d descriptors named memfd:sent seen, %d open", n, len(memfds))
		}
		for _, fd := range memfds {
			unix.Close(fd)
		}
		var v *Violation
		if err := host.WatchIdle(); !errors.As(err, &v) || v.Kind != VUnsolicited {
			t.Fatalf("want an unsolicited-message violation, got %v", err)
		}
		// The sent memfds are named "sent": any in this process's table
		// came from the peek (counting all descriptors would also count
		// those other goroutines open and close meanwhile).
		if n := fdsLinkingTo(t, "/memfd:sent"); n != 0 {
			t.Fatalf("host holds %d of the sandbox's descriptors (%d in all, %d before): the peek installed them", n, hostFDs(t), fds0)
		}
	})
	t.Run("hang-up", func(t *testing.T) {
		host, sb := pair(t)
		res := make(chan error, 1)
		go func() { res <- host.WatchIdle() }()
		sb.Raw().Close()
		if err := <-res; !errors.Is(err, ErrClosed) {
			t.Fatalf("want ErrClosed, got %v", err)
		}
	})
	t.Run("stopped", func(t *testing.T) {
		host, sb := pair(t)
		res := make(chan error, 1)
		go func() { res <- host.WatchIdle() }()
		host.StopWatch()
		if err := <-res; !errors.Is(err, ErrInterrupted) {
			t.Fatalf("want ErrInterrupted, got %v", err)
		}
		host.ResumeIO()
		// The connection works as before, both ways.
		go func() { _ = sb.Send(&Msg{Kind: KindPong, ID: 7}) }()
		if err := host.AwaitPong(7, nil); err != nil {
			t.Fatal(err)
		}
		// Stopped before it started: returns at once.
		host.StopWatch()
		if err := host.WatchIdle(); !errors.Is(err, ErrInterrupted) {
			t.Fatalf("want ErrInterrupted, got %v", err)
		}
	})
}

// ENOBUFS from sendmsg (no buffer under memory pressure) is retried, not
// fatal: a few in a row and the message arrives intact; if it persists the
// write gives up after NoBufsBudget with the error; a deadline that passes
// (the watchdog, a cancelled context) ends the retries.
func TestWriteRetriesENOBUFS(t *testing.T) {
	inject := func(c *Conn, times int64) *atomic.Int64 {
		var calls atomic.Int64
		real := c.sendmsg
		c.sendmsg = func(b, oob []byte) (int, int, error) {
			if calls.Add(1) <= times {
				return 0, 0, unix.ENOBUFS
			}
			return real(b, oob)
		}
		return &calls
	}
	t.Run("transient", func(t *testing.T) {
		host, sb := pair(t)
		calls := inject(sb, 5)
		body := make([]byte, 3*MaxPacket) // several packets
		for i := range body {
			body[i] = byte(i)
		}
		errc := make(chan error, 1)
		go func() {
			err := sb.Send(&Msg{Kind: KindCompiled, ID: 3, Body: body})
			if err != nil {
				sb.Raw().Close() // the receiver must not wait for what never comes
			}
			errc <- err
		}()
		m, rerr := host.Recv(Accept{KindCompiled: {MaxBody: uint64(len(body))}})
		if err := <-errc; err != nil {
			t.Fatalf("send failed after transient ENOBUFS: %v", err)
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
		if !bytes.Equal(m.Body, body) {
			t.Fatal("message damaged")
		}
		if calls.Load() < 6 {
			t.Fatalf("%d sendmsg calls: the errors were not injected", calls.Load())
		}
	})
	t.Run("persistent", func(t *testing.T) {
		_, sb := pair(t)
		inject(sb, 1<<62)
		t0 := time.Now()
		err := sb.SendLog(1, LogInfo, "x")
		if !errors.Is(err, unix.ENOBUFS) {
			t.Fatalf("want ENOBUFS in the end, got %v", err)
		}
		if d := time.Since(t0); d < NoBufsBudget {
			t.Fatalf("gave up after %v, before the budget", d)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		_, sb := pair(t)
		var calls atomic.Int64
		sb.sendmsg = func(b, oob []byte) (int, int, error) {
			if calls.Add(1) == 3 {
				_ = sb.Raw().SetWriteDeadline(time.Unix(1, 0)) // the watchdog fires
			}
			if calls.Load() < 3 {
				return 0, 0, unix.ENOBUFS
			}
			return sb.Raw().WriteMsgUnix(b, oob, nil)
		}
		err := sb.SendLog(1, LogInfo, "x")
		if !errors.Is(err, os.ErrDeadlineExceeded) || calls.Load() != 3 {
			t.Fatalf("want the deadline's error at the third attempt, got %v after %d", err, calls.Load())
		}
	})
}

// AwaitReadable waits for the next packet and receives it (one system call
// instead of a peek and a read), and the next receive starts from it: a
// message of several packets arrives whole, the refused descriptors of a
// packet it received are closed, and a passed deadline ends the wait with
// nothing received.
func TestAwaitReadable(t *testing.T) {
	t.Run("first packet received", func(t *testing.T) {
		host, sb := pair(t)
		body := make([]byte, MaxPacket+100) // two packets
		for i := range body {
			body[i] = byte(i * 7)
		}
		go func() { _ = sb.Send(&Msg{Kind: KindCompiled, ID: 5, Body: body}) }()
		if err := host.AwaitReadable(); err != nil {
			t.Fatal(err)
		}
		// The first packet has left the socket: the continuation is next.
		var b [1]byte
		rc, err := host.Raw().SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var kind Kind
		var perr error
		_ = rc.Read(func(fd uintptr) bool {
			_, _, perr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			kind = Kind(b[0])
			return !errors.Is(perr, unix.EAGAIN) // the sender's next packet may not be there yet
		})
		if perr != nil || kind != KindCont {
			t.Fatalf("next queued packet: %s (%v), want the continuation: AwaitReadable left the first one queued", kind, perr)
		}
		m, err := host.Recv(Accept{KindCompiled: {MaxBody: uint64(len(body))}})
		if err != nil {
			t.Fatal(err)
		}
		if m.ID != 5 || !bytes.Equal(m.Body, body) {
			t.Fatal("message damaged")
		}
	})
	t.Run("descriptors refused", func(t *testing.T) {
		host, sb := pair(t)
		var memfds []int
		for i := 0; i < 2; i++ {
			fd, err := unix.MemfdCreate("awaited", unix.MFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			memfds = append(memfds, fd)
		}
		hdr := make([]byte, HeaderSize)
		putHeader(hdr, KindPong, 2, 9, 0)
		if _, _, err := sb.Raw().WriteMsgUnix(hdr, unix.UnixRights(memfds...), nil); err != nil {
			t.Fatal(err)
		}
		for _, fd := range memfds {
			unix.Close(fd)
		}
		if err := host.AwaitReadable(); err != nil {
			t.Fatal(err)
		}
		var v *Violation
		if err := host.AwaitPong(9, nil); !errors.As(err, &v) || v.Kind != VDescriptors {
			t.Fatalf("want a descriptors violation, got %v", err)
		}
		if n := fdsLinkingTo(t, "/memfd:awaited"); n != 0 {
			t.Fatalf("host still holds %d of the refused descriptors", n)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		host, sb := pair(t)
		host.StopWatch()
		if err := host.AwaitReadable(); !errors.Is(err, ErrInterrupted) {
			t.Fatalf("want ErrInterrupted, got %v", err)
		}
		host.ResumeIO()
		go func() { _ = sb.Send(&Msg{Kind: KindPong, ID: 4}) }()
		if err := host.AwaitReadable(); err != nil {
			t.Fatal(err)
		}
		if err := host.AwaitReadable(); err != nil { // again: what it holds is still there
			t.Fatal(err)
		}
		if err := host.AwaitPong(4, nil); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("hang-up", func(t *testing.T) {
		host, sb := pair(t)
		sb.Raw().Close()
		if err := host.AwaitReadable(); err != nil {
			t.Fatal(err)
		}
		if _, err := host.Recv(Accept{KindPong: {}}); !errors.Is(err, ErrClosed) {
			t.Fatalf("want ErrClosed, got %v", err)
		}
	})
}
