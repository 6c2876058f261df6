package exec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/sandbox/confine"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/internal/worker"
)

// Hostile sandboxes as real, confined processes. The test binary is the
// sandbox (TestMain); a canister whose id starts with "hostile-" gets a
// sandbox that runs the real worker behind a proxy on its IPC socket, and
// misbehaves as the rest of its id says, from inside the live sandbox:
//
//	hostile-seccomp-2   at its second Execute request, a forbidden system
//	                    call (socket) instead of forwarding the request
//	hostile-idle-packet on SIGUSR1 (the test sends it while the sandbox is
//	                    idle between messages), an unsolicited packet
//	hostile-idle-fds    on SIGUSR1, a packet carrying 8 memfds of its own
//	hostile-exit-memfds on SIGUSR1, a packet carrying 8 memfds of 4 MiB
//	                    each, then it exits
//	hostile-idle-seccomp on SIGUSR1, a forbidden system call (socket)
//	hostile-wx-probe    once the worker has loaded its module, try to make
//	                    written memory executable; if that works, exit
//	                    (the test's next message then fails)
//	hostile-warm-crash  at a Warm request (a primed sandbox), exit
//	hostile-warm-hang   at a Warm request, never answer
//	hostile-warm-lie    at a Warm request, answer Loaded for another module
//	hostile-sealed-attack at a Load or Warm request, check the artifact
//	                    memfd's seals and try to write, shrink, grow and
//	                    map it writable, and to add a seal; exit if any of
//	                    that works (or no descriptor came), else forward
//	hostile-idle-holes  maps the memory images each Execute request brings
//	                    (read-only, shared, as it may); on SIGUSR1, while
//	                    idle, reads a byte of every page of them, holes
//	                    included, and says so on stderr
//	hostile-stall-pages sends its answers' headers, never their pages
//	hostile-dribble-pages sends its answers' pages one a packet, each
//	                    after a pause of dribblePause
//	hostile-spin-after-header from its first answer's header on, spins on
//	                    CPU in a goroutine of its own (its pages still go
//	                    as the host takes them)
const hostilePrefix = "hostile-"

// hostileMode is the misbehaviour this sandbox process was started for, or
// "" (args: mode, then the canister id as label, then query-threads=N).
func hostileMode() string {
	i := slices.Index(os.Args, "canister")
	if i < 0 || i+1 >= len(os.Args) {
		return ""
	}
	m, ok := strings.CutPrefix(os.Args[i+1], hostilePrefix)
	if !ok {
		return ""
	}
	return m
}

func hostileMain(mode string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "hostile sandbox: "+format+"\n", a...)
		return 1
	}
	// The worker's socket pair, made before the filter refuses socketpair.
	inner, workerSide, err := boundary.Pair()
	if err != nil {
		return fail("%v", err)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	conn, _, args, err := confine.Enter()
	if err != nil {
		return fail("%v", err)
	}
	go func() {
		worker.ServeConfined(workerSide, args) // the worker as in production, after Enter
		conn.Close()
	}()
	var probe func([]byte, []byte)
	if mode == "wx-probe" {
		probe = func(pkt, _ []byte) {
			if len(pkt) == 0 || boundary.Kind(pkt[0]) != boundary.KindLoaded {
				return
			}
			b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err != nil {
				os.Exit(1)
			}
			b[0] = 0xc3 // ret
			if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_EXEC); !errors.Is(err, unix.EACCES) {
				fmt.Fprintf(os.Stderr, "hostile sandbox: written memory made executable after the load (%v)\n", err)
				os.Exit(1)
			}
		}
	}
	if mode == "stall-pages" {
		probe = func(pkt, _ []byte) {
			if len(pkt) > 0 && boundary.Kind(pkt[0]) == boundary.KindPages {
				select {} // the header went; the pages never go
			}
		}
	}
	if mode == "spin-after-header" {
		var once sync.Once
		probe = func(pkt, _ []byte) {
			if len(pkt) > 0 && boundary.Kind(pkt[0]) == boundary.KindOutput {
				once.Do(func() { go spin() })
			}
		}
	}
	if mode == "dribble-pages" {
		go dribble(inner, conn)
	} else {
		go forward(inner, conn, probe) // worker → host
	}
	var (
		imagesMu sync.Mutex
		images   [][]byte
	)
	go func() {
		<-usr1
		switch mode {
		case "idle-holes":
			imagesMu.Lock()
			sum, pages := 0, 0
			for _, b := range images {
				for off := 0; off < len(b); off += 4096 {
					sum += int(b[off])
					pages++
				}
			}
			imagesMu.Unlock()
			fmt.Fprintf(os.Stderr, "hostile sandbox: read %d pages of its images while idle (sum %d)\n", pages, sum)
		case "idle-seccomp":
			_, _, _ = unix.RawSyscall(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
			fmt.Fprintln(os.Stderr, "hostile sandbox: survived socket()")
		case "idle-packet":
			_, _ = conn.Write([]byte("unsolicited"))
		case "idle-fds", "exit-memfds":
			fds := make([]int, 8)
			for i := range fds {
				fd, err := unix.MemfdCreate("hostile", unix.MFD_CLOEXEC)
				if err != nil {
					fmt.Fprintln(os.Stderr, "memfd:", err)
					os.Exit(1)
				}
				if mode == "exit-memfds" {
					page := make([]byte, 1<<20)
					for j := range page {
						page[j] = 0x5a
					}
					for j := 0; j < 4; j++ {
						if _, err := unix.Write(fd, page); err != nil {
							fmt.Fprintln(os.Stderr, "memfd write:", err)
							os.Exit(1)
						}
					}
				}
				fds[i] = fd
			}
			if _, _, err := conn.WriteMsgUnix([]byte("descriptors"), unix.UnixRights(fds...), nil); err != nil {
				fmt.Fprintln(os.Stderr, "send:", err)
			}
			for _, fd := range fds {
				unix.Close(fd)
			}
			if mode == "exit-memfds" {
				os.Exit(0)
			}
		}
	}()
	executes := 0
	forward(conn, inner, func(pkt, oob []byte) {
		if len(pkt) >= boundary.HeaderSize {
			switch k := boundary.Kind(pkt[0]); {
			case k == boundary.KindWarm && mode == "warm-crash":
				fmt.Fprintln(os.Stderr, "hostile sandbox: crashing at warm")
				os.Exit(3)
			case k == boundary.KindWarm && mode == "warm-hang":
				select {}
			case k == boundary.KindWarm && mode == "warm-lie":
				lie := [32]byte{0xba, 0xd0}
				_, _ = conn.Write(header(boundary.KindLoaded, 0, binary.LittleEndian.Uint64(pkt[8:]), 32, lie[:]))
			case (k == boundary.KindWarm || k == boundary.KindLoad) && mode == "sealed-attack":
				if msg := attackSealed(oob); msg != "" {
					fmt.Fprintln(os.Stderr, "hostile sandbox: "+msg)
					os.Exit(1)
				}
				fmt.Fprintln(os.Stderr, "hostile sandbox: the sealed artifact held")
			}
		}
		if len(pkt) > 0 && boundary.Kind(pkt[0]) == boundary.KindExecute {
			executes++
			if mode == "idle-holes" {
				imagesMu.Lock()
				images = append(images, mapImages(oob)...)
				imagesMu.Unlock()
			}
			if mode == "seccomp-2" && executes == 2 {
				_, _, _ = unix.RawSyscall(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
				fmt.Fprintln(os.Stderr, "hostile sandbox: survived socket()")
				os.Exit(1)
			}
		}
	})
	return 0
}

// mapImages maps every descriptor of a packet's control message read-only
// and shared (a mapping keeps its file after forward closes the
// descriptor).
func mapImages(oob []byte) [][]byte {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var maps [][]byte
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			var st unix.Stat_t
			if unix.Fstat(fd, &st) != nil || st.Size <= 0 {
				continue
			}
			if b, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED); err == nil {
				maps = append(maps, b)
			}
		}
	}
	return maps
}

// attackSealed attacks the artifact memfd of a Load or Warm packet from
// inside the sandbox; it returns what worked, or "" if nothing did.
func attackSealed(oob []byte) string {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) != 1 {
		return fmt.Sprintf("no descriptor with the artifact (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return fmt.Sprintf("no descriptor with the artifact (%v)", err)
	}
	fd := fds[0]
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	want := unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	if err != nil || seals&want != want {
		return fmt.Sprintf("artifact seals %#x (%v), want %#x", seals, err, want)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Size == 0 {
		return fmt.Sprintf("artifact stat: size %d, %v", st.Size, err)
	}
	if _, err := unix.Pwrite(fd, []byte{0xff}, 0); err == nil {
		return "wrote into the artifact (pwrite)"
	}
	if _, err := unix.Write(fd, []byte{0xff}); err == nil {
		return "wrote into the artifact (write)"
	}
	if err := unix.Ftruncate(fd, 0); err == nil {
		return "shrank the artifact"
	}
	if err := unix.Ftruncate(fd, st.Size+1<<20); err == nil {
		return "grew the artifact"
	}
	if b, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		_ = unix.Munmap(b)
		return "mapped the artifact shared and writable"
	}
	b, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Sprintf("cannot map the artifact to read it: %v", err)
	}
	defer func() { _ = unix.Munmap(b) }()
	if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_WRITE); err == nil {
		return "made a shared mapping of the artifact writable"
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_FUTURE_WRITE); err == nil {
		return "added a seal to the artifact"
	}
	return ""
}

// forward copies packets (and their descriptors) from src to dst until src
// ends; see, if set, looks at each (and its control message) before it goes.
func forward(src, dst *net.UnixConn, see func(pkt, oob []byte)) {
	buf, oob := make([]byte, boundary.MaxPacket), make([]byte, unix.CmsgSpace(4*(boundary.MaxFDs+1)))
	for {
		n, oobn, _, _, err := src.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			dst.Close()
			return
		}
		if see != nil {
			see(buf[:n], oob[:oobn])
		}
		_, _, err = dst.WriteMsgUnix(buf[:n], oob[:oobn], nil)
		if oobn > 0 {
			if msgs, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
				for _, m := range msgs {
					fds, _ := unix.ParseUnixRights(&m)
					for _, fd := range fds {
						unix.Close(fd)
					}
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// dribblePause is the pause before each page a hostile-dribble-pages
// sandbox sends: far shorter than any pages' deadline, so only their sum
// can end it.
const dribblePause = 50 * time.Millisecond

// dribble forwards the worker's packets from src to dst as forward does,
// but splits each Pages packet into packets of one page, each sent after
// dribblePause: valid pages, sent slowly, the slowest a sandbox can send
// them without a pause longer than dribblePause.
func dribble(src, dst *net.UnixConn) {
	buf, oob := make([]byte, boundary.MaxPacket), make([]byte, unix.CmsgSpace(4*(boundary.MaxFDs+1)))
	const entry = 8 + 4096
	for {
		n, oobn, _, _, err := src.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			dst.Close()
			return
		}
		pkt := buf[:n]
		if oobn > 0 || !isPagesPacket(pkt) {
			if _, _, err := dst.WriteMsgUnix(pkt, oob[:oobn], nil); err != nil {
				return
			}
			continue
		}
		id, mem := binary.LittleEndian.Uint64(pkt[8:]), pkt[boundary.HeaderSize]
		for e := pkt[boundary.HeaderSize+5:]; len(e) >= entry; e = e[entry:] {
			time.Sleep(dribblePause)
			one := append([]byte{mem}, binary.LittleEndian.AppendUint32(nil, 1)...)
			if _, err := dst.Write(header(boundary.KindPages, 0, id, uint64(len(one)+entry), append(one, e[:entry]...))); err != nil {
				return
			}
		}
	}
}

// isPagesPacket reports whether pkt is a Pages packet.
func isPagesPacket(pkt []byte) bool {
	return len(pkt) > boundary.HeaderSize+5 && boundary.Kind(pkt[0]) == boundary.KindPages
}

// countingMetrics records what the executor reports.
type countingMetrics struct {
	mu sync.Mutex
	n  map[string]int
}

func (m *countingMetrics) add(k string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.n == nil {
		m.n = map[string]int{}
	}
	m.n[k]++
}
func (m *countingMetrics) get(k string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n[k]
}
func (m *countingMetrics) SandboxSpawned(kind string)   { m.add("spawned " + kind) }
func (m *countingMetrics) SandboxEvicted(reason string) { m.add("evicted " + reason) }
func (m *countingMetrics) SandboxCrashed(reason string) { m.add("crashed " + reason) }
func (m *countingMetrics) WatchdogKill()                { m.add("watchdog") }
func (m *countingMetrics) ProtocolViolation(k string)   { m.add("violation " + k) }
func (m *countingMetrics) SeccompKill(s string)         { m.add("seccomp " + s) }

func newRealCounted(t *testing.T) (*Sandboxed, *countingMetrics) {
	m := &countingMetrics{}
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	return x, m
}

func sandboxPid(x *Sandboxed, id string) int {
	for _, s := range x.List() {
		if s.CanisterID == id {
			return s.Pid
		}
	}
	return 0
}

// A sandbox killed for a forbidden system call in the middle of a message
// is the canister's doing: the message gets a CANISTER_ERROR naming the
// call, it is counted, and it is not run again on a fresh sandbox (it was a
// reused sandbox, which a plain crash would have retried).
func TestSeccompKillNotRetried(t *testing.T) {
	x, m := newRealCounted(t)
	wasm := wasmFile(t, corpusDir, "counter")
	victim := newSim(t, x, hostilePrefix+"seccomp-2", wasm)
	neighbour := newSim(t, x, "neighbour", wasm)
	victim.must(sysapi.CtxInit, "canister_init", empty) // first Execute: honest
	neighbour.must(sysapi.CtxInit, "canister_init", empty)
	before := memHash(victim)
	_, err := victim.run(sysapi.CtxUpdate, "canister_update inc", empty)
	var se *SandboxError
	if !errors.As(err, &se) || se.Exit == nil || se.Exit.SeccompSyscall != "socket" {
		t.Fatalf("want a sandbox error for the socket call, got %v", err)
	}
	if !strings.Contains(err.Error(), "forbidden system call socket") {
		t.Fatalf("message does not name the call: %v", err)
	}
	t.Log(err)
	if memHash(victim) != before {
		t.Fatal("the victim's state changed")
	}
	if n := m.get("spawned canister"); n != 2 {
		t.Fatalf("%d canister sandboxes spawned, want 2 (victim, neighbour): the message was retried", n)
	}
	if m.get("seccomp socket") != 1 || m.get("crashed seccomp") != 1 {
		t.Fatalf("not counted: %v", m.n)
	}
	// The neighbour never noticed; the victim's next message gets a fresh
	// sandbox (whose first Execute is honest again).
	if out := neighbour.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
		t.Fatalf("neighbour: %x", out.Reply)
	}
	if out := victim.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
		t.Fatalf("victim after respawn: %x", out.Reply)
	}
}

// A sandbox has nothing to say between messages. One that sends a packet,
// descriptors, or descriptors and then exits while idle is caught by the
// idle watch (not at its canister's next message): killed, counted, its socket closed
// with whatever it queued, the host's descriptors back to what they were.
// One that makes a forbidden system call while idle is counted too.
func TestIdleSandboxWatched(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	counted := map[string]string{
		"idle-packet": "violation unsolicited message", "idle-fds": "violation unsolicited message",
		"exit-memfds": "violation unsolicited message", "idle-seccomp": "seccomp socket",
	}
	for _, mode := range []string{"idle-packet", "idle-fds", "exit-memfds", "idle-seccomp"} {
		t.Run(mode, func(t *testing.T) {
			x, m := newRealCounted(t)
			id := hostilePrefix + mode
			victim := newSim(t, x, id, wasm)
			neighbour := newSim(t, x, "neighbour", wasm)
			neighbour.must(sysapi.CtxInit, "canister_init", empty)
			fds0 := openFDs(t)
			victim.must(sysapi.CtxInit, "canister_init", empty)
			pid := sandboxPid(x, id)
			if pid == 0 {
				t.Fatal("victim's sandbox not listed")
			}
			if openFDs(t) <= fds0 {
				t.Fatal("the live sandbox holds no host descriptor: the baseline proves nothing")
			}
			if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for sandboxPid(x, id) != 0 || openFDs(t) > fds0 {
				if time.Now().After(deadline) {
					t.Fatalf("sandbox %d still listed (%v) or host fds %d > %d: %s", pid, sandboxPid(x, id) != 0, openFDs(t), fds0, fdList())
				}
				time.Sleep(10 * time.Millisecond)
			}
			waitGone(t, pid)
			if n := m.get(counted[mode]); n != 1 {
				t.Fatalf("%q counted %d times: %v", counted[mode], n, m.n)
			}
			if out := neighbour.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
				t.Fatalf("neighbour: %x", out.Reply)
			}
			// The victim's state is intact; its next message gets a fresh sandbox.
			if out := victim.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
				t.Fatalf("victim after respawn: %x", out.Reply)
			}
			if p := sandboxPid(x, id); p == pid || p == 0 {
				t.Fatalf("victim's sandbox %d (was %d)", p, pid)
			}
		})
	}
}

// The real worker forbids new executable memory once its module is loaded:
// from inside the live sandbox, after the worker reported Loaded, written
// memory cannot be made executable (before the load it can: that is how
// wasmtime publishes code, see internal/sandbox's mdwe_rw_rx attack).
func TestWorkerForbidsNewCode(t *testing.T) {
	x, _ := newRealCounted(t)
	v := newSim(t, x, hostilePrefix+"wx-probe", wasmFile(t, corpusDir, "counter"))
	v.must(sysapi.CtxInit, "canister_init", empty)
	if out := v.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
		t.Fatalf("reply %x", out.Reply)
	}
	if st := x.Stats(); len(st.Faults) != 0 {
		t.Fatalf("faults %v", st.Faults)
	}
}

// Between an exchange and the start of its idle watch (IdleWatchDelay) a
// sandbox is not watched. A packet it queues then is read by the canister's
// next exchange, which must take it for the violation it is: the message
// fails (the canister's state untouched), the sandbox is killed, and the
// message after gets a fresh one. The delay is an hour here, so the watch
// never starts and the exchange meets the packet every time.
func TestPacketBeforeWatchIsViolation(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), IdleWatchDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	id := hostilePrefix + "idle-packet"
	victim := newSim(t, x, id, wasm)
	neighbour := newSim(t, x, "neighbour", wasm)
	neighbour.must(sysapi.CtxInit, "canister_init", empty)
	victim.must(sysapi.CtxInit, "canister_init", empty)
	pid := sandboxPid(x, id)
	sb := x.entry(id)
	if pid == 0 || sb == nil {
		t.Fatal("victim's sandbox not listed")
	}
	sb.mu.Lock()
	rc, err := sb.conn.Raw().SyscallConn()
	watched := sb.watching != nil
	sb.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if watched {
		t.Fatal("an idle watch started before its delay")
	}
	if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	// Wait until the packet is queued on the host's end, unread.
	deadline := time.Now().Add(30 * time.Second)
	for queued := false; !queued; {
		if time.Now().After(deadline) {
			t.Fatal("the sandbox's packet never came")
		}
		var b [1]byte
		_ = rc.Control(func(fd uintptr) {
			n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT|unix.MSG_TRUNC)
			queued = err == nil && n > 0
		})
		time.Sleep(5 * time.Millisecond)
	}
	_, err = victim.run(sysapi.CtxUpdate, "canister_update inc", empty)
	var se *SandboxError
	if !errors.As(err, &se) || se.Fault != FaultViolation {
		t.Fatalf("the exchange after the packet: want a violation, got %v", err)
	}
	waitGone(t, pid)
	if out := neighbour.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
		t.Fatalf("neighbour: %x", out.Reply)
	}
	// The failed message changed nothing: the counter's first inc answers 1.
	if out := victim.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
		t.Fatalf("victim after respawn: %x", out.Reply)
	}
	if p := sandboxPid(x, id); p == pid || p == 0 {
		t.Fatalf("victim's sandbox %d (was %d)", p, pid)
	}
}
