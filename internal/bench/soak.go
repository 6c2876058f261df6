package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// attackerWAT is a canister that does, on request, each of the things a
// hostile canister can do to its neighbours from inside Wasm: spin until its
// instruction limit, dirty 4 MiB of a growing heap per message, print as
// much as a message may, write 4 MiB and trap.
const attackerWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "debug_print" (func $print (param i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (memory (export "memory") 65) ;; 4 MiB for hog and trap, then fan's names
  (table 1 funcref)
  (elem (i32.const 0) $ignore)
  (global $halt (mut i32) (i32.const 0))
  (data (i32.const 4194304) "fan")
  (func $ignore (param i32))
  ;; fan calls itself 500 times; every callee fans out again until halted
  ;; (the node's call limits refuse what is beyond them).
  (func (export "canister_update fan") (local $i i32) (local $len i32)
    (if (i32.eqz (global.get $halt)) (then
      (local.set $len (call $self_size))
      (call $self_copy (i32.const 4194400) (i32.const 0) (local.get $len))
      (loop $l
        (call $call_new (i32.const 4194400) (local.get $len) (i32.const 4194304) (i32.const 3)
          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
        (drop (call $perform))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 500))))))
    (call $reply))
  (func (export "canister_update halt") (global.set $halt (i32.const 1)) (call $reply))
  (func (export "canister_update resume") (global.set $halt (i32.const 0)) (call $reply))
  (func (export "canister_update spin") (loop $l (br $l)))
  (func (export "canister_update hog") (local $p i32) (local $end i32)
    (if (i32.lt_u (memory.size) (i32.const 4096)) (then (drop (memory.grow (i32.const 64)))))
    (local.set $end (i32.mul (memory.size) (i32.const 65536)))
    (local.set $p (i32.sub (local.get $end) (i32.const 4194304)))
    (loop $l
      (i32.store8 (local.get $p) (i32.add (i32.load8_u (local.get $p)) (i32.const 1)))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get $p) (local.get $end))))
    (call $reply))
  (func (export "canister_update print") (local $i i32)
    (loop $l
      (call $print (i32.const 0) (i32.const 1024))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
    (call $reply))
  (func (export "canister_update trap") (local $p i32)
    (loop $l
      (i32.store8 (local.get $p) (i32.const 7))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get $p) (i32.const 4194304))))
    (call $trap (i32.const 0) (i32.const 4))))`

// soakCanisters is the number of neighbour canisters under load.
const soakCanisters = 100

// attackers are the soak's attacks: the attacker canister's method each
// attacking client calls in a closed loop.
var attackers = []struct{ name, method, about, start, stop string }{
	{"spin", "spin", "updates that spin until the instruction limit", "", ""},
	{"hog", "hog", "updates that grow the heap to 256 MiB and dirty 4 MiB each", "", ""},
	{"print", "print", "updates that debug_print 1000 × 1 KiB", "", ""},
	{"trap", "trap", "updates that write 4 MiB, then trap", "", ""},
	{"fan", "fan", "updates that call the attacker itself 500 times, every callee fanning out again", "resume", "halt"},
}

// attackClients is the number of closed-loop clients per attacker.
const attackClients = 2

// soak: 100 canisters under load on a sandboxed node, alone and next to one
// attacker of each kind, then all of them at once.
func (e *env) soak() error {
	ctx := e.ctx
	const sec = "soak"
	runs := e.runs(2, 3)
	d := time.Duration(e.runs(500, 3000)) * time.Millisecond
	wasm, err := wasmtime.Wat2Wasm(attackerWAT)
	if err != nil {
		return fmt.Errorf("attacker canister: %w", err)
	}
	nd, err := e.openNode("sandbox", func(c *host.Config) {
		// A spin is a 40 G-instruction update by default (10 s or more):
		// keep the attacker's messages short enough to repeat.
		c.UpdateInstructions = 4_000_000_000
	})
	if err != nil {
		return err
	}
	defer nd.close()
	ids := make([]principal.Principal, 0, soakCanisters)
	for range soakCanisters {
		id, err := nd.install(ctx, e.counter)
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	attacker := map[string]principal.Principal{}
	for _, a := range attackers {
		if attacker[a.name], err = nd.install(ctx, wasm); err != nil {
			return fmt.Errorf("attacker %s: %w", a.name, err)
		}
	}
	for _, id := range ids { // every neighbour's sandbox live
		if _, err := nd.query(ctx, id, "get", noArgs); err != nil {
			return err
		}
	}
	scenarios := []string{"none"}
	for _, a := range attackers {
		scenarios = append(scenarios, a.name)
	}
	scenarios = append(scenarios, "all")
	type key struct{ scenario, kind string }
	p50, p99 := map[key][]float64{}, map[key][]float64{}
	attacks := map[string]*attackCount{}
	for r := 0; r < runs; r++ {
		for _, kind := range []string{"update", "query"} {
			for _, sc := range scenarios { // in turn, so machine noise spreads over all
				var active []string
				switch sc {
				case "none":
				case "all":
					for _, a := range attackers {
						active = append(active, a.name)
					}
				default:
					active = []string{sc}
				}
				stop, count := e.attack(ctx, nd, attacker, active)
				res, err := load(ctx, nd, ids, kind, d)
				stop()
				if err != nil {
					return fmt.Errorf("neighbours under %s: %w", sc, err)
				}
				if attacks[sc] == nil {
					attacks[sc] = &attackCount{}
				}
				attacks[sc].add(count)
				k := key{sc, kind}
				p50[k] = append(p50[k], res.p50)
				p99[k] = append(p99[k], res.p99)
			}
		}
	}
	about := map[string]string{"none": "no attacker", "all": "every attacker at once"}
	for _, a := range attackers {
		about[a.name] = "attacker: " + a.about
	}
	for _, kind := range []string{"update", "query"} {
		for _, pc := range []struct {
			name string
			m    map[key][]float64
		}{{"p50", p50}, {"p99", p99}} {
			base := fmt.Sprintf("neighbour %s latency %s, %s", kind, pc.name, about["none"])
			e.rep.Add(&Figure{Section: sec, Name: base, Samples: pc.m[key{"none", kind}]})
			for _, sc := range scenarios[1:] {
				e.rep.Add(&Figure{Section: sec, Name: fmt.Sprintf("neighbour %s latency %s, %s", kind, pc.name, about[sc]),
					Samples: pc.m[key{sc, kind}], Baseline: base})
			}
		}
	}
	for _, sc := range scenarios[1:] {
		c := attacks[sc]
		e.rep.Note(sec, "%s: %d attacking messages answered, %d rejected or trapped.", about[sc], c.ok.Load(), c.failed.Load())
	}
	e.rep.Note(sec, "One sandboxed node: %d counter canisters under %d closed-loop clients (round-robin over "+
		"them, %s per run, %d runs), and attacker canisters (WAT in `internal/bench/soak.go`), each driven by %d "+
		"closed-loop clients of its own for the length of the run. Ratios are against the same node with no "+
		"attacker, measured in turn in the same run. Attacks that need native code in a sandbox (stderr floods, "+
		"threads spinning between messages, descriptor floods) are measured by the sandbox package's own "+
		"benchmarks and tests.", soakCanisters, clients(), d, runs, attackClients)
	return nil
}

type attackCount struct{ ok, failed atomic.Int64 }

func (c *attackCount) add(o *attackCount) {
	c.ok.Add(o.ok.Load())
	c.failed.Add(o.failed.Load())
}

// attack starts attackClients closed-loop clients for each active attacker;
// stop ends them and waits.
func (e *env) attack(ctx context.Context, nd *node, ids map[string]principal.Principal, active []string) (stop func(), count *attackCount) {
	count = &attackCount{}
	actx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var halts []func()
	for _, a := range attackers {
		if a.start == "" || !slices.Contains(active, a.name) {
			continue
		}
		_, _ = nd.update(ctx, ids[a.name], a.start, noArgs)
		halts = append(halts, func() { _, _ = nd.update(ctx, ids[a.name], a.stop, noArgs) })
	}
	for _, name := range active {
		for range attackClients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for actx.Err() == nil {
					_, err := nd.update(actx, ids[name], name, noArgs)
					var rej *host.Reject
					switch {
					case err == nil:
						count.ok.Add(1)
					case errors.As(err, &rej):
						count.failed.Add(1)
					case actx.Err() != nil:
						return
					default:
						count.failed.Add(1)
					}
				}
			}()
		}
	}
	return func() {
		cancel()
		wg.Wait()
		for _, h := range halts {
			h()
		}
	}, count
}
