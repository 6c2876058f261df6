package exec

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
)

// Primed sandboxes: a blank sandbox must still load its canister's module
// (deserialize the artifact, publish its code, build its memory images)
// before the canister's first message runs, which costs several messages.
// When a canister is evicted (idle, or to make room), its module is likely
// to be wanted again soon: the primer starts a sandbox, confined and
// verified like a blank one, and has it load that module ahead of time
// (boundary.KindWarm, engine.Warm). The evicted canister's next message
// takes it and only restores the canister's state.
//
// A primed sandbox holds one module and nothing of any canister; it serves
// only a canister whose next message is for that module (hash), and, like a
// blank sandbox, exactly one canister for the rest of its life. It is
// watched as blank sandboxes are (idle watch, idle CPU and memory), counts against
// MaxSandboxes and MaxTotalRSS and gives way first when room is needed,
// and is stopped when no evicted canister wants its module any more (the
// canister came back on another sandbox, was deleted, or newer evictions
// pushed the module out of the PreloadPool most recent ones) or when it has
// waited IdleTimeout unused, as an idle canister sandbox would be: its
// module is then no longer primed until one of its canisters is evicted
// again, so an unused module does not hold a sandbox forever. A primed
// sandbox that fails its load (crash, hang, a wrong answer) is killed and
// counted, and another is started, at most maxPrimeFailures times per
// module; a load the sandbox reports it could not do (a refused artifact)
// is not tried again for that module.

// primedLabel is a primed sandbox's label (its cgroup name and process
// arguments), as blankLabel for blank ones.
const primedLabel = "primed"

// maxPrimeFailures bounds the primed sandboxes of one module that may fail
// before the module is no longer primed.
const maxPrimeFailures = 3

// primeTarget is a module to keep primed: that of recently evicted
// canisters.
type primeTarget struct {
	hash      [32]byte
	canisters map[string]bool // the evicted canisters that run it
	inflight  bool            // a primed sandbox of it is being started
	fails     int             // primed sandboxes of it that failed
	refused   bool            // its load was refused: not tried again
}

// notePrime records that canisterID, running module h, was evicted.
func (x *Sandboxed) notePrime(canisterID string, h [32]byte) {
	if x.cfg.PreloadPool <= 0 || h == ([32]byte{}) {
		return
	}
	x.mu.Lock()
	var t *primeTarget
	for i, c := range x.primeWant {
		if c.hash == h {
			t = c
			x.primeWant = append(x.primeWant[:i], x.primeWant[i+1:]...)
			break
		}
	}
	if t == nil {
		t = &primeTarget{hash: h, canisters: map[string]bool{}}
	}
	t.canisters[canisterID] = true
	x.primeWant = append(x.primeWant, t) // most recent last
	var drop []*blankSandbox
	for len(x.primeWant) > x.cfg.PreloadPool {
		drop = append(drop, x.dropTargetLocked(x.primeWant[0])...)
	}
	x.mu.Unlock()
	x.stopPrimed(drop, "not wanted")
	x.kickPrime()
}

// unprime forgets canisterID's eviction (it has a sandbox again, or was
// deleted); a module no evicted canister runs any more is no longer primed.
func (x *Sandboxed) unprime(canisterID string) {
	if x.cfg.PreloadPool <= 0 {
		return
	}
	x.mu.Lock()
	var drop []*blankSandbox
	for i := 0; i < len(x.primeWant); i++ {
		t := x.primeWant[i]
		if !t.canisters[canisterID] {
			continue
		}
		delete(t.canisters, canisterID)
		if len(t.canisters) == 0 {
			drop = append(drop, x.dropTargetLocked(t)...)
			i--
		}
	}
	x.mu.Unlock()
	x.stopPrimed(drop, "not wanted")
}

// unprimeModule stops keeping module h primed (no canister runs it any
// more: ForgetModule).
func (x *Sandboxed) unprimeModule(h [32]byte) {
	if x.cfg.PreloadPool <= 0 {
		return
	}
	x.mu.Lock()
	var drop []*blankSandbox
	if t := x.targetLocked(h); t != nil {
		drop = x.dropTargetLocked(t)
	}
	x.mu.Unlock()
	x.stopPrimed(drop, "module released")
}

// dropTargetLocked removes t from the wanted modules and takes its primed
// sandboxes out of the pool, for the caller to stop (x.mu held).
func (x *Sandboxed) dropTargetLocked(t *primeTarget) []*blankSandbox {
	for i, c := range x.primeWant {
		if c == t {
			x.primeWant = append(x.primeWant[:i], x.primeWant[i+1:]...)
			break
		}
	}
	var drop []*blankSandbox
	keep := x.primed[:0]
	for _, b := range x.primed {
		if b.module == t.hash {
			drop = append(drop, b)
			x.blankMem -= b.mem
		} else {
			keep = append(keep, b)
		}
	}
	clear(x.primed[len(keep):])
	x.primed = keep
	return drop
}

// targetLocked returns the wanted module h, or nil (x.mu held).
func (x *Sandboxed) targetLocked(h [32]byte) *primeTarget {
	for _, t := range x.primeWant {
		if t.hash == h {
			return t
		}
	}
	return nil
}

// stopPrimed stops primed sandboxes taken out of the pool.
func (x *Sandboxed) stopPrimed(bs []*blankSandbox, reason string) {
	for _, b := range bs {
		x.cfg.Logger.Info("primed sandbox stopped", "reason", reason, "pid", b.proc.Pid())
		x.stopBlank(b)
	}
}

// kickPrime wakes the primer (never blocks).
func (x *Sandboxed) kickPrime() {
	if x.cfg.PreloadPool <= 0 {
		return
	}
	select {
	case x.reprime <- struct{}{}:
	default:
	}
}

// primer keeps a primed sandbox for each wanted module while there is
// room.
func (x *Sandboxed) primer() {
	x.keepStarting(x.reprime, "primed sandbox not started", func(ctx context.Context) (bool, error) {
		t := x.primeWanted()
		if t == nil {
			return false, nil
		}
		return true, x.addPrimed(ctx, t)
	})
}

// primeWanted returns the most recently wanted module that has no primed
// sandbox yet, if the node has room for one more sandbox (count and memory
// budgets), and marks its start in flight.
func (x *Sandboxed) primeWanted() *primeTarget {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed || len(x.primed)+x.priming >= x.cfg.PreloadPool {
		return nil
	}
	if x.live+len(x.blanks)+x.filling+len(x.primed)+x.priming+1 > x.cfg.MaxSandboxes ||
		x.cfg.MaxTotalRSS > 0 && x.rss+x.blankMem >= x.cfg.MaxTotalRSS {
		return nil
	}
	for i := len(x.primeWant) - 1; i >= 0; i-- {
		t := x.primeWant[i]
		if t.inflight || t.refused || t.fails >= maxPrimeFailures {
			continue
		}
		has := false
		for _, b := range x.primed {
			has = has || b.module == t.hash
		}
		if has {
			continue
		}
		t.inflight = true
		x.priming++
		return t
	}
	return nil
}

// addPrimed starts a sandbox and has it load t's module (t marked in
// flight by primeWanted). An error is a start that failed (the primer
// backs off); a sandbox that failed its load was killed and counted here.
func (x *Sandboxed) addPrimed(ctx context.Context, t *primeTarget) (err error) {
	var b *blankSandbox
	defer func() {
		x.mu.Lock()
		x.priming--
		t.inflight = false
		keep := b != nil && !x.closed && x.targetLocked(t.hash) == t &&
			x.live+len(x.blanks)+len(x.primed)+1 <= x.cfg.MaxSandboxes
		if keep {
			x.primed = append(x.primed, b)
			x.blankMem += b.mem
		}
		x.mu.Unlock()
		if b != nil && !keep {
			_ = b.proc.Kill()
			waitExit(b.proc)
			b.conn.Raw().Close()
		} else if keep {
			go x.watchBlank(b)
		}
	}()
	f, err := x.openArtifact(t.hash)
	if err != nil {
		// Compiled again only on a canister's own load (it has the Wasm).
		x.cfg.Logger.Info("module not primed: no artifact", "module", shortHash(t.hash), "err", err)
		x.mu.Lock()
		t.refused = true
		x.mu.Unlock()
		return nil
	}
	defer f.Close()
	owner := &atomic.Pointer[string]{}
	label := primedLabel
	owner.Store(&label)
	spec := x.spec(x.cfg.primedLabel, boundary.ModeCanister, x.cfg.MemoryBytes)
	log := x.cfg.Logger
	spec.Stderr = func(line string) { log.Info("sandbox stderr", "canister", *owner.Load(), "line", line) }
	proc, conn, err := x.startKind(ctx, "", "primed", spec, boundary.ModeCanister)
	if err != nil {
		return err
	}
	id := x.nextID.Add(1)
	_, err = exchange(ctx, conn, x.cfg.StartTimeout, func() (struct{}, error) {
		if err := conn.Send(&boundary.Msg{Kind: boundary.KindWarm, ID: id, Body: boundary.EncodeHash(t.hash), Files: []*os.File{f}}); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, conn.AwaitLoaded(id, t.hash, x.logFunc(primedLabel))
	})
	if err != nil {
		if ctx.Err() != nil {
			_ = proc.Kill()
			waitExit(proc)
			conn.Raw().Close()
			return ctx.Err()
		}
		err = x.fail(primedLabel, "warm", proc, x.cfg.StartTimeout, err)
		conn.Raw().Close()
		var re *boundary.RemoteError
		x.mu.Lock()
		if errors.As(err, &re) {
			t.refused = true
		} else {
			t.fails++
		}
		retried := !t.refused && t.fails < maxPrimeFailures
		x.mu.Unlock()
		x.count(func(s *SandboxStats) { s.PrimeFailures++ })
		x.cfg.Logger.Warn("primed sandbox failed its load", "module", shortHash(t.hash), "err", err, "retried", retried)
		x.kickPrime() // a replacement, if the module may still be primed
		return nil
	}
	var mem uint64
	if x.cfg.MaxTotalRSS > 0 {
		mem, _ = memoryOf(proc)
	}
	b = &blankSandbox{proc: proc, conn: conn, started: time.Now(), owner: owner, watching: make(chan struct{}), mem: mem, module: t.hash}
	return nil
}

// primeFailed counts a primed sandbox that misbehaved while it waited.
func (x *Sandboxed) primeFailed(h [32]byte) {
	x.mu.Lock()
	if t := x.targetLocked(h); t != nil {
		t.fails++
	}
	x.mu.Unlock()
	x.count(func(s *SandboxStats) { s.PrimeFailures++ })
	x.kickPrime()
}

// takePrimed gives canisterID a primed sandbox that has loaded module h, or
// nil when there is none. As takeBlank, it has passed its idle watch.
func (x *Sandboxed) takePrimed(canisterID string, h [32]byte) *blankSandbox {
	if x.cfg.PreloadPool <= 0 {
		return nil
	}
	for {
		x.mu.Lock()
		var b *blankSandbox
		for i, c := range x.primed {
			if c.module == h {
				b = c
				x.primed = append(x.primed[:i], x.primed[i+1:]...)
				x.blankMem -= b.mem
				break
			}
		}
		x.mu.Unlock()
		if b == nil {
			return nil
		}
		b.conn.StopWatch()
		<-b.watching
		if err := b.watchErr; err != nil && !errors.Is(err, boundary.ErrInterrupted) {
			x.blankMisbehaved(b, err)
			x.primeFailed(h)
			continue
		}
		b.conn.ResumeIO()
		if exited(b.proc) {
			x.blankMisbehaved(b, boundary.ErrClosed)
			x.primeFailed(h)
			continue
		}
		id := canisterID
		b.owner.Store(&id)
		x.count(func(s *SandboxStats) { s.PrimedTakes++ })
		return b
	}
}

// reapPrimed stops the primed sandboxes that have waited longer than
// IdleTimeout and forgets their modules (a reaper tick, as reapIdle).
func (x *Sandboxed) reapPrimed() {
	if x.cfg.PreloadPool <= 0 {
		return
	}
	x.mu.Lock()
	var drop []*blankSandbox
	for i := 0; i < len(x.primed); i++ {
		b := x.primed[i]
		if time.Since(b.started) <= x.cfg.IdleTimeout {
			continue
		}
		if t := x.targetLocked(b.module); t != nil {
			drop = append(drop, x.dropTargetLocked(t)...)
			i = -1 // dropTargetLocked rewrote x.primed
		}
	}
	x.mu.Unlock()
	x.stopPrimed(drop, "idle")
	for range drop {
		x.count(func(s *SandboxStats) { s.Evicted++ })
		x.cfg.Metrics.SandboxEvicted("idle")
	}
}

// trimPrimed stops the oldest primed sandbox to make room; false when there
// is none.
func (x *Sandboxed) trimPrimed() bool {
	x.mu.Lock()
	if len(x.primed) == 0 {
		x.mu.Unlock()
		return false
	}
	b := x.primed[0]
	x.primed = x.primed[1:]
	x.blankMem -= b.mem
	x.mu.Unlock()
	x.stopPrimed([]*blankSandbox{b}, "budget")
	x.count(func(s *SandboxStats) { s.Evicted++ })
	x.cfg.Metrics.SandboxEvicted("pool")
	return true
}

func shortHash(h [32]byte) string {
	const hexDigits = "0123456789abcdef"
	b := make([]byte, 16)
	for i := range 8 {
		b[2*i], b[2*i+1] = hexDigits[h[i]>>4], hexDigits[h[i]&15]
	}
	return string(b)
}
