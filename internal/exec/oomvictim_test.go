package exec

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Past the node group's memory limit the kernel OOM-kills the largest
// sandbox in the group, whoever took the group past it: every sandbox has
// oom_score_adj 1000, so size alone decides. Here three sandboxes hold
// about 100 MiB each while idle (never evicted: no budget, their growth
// allowed, as growth during their own messages always is), and an honest
// canister's message that alone peaks at about 260 MiB of the 512 MiB group
// is killed mid-execution, and again on the retry, while the holders live.
// That failure is not the canister's: it stayed far within its own 2 GiB,
// and held less than half of the group (cgroup.oomCause). It was reported
// as FaultCrash ("sandbox exceeded its memory limit"), which the host
// charges as a trap at the whole instruction limit (host.sandboxFault); it
// must be FaultNodeMemory, which the host answers with SYS_TRANSIENT and
// does not charge (host TestSandboxFailureIsCharged/node_memory). The
// victim is still the honest sandbox: which one the kernel picks is not
// changed here (RATIONALE.md).
func TestNodeMemoryOOMSparesTheNeighbour(t *testing.T) {
	const nodeLimit = 512 << 20
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
		IdleCPUCheck: time.Hour, IdleMemoryGrowth: 1 << 40, MaxTotalRSS: 1 << 40})
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
	alone.must(sysapi.CtxUpdate, "canister_update grow", growArg(32))
	peak, _ := x.group.MemoryPeak()
	t.Logf("the group's peak after that message: %d MiB of %d", peak>>20, nodeLimit>>20)
	x.Forget("alone")
	honest := newSim(t, x, "honest", wasmFile(t, corpusDir, "memory"))
	honest.must(sysapi.CtxInit, "canister_init", empty)
	var holders []*sandbox.Process
	for i := range 3 {
		id := fmt.Sprintf("%s-%d", growOnSignal, i)
		hostile := newSim(t, x, id, wasmFile(t, corpusDir, "counter"))
		hostile.must(sysapi.CtxInit, "canister_init", empty)
		mu.Lock()
		holder := procs[id]
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
		t.Logf("holder %d: %d MiB, was %d MiB", i, held>>20, before>>20)
		holders = append(holders, holder)
	}
	// The same message in another canister, beside the holders.
	out, err := honest.run(sysapi.CtxUpdate, "canister_update grow", growArg(32))
	var se *SandboxError
	switch {
	case err == nil && !out.Trapped:
		t.Log("the honest canister's message succeeded beside the holders")
	case errors.As(err, &se) && se.Fault == FaultNodeMemory:
		t.Logf("the honest canister's message failed for the node's memory: %v", err)
	default:
		t.Fatalf("the honest canister's message, which fits the group alone, failed beside the holders, not as FaultNodeMemory: %v %v", err, out)
	}
	for _, h := range holders {
		select {
		case <-h.Done():
		default:
			t.Log("a holder lives")
		}
	}
}

// A canister that alone takes the node group past its limit is killed for
// what it took, not for the node's memory: its sandbox's own limit (here
// the default, 8 GiB) is above the group's, so it never reaches it, but it
// held nearly all of the group. Reported as FaultNodeMemory it went
// uncharged (SYS_TRANSIENT) and was run again: any canister could make its
// messages' instructions free by allocating until the kernel killed it.
// It is FaultCrash for its own limit (sandbox.ErrOutOfMemory), charged.
func TestSandboxAloneFillingTheGroupIsCharged(t *testing.T) {
	const nodeLimit = 160 << 20
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), NodeMemoryBytes: nodeLimit,
		IdleCPUCheck: time.Hour, IdleMemoryGrowth: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	if x.group == nil {
		t.Skip("no cgroup layer here: no node group")
	}
	s := newSim(t, x, "grower", wasmFile(t, corpusDir, "memory"))
	s.must(sysapi.CtxInit, "canister_init", empty)
	out, err := s.run(sysapi.CtxUpdate, "canister_update grow", growArg(24)) // about 200 MiB
	var se *SandboxError
	if !errors.As(err, &se) || se.Fault != FaultCrash || se.Exit == nil || !errors.Is(se.Exit.Err, sandbox.ErrOutOfMemory) {
		t.Fatalf("a canister that alone filled the node group: want FaultCrash for its own memory, got %v %v", err, out)
	}
}

// growArg is the Candid argument (nat) of the memory canister's grow.
func growArg(mib byte) []byte { return append([]byte("DIDL\x00\x01\x7d"), mib) }
