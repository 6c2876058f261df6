package exec

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// twoWords is a canister whose update bumps word A (page 0), computes a
// while, then copies it to word B (two Wasm pages further): a query that
// saw the memory of an update in progress, or another query's writes, would
// find them different. Its queries write their own garbage into A, which
// must stay private to them.
const twoWords = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory (export "memory") 4)
  (data (i32.const 100) "torn")
  (func $spin (param $n i32)
    (loop $l
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $n) (i32.const 0)))))
  (func (export "canister_init"))
  (func (export "canister_update bump")
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (call $spin (i32.const 200000))
    (i32.store (i32.const 131072) (i32.load (i32.const 0)))
    (i32.store (i32.const 200) (i32.load (i32.const 0)))
    (call $append (i32.const 200) (i32.const 4))
    (call $reply))
  (func (export "canister_query check")
    (local $a i32)
    (local.set $a (i32.load (i32.const 0)))
    (i32.store (i32.const 0) (i32.add (local.get $a) (i32.const 1000)))
    (call $spin (i32.const 200000))
    (if (i32.ne (local.get $a) (i32.load (i32.const 131072)))
      (then (call $trap (i32.const 100) (i32.const 4))))
    (if (i32.ne (i32.add (local.get $a) (i32.const 1000)) (i32.load (i32.const 0)))
      (then (call $trap (i32.const 100) (i32.const 4))))
    (i32.store (i32.const 200) (local.get $a))
    (call $append (i32.const 200) (i32.const 4))
    (call $reply))
  (func (export "canister_query spin") (loop $l (br $l)))
  (func (export "canister_query quick") (call $reply)))`

// committed is a canister's committed state, never modified once published.
type committed struct {
	n       uint32 // bumps committed
	heap    *state.PageMap
	stable  *state.PageMap
	globals []state.Global
}

func twoWordsSim(t *testing.T, x Executor, id string) (*sim, *committed) {
	t.Helper()
	wasm, err := wasmtime.Wat2Wasm(twoWords)
	if err != nil {
		t.Fatal(err)
	}
	s := newSim(t, x, id, wasm)
	s.must(sysapi.CtxInit, "canister_init", empty)
	return s, &committed{heap: s.heap, stable: s.stable, globals: s.globals}
}

// execOn runs entry on the committed state c.
func execOn(ctx context.Context, s *sim, c *committed, kind sysapi.Context, entry string) (*sysapi.Output, error) {
	in := s.input(kind, entry, empty)
	in.Stable = c.stable
	return s.x.Execute(ctx, s.id, &Request{Module: s.m, Heap: c.heap, Globals: c.globals, Input: in})
}

// bump runs an update on c and returns the state it commits.
func bump(t *testing.T, s *sim, c *committed) *committed {
	out, err := execOn(context.Background(), s, c, sysapi.CtxUpdate, "canister_update bump")
	if err != nil || out.Trapped {
		t.Errorf("bump: %v %+v", err, out)
		return c
	}
	heap, stable := c.heap.Clone(), c.stable.Clone()
	if err := heap.Apply(out.Heap); err != nil {
		t.Fatal(err)
	}
	if err := stable.Apply(out.Stable); err != nil {
		t.Fatal(err)
	}
	return &committed{n: c.n + 1, heap: heap, stable: stable, globals: out.Globals}
}

func word(b []byte) uint32 {
	if len(b) != 4 {
		return 1<<32 - 1
	}
	return binary.LittleEndian.Uint32(b)
}

// inFlight returns the queries admitted to id's open session (0: none).
func inFlight(x *Sandboxed, id string) int {
	sb := x.entry(id)
	if sb == nil {
		return 0
	}
	sb.smu.Lock()
	defer sb.smu.Unlock()
	if sb.sess == nil {
		return 0
	}
	return sb.sess.n
}

func newRealQueries(t *testing.T, threads int) *Sandboxed {
	// Strict: every confinement layer, the seccomp filter included, is on
	// while the worker runs executions on threads of its own.
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), QueryThreads: threads, Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	return x
}

// A real sandbox runs a second query of its canister while the first one
// still computes: the quick query is answered before the spinning one ends,
// which one execution at a time could not do.
func TestSandboxRunsQueriesConcurrently(t *testing.T) {
	x := newRealQueries(t, 4)
	s, c := twoWordsSim(t, x, "conc")
	var spun atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		in := s.input(sysapi.CtxNonReplicatedQuery, "canister_query spin", empty)
		in.Stable = c.stable
		in.Limits.Instructions = 1_000_000_000 // a second or so of work, well inside the watchdog
		out, err := x.Execute(context.Background(), s.id, &Request{Module: s.m, Heap: c.heap, Globals: c.globals, Input: in})
		spun.Store(true)
		if err != nil || !out.Trapped {
			t.Errorf("spin: %v %+v", err, out)
		}
	}()
	for inFlight(x, s.id) == 0 {
		select {
		case <-done:
			t.Fatal("the spinning query ended before it was seen in flight")
		case <-time.After(time.Millisecond):
		}
	}
	out, err := execOn(context.Background(), s, c, sysapi.CtxNonReplicatedQuery, "canister_query quick")
	if err != nil || out.Trapped {
		t.Fatalf("quick: %v %+v", err, out)
	}
	if spun.Load() {
		t.Fatal("the quick query was answered only after the spinning one: queries ran one at a time")
	}
	if st := x.Stats(); st.JoinedQueries == 0 {
		t.Fatalf("no query joined a running one: %+v", st)
	}
	<-done
	// The session drained: the sandbox is idle again, and an update runs.
	c = bump(t, s, c)
	if out, err := execOn(context.Background(), s, c, sysapi.CtxNonReplicatedQuery, "canister_query check"); err != nil || word(out.Reply) != 1 {
		t.Fatalf("check after the update: %v %+v", err, out)
	}
}

// Many concurrent queries of one canister while updates commit: each query
// sees exactly the committed state it was given (both words equal, its own
// writes private), never an update's or another query's memory.
func TestConcurrentQueriesSeeCommittedState(t *testing.T) {
	x := newRealQueries(t, 4)
	s, c0 := twoWordsSim(t, x, "torn")
	var cur atomic.Pointer[committed]
	cur.Store(c0)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() { // the updates, one at a time as the host commits them
		defer wg.Done()
		for i := 0; i < 15; i++ {
			cur.Store(bump(t, s, cur.Load()))
		}
		close(stop)
	}()
	var answered atomic.Int64
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					if i >= 5 {
						return
					}
				default:
				}
				c := cur.Load()
				out, err := execOn(context.Background(), s, c, sysapi.CtxNonReplicatedQuery, "canister_query check")
				if err != nil {
					t.Errorf("query: %v", err)
					return
				}
				if out.Trapped || word(out.Reply) != c.n {
					t.Errorf("query on the state after %d updates: trapped %v (%s), reply %d", c.n, out.Trapped, out.TrapMessage, word(out.Reply))
					return
				}
				answered.Add(1)
			}
		}()
	}
	wg.Wait()
	if st := x.Stats(); len(st.Faults) != 0 {
		t.Fatalf("stats: %+v", st)
	}
	t.Logf("%d queries answered, %d joined a running one", answered.Load(), x.Stats().JoinedQueries)
	if got := cur.Load().n; got != 15 {
		t.Fatalf("%d updates committed", got)
	}
}

// Concurrent queries give the same replies, instruction counts and traps in
// both isolation modes.
func TestConcurrentQueriesDifferential(t *testing.T) {
	inp, err := NewInProcess(engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	sbx := newRealQueries(t, 4)
	type result struct {
		reply   string
		instr   uint64
		trapped bool
		msg     string
	}
	runAll := func(x Executor) []result {
		s, c := twoWordsSim(t, x, "diff")
		for i := 0; i < 3; i++ {
			c = bump(t, s, c)
		}
		res := make([]result, 24)
		var wg sync.WaitGroup
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				entry := "canister_query check"
				in := s.input(sysapi.CtxNonReplicatedQuery, entry, empty)
				if i%3 == 2 { // runs out of instructions
					in = s.input(sysapi.CtxNonReplicatedQuery, "canister_query spin", empty)
					in.Limits.Instructions = 1_000_000 + uint64(i)
				}
				in.Stable = c.stable
				out, err := x.Execute(context.Background(), s.id, &Request{Module: s.m, Heap: c.heap, Globals: c.globals, Input: in})
				if err != nil {
					t.Errorf("query %d: %v", i, err)
					return
				}
				res[i] = result{string(out.Reply), out.Instructions, out.Trapped, out.TrapMessage}
			}()
		}
		wg.Wait()
		return res
	}
	a, b := runAll(inp), runAll(sbx)
	for i := range a {
		if a[i] != b[i] {
			t.Errorf("query %d: in-process %+v, sandboxed %+v", i, a[i], b[i])
		}
	}
	if b[0].reply != "\x03\x00\x00\x00" || !b[2].trapped {
		t.Fatalf("unexpected results: %+v", b[:3])
	}
}

// A sandbox with two queries in flight that lies about their answers: every
// lie kills it, every query in flight gets a clean error (or its honest
// answer when that came first), the canister's state is untouched, and the
// next query gets a fresh sandbox.
func TestHostileConcurrentQueries(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	ref, err := engine.New(engine.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	mod, err := ref.Compile(wasm, engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// ips is the watchdog's InstructionsPerSecond: 1<<62 gives the
	// queries' instruction limit (2e9, sim.input) no time.
	newHarness := func(t *testing.T, ips uint64) *harness {
		h := &harness{t: t, victim: "victim", ref: ref, mod: mod}
		x, err := NewSandboxed(SandboxConfig{Dir: dir, Logger: testLogger(t), Launch: h.launch, QueryThreads: 4,
			WatchdogBase: time.Second, InstructionsPerSecond: ips, StartTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		h.x = x
		return h
	}
	// Warm up as TestHostileSandbox does: compile into the shared cache,
	// and let wasmtime make the reference module's memory image (a memfd
	// it keeps) before descriptors are counted.
	{
		h := newHarness(t, 1<<62)
		v := newSim(t, h.x, "victim", wasm)
		v.must(sysapi.CtxInit, "canister_init", empty)
		h.x.Close()
		if _, err := ref.Run(&engine.Request{Module: mod, RunStart: true, Input: v.input(sysapi.CtxInit, "canister_init", empty)}); err != nil {
			t.Fatal(err)
		}
	}
	// pair receives the second query while the first is unanswered (the
	// host sends it only if the two run at once), then lets f answer.
	pair := func(f func(s *standIn, q1, q2 *boundary.Request) bool) script {
		return func(s *standIn, q1 *boundary.Request) bool {
			q2, err := s.c.NextRequest()
			if err != nil || q2.Kind != boundary.KindExecute {
				return false
			}
			return f(s, q1, q2)
		}
	}
	violation := func(kind boundary.ViolationKind) func(error) error {
		return func(err error) error {
			var se *SandboxError
			if !errors.As(err, &se) || se.Fault != FaultViolation || se.Violation.Kind != kind {
				return fmt.Errorf("want a %s violation, got %v", kind, err)
			}
			return nil
		}
	}
	fault := func(f Fault) func(error) error {
		return func(err error) error {
			var se *SandboxError
			if !errors.As(err, &se) || se.Fault != f {
				return fmt.Errorf("want a %s, got %v", f, err)
			}
			return nil
		}
	}
	cases := []struct {
		name   string
		sc     script
		ok     int               // queries answered honestly
		check  func(error) error // the others' error
		killed bool
		// ips, if set, is the watchdog's InstructionsPerSecond, and
		// timeout the deadline every query must report.
		ips     uint64
		timeout time.Duration
	}{
		{name: "answers out of order", ok: 2, sc: pair(func(s *standIn, q1, q2 *boundary.Request) bool {
			s.c.SendOutput(q2.ID, s.honest(q2))
			s.c.SendOutput(q1.ID, s.honest(q1))
			return true
		})},
		{name: "one answered twice", ok: 1, killed: true, check: violation(boundary.VID), sc: pair(func(s *standIn, q1, q2 *boundary.Request) bool {
			out := s.honest(q1)
			s.c.SendOutput(q1.ID, out)
			s.c.SendOutput(q1.ID, out)
			s.hang()
			return false
		})},
		{name: "an id not asked", killed: true, check: violation(boundary.VID), sc: pair(func(s *standIn, q1, q2 *boundary.Request) bool {
			s.c.SendOutput(q2.ID+1000, s.honest(q2))
			s.hang()
			return false
		})},
		{name: "log for an id not asked", killed: true, check: violation(boundary.VID), sc: pair(func(s *standIn, q1, q2 *boundary.Request) bool {
			s.c.SendLog(q2.ID+7, boundary.LogInfo, "hello")
			s.hang()
			return false
		})},
		{name: "interleaved answers", killed: true, check: violation(boundary.VFraming), sc: pair(func(s *standIn, q1, q2 *boundary.Request) bool {
			s.packet(header(boundary.KindOutput, 0, q1.ID, 1000, []byte{1, 2, 3}), nil)
			s.c.SendOutput(q2.ID, s.honest(q2))
			s.hang()
			return false
		})},
		{name: "garbage after an answer", ok: 1, killed: true, check: violation(boundary.VFraming), sc: pair(func(s *standIn, q1, q2 *boundary.Request) bool {
			s.c.SendOutput(q1.ID, s.honest(q1))
			s.packet([]byte("\x7fELF garbage garbage garbage garbage"), nil)
			s.hang()
			return false
		})},
		{name: "one never answered", ok: 1, killed: true, check: fault(FaultTimeout), sc: pair(func(s *standIn, q1, q2 *boundary.Request) bool {
			s.c.SendOutput(q2.ID, s.honest(q2))
			s.hang()
			return false
		})},
		// Queries in flight share the sandbox's CPU, so each one's watchdog
		// allows their compute time together: 1 s + 2 s of its own, + 2 s
		// of the other's, for both (alone, each would have 3 s).
		{name: "both never answered", killed: true, ips: 1e9, timeout: 5 * time.Second, check: fault(FaultTimeout), sc: pair(func(s *standIn, q1, q2 *boundary.Request) bool {
			s.hang()
			return false
		})},
		// The query sent to a sandbox that was already running is retried
		// once, as any execution on a reused sandbox that died: the next
		// stand-in answers it honestly.
		{name: "exit with both in flight", ok: 1, check: fault(FaultCrash), sc: func() script {
			var exited atomic.Bool
			return func(s *standIn, q1 *boundary.Request) bool {
				if exited.CompareAndSwap(false, true) {
					_, _ = s.c.NextRequest()
					return false
				}
				s.c.SendOutput(q1.ID, s.honest(q1))
				return true
			}
		}()},
		{name: "state changes from a query", killed: true, ok: 1, check: violation(boundary.VQueryState), sc: pair(func(s *standIn, q1, q2 *boundary.Request) bool {
			s.c.SendOutput(q2.ID, s.honest(q2))
			out := s.honest(q1)
			out.Heap = state.Delta{Size: q1.Heap.Size(), Pages: []state.DirtyPage{{Index: 0, Data: new(state.Page)}}}
			s.c.SendOutput(q1.ID, out)
			s.hang()
			return false
		})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g0, f0 := runtime.NumGoroutine(), openFDs(t)
			ips := c.ips
			if ips == 0 {
				ips = 1 << 62
			}
			h := newHarness(t, ips)
			x := h.x
			victim := newSim(t, x, "victim", wasm)
			victim.must(sysapi.CtxInit, "canister_init", empty)
			victim.must(sysapi.CtxUpdate, "canister_update inc", empty)
			before := memHash(victim)
			h.set(c.sc)
			x.Forget("victim") // the next sandbox is the hostile stand-in
			errs := make([]error, 2)
			outs := make([]*sysapi.Output, 2)
			var wg sync.WaitGroup
			start := time.Now()
			for i := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					outs[i], errs[i] = victim.run(sysapi.CtxNonReplicatedQuery, "canister_query get", empty)
				}()
			}
			wg.Wait()
			if c.timeout > 0 {
				if took := time.Since(start); took < c.timeout {
					t.Errorf("killed after %v, before the deadline of %v", took, c.timeout)
				}
				for i, err := range errs {
					var se *SandboxError
					if !errors.As(err, &se) || se.Timeout != c.timeout {
						t.Errorf("query %d: want the deadline of %v, got %v", i, c.timeout, err)
					}
				}
			}
			ok := 0
			for i, err := range errs {
				if err == nil {
					if string(outs[i].Reply) != "DIDL\x00\x01\x7d\x01" {
						t.Fatalf("query %d answered %x", i, outs[i].Reply)
					}
					ok++
					continue
				}
				t.Logf("query %d: %v", i, err)
				if c.check == nil {
					t.Fatalf("query %d: %v", i, err)
				}
				if e := c.check(err); e != nil {
					t.Fatalf("query %d: %v", i, e)
				}
			}
			if ok != c.ok {
				t.Fatalf("%d queries answered, want %d", ok, c.ok)
			}
			if h.lastVictimKilled() != c.killed {
				t.Fatalf("sandbox killed: %v, want %v", h.lastVictimKilled(), c.killed)
			}
			if memHash(victim) != before {
				t.Fatal("the victim's state changed")
			}
			h.set(nil)
			if c.killed {
				// Already gone from the pool: the next query spawns an honest sandbox.
				for _, s := range x.List() {
					if s.CanisterID == "victim" {
						t.Fatal("the killed sandbox is still listed")
					}
				}
			} else {
				x.Forget("victim")
			}
			out := victim.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty)
			if string(out.Reply) != "DIDL\x00\x01\x7d\x01" {
				t.Fatalf("victim after respawn: %x", out.Reply)
			}
			out = victim.must(sysapi.CtxUpdate, "canister_update inc", empty)
			if string(out.Reply) != "DIDL\x00\x01\x7d\x02" {
				t.Fatalf("update after respawn: %x", out.Reply)
			}
			x.Close()
			settle(t, g0, f0)
		})
	}
}

// A query given up on (its context ends) returns at once; the sandbox keeps
// running it and serves the others, and is not killed for it.
func TestQueryCancelledInSession(t *testing.T) {
	x := newRealQueries(t, 4)
	s, c := twoWordsSim(t, x, "cancel")
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		in := s.input(sysapi.CtxNonReplicatedQuery, "canister_query spin", empty)
		in.Stable = c.stable
		in.Limits.Instructions = 2_000_000_000
		_, err := x.Execute(ctx, s.id, &Request{Module: s.m, Heap: c.heap, Globals: c.globals, Input: in})
		errc <- err
	}()
	for inFlight(x, s.id) == 0 {
		time.Sleep(time.Millisecond)
	}
	pid := sandboxPid(x, s.id)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled query: %v", err)
	}
	out, err := execOn(context.Background(), s, c, sysapi.CtxNonReplicatedQuery, "canister_query check")
	if err != nil || out.Trapped || word(out.Reply) != 0 {
		t.Fatalf("query beside the cancelled one: %v %+v", err, out)
	}
	// The abandoned query runs out of instructions; its answer is dropped
	// and the sandbox serves on.
	for inFlight(x, s.id) != 0 {
		time.Sleep(time.Millisecond)
	}
	c = bump(t, s, c)
	if got := sandboxPid(x, s.id); got != pid {
		t.Fatalf("sandbox %d replaced by %d", pid, got)
	}
	if st := x.Stats(); len(st.Faults) != 0 {
		t.Fatalf("faults: %+v", st.Faults)
	}
}

// The query that opens a session reads the answers itself until its own
// comes (session.lead), then hands the reading to a reader goroutine if
// other queries are still in flight: here a long query joins the opener's
// session, the opener is answered first, and a third query joins after it;
// every answer arrives, the session ends, and the sandbox is never killed.
func TestQueryLeadHandsOverReading(t *testing.T) {
	x := newRealQueries(t, 4)
	s, c := twoWordsSim(t, x, "lead")
	spin := func(limit uint64) <-chan error {
		errc := make(chan error, 1)
		go func() {
			in := s.input(sysapi.CtxNonReplicatedQuery, "canister_query spin", empty)
			in.Stable = c.stable
			in.Limits.Instructions = limit
			out, err := x.Execute(context.Background(), s.id, &Request{Module: s.m, Heap: c.heap, Globals: c.globals, Input: in})
			if err == nil && !out.Trapped {
				err = fmt.Errorf("spin with a limit of %d instructions was not stopped: %+v", limit, out)
			}
			errc <- err
		}()
		return errc
	}
	pid := sandboxPid(x, s.id)
	opener := spin(300_000_000)
	for inFlight(x, s.id) == 0 {
		time.Sleep(time.Millisecond)
	}
	joiner := spin(3_000_000_000)
	if err := <-opener; err != nil {
		t.Fatalf("opener: %v", err)
	}
	// The opener has returned; the joiner may still be in flight, its
	// answer read by the reader the opener started. A query now joins
	// (or opens) the session and is answered too.
	out, err := execOn(context.Background(), s, c, sysapi.CtxNonReplicatedQuery, "canister_query check")
	if err != nil || out.Trapped || word(out.Reply) != 0 {
		t.Fatalf("query after the opener: %v %+v", err, out)
	}
	if err := <-joiner; err != nil {
		t.Fatalf("joiner: %v", err)
	}
	for inFlight(x, s.id) != 0 {
		time.Sleep(time.Millisecond)
	}
	c = bump(t, s, c)
	if got := sandboxPid(x, s.id); got != pid {
		t.Fatalf("sandbox %d replaced by %d", pid, got)
	}
	if st := x.Stats(); len(st.Faults) != 0 {
		t.Fatalf("faults: %+v", st.Faults)
	}
}

// A sandbox fits as many concurrent queries as the boundary admits, on top
// of the instances its engine keeps: every instance's memory is a 4 GiB
// reservation, and at RLIMIT_AS 64 GiB the 16th query failed to
// instantiate ("mmap failed to reserve", reported as the canister's trap).
func TestMaxQueryThreadsFit(t *testing.T) {
	x := newRealQueries(t, boundary.MaxInFlight)
	s, c := twoWordsSim(t, x, "fit")
	// Leave as many kept instances behind as the sandbox keeps (one per
	// query thread): plain queries that end cleanly, each with a heap limit
	// of its own so that none reuses another's instance. Then commit an
	// update, so that they are all kept for a heap no query uses.
	for i := 0; i < boundary.MaxInFlight; i++ {
		in := s.input(sysapi.CtxNonReplicatedQuery, "canister_query quick", empty)
		in.Stable = c.stable
		in.Limits.HeapBytes = 1<<30 + uint64(i)<<16
		if out, err := x.Execute(context.Background(), s.id, &Request{Module: s.m, Heap: c.heap, Globals: c.globals, Input: in}); err != nil || out.Trapped {
			t.Fatalf("quick: %v %+v", err, out)
		}
	}
	c = bump(t, s, c)
	var wg sync.WaitGroup
	var most atomic.Int64
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			most.Store(max(most.Load(), int64(inFlight(x, s.id))))
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	for i := 0; i < boundary.MaxInFlight; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := s.input(sysapi.CtxNonReplicatedQuery, "canister_query spin", empty)
			in.Stable = c.stable
			in.Limits.Instructions = 400_000_000
			out, err := x.Execute(context.Background(), s.id, &Request{Module: s.m, Heap: c.heap, Globals: c.globals, Input: in})
			if err != nil || !out.Trapped || out.TrapMessage != sysapi.ErrInstructionLimit.Message {
				t.Errorf("spin: want the instruction limit, got %v %+v", err, out)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-watched
	if most.Load() < boundary.MaxInFlight {
		t.Errorf("at most %d queries were in flight at once, want %d: the test did not load the sandbox", most.Load(), boundary.MaxInFlight)
	}
}

// TestInstructionTime: the watchdog's compute time is exact to the
// nanosecond (whole seconds gave limits under the rate no time at all), and
// an absurd limit or rate neither overflows nor panics.
func TestInstructionTime(t *testing.T) {
	for _, c := range []struct {
		n, perSecond uint64
		want         time.Duration
	}{
		{0, 100_000_000, 0},
		{50_000_000, 100_000_000, 500 * time.Millisecond},
		{250_000_000, 100_000_000, 2500 * time.Millisecond},
		{5_000_000_000, 100_000_000, 50 * time.Second},
		{1, 3, 333333333},
		{math.MaxUint64, math.MaxUint64, time.Second},
		{math.MaxUint64 - 1, math.MaxUint64, time.Second - 1},
		{5_000_000_000, 1 << 62, 1},
		{math.MaxUint64, 1, maxInstructionTime},
		{math.MaxUint64, 100_000_000, maxInstructionTime},
	} {
		if got := instructionTime(c.n, c.perSecond); got != c.want {
			t.Errorf("instructionTime(%d, %d) = %v, want %v", c.n, c.perSecond, got, c.want)
		}
	}
}
