package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// repoFile opens a file of this repository (path from its root).
func repoFile(t testing.TB, rel string) *os.File {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func corpusFile(t testing.TB, rel string) *os.File {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "..", "shared", rel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// canisterWorkload is a spec running real canister executions: the counter
// (32-bit and 64-bit memory) and the traps canister (signal-based traps).
func canisterWorkload(t testing.TB) Spec {
	return Spec{Label: "canisters", Args: []string{"canister", "counter", "traps", "counter"},
		Files: []*os.File{corpusFile(t, "canisters/counter.wasm"), corpusFile(t, "canisters/traps.wasm"),
			repoFile(t, "examples/counter64.wasm")}}
}

func runWorkload(t testing.TB, p *Process) {
	t.Helper()
	if _, err := p.Conn().Write([]byte("go")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		got := recvT(t, p)
		if !strings.HasPrefix(got, "ok ") {
			t.Fatalf("workload: %s", got)
		}
		t.Log(got)
	}
}

// TestSyscallsMeasured runs the canister workload with the filter in learn
// mode (every system call reported to the host, then continued) and checks
// the allowlist against what was observed, both ways: every call made passes
// the production filter (evaluated on the recorded arguments), and every
// allowlist entry not marked Rare was made.
func TestSyscallsMeasured(t *testing.T) {
	var mu sync.Mutex
	var calls []confine.Notification
	seen := map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := canisterWorkload(t)
	spec.Stderr = func(l string) { t.Log("sandbox:", l) }
	p, err := start(ctx, spec, startOpts{learn: func(name string, n confine.Notification) {
		mu.Lock()
		defer mu.Unlock()
		seen[name]++
		calls = append(calls, n)
		if name == "openat" {
			t.Logf("openat %q", readCString(int(n.Pid), n.Args[1]))
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	runWorkload(t, p)
	p.Conn().Close()
	if st := p.Wait(); st.Code != 0 {
		t.Fatalf("exit %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	var names []string
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("observed %d distinct syscalls: %s", len(names), strings.Join(names, " "))

	filter, err := confine.BuildFilter(1, false)
	if err != nil {
		t.Fatal(err)
	}
	bad := map[string]bool{}
	for _, n := range calls {
		r, err := confine.RunFilter(filter, n.Data())
		if err != nil {
			t.Fatal(err)
		}
		if r&unix.SECCOMP_RET_ACTION_FULL != unix.SECCOMP_RET_ALLOW && r&unix.SECCOMP_RET_ACTION_FULL != unix.SECCOMP_RET_ERRNO {
			name := confine.SyscallName(n.Arch, n.Nr)
			if !bad[name] {
				t.Errorf("the workload made %s(%#x), which the allowlist refuses: add it to confine.Allowlist with a reason", name, n.Args)
			}
			bad[name] = true
		}
	}
	for _, r := range confine.Allowlist {
		if r.Rare || r.Act != confine.Allow || seen[r.Name] > 0 || raceEnabled {
			continue
		}
		if r.Name == "sendmsg" { // the learn filter lets it through unseen (bootstrap)
			continue
		}
		t.Errorf("allowlist entry %s was not used by the workload: remove it or mark it Rare with a reason", r.Name)
	}
}

// readCString reads a NUL-terminated string from a process's memory.
func readCString(pid int, addr uint64) string {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mem")
	if err != nil {
		return "?" + err.Error()
	}
	defer f.Close()
	b := make([]byte, 256)
	n, _ := f.ReadAt(b, int64(addr))
	s, _, _ := strings.Cut(string(b[:n]), "\x00")
	return s
}

func recvT(t testing.TB, p *Process) string {
	t.Helper()
	_ = p.Conn().SetReadDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, 1<<16)
	n, err := p.Conn().Read(b)
	if err != nil {
		t.Fatalf("read: %v (status %+v)", err, p.exitNow())
	}
	return string(b[:n])
}

// TestCanisterConfined runs the same workload under the enforcing filter
// with every layer, and checks every thread of the live sandbox.
func TestCanisterConfined(t *testing.T) {
	spec := canisterWorkload(t)
	spec.Strict = true
	p := startT(t, spec)
	runWorkload(t, p)
	threads, err := ReadThreads(p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	if len(threads) < 3 {
		t.Fatalf("expected the runtime's threads, got %d", len(threads))
	}
	for _, th := range threads {
		if th.CapInh|th.CapPrm|th.CapEff|th.CapBnd|th.CapAmb != 0 || th.NoNewPrivs != 1 || th.Seccomp != 2 {
			t.Errorf("thread %d: %+v", th.Tid, th)
		}
	}
	t.Logf("%d threads, all with CapInh/Prm/Eff/Bnd/Amb=0 NoNewPrivs=1 Seccomp=2", len(threads))
	if rss, err := p.RSS(); err == nil {
		t.Logf("RSS %d MiB", rss>>20)
	}
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(p.Pid()) + "/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmPeak") || strings.HasPrefix(l, "VmSize") || strings.HasPrefix(l, "VmRSS") {
				t.Log(l)
			}
		}
	}
	p.Conn().Close()
	if st := p.Wait(); st.Code != 0 || st.Err != nil {
		t.Fatalf("exit %+v", st)
	}
}
