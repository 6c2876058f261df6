package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// hbWat counts its canister_heartbeat runs (when withHeartbeat), and the
// runs that came before its canister_init or canister_post_upgrade had
// run ("early"); "count" replies both. gen tells modules apart.
func hbWat(gen int, withHeartbeat bool) string {
	hb := ""
	if withHeartbeat {
		hb = `(func (export "canister_heartbeat")
    (if (i64.eqz (global.get $ready)) (then (global.set $early (i64.add (global.get $early) (i64.const 1)))))
    (global.set $beats (i64.add (global.get $beats) (i64.const 1))))`
	}
	return fmt.Sprintf(`(module
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (global $gen i64 (i64.const %d))
  (global $ready (mut i64) (i64.const 0))
  (global $beats (mut i64) (i64.const 0))
  (global $early (mut i64) (i64.const 0))
  (func $ready (global.set $ready (i64.const 1)))
  (func (export "canister_init") (call $ready))
  (func (export "canister_post_upgrade") (call $ready))
  %s
  (func (export "canister_query count")
    (i64.store (i32.const 0) (global.get $beats))
    (i64.store (i32.const 8) (global.get $early))
    (i64.store (i32.const 16) (global.get $gen))
    (call $append (i32.const 0) (i32.const 24))
    (call $reply)))`, gen, hb)
}

// beats is what hbWat's "count" replies: runs, early runs, module.
func (f *fixture) beats(id principal.Principal) (runs, early, gen uint64) {
	f.t.Helper()
	b := f.query(id, "count", nil)
	le := binary.LittleEndian
	return le.Uint64(b), le.Uint64(b[8:]), le.Uint64(b[16:])
}

// A heartbeat task queued before a change of module runs in the module
// that is there when its turn comes, as the IC's per-round heartbeat task
// does (RATIONALE.md, "A heartbeat queued before a module change runs in
// the new module"): never before the new module's canister_init or
// canister_post_upgrade has committed (the change holds the canister's
// lock from the first execution to its commit), and as nothing at all
// when the new module has no canister_heartbeat, or there is none.
func TestHeartbeatQueuedAcrossModuleChange(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"upgrade", "upgrade to no heartbeat", "reinstall", "uninstall"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f, clk := clockFixture(t, "")
			ctx := context.Background()
			id := f.install(mustWat(t, hbWat(1, true)), nil)
			// The first heartbeat is due at once.
			waitFor(t, 30*time.Second, func() bool { runs, _, _ := f.beats(id); return runs == 1 })
			c := f.loaded(id)
			f.quiesce()
			release := f.holdQueue(c)
			clk.advance(2 * HeartbeatInterval)
			f.node.timerTick()
			waitFor(t, 30*time.Second, func() bool {
				c.mu.RLock()
				defer c.mu.RUnlock()
				return c.heartbeatQueued
			})

			newWasm := mustWat(t, hbWat(2, mode != "upgrade to no heartbeat"))
			switch mode {
			case "upgrade", "upgrade to no heartbeat":
				f.upgrade(id, newWasm)
			case "reinstall":
				if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeReinstall, Wasm: newWasm, Caller: user}); err != nil {
					t.Fatal(err)
				}
			case "uninstall":
				if err := f.node.Uninstall(ctx, id, user); err != nil {
					t.Fatal(err)
				}
			}
			before := f.storedMeta(id)
			release()
			f.quiesce()
			after := f.storedMeta(id)
			if mode == "upgrade" || mode == "reinstall" {
				// The node's clock stands still: no other heartbeat is due.
				runs, early, gen := f.beats(id)
				if gen != 2 || runs != 1 || early != 0 {
					t.Fatalf("after the %s: the module %d counted %d heartbeats, %d before its init or post_upgrade; want module 2, 1 and 0", mode, gen, runs, early)
				}
				if after.Messages != before.Messages+1 {
					t.Fatalf("the queued heartbeat committed %d executions, want 1", after.Messages-before.Messages)
				}
				return
			}
			// Nothing ran, nothing was charged.
			if after.Messages != before.Messages || after.Instructions != before.Instructions || after.Balance != before.Balance {
				t.Fatalf("the queued heartbeat ran in a module without canister_heartbeat (or none): %d messages, %d instructions, balance %s; before %d, %d, %s",
					after.Messages, after.Instructions, after.Balance, before.Messages, before.Instructions, before.Balance)
			}
			if mode == "upgrade to no heartbeat" {
				if runs, _, gen := f.beats(id); gen != 2 || runs != 0 {
					t.Fatalf("module %d counted %d heartbeats, want module 2 and none", gen, runs)
				}
			}
			c.mu.RLock()
			queued := c.heartbeatQueued
			c.mu.RUnlock()
			if queued {
				t.Fatal("the heartbeat still counts as queued")
			}
		})
	}
}
