package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// upgradeOldWat is the module being upgraded. fill changes everything a
// message can change (heap, stable memory, globals, certified data, the
// timer, cycles); its pre_upgrade changes all of it again, then does what
// the update "arm<N>" chose: 0 return, 1 trap, 2 spin, 3 grow stable memory
// by a lot then trap, 4 grow the heap to its maximum then trap.
const upgradeOldWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $swrite (param i64 i64 i64)))
  (import "ic0" "stable64_read" (func $sread (param i64 i64 i64)))
  (import "ic0" "stable64_size" (func $ssize (result i64)))
  (import "ic0" "certified_data_set" (func $certify (param i32 i32)))
  (import "ic0" "global_timer_set" (func $timer (param i64) (result i64)))
  (import "ic0" "cycles_burn128" (func $burn (param i64 i64 i32)))
  (memory (export "memory") 4)
  (global $counter (mut i64) (i64.const 0))
  (global $mode (mut i32) (i32.const 0))
  (data (i32.const 0) "old!")
  (func $scribble (param $v i32)
    (local $i i32)
    (loop $l
      (i32.store8 (i32.add (i32.const 4096) (i32.mul (local.get $i) (i32.const 4096))) (local.get $v))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 40))))
    (drop (memory.grow (i32.const 1)))
    (i32.store8 (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 1)) (local.get $v))
    (drop (call $sgrow (i64.const 2)))
    (i32.store8 (i32.const 2000) (local.get $v))
    (call $swrite (i64.const 0) (i64.const 2000) (i64.const 1))
    (call $swrite (i64.const 4096) (i64.const 2000) (i64.const 1))
    (call $swrite (i64.sub (i64.mul (call $ssize) (i64.const 65536)) (i64.const 1)) (i64.const 2000) (i64.const 1))
    (global.set $counter (i64.add (global.get $counter) (i64.extend_i32_u (local.get $v))))
    (call $certify (i32.const 2000) (i32.const 1))
    (drop (call $timer (i64.extend_i32_u (local.get $v))))
    (call $burn (i64.const 0) (i64.const 1000) (i32.const 3000)))
  (func (export "canister_update fill")
    (call $scribble (i32.const 7))
    (drop (call $timer (i64.const 0x4000000000000000)))
    (call $append (i32.const 0) (i32.const 4)) (call $reply))
  (func $arm (param $m i32) (global.set $mode (local.get $m)) (call $append (i32.const 0) (i32.const 4)) (call $reply))
  (func (export "canister_update arm0") (call $arm (i32.const 0)))
  (func (export "canister_update arm1") (call $arm (i32.const 1)))
  (func (export "canister_update arm2") (call $arm (i32.const 2)))
  (func (export "canister_update arm3") (call $arm (i32.const 3)))
  (func (export "canister_update arm4") (call $arm (i32.const 4)))
  (func (export "canister_global_timer"))
  (func (export "canister_pre_upgrade")
    (call $scribble (i32.const 99))
    (if (i32.eq (global.get $mode) (i32.const 1)) (then (call $trap (i32.const 0) (i32.const 4))))
    (if (i32.eq (global.get $mode) (i32.const 2)) (then (loop $l (br $l))))
    (if (i32.eq (global.get $mode) (i32.const 3)) (then
      (drop (call $sgrow (i64.const 1000000)))
      (call $swrite (i64.sub (i64.mul (call $ssize) (i64.const 65536)) (i64.const 1)) (i64.const 2000) (i64.const 1))
      (call $trap (i32.const 0) (i32.const 4))))
    (if (i32.eq (global.get $mode) (i32.const 4)) (then
      (drop (memory.grow (i32.const 60000)))
      (i32.store8 (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 1)) (i32.const 5))
      (call $trap (i32.const 0) (i32.const 4)))))
  ;; "old!", then sums of the first bytes of the heap's and the first 64
  ;; stable pages, the memory sizes and the counter
  (func (export "canister_query sum")
    (local $i i32) (local $s i64) (local $t i64) (local $n i32)
    (local.set $n (i32.mul (memory.size) (i32.const 16)))
    (loop $l
      (local.set $s (i64.add (local.get $s) (i64.load8_u (i32.mul (local.get $i) (i32.const 4096)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
    (local.set $i (i32.const 0))
    (local.set $n (i32.wrap_i64 (i64.mul (call $ssize) (i64.const 16))))
    (if (i32.gt_u (local.get $n) (i32.const 64)) (then (local.set $n (i32.const 64))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (call $sread (i64.const 1000) (i64.mul (i64.extend_i32_u (local.get $i)) (i64.const 4096)) (i64.const 1))
      (local.set $t (i64.add (local.get $t) (i64.load8_u (i32.const 1000))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (i64.store (i32.const 16) (local.get $s))
    (i64.store (i32.const 24) (local.get $t))
    (i64.store (i32.const 32) (i64.extend_i32_u (memory.size)))
    (i64.store (i32.const 40) (call $ssize))
    (i64.store (i32.const 48) (global.get $counter))
    (call $append (i32.const 0) (i32.const 4))
    (call $append (i32.const 16) (i32.const 40)) (call $reply))
)`

// upgradeNewWat is a new module whose post_upgrade changes heap, stable
// memory, certified data and the timer, then does BODY.
func upgradeNewWat(body string) string {
	return `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $swrite (param i64 i64 i64)))
  (import "ic0" "stable64_size" (func $ssize (result i64)))
  (import "ic0" "certified_data_set" (func $certify (param i32 i32)))
  (import "ic0" "global_timer_set" (func $timer (param i64) (result i64)))
  (memory 4)
  (global $g (mut i64) (i64.const 5))
  (data (i32.const 0) "new!")
  (func (export "canister_post_upgrade")
    (i32.store8 (i32.const 9000) (i32.const 33))
    (drop (call $sgrow (i64.const 3)))
    (call $swrite (i64.const 0) (i64.const 0) (i64.const 4))
    (call $swrite (i64.const 8192) (i64.const 0) (i64.const 4))
    (call $certify (i32.const 0) (i32.const 4))
    (drop (call $timer (i64.const 12345)))
    (global.set $g (i64.const 6))
    ` + body + `)
  (func (export "canister_query sum")
    (call $append (i32.const 0) (i32.const 4)) (call $reply))
)`
}

// canisterSnapshot is everything an upgrade may change, as seen from outside.
type canisterSnapshot struct {
	module, hash, cert string
	version, timer     uint64
	heap, stable       uint64
	balance            string
	sum                string
}

func (f *fixture) snapshot(id principal.Principal) canisterSnapshot {
	f.t.Helper()
	st, err := f.node.Status(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return canisterSnapshot{module: st.ModuleHash, hash: st.StateHash, cert: st.CertifiedData, version: st.Version,
		timer: st.GlobalTimer, heap: st.HeapBytes, stable: st.StableBytes, balance: st.Balance.String(),
		sum: fmt.Sprintf("%q", f.query(id, "sum", nil))}
}

// Every way an upgrade can fail (either hook traps, runs out of
// instructions, grows a memory by a lot, or its sandbox dies) leaves
// everything of the canister as it was: module, version, memories,
// globals, certified data, timer, balance; the old code still serves, and
// a restart finds the same.
func TestFailedUpgradeLeavesEverything(t *testing.T) {
	t.Parallel()
	type tc struct {
		name string
		arm  string // old module's pre_upgrade mode
		post string // new module's post_upgrade tail
		kill bool   // kill the sandbox while the upgrade runs
	}
	cases := []tc{
		{"pre traps", "arm1", "", false},
		{"pre spins", "arm2", "", false},
		{"pre grows stable then traps", "arm3", "", false},
		{"pre grows heap then traps", "arm4", "", false},
		{"post traps", "arm0", `(call $trap (i32.const 0) (i32.const 4))`, false},
		{"post spins", "arm0", `(loop $l (br $l))`, false},
		{"post grows stable then traps", "arm0", `(drop (call $sgrow (i64.const 1000000))) (call $swrite (i64.sub (i64.mul (call $ssize) (i64.const 65536)) (i64.const 1)) (i64.const 0) (i64.const 1)) (call $trap (i32.const 0) (i32.const 4))`, false},
		{"post grows heap then traps", "arm0", `(drop (memory.grow (i32.const 60000))) (i32.store8 (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 1)) (i32.const 5)) (call $trap (i32.const 0) (i32.const 4))`, false},
		{"post grows stable beyond the limit", "arm0", `(if (i64.lt_s (call $sgrow (i64.const 0x7fffffff)) (i64.const 0)) (then (call $trap (i32.const 0) (i32.const 4))))`, false},
		{"sandbox killed in pre", "arm2", "", true},
		{"sandbox killed in post", "arm0", `(loop $l (br $l))`, true},
	}
	for _, mode := range []string{"inprocess", "sandbox"} {
		for _, c := range cases {
			if c.kill && mode != "sandbox" {
				continue
			}
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				// A hook that spins ends at 300 M instructions, in a
				// fraction of a second.
				f := newFeelessFixture(t, mode, func(cfg *Config) { cfg.InstallInstructions = 300_000_000 })
				ctx := context.Background()
				id := f.install(mustWat(t, upgradeOldWat), nil)
				eq(t, "fill", f.update(id, "fill", nil), []byte("old!"))
				eq(t, c.arm, f.update(id, c.arm, nil), []byte("old!"))
				before := f.snapshot(id)
				if !strings.HasPrefix(before.sum, `"old!`) || before.timer == 0 || before.cert == "" {
					t.Fatalf("setup: %+v", before)
				}
				done := make(chan error, 1)
				go func() {
					_, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: mustWat(t, upgradeNewWat(c.post)), Caller: user})
					done <- err
				}()
				var err error
				if c.kill {
					killed := map[int]bool{}
				wait:
					for {
						select {
						case err = <-done:
							break wait
						case <-time.After(200 * time.Millisecond):
						}
						if pid := f.canisterPid(id); pid != 0 && !killed[pid] {
							_ = syscall.Kill(pid, syscall.SIGKILL)
							killed[pid] = true
						}
					}
				} else {
					err = <-done
				}
				if err == nil {
					t.Fatal("the upgrade succeeded")
				}
				t.Logf("upgrade: %v", err)
				if after := f.snapshot(id); after != before {
					t.Fatalf("a failed upgrade changed the canister:\n got  %+v\n want %+v", after, before)
				}
				// The old code still runs updates, and its state is its own.
				eq(t, "fill after", f.update(id, "arm0", nil), []byte("old!"))
				before = f.snapshot(id)
				f.restart()
				if after := f.snapshot(id); after != before {
					t.Fatalf("after restart:\n got  %+v\n want %+v", after, before)
				}
				// And it can still be upgraded, keeping its stable memory.
				f.upgrade(id, mustWat(t, upgradeNewWat("")))
				st := f.status(id)
				if st.StableBytes != before.stable+5*65536 { // pre_upgrade grows it by 2 pages, post_upgrade by 3
					t.Fatalf("stable memory after a good upgrade: %d, want %d", st.StableBytes, before.stable+5*65536)
				}
			})
		}
	}
}

// The failure matrix's core on a canister whose memory images were given
// back (cold: images.go), so the upgrade forks ordinary page maps.
func TestFailedUpgradeOfColdCanister(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		for _, arm := range []string{"arm1", "arm0"} {
			t.Run(mode+"/"+arm, func(t *testing.T) {
				f := newFeelessFixture(t, mode)
				f.cfg.MemoryImages = 1
				f.restart()
				id := f.install(mustWat(t, upgradeOldWat), nil)
				other := f.install(mustWat(t, upgradeOldWat), nil)
				eq(t, "fill", f.update(id, "fill", nil), []byte("old!"))
				eq(t, arm, f.update(id, arm, nil), []byte("old!"))
				before := f.snapshot(id)
				eq(t, "other", f.update(other, "fill", nil), []byte("old!")) // id goes cold
				_, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade,
					Wasm: mustWat(t, upgradeNewWat(`(call $trap (i32.const 0) (i32.const 4))`)), Caller: user})
				if err == nil {
					t.Fatal("the upgrade succeeded")
				}
				eq(t, "other again", f.update(other, "fill", nil), []byte("old!"))
				if after := f.snapshot(id); after != before {
					t.Fatalf("a failed upgrade of a cold canister changed it:\n got  %+v\n want %+v", after, before)
				}
				f.restart()
				if after := f.snapshot(id); after != before {
					t.Fatalf("after restart:\n got  %+v\n want %+v", after, before)
				}
			})
		}
	}
}

// What reinstall and uninstall clear and keep (IC interface specification):
// reinstall clears stable memory, certified data and the timer, and keeps
// cycles and settings; uninstall clears code, memories, certified data and
// the timer, and keeps cycles and settings; a restart agrees.
func TestReinstallUninstallClear(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newFeelessFixture(t, mode)
			ctx := context.Background()
			id := f.install(mustWat(t, upgradeOldWat), nil)
			eq(t, "fill", f.update(id, "fill", nil), []byte("old!"))
			filled := f.status(id)
			if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeReinstall, Wasm: mustWat(t, upgradeOldWat), Caller: user}); err != nil {
				t.Fatal(err)
			}
			check := func(when string, module bool) {
				st := f.status(id)
				if (st.ModuleHash != "") != module || st.StableBytes != 0 || st.CertifiedData != "" || st.GlobalTimer != 0 ||
					st.Balance != filled.Balance || strings.Join(st.Controllers, ",") != strings.Join(filled.Controllers, ",") {
					t.Fatalf("%s: module %q stable %d cert %q timer %d balance %s controllers %v (before %s %v)", when,
						st.ModuleHash, st.StableBytes, st.CertifiedData, st.GlobalTimer, st.Balance, st.Controllers, filled.Balance, filled.Controllers)
				}
			}
			check("after reinstall", true)
			if got := f.query(id, "sum", nil); !strings.HasPrefix(string(got), "old!") || binary.LittleEndian.Uint64(got[4+24:]) != 0 {
				t.Fatalf("after reinstall the module sees %x", got)
			}
			eq(t, "fill again", f.update(id, "fill", nil), []byte("old!"))
			filled = f.status(id) // fill burns cycles
			if err := f.node.Uninstall(ctx, id, user); err != nil {
				t.Fatal(err)
			}
			check("after uninstall", false)
			if st := f.status(id); st.HeapBytes != 0 || st.Globals != 0 {
				t.Fatalf("after uninstall: heap %d, %d globals", st.HeapBytes, st.Globals)
			}
			f.restart()
			check("after uninstall and restart", false)
			if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, upgradeOldWat), Caller: user}); err != nil {
				t.Fatal(err)
			}
			check("after install", true)
		})
	}
}

func (f *fixture) snapshotNoQuery(id principal.Principal) canisterSnapshot {
	f.t.Helper()
	st, err := f.node.Status(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return canisterSnapshot{module: st.ModuleHash, hash: st.StateHash, cert: st.CertifiedData, version: st.Version,
		timer: st.GlobalTimer, heap: st.HeapBytes, stable: st.StableBytes, balance: st.Balance.String()}
}

// A compromised sandbox that reports 0 instructions for the upgrade's
// executions (pre_upgrade and post_upgrade write pages, so their outputs
// prove more): the upgrade fails as a canister error, nothing of the
// canister changes, and the next upgrade with an honest sandbox works.
func TestLyingSandboxDuringUpgrade(t *testing.T) {
	t.Parallel()
	f := newFeelessFixture(t, "sandbox")
	var lie atomic.Bool
	x := relayExecutor(t, f.cfg, zeroInstructions(&lie))
	f.node.exec.Close()
	f.node.exec = x

	id := f.install(mustWat(t, upgradeOldWat), nil)
	eq(t, "fill", f.update(id, "fill", nil), []byte("old!"))
	before := f.snapshot(id)
	for _, arm := range []string{"arm0"} {
		eq(t, arm, f.update(id, arm, nil), []byte("old!"))
		before = f.snapshot(id)
		lie.Store(true)
		_, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: mustWat(t, upgradeNewWat("")), Caller: user})
		lie.Store(false)
		r := f.reject(err)
		if r.Code != CanisterError || !strings.Contains(r.Message, "instructions") {
			t.Fatalf("upgrade through a lying sandbox: %v", r)
		}
		if after := f.snapshot(id); after != before {
			t.Fatalf("the lying sandbox's upgrade changed the canister:\n got  %+v\n want %+v", after, before)
		}
	}
	f.upgrade(id, mustWat(t, upgradeNewWat("")))
	if st := f.status(id); st.ModuleHash == before.module {
		t.Fatal("the honest upgrade did not change the module")
	}
}
