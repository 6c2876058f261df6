package exec

import (
	"crypto/sha256"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// kindPids lists the pids of the sandboxes cordon ps shows as kind.
func kindPids(x *Sandboxed, kind string) []int {
	var out []int
	for _, s := range x.Sandboxes() {
		if s.Kind == kind {
			if s.Canister != "" {
				panic("a " + kind + " sandbox names a canister: " + s.Canister)
			}
			out = append(out, s.PID)
		}
	}
	return out
}

// waitPrimed waits until n primed sandboxes are listed, none in not.
func waitPrimed(t *testing.T, x *Sandboxed, n int, not ...int) []int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		pids := kindPids(x, "primed")
		ok := len(pids) == n
		for _, p := range pids {
			for _, q := range not {
				ok = ok && p != q
			}
		}
		if ok {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("primed sandboxes %v, want %d (none of %v); stats %+v", pids, n, not, x.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// evict evicts canister id's sandbox (the only idle one) and waits for its
// process to end.
func evict(t *testing.T, x *Sandboxed, id string) {
	t.Helper()
	pid := sandboxPid(x, id)
	if pid == 0 {
		t.Fatalf("%s has no sandbox to evict", id)
	}
	// evictColdest passes over a sandbox whose lock is held: the idle
	// watch may be trimming it just now (on a loaded machine, long after
	// the last message). Try until it is free.
	deadline := time.Now().Add(time.Minute)
	for !x.evictColdest(nil, "pool") {
		if time.Now().After(deadline) {
			t.Fatal("nothing evicted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitGone(t, pid)
}

// An evicted canister's module is loaded ahead of time by a primed
// sandbox (listed by cordon ps as "primed", naming no canister); the
// canister's next message takes it, with its state restored, and no other
// sandbox is started for it. A primed sandbox is stopped when its module's
// evicted canister is deleted.
func TestPrimedSandbox(t *testing.T) {
	x, m := newPooled(t, SandboxConfig{PreloadPool: 1})
	s := newSim(t, x, "a", wasmFile(t, corpusDir, "counter"))
	s.must(sysapi.CtxInit, "canister_init", empty)
	if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("inc: %x", out.Reply)
	}
	if p := kindPids(x, "primed"); len(p) != 0 {
		t.Fatalf("primed sandboxes %v before any eviction", p)
	}
	evict(t, x, "a")
	p := waitPrimed(t, x, 1)[0]
	if b := kindPids(x, "blank"); len(b) != 0 {
		t.Fatalf("blank sandboxes %v without a warm pool", b)
	}
	if out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("get after eviction: %x (state lost?)", out.Reply)
	}
	if got := sandboxPid(x, "a"); got != p {
		t.Fatalf("evicted canister a came back in %d, not in the primed sandbox %d", got, p)
	}
	if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x02" {
		t.Fatalf("inc after eviction: %x", out.Reply)
	}
	if left := kindPids(x, "primed"); len(left) != 0 {
		t.Fatalf("primed sandboxes %v left after a took its own", left)
	}
	st := x.Stats()
	if st.PrimedTakes != 1 || st.PrimeFailures != 0 || m.get("spawned canister") != 1 || m.get("spawned primed") != 1 || len(st.Faults) != 0 {
		t.Fatalf("stats %+v, metrics %v: want 1 primed take, 1 cold and 1 primed spawn, no fault", st, m.n)
	}

	// Deleted while evicted: its primed sandbox goes.
	evict(t, x, "a")
	p2 := waitPrimed(t, x, 1, p)[0]
	x.Forget("a")
	waitGone(t, p2)
	if left := kindPids(x, "primed"); len(left) != 0 {
		t.Fatalf("primed sandboxes %v left after a was deleted", left)
	}
}

// A primed sandbox serves only its module: a canister of another module
// gets another sandbox and leaves it primed; the evicted canister then
// takes it.
func TestPrimedSandboxOnlyForItsModule(t *testing.T) {
	x, _ := newPooled(t, SandboxConfig{PreloadPool: 1})
	a := newSim(t, x, "a", wasmFile(t, corpusDir, "counter"))
	a.must(sysapi.CtxInit, "canister_init", empty)
	a.must(sysapi.CtxUpdate, "canister_update inc", empty)
	evict(t, x, "a")
	p := waitPrimed(t, x, 1)[0]

	b := newSim(t, x, "b", wasmFile(t, corpusDir, "kv"))
	b.must(sysapi.CtxInit, "canister_init", empty)
	if got := sandboxPid(x, "b"); got == p || got == 0 {
		t.Fatalf("canister b (another module) runs in %d, the primed sandbox is %d", got, p)
	}
	if got := kindPids(x, "primed"); len(got) != 1 || got[0] != p {
		t.Fatalf("primed sandboxes %v after b, want [%d]", got, p)
	}
	if out := a.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("get: %x", out.Reply)
	}
	if got := sandboxPid(x, "a"); got != p {
		t.Fatalf("a came back in %d, not in its primed sandbox %d", got, p)
	}
	if st := x.Stats(); st.PrimedTakes != 1 || len(st.Faults) != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// A primed sandbox taken over by its code (the test worker's hostile
// proxy) crashes, hangs or lies at its load, or sends while it waits: it
// is killed and counted, and replaced; a module whose primed sandboxes
// keep failing is no longer primed (not retried in a loop). The evicted
// canister's next message still runs, on another sandbox.
func TestHostilePrimedSandboxKilledAndReplaced(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	counted := map[string]string{
		"warm-crash": "crashed exit", "warm-hang": "watchdog", "warm-lie": "violation unexpected message",
	}
	for _, mode := range []string{"warm-crash", "warm-hang", "warm-lie"} {
		t.Run(mode, func(t *testing.T) {
			x, m := newPooled(t, SandboxConfig{PreloadPool: 1, StartTimeout: 5 * time.Second, primedLabel: hostilePrefix + mode})
			s := newSim(t, x, "a", wasm)
			s.must(sysapi.CtxInit, "canister_init", empty)
			s.must(sysapi.CtxUpdate, "canister_update inc", empty)
			evict(t, x, "a")
			for deadline := time.Now().Add(2 * time.Minute); x.Stats().PrimeFailures < maxPrimeFailures; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("stats %+v, metrics %v: want %d failed primed sandboxes", x.Stats(), m.n, maxPrimeFailures)
				}
			}
			// The primer has given up on the module: nothing is in flight
			// and nothing more is wanted.
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
				x.mu.Lock()
				idle := x.priming == 0
				x.mu.Unlock()
				if idle {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("a primed sandbox is still being started")
				}
			}
			if x.primeWanted() != nil {
				t.Fatal("the module is still to be primed after its sandboxes failed")
			}
			if n := m.get("spawned primed"); n != maxPrimeFailures {
				t.Fatalf("%d primed sandboxes started, want %d (each failure replaced, then given up)", n, maxPrimeFailures)
			}
			if n := m.get(counted[mode]); n < maxPrimeFailures {
				t.Fatalf("%q counted %d times: %v", counted[mode], n, m.n)
			}
			if p := kindPids(x, "primed"); len(p) != 0 {
				t.Fatalf("primed sandboxes %v listed", p)
			}
			if out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty); string(out.Reply) != counterReply+"\x01" {
				t.Fatalf("get: %x", out.Reply)
			}
			if st := x.Stats(); st.PrimedTakes != 0 {
				t.Fatalf("stats %+v: a failed primed sandbox was taken", st)
			}
		})
	}
	t.Run("idle-packet", func(t *testing.T) {
		x, m := newPooled(t, SandboxConfig{PreloadPool: 1, primedLabel: hostilePrefix + "idle-packet"})
		s := newSim(t, x, "a", wasm)
		s.must(sysapi.CtxInit, "canister_init", empty)
		s.must(sysapi.CtxUpdate, "canister_update inc", empty)
		evict(t, x, "a")
		p := waitPrimed(t, x, 1)[0]
		if err := unix.Kill(p, unix.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		waitGone(t, p)
		repl := waitPrimed(t, x, 1, p)[0]
		if n := m.get("violation unsolicited message"); n != 1 {
			t.Fatalf("counted %d times: %v", n, m.n)
		}
		if out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty); string(out.Reply) != counterReply+"\x01" {
			t.Fatalf("get: %x", out.Reply)
		}
		if got := sandboxPid(x, "a"); got != repl {
			t.Fatalf("a runs in %d, not in the replacement primed sandbox %d", got, repl)
		}
	})
}

// A primed sandbox whose load is refused (an artifact the worker cannot
// deserialize, though it matches its recorded hash) is reported and the
// module is not primed again; the canister's own next message compiles the
// module again, as a refused load always does, and runs.
func TestPrimedLoadFailure(t *testing.T) {
	x, m := newPooled(t, SandboxConfig{PreloadPool: 1})
	wasm := wasmFile(t, corpusDir, "counter")
	s := newSim(t, x, "a", wasm)
	s.must(sysapi.CtxInit, "canister_init", empty)
	s.must(sysapi.CtxUpdate, "canister_update inc", empty)
	h := sha256.Sum256(wasm)
	junk := []byte("not an artifact at all")
	if err := os.WriteFile(x.artifactPath(h, ".cwasm"), junk, 0o600); err != nil {
		t.Fatal(err)
	}
	info, err := os.ReadFile(x.artifactPath(h, ".info"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(junk)
	copy(info, sum[:])
	if err := os.WriteFile(x.artifactPath(h, ".info"), info, 0o600); err != nil {
		t.Fatal(err)
	}
	x.sealed.drop(h)
	evict(t, x, "a")
	for deadline := time.Now().Add(time.Minute); x.Stats().PrimeFailures == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v: the refused load was not reported", x.Stats())
		}
	}
	x.mu.Lock()
	t0 := x.targetLocked(h)
	refused, inflight := t0 != nil && t0.refused, x.priming
	x.mu.Unlock()
	if !refused || inflight != 0 {
		t.Fatalf("module not marked refused (target %+v, %d in flight)", t0, inflight)
	}
	if x.primeWanted() != nil {
		t.Fatal("a refused module is to be primed again")
	}
	if st := x.Stats(); st.PrimeFailures != 1 || st.Faults[FaultFailed.String()] != 1 || m.get("spawned primed") != 1 {
		t.Fatalf("stats %+v, metrics %v: want one refused primed load", st, m.n)
	}
	if out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("get: %x", out.Reply)
	}
	if st := x.Stats(); st.Compiles != 2 || st.PrimedTakes != 0 {
		t.Fatalf("stats %+v: want the module compiled again by a's own load", st)
	}
}

// A primed sandbox that waits IdleTimeout unused is stopped as an idle
// canister sandbox is, and its module is not primed again until one of its
// canisters is evicted again; the canister itself is unaffected.
func TestPrimedSandboxIdleTimeout(t *testing.T) {
	x, m := newPooled(t, SandboxConfig{PreloadPool: 1, IdleTimeout: time.Second})
	s := newSim(t, x, "a", wasmFile(t, corpusDir, "counter"))
	s.must(sysapi.CtxInit, "canister_init", empty)
	if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("inc: %x", out.Reply)
	}
	// a's own sandbox goes idle and is evicted; its module is primed.
	p := waitPrimed(t, x, 1)[0]
	if sandboxPid(x, "a") != 0 {
		t.Fatal("a still has its own sandbox beside a primed one")
	}
	waitGone(t, p)
	x.mu.Lock()
	want, primed, priming := len(x.primeWant), len(x.primed), x.priming
	x.mu.Unlock()
	if want != 0 || primed != 0 || priming != 0 {
		t.Fatalf("after the idle primed sandbox: %d wanted modules, %d primed, %d priming; want none", want, primed, priming)
	}
	if out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("get after the primed sandbox was reaped: %x (state lost?)", out.Reply)
	}
	st := x.Stats()
	if st.PrimedTakes != 0 || st.PrimeFailures != 0 || len(st.Faults) != 0 || m.get("spawned primed") != 1 {
		t.Fatalf("stats %+v, metrics %v: want one primed spawn, never taken, no fault", st, m.n)
	}
}
