package sandbox

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	// inflight_flood: put descriptors in flight on the IPC socket (the host
	// does not read them): 250 copies of fd 2 in one SCM_RIGHTS message,
	// charged to the sandbox's host user, well over its RLIMIT_NOFILE.
	scenarios["inflight_flood"] = func(c *child) int {
		fds := make([]int, 250)
		for i := range fds {
			fds[i] = 2
		}
		if _, _, err := c.conn.WriteMsgUnix([]byte("flood"), unix.UnixRights(fds...), nil); err != nil {
			c.send("failed: %s", errText(err))
		}
		select {}
	}
}

// hostUIDOf reads a live process's real uid on the host.
func hostUIDOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, err := strconv.Atoi(f[0])
				if err == nil {
					return n
				}
			}
		}
	}
	t.Fatal("no Uid line")
	return -1
}

// waitReadable blocks until the host end of p's socket has a packet queued
// (peeking: it stays in flight).
func waitReadable(t *testing.T, p *Process) {
	t.Helper()
	rc, err := p.Conn().SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	_ = p.Conn().SetReadDeadline(time.Now().Add(30 * time.Second))
	defer p.Conn().SetReadDeadline(time.Time{})
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return !errors.Is(err, unix.EAGAIN)
	})
	if err != nil {
		t.Fatalf("waiting for the flood: %v", err)
	}
}

// TestHostIDsPerSandbox: with a pool of host ids, each live sandbox is a
// host user of its own, so one that exhausts a per-user kernel limit (here
// descriptors in flight, which makes the kernel refuse SCM_RIGHTS from that
// user) does not stop the next sandbox from starting: its ready packet
// carries the seccomp listener as SCM_RIGHTS. Two sandboxes sharing an id
// show the attack works.
func TestHostIDsPerSandbox(t *testing.T) {
	if getAvailability().rootless {
		t.Skip("a rootless host cannot map other ids: every sandbox is its uid (cordon doctor says so)")
	}
	// An id range nobody else on this machine uses (other test runs use 65534).
	base := uint32(3_700_000 + os.Getpid()%1000*10)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	refused := make(chan string, 16) // stderr lines about ETOOMANYREFS
	startOn := func(ids *IDPool, scenario string) (*Process, error) {
		return Start(ctx, Spec{Label: "ids-" + scenario, Args: []string{scenario}, Strict: true, HostIDs: ids,
			Stderr: func(l string) {
				t.Logf("sandbox: %s", l)
				if strings.Contains(l, "too many references") {
					select {
					case refused <- l:
					default:
					}
				}
			}})
	}
	stop := func(p *Process) {
		p.Kill()
		p.Wait()
		p.Conn().Close() // releases what is still in flight
	}

	// Shared: two pools handing out the same single id.
	shared := func() *IDPool {
		p, err := NewIDPool(base, base)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	flooder, err := startOn(shared(), "inflight_flood")
	if err != nil {
		t.Fatal(err)
	}
	waitReadable(t, flooder)
	if _, err := startOn(shared(), "echo"); err == nil {
		stop(flooder)
		t.Fatal("with a shared id the flood should stop the next sandbox from starting")
	} else {
		t.Logf("shared id %d: %v", base, err)
	}
	// Why: its ready packet was refused (the line reaches the host's log
	// reader when the process is gone, maybe after Start returned).
	select {
	case l := <-refused:
		t.Logf("refused: %s", l)
	case <-ctx.Done():
		stop(flooder)
		t.Fatal("the second sandbox failed, but not for ETOOMANYREFS")
	}
	stop(flooder)

	// Own ids.
	pool, err := NewIDPool(base+1, base+4)
	if err != nil {
		t.Fatal(err)
	}
	flooder, err = startOn(pool, "inflight_flood")
	if err != nil {
		t.Fatal(err)
	}
	defer stop(flooder)
	waitReadable(t, flooder)
	next, err := startOn(pool, "echo")
	if err != nil {
		t.Fatalf("a flood by another sandbox stopped this one from starting: %v", err)
	}
	roundTrip(t, next, "still here")
	u1, u2 := hostUIDOf(t, flooder.Pid()), hostUIDOf(t, next.Pid())
	if u1 == u2 || u1 != int(flooder.HostUID()) || u2 != int(next.HostUID()) || u1 < int(base+1) || u2 > int(base+4) {
		t.Fatalf("host uids %d and %d (reported %d, %d), pool %s", u1, u2, flooder.HostUID(), next.HostUID(), pool)
	}
	if d := next.Layers()[LayerUserNS].Detail; !strings.Contains(d, "its own") {
		t.Errorf("userns detail: %s", d)
	}
	t.Logf("host uids %d and %d", u1, u2)
	if pool.InUse() != 2 {
		t.Fatalf("%d ids in use", pool.InUse())
	}
	stop(next)
	if pool.InUse() != 1 {
		t.Fatalf("%d ids in use after one sandbox ended", pool.InUse())
	}
	// Exhausted: refused, and nothing leaks.
	small, _ := NewIDPool(base+5, base+5)
	a, err := startOn(small, "echo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := startOn(small, "echo"); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second sandbox on a one-id pool: %v", err)
	}
	stop(a)
	if small.InUse() != 0 {
		t.Fatal("id not returned")
	}
}

func TestIDPool(t *testing.T) {
	for _, bad := range []string{"", "5", "0-10", "10-5", "1-4294967295", "a-b", "-3"} {
		if _, err := ParseIDRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	p, err := ParseIDRange("100000-100002")
	if err != nil {
		t.Fatal(err)
	}
	var got []uint32
	for i := 0; i < 3; i++ {
		id, ok := p.take()
		if !ok {
			t.Fatal("pool empty early")
		}
		got = append(got, id)
	}
	if _, ok := p.take(); ok {
		t.Fatal("a fourth id from a pool of three")
	}
	p.put(got[1])
	if id, ok := p.take(); !ok || id != got[1] {
		t.Fatalf("freed id not reused: %d %v", id, ok)
	}
}
