package exec

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// exeTrimmed reports whether a read-only mapping of exe in pid's smaps
// carries MADV_NOHUGEPAGE ("nh"), which only the worker's idle trim sets,
// and the resident bytes of exe's read-only mappings.
func exeTrimmed(t *testing.T, pid int, exe string) (bool, uint64) {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in, marked := false, false
	var rss uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) >= 5 && !strings.HasSuffix(fields[0], ":"):
			in = len(fields) >= 6 && strings.Join(fields[5:], " ") == exe && !strings.Contains(fields[1], "w")
		case in && fields[0] == "Rss:" && len(fields) >= 2:
			n, _ := strconv.ParseUint(fields[1], 10, 64)
			rss += n << 10
		case in && fields[0] == "VmFlags:":
			for _, fl := range fields[1:] {
				marked = marked || fl == "nh"
			}
		}
	}
	return marked, rss
}

// A canister sandbox left idle gives memory back (worker.trimIdle: a
// collection, malloc_trim, its mappings of cordon's code dropped) inside
// its confinement: the seccomp allowlist is unchanged, the idle-CPU
// watchdog does not mistake it for a spinning sandbox, and the same
// sandbox then serves further messages exactly as in-process execution
// does, its code faulting back in.
func TestIdleSandboxTrimsAndKeepsServing(t *testing.T) {
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), IdleCPUCheck: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	ip, _ := NewInProcess(engine.DefaultModuleLimits())
	wasm := wasmFile(t, corpusDir, "counter")
	sb, ref := newSim(t, x, "trim-1", wasm), newSim(t, ip, "trim-1", wasm)
	step := func(ctx sysapi.Context, entry string) {
		t.Helper()
		got, want := sb.must(ctx, entry, empty), ref.must(ctx, entry, empty)
		boundary.Normalize(ctx, want)
		if !boundary.Equal(got, want) {
			t.Fatalf("%s: sandboxed and in-process outputs differ:\n%+v\n%+v", entry, got, want)
		}
	}
	step(sysapi.CtxInit, "canister_init")
	step(sysapi.CtxUpdate, "canister_update inc")
	list := x.List()
	if len(list) != 1 || list[0].Pid <= 0 {
		t.Fatalf("list: %+v", list)
	}
	pid := list[0].Pid
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	var rss uint64
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var marked bool
		if marked, rss = exeTrimmed(t, pid, exe); marked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the idle sandbox never trimmed its mappings of the executable")
		}
	}
	t.Logf("idle sandbox %d: %d KiB of the executable's read-only segments resident after the trim", pid, rss>>10)
	step(sysapi.CtxUpdate, "canister_update inc")
	step(sysapi.CtxNonReplicatedQuery, "canister_query get")
	step(sysapi.CtxUpdate, "canister_update inc")
	if l := x.List(); len(l) != 1 || l[0].Pid != pid || l[0].Messages != 5 {
		t.Fatalf("the trimmed sandbox was not reused: %+v (pid was %d)", l, pid)
	}
	for k, v := range x.Stats().Faults {
		if v != 0 {
			t.Fatalf("sandbox fault %s (%d) after an idle trim", k, v)
		}
	}
}
