package exec

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
)

// The warm pool: blank canister sandboxes, spawned, confined and verified
// exactly as a canister's own (sandbox.Start, every layer checked from the
// outside, the worker's Ready received) but holding no canister. A canister
// that needs a sandbox (new, evicted, upgraded, or its sandbox died) takes
// one and only loads its module and runs; the pool is refilled in the
// background after the exchange. A blank sandbox serves exactly one
// canister for the rest of its life: it is never returned to the pool (its
// worker forbids new executable memory after its one load, and it has held
// that canister's memory).
//
// Blank sandboxes are watched like idle canister sandboxes (a packet, a
// descriptor or a hang-up kills them; so does CPU use or memory growth),
// count against MaxSandboxes and MaxTotalRSS (their memory read again at
// each idle look; they never make a canister's sandbox be evicted: they
// fill only room that is free, and are the first to go when room is
// needed), get a host uid of their own from HostIDs, and are killed by
// Close.

// blankLabel is a blank sandbox's label (its cgroup name and process
// arguments); its log lines name the canister once one takes it.
const blankLabel = "blank"

// blankSandbox is a live sandbox in the warm pool.
type blankSandbox struct {
	proc    Process
	conn    *boundary.Conn
	started time.Time
	owner   *atomic.Pointer[string] // label of its stderr lines: "blank", then the canister
	// watching is closed when its idle watch ends; watchErr (written before)
	// is why: nil or ErrInterrupted when the pool stopped it, else what the
	// sandbox did.
	watching chan struct{}
	watchErr error
	idleCPU  cpuMark
	mem      uint64 // counted in x.blankMem while it is in the pool
	// module is the module a primed sandbox has loaded (primed.go); zero
	// for a blank one.
	module [32]byte
}

// primed reports whether b is a primed sandbox rather than a blank one.
func (b *blankSandbox) primed() bool { return b.module != [32]byte{} }

// label is b's kind as logs and cordon ps name it.
func (b *blankSandbox) label() string {
	if b.primed() {
		return primedLabel
	}
	return blankLabel
}

// kickFill wakes the filler (never blocks).
func (x *Sandboxed) kickFill() {
	if x.cfg.WarmPool <= 0 {
		return
	}
	select {
	case x.refill <- struct{}{}:
	default:
	}
}

// filler keeps the pool at WarmPool blank sandboxes while there is room.
func (x *Sandboxed) filler() {
	x.keepStarting(x.refill, "warm pool: blank sandbox not started", func(ctx context.Context) (bool, error) {
		if !x.blankWanted() {
			return false, nil
		}
		return true, x.addBlank(ctx)
	})
}

// keepStarting runs a loop that starts sandboxes ahead of need (the warm
// pool's filler, the primer): woken by wake, it calls start until start has
// nothing left to start, one start at a time. After a failed start it
// waits (doubling from 100 ms up to 30 s) before trying again, so a host
// that cannot start sandboxes is not hammered.
func (x *Sandboxed) keepStarting(wake <-chan struct{}, failed string, start func(context.Context) (started bool, err error)) {
	defer x.reaper.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-x.stop
		cancel()
	}()
	backoff := time.Duration(0)
	for {
		if backoff > 0 {
			select {
			case <-x.stop:
				return
			case <-time.After(backoff):
			}
		} else {
			select {
			case <-x.stop:
				return
			case <-wake:
			}
		}
		for {
			started, err := start(ctx)
			if !started {
				break
			}
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				backoff = min(max(2*backoff, 100*time.Millisecond), 30*time.Second)
				x.cfg.Logger.Warn(failed, "err", err, "retry_in", backoff)
				break
			}
			backoff = 0
		}
	}
}

// blankWanted reports whether the pool is short of blank sandboxes and the
// node has room for one more (count and memory budgets), and if so counts
// the start as in flight.
func (x *Sandboxed) blankWanted() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed || len(x.blanks)+x.filling >= x.cfg.WarmPool {
		return false
	}
	if x.live+len(x.blanks)+x.filling+len(x.primed)+x.priming+1 > x.cfg.MaxSandboxes ||
		x.cfg.MaxTotalRSS > 0 && x.rss+x.blankMem >= x.cfg.MaxTotalRSS {
		return false
	}
	x.filling++
	return true
}

// addBlank starts one blank sandbox and puts it in the pool (x.filling was
// counted by blankWanted).
func (x *Sandboxed) addBlank(ctx context.Context) error {
	owner := &atomic.Pointer[string]{}
	label := blankLabel
	owner.Store(&label)
	spec := x.spec(x.cfg.blankLabel, boundary.ModeCanister, x.cfg.MemoryBytes)
	log := x.cfg.Logger
	spec.Stderr = func(line string) { log.Info("sandbox stderr", "canister", *owner.Load(), "line", line) }
	proc, conn, err := x.start(ctx, "", spec, boundary.ModeCanister)
	if err == nil {
		// One request, so that the worker, idle after it, gives back what
		// its start-up left resident (as an idle canister sandbox does):
		// a blank sandbox may wait long, and counts in the memory budget.
		id := x.nextID.Add(1)
		_, err = exchange(ctx, conn, x.cfg.StartTimeout, func() (struct{}, error) {
			if err := conn.Send(&boundary.Msg{Kind: boundary.KindPing, ID: id}); err != nil {
				return struct{}{}, err
			}
			return struct{}{}, conn.AwaitPong(id, x.logFunc(blankLabel))
		})
		if err != nil {
			err = x.fail(blankLabel, "start", proc, x.cfg.StartTimeout, err)
			conn.Raw().Close()
		}
	}
	var mem uint64
	if err == nil && x.cfg.MaxTotalRSS > 0 {
		mem, _ = memoryOf(proc) // after the trim: what it holds while it waits
	}
	x.mu.Lock()
	x.filling--
	if err != nil {
		x.mu.Unlock()
		return err
	}
	// Room again: a canister may have needed a cold start meanwhile.
	if x.closed || x.live+len(x.blanks)+len(x.primed)+1 > x.cfg.MaxSandboxes {
		x.mu.Unlock()
		_ = proc.Kill()
		waitExit(proc)
		conn.Raw().Close()
		return nil
	}
	b := &blankSandbox{proc: proc, conn: conn, started: time.Now(), owner: owner, watching: make(chan struct{}), mem: mem}
	x.blanks = append(x.blanks, b)
	x.blankMem += mem
	x.mu.Unlock()
	go x.watchBlank(b)
	return nil
}

// watchBlank watches a blank sandbox's socket while it is in the pool: a
// sandbox that says anything before it was given work, or exits, is removed,
// killed, counted and replaced. If a canister took it meanwhile, the taker
// sees watchErr and does the same.
func (x *Sandboxed) watchBlank(b *blankSandbox) {
	err := b.conn.WatchIdle()
	b.watchErr = err
	close(b.watching)
	if errors.Is(err, boundary.ErrInterrupted) || errors.Is(err, net.ErrClosed) {
		return
	}
	if !x.removeBlank(b) {
		return // taken: the taker handles it
	}
	x.blankMisbehaved(b, err)
	if b.primed() {
		x.primeFailed(b.module)
		return
	}
	x.kickFill()
}

// removeBlank takes b (blank or primed) out of the pool; false if it was
// no longer there.
func (x *Sandboxed) removeBlank(b *blankSandbox) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	list := &x.blanks
	if b.primed() {
		list = &x.primed
	}
	for i, c := range *list {
		if c == b {
			*list = append((*list)[:i], (*list)[i+1:]...)
			x.blankMem -= b.mem
			return true
		}
	}
	return false
}

// stopBlank ends a blank sandbox that is out of the pool.
func (x *Sandboxed) stopBlank(b *blankSandbox) {
	b.conn.StopWatch()
	<-b.watching
	_ = b.proc.Kill()
	waitExit(b.proc)
	b.conn.Raw().Close()
}

// blankMisbehaved kills, logs and counts a blank sandbox out of the pool
// whose idle watch saw err (a packet, descriptors, its exit).
func (x *Sandboxed) blankMisbehaved(b *blankSandbox, err error) {
	_ = x.fail(b.label(), "idle", b.proc, 0, err)
	b.conn.Raw().Close()
}

// takeBlank gives a canister a blank sandbox from the pool, or nil when it
// has none (the caller then starts one). The sandbox has passed its idle
// watch: it said nothing and is alive.
func (x *Sandboxed) takeBlank(canisterID string) *blankSandbox {
	for {
		x.mu.Lock()
		if len(x.blanks) == 0 {
			x.mu.Unlock()
			return nil
		}
		b := x.blanks[0]
		x.blanks = x.blanks[1:]
		x.blankMem -= b.mem
		x.mu.Unlock()
		b.conn.StopWatch()
		<-b.watching
		if err := b.watchErr; err != nil && !errors.Is(err, boundary.ErrInterrupted) {
			x.blankMisbehaved(b, err)
			x.kickFill()
			continue
		}
		b.conn.ResumeIO()
		if exited(b.proc) {
			x.blankMisbehaved(b, boundary.ErrClosed)
			x.kickFill()
			continue
		}
		id := canisterID
		b.owner.Store(&id)
		x.count(func(s *SandboxStats) { s.PoolTakes++ })
		return b
	}
}

// trimBlank stops one blank sandbox, else one primed sandbox, to make room
// for a canister's (the node is over its count or memory budget); false
// when there is none.
func (x *Sandboxed) trimBlank() bool {
	x.mu.Lock()
	if len(x.blanks) == 0 {
		x.mu.Unlock()
		return x.trimPrimed()
	}
	b := x.blanks[len(x.blanks)-1]
	x.blanks = x.blanks[:len(x.blanks)-1]
	x.blankMem -= b.mem
	x.mu.Unlock()
	x.cfg.Logger.Info("blank sandbox stopped", "reason", "budget", "pid", b.proc.Pid())
	x.stopBlank(b)
	x.count(func(s *SandboxStats) { s.Evicted++ })
	x.cfg.Metrics.SandboxEvicted("pool")
	return true
}

// checkIdleBlanks applies the idle checks to the blank and primed
// sandboxes: each one's memory now counts in the budget, and one that used
// more than IdleCPUPercent of the wall time since the last look, or whose
// memory grew by more than IdleMemoryGrowth from the least it held since
// the first look after it joined the pool, is killed. A primed sandbox has loaded an artifact
// the compiler sandbox wrote, which its module may have taken over; a
// blank one has run nothing but the worker, so for it this is defence in
// depth, at the cost of two /proc or cgroup reads a second.
func (x *Sandboxed) checkIdleBlanks() {
	x.mu.Lock()
	blanks := append(append([]*blankSandbox(nil), x.blanks...), x.primed...)
	x.mu.Unlock()
	for _, b := range blanks {
		var used time.Duration
		c, cpuOK := b.proc.(interface{ CPUTime() (time.Duration, error) })
		if cpuOK {
			var err error
			if used, err = c.CPUTime(); err != nil {
				continue // exited: its watch notices
			}
		}
		mem, err := memoryOf(b.proc)
		memOK := err == nil
		now := time.Now()
		x.mu.Lock()
		if memOK && x.inPoolLocked(b) {
			x.blankMem = x.blankMem - b.mem + mem
			b.mem = mem
		}
		mark := b.idleCPU
		b.idleCPU = cpuMark{ok: true, at: now, cpu: used, mem: mark.mem, memOK: mark.memOK}
		if memOK && (!mark.memOK || mem < mark.mem) {
			b.idleCPU.mem, b.idleCPU.memOK = mem, true
		}
		x.mu.Unlock()
		if !mark.ok {
			continue
		}
		spent, wall := used-mark.cpu, now.Sub(mark.at)
		var fault string
		switch {
		case cpuOK && spent > max(5*10*time.Millisecond, wall*time.Duration(x.cfg.IdleCPUPercent)/100):
			fault = "idle_cpu"
		case memOK && mark.memOK && mem > mark.mem && mem-mark.mem > x.cfg.IdleMemoryGrowth:
			fault = "idle_memory"
		default:
			continue
		}
		if !x.removeBlank(b) {
			continue // taken meanwhile: from now on it is a canister's, checked as such
		}
		if fault == "idle_cpu" {
			x.cfg.Logger.Warn(b.label()+" sandbox killed: it used CPU before it was given work", "pid", b.proc.Pid(),
				"cpu", spent, "wall", wall, "limit_percent", x.cfg.IdleCPUPercent)
		} else {
			x.cfg.Logger.Warn(b.label()+" sandbox killed: its memory grew before it was given work", "pid", b.proc.Pid(),
				"memory", mem, "least_since_first_look", mark.mem, "limit", x.cfg.IdleMemoryGrowth)
		}
		x.stopBlank(b)
		x.count(func(s *SandboxStats) { s.Faults[fault]++ })
		x.cfg.Metrics.SandboxCrashed(fault)
		if b.primed() {
			x.primeFailed(b.module)
			continue
		}
		x.kickFill()
	}
}

// inPoolLocked reports whether b (blank or primed) is in the pool (x.mu
// held).
func (x *Sandboxed) inPoolLocked(b *blankSandbox) bool {
	list := x.blanks
	if b.primed() {
		list = x.primed
	}
	return slices.Contains(list, b)
}

// closeBlanks kills every blank and primed sandbox (Close).
func (x *Sandboxed) closeBlanks() {
	x.mu.Lock()
	blanks := append(x.blanks, x.primed...)
	x.blanks, x.primed, x.blankMem = nil, nil, 0
	x.mu.Unlock()
	for _, b := range blanks {
		x.stopBlank(b)
	}
}
