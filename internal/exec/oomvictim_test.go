package exec

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Past the node group's memory limit the kernel OOM-kills the largest
// sandbox in the group, whoever took the group past it: every sandbox has
// oom_score_adj 1000, so size alone decides. Here a sandbox holds about
// 100 MiB while idle (within the default budget of half the group, so never
// evicted; its growth allowed, as growth during its own messages always
// is), and an honest canister's message that alone peaks at about 200 MiB
// of the 256 MiB group is killed mid-execution, and again on the retry,
// while the holder lives. That failure is not the canister's: it stayed
// far within its own 2 GiB. It was reported as FaultCrash ("sandbox
// exceeded its memory limit"), which the host charges as a trap at the
// whole instruction limit (host.sandboxFault); it must be FaultNodeMemory,
// which the host answers with SYS_TRANSIENT and does not charge
// (host TestSandboxFailureIsCharged/node_memory). The victim is still the
// honest sandbox: which one the kernel picks is not changed here
// (RATIONALE.md).
func TestNodeMemoryOOMSparesTheNeighbour(t *testing.T) {
	const nodeLimit = 256 << 20
	var (
		mu    sync.Mutex
		procs = map[string]*sandbox.Process{}
	)
	launch := func(ctx context.Context, s sandbox.Spec) (Process, error) {
		p, err := sandbox.Start(ctx, s)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		procs[s.Label] = p
		mu.Unlock()
		return p, nil
	}
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), Launch: launch, NodeMemoryBytes: nodeLimit, MemoryBytes: 2 << 30,
		IdleCPUCheck: time.Hour, IdleMemoryGrowth: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	if x.group == nil {
		t.Skip("no cgroup layer here: no node group")
	}
	// Alone, an honest canister's first message fits the group.
	alone := newSim(t, x, "alone", wasmFile(t, corpusDir, "memory"))
	alone.must(sysapi.CtxInit, "canister_init", empty)
	alone.must(sysapi.CtxUpdate, "canister_update grow", growArg(24))
	peak, _ := x.group.MemoryPeak()
	t.Logf("the group's peak after that message: %d MiB of %d", peak>>20, nodeLimit>>20)
	x.Forget("alone")
	honest := newSim(t, x, "honest", wasmFile(t, corpusDir, "memory"))
	honest.must(sysapi.CtxInit, "canister_init", empty)
	hostile := newSim(t, x, growOnSignal, wasmFile(t, corpusDir, "counter"))
	hostile.must(sysapi.CtxInit, "canister_init", empty)
	mu.Lock()
	holder := procs[growOnSignal]
	mu.Unlock()
	before, err := memoryOf(holder)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(holder.Pid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the holder did not grow", func() bool {
		m, err := memoryOf(holder)
		select {
		case <-holder.Done():
			t.Fatalf("the holder died: %+v", holder.Wait())
		default:
		}
		return err == nil && m > before+64<<20
	})
	held, _ := memoryOf(holder)
	t.Logf("holder: %d MiB, was %d MiB", held>>20, before>>20)
	// The same message in another canister, beside the holder.
	out, err := honest.run(sysapi.CtxUpdate, "canister_update grow", growArg(24))
	var se *SandboxError
	switch {
	case err == nil && !out.Trapped:
		t.Log("the honest canister's message succeeded beside the holder")
	case errors.As(err, &se) && se.Fault == FaultNodeMemory:
		t.Logf("the honest canister's message failed for the node's memory: %v", err)
	default:
		held, _ := memoryOf(holder)
		t.Fatalf("the honest canister's message, which fits the group alone, failed beside a sandbox holding %d bytes, not as FaultNodeMemory: %v %v", held, err, out)
	}
	select {
	case <-holder.Done():
	default:
		t.Log("the holder lives")
	}
}

// growArg is the Candid argument (nat) of the memory canister's grow.
func growArg(mib byte) []byte { return append([]byte("DIDL\x00\x01\x7d"), mib) }
