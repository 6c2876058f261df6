package host

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/pkg/principal"
	"golang.org/x/sys/unix"
)

// slowPages is a relay act (relayExecutorWith) making the sandbox of one
// canister a compromised one while armed: it sends its answer's header,
// then holds its pages back until freed.
type slowPages struct {
	canister atomic.Pointer[string]
	armed    atomic.Bool
	reached  chan struct{} // a stall began
	release  chan struct{}
	freed    sync.Once
}

func newSlowPages() *slowPages {
	return &slowPages{reached: make(chan struct{}, 16), release: make(chan struct{})}
}

func (s *slowPages) act(label string, pkt []byte) bool {
	if id := s.canister.Load(); id != nil && *id == label && s.armed.Load() && isPages(pkt) {
		select {
		case s.reached <- struct{}{}:
		default:
		}
		<-s.release
	}
	return true
}

// free lets the held pages go (and all later ones).
func (s *slowPages) free() { s.freed.Do(func() { close(s.release) }) }

// waitingCount is the number of messages waiting.
func (b *pageBudget) waitingCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.waiting)
}

// isPages reports whether pkt carries pages of an answer.
func isPages(pkt []byte) bool { return len(pkt) > 0 && boundary.Kind(pkt[0]) == boundary.KindPages }

// notifyWaits reports on the returned channel each message that starts
// waiting for execution memory.
func (f *fixture) notifyWaits() chan struct{} {
	waited := make(chan struct{}, 16)
	f.node.pages.mu.Lock()
	f.node.pages.onWait = func() {
		select {
		case waited <- struct{}{}:
		default:
		}
	}
	f.node.pages.mu.Unlock()
	return waited
}

// awaitWait waits until a message waits for execution memory.
func awaitWait(t *testing.T, waited chan struct{}, what string) {
	t.Helper()
	select {
	case <-waited:
	case <-time.After(time.Minute):
		t.Fatalf("%s never waited for execution memory", what)
	}
}

// Audit: while any message waited for execution memory, every query that
// reserves pages failed with SYS_TRANSIENT, on the whole node. A
// compromised sandbox keeps its message's output held (it sends its pages
// slowly), so that other messages wait, and its canister's neighbours'
// queries all failed. Queries now keep their half of the budget: with the
// messages' half held and two messages waiting, another canister's
// composite query (18 pages) answers. Messages hold at most their half.
func TestWaitingMessageLeavesQueriesTheirHalf(t *testing.T) {
	t.Parallel()
	f := memFixture(t, "sandbox", 2*32) // halves of one heap_dirty output each
	slow := newSlowPages()
	t.Cleanup(slow.free) // before the node closes, should the test fail
	f.node.exec.Close()
	// The stall must outlast the test's steps: a patient watchdog.
	f.node.exec = relayExecutorWith(t, f.cfg, exec.SandboxConfig{WatchdogBase: 2 * time.Minute}, slow.act)
	holder := f.install(mustWat(t, dirtyWat), nil)
	waiters := []principal.Principal{f.install(mustWat(t, dirtyWat), nil), f.install(mustWat(t, dirtyWat), nil)}
	querier := f.install(mustWat(t, hoardWat), nil)
	f.idleMemory()
	waited := f.notifyWaits()
	id := holder.String()
	slow.canister.Store(&id)
	slow.armed.Store(true)

	errs := make(chan error, 3)
	update := func(id principal.Principal) {
		_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "heap_dirty", Caller: user})
		errs <- err
	}
	go update(holder)
	select {
	case <-slow.reached:
	case <-time.After(time.Minute):
		t.Fatal("the holder's answer never came")
	}
	waitFor(t, time.Minute, func() bool { used, _, _ := f.node.pages.inUse(); return used >= 32*state.PageSize })
	for _, id := range waiters {
		go update(id)
	}
	awaitWait(t, waited, "an update behind the held output")

	if _, err := f.hoard(context.Background(), querier, 1, 16, 0); err != nil {
		t.Fatalf("a query beside a waiting message: %v", err)
	}
	used, queries, total := f.node.pages.inUse()
	if used-queries > total/2 || f.node.pages.peakBytes() > total {
		t.Fatalf("messages hold %d bytes of %d (%d held at most)", used-queries, total, f.node.pages.peakBytes())
	}
	slow.free()
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("an update: %v", err)
		}
	}
	f.idleMemory()
}

// A message whose answer's header came waits for execution memory with
// its sandbox's watchdog lifted (the wait is the host's). Once granted,
// its pages must still come within the watchdog: a compromised sandbox
// that then stops sending is killed. And by the pages' own time, not the
// rest of the execution's compute time (here practically unbounded, as
// an install's hour is): the execution is over once its header came, so
// holding pages of the budget while sending slowly is bounded by what
// sending them takes. Before, such a sandbox held them for the rest of
// its compute time; here it would have held them for ever.
func TestSlowPagesEndAtTheirDeadline(t *testing.T) {
	t.Parallel()
	f := memFixture(t, "sandbox", 32) // one heap_dirty output: a second waits
	slow := newSlowPages()
	t.Cleanup(slow.free)
	f.node.exec.Close()
	f.node.exec = relayExecutorWith(t, f.cfg, exec.SandboxConfig{WatchdogBase: 5 * time.Second, InstructionsPerSecond: 1}, slow.act)
	slowID := f.install(mustWat(t, dirtyWat), nil)
	held := f.install(mustWat(t, dirtyWat), nil)
	f.idleMemory()
	g := &returnGate{Executor: f.node.exec, method: "heap_dirty", returned: make(chan struct{}, 2), release: make(chan struct{})}
	f.node.exec = g
	var released sync.Once
	release := func() { released.Do(func() { close(g.release) }) }
	t.Cleanup(release)
	waited := f.notifyWaits()

	heldErr := make(chan error, 1)
	go func() {
		_, err := f.node.Update(context.Background(), Message{Canister: held, Method: "heap_dirty", Caller: user})
		heldErr <- err
	}()
	select {
	case <-g.returned: // it holds the whole budget until released
	case <-time.After(time.Minute):
		t.Fatal("the first update never returned")
	}
	id := slowID.String()
	slow.canister.Store(&id)
	slow.armed.Store(true)
	slowErr := make(chan error, 1)
	go func() {
		_, err := f.node.Update(context.Background(), Message{Canister: slowID, Method: "heap_dirty", Caller: user})
		slowErr <- err
	}()
	awaitWait(t, waited, "the compromised sandbox's update")
	release() // it is granted room, and its pages never come
	if err := <-heldErr; err != nil {
		t.Fatalf("the held update: %v", err)
	}
	select {
	case err := <-slowErr:
		var rej *Reject
		if !errors.As(err, &rej) || rej.Code != CanisterError || !strings.Contains(rej.Message, "deadline") {
			t.Fatalf("want CANISTER_ERROR for the watchdog, got %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("a sandbox that stopped sending its pages was not killed in two minutes (its pages' deadline is 5 s)")
	}
	slow.armed.Store(false)
	slow.free()
	f.idleMemory()
	if r := f.update(slowID, "heap_dirty", nil); r == nil {
		t.Fatal("no reply")
	}
	f.idleMemory()
}

// unreadRequestDeath makes the sandbox of one canister, while armed, die after
// its next answer's header with the host's request still unread on its
// socket: its pages reserved and never sent, the host's next read fails
// with ECONNRESET (the kernel's word for a peer that closed with data
// unread), which is a crash, not a protocol violation, so a reused
// sandbox's execution is retried on a fresh one. So dies a sandbox killed
// (the node's OOM killer, a compromised one's own doing) while the host's
// requests wait on its socket, as concurrent queries' do.
type unreadRequestDeath struct {
	canister atomic.Pointer[string]
	armed    atomic.Bool
	died     atomic.Bool
	// reserved reports that the host reserved the answer's pages: the
	// sandbox dies only then (the host's read of the header must not meet
	// the reset first).
	reserved func() bool
}

// pipe relays between the host's peer mid and the sandbox's socket sb.
func (d *unreadRequestDeath) pipe(label string, mid, sb *net.UnixConn) {
	kept, cut := make(chan struct{}), make(chan struct{})
	victim := func() bool { id := d.canister.Load(); return id != nil && *id == label }
	go func() {
		defer sb.Close()
		for {
			// Each request is looked at before it is taken: the one that
			// comes once armed is forwarded, but left unread.
			pkt, files, err := peekPacket(mid)
			if err != nil {
				return
			}
			if victim() && boundary.Kind(pkt[0]) == boundary.KindExecute && d.armed.CompareAndSwap(true, false) {
				var oob []byte
				if len(files) > 0 {
					oob = unix.UnixRights(files...)
				}
				_, _, err := sb.WriteMsgUnix(pkt, oob, nil)
				closeFiles(files)
				if err != nil {
					return
				}
				close(kept)
				<-cut
				return
			}
			closeFiles(files)
			if !relayOne(mid, sb) {
				return
			}
		}
	}()
	go relayUntil(sb, mid, func(pkt []byte) bool {
		select {
		case <-kept:
			if isPages(pkt) {
				for until := time.Now().Add(time.Minute); !d.reserved() && time.Now().Before(until); {
					time.Sleep(10 * time.Millisecond) // polled: the host's reservation has no signal
				}
				d.died.Store(d.reserved())
				close(cut)
				return false // mid closes with the request unread
			}
		default:
		}
		return true
	})
}

// peekPacket returns the next packet of c without taking it, with
// duplicates of its descriptors.
func peekPacket(c *net.UnixConn) ([]byte, []int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	buf := make([]byte, boundary.MaxPacket)
	oob := make([]byte, unix.CmsgSpace(4*(boundary.MaxFDs+1)))
	var n, oobn int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_PEEK)
		return rerr != unix.EAGAIN
	}); err != nil {
		return nil, nil, err
	}
	if rerr != nil || n == 0 {
		return nil, nil, errors.Join(rerr, io.EOF)
	}
	var files []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			fds, _ := unix.ParseUnixRights(&m)
			files = append(files, fds...)
		}
	}
	return buf[:n], files, nil
}

func closeFiles(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// relayOne copies one packet from src to dst; false when either ended.
func relayOne(src, dst *net.UnixConn) bool {
	buf := make([]byte, boundary.MaxPacket)
	oob := make([]byte, unix.CmsgSpace(4*(boundary.MaxFDs+1)))
	n, oobn, _, _, err := src.ReadMsgUnix(buf, oob)
	if err != nil || n == 0 {
		return false
	}
	_, _, werr := dst.WriteMsgUnix(buf[:n], oob[:oobn], nil)
	closeRights(oob[:oobn])
	return werr == nil
}

// A reused sandbox that dies after its answer's header (its pages
// reserved, never sent) has its execution retried on a fresh sandbox. The
// dead attempt's reservation was kept beside the retry's own: the message
// held its output twice over (and, holding pages, took the retry's only if
// they fit at once). The retry's ask now replaces it.
func TestRetryGivesBackTheDeadAttemptsPages(t *testing.T) {
	t.Parallel()
	f := memFixture(t, "sandbox", 0)
	d := &unreadRequestDeath{reserved: func() bool {
		used, _, _ := f.node.pages.inUse()
		return used >= 32*state.PageSize
	}}
	f.node.exec.Close()
	f.node.exec = relayExecutorPiped(t, f.cfg, exec.SandboxConfig{}, d.pipe)
	id := f.install(mustWat(t, dirtyWat), nil)
	f.idleMemory()
	victim := id.String()
	d.canister.Store(&victim)
	f.node.pages.mu.Lock()
	f.node.pages.peak = 0
	f.node.pages.mu.Unlock()
	d.armed.Store(true)
	if r := f.update(id, "heap_dirty", nil); r == nil {
		t.Fatal("no reply")
	}
	if !d.died.Load() {
		t.Fatal("the sandbox never died after its header with its pages reserved")
	}
	if peak, want := f.node.pages.peakBytes(), uint64(32*state.PageSize); peak != want {
		t.Fatalf("the retried update held %d bytes at most, want its output's %d", peak, want)
	}
	f.idleMemory()
}

// The budget's halves: messages hold at most one and wait for it in
// order; queries take room of the other whether or not messages wait, and
// a waiting message is granted when messages give back, whatever queries
// hold. A message larger than its half waits at the head for the room it
// needs beyond it, which queries stop taking: it is granted once the
// queries holding that room end. A query graph larger than its half is
// admitted alone while no message waits.
func TestPageBudgetHalves(t *testing.T) {
	b := newPageBudget(10) // halves of 5
	waiting := make(chan struct{}, 4)
	b.onWait = func() { waiting <- struct{}{} }
	ctx := context.Background()
	if err := b.acquire(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if err := b.acquire(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if b.waits != 0 {
		t.Fatal("messages within their half waited")
	}
	errs := make(chan error, 2)
	go func() { errs <- b.acquire(ctx, 1) }()
	<-waiting
	if !b.tryQuery(4) {
		t.Fatal("a query was refused room of its half while a message waits")
	}
	if b.tryQuery(2) {
		t.Fatal("queries took more than their half")
	}
	b.release(4, true)
	if b.waitingCount() != 1 {
		t.Fatal("the waiter was granted room of the queries' half")
	}
	b.release(2, false)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	// Messages hold 3+1; a message of 7 needs 2 of the queries' half.
	if !b.tryQuery(4) {
		t.Fatal("a query was refused room of its half")
	}
	go func() { errs <- b.acquire(ctx, 7) }()
	<-waiting
	if b.tryQuery(1) {
		t.Fatal("a query took room a larger message waits for")
	}
	b.release(3, false)
	b.release(1, false)
	if b.waitingCount() != 1 {
		t.Fatal("granted beside the queries' 4 bytes")
	}
	b.release(4, true)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if !b.tryQuery(3) || b.tryQuery(1) {
		t.Fatal("beside a message of 7, queries take the 3 bytes left, no more")
	}
	b.release(3, true)
	b.release(7, false)
	// A graph larger than its half, alone, while no message waits.
	if !b.tryQuery(6) {
		t.Fatal("a graph larger than its half was refused on an empty budget")
	}
	if b.tryQuery(1) {
		t.Fatal("another graph beside one larger than the queries' half")
	}
	if err := b.acquire(ctx, 4); err != nil {
		t.Fatal(err)
	}
	b.release(6, true)
	b.release(4, false)
	if used, queries, _ := b.inUse(); used != 0 || queries != 0 || len(b.waiting) != 0 {
		t.Fatalf("after all: %d bytes held (%d by queries), %d waiting", used, queries, len(b.waiting))
	}
}
