package host

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// dirtyWat changes memory page by page, as the metering audit's canister
// did with 1 GiB: one byte of each 4 KiB page. The *_same and *_one
// methods do the same work (the same instructions, the same ic0 calls)
// but leave the pages as they were (heap) or land on one page (stable).
const dirtyWat = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $swrite (param i64 i64 i64)))
  (memory 512) ;; 32 MiB: 8192 pages of 4 KiB
  (func $touch (param $n i32) (param $add i32) (local $p i32)
    (loop $l
      (i32.store8 (local.get $p) (i32.add (i32.load8_u (local.get $p)) (local.get $add)))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get $p) (i32.mul (local.get $n) (i32.const 4096))))))
  (func $stable (param $n i64) (param $stride i64) (local $i i64)
    (loop $l
      (call $swrite (i64.mul (local.get $i) (local.get $stride)) (i64.const 0) (i64.const 1))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $l (i64.lt_u (local.get $i) (local.get $n)))))
  (func (export "canister_init") (drop (call $sgrow (i64.const 512))))
  (func (export "canister_update heap_same") (call $touch (i32.const 32) (i32.const 0)) (call $reply))
  (func (export "canister_update heap_dirty") (call $touch (i32.const 32) (i32.const 1)) (call $reply))
  (func (export "canister_update heap_flood") (call $touch (i32.const 8192) (i32.const 1)) (call $reply))
  (func (export "canister_update stable_one") (call $stable (i64.const 32) (i64.const 0)) (call $reply))
  (func (export "canister_update stable_dirty") (call $stable (i64.const 32) (i64.const 4096)) (call $reply))
  (func (export "canister_update stable_flood") (call $stable (i64.const 8192) (i64.const 4096)) (call $reply))
)`

// dirtyFixture is a node whose executions may change at most 64 pages of
// each memory (the point is the cap, not its size), without the storage
// fee, so cycles burned follow instructions alone.
func dirtyFixture(t *testing.T, mode string, updateInstr uint64) *fixture {
	cfg := testConfig(t, mode)
	cfg.Fees.GiBStoragePerSecond = 0
	cfg.HeapDirty.Update = 64 * state.PageSize
	cfg.StableDirty.Update = 64 * state.PageSize
	if updateInstr != 0 {
		cfg.UpdateInstructions = updateInstr
	}
	return openFixture(t, cfg)
}

// run sends one update and returns its reply (nil if it was rejected), the
// reject, and the cycles the canister burned for it.
func (f *fixture) run(id principal.Principal, method string) (*Reply, *Reject, uint64) {
	f.t.Helper()
	ctx := context.Background()
	before, err := f.node.Status(ctx, id)
	if err != nil {
		f.t.Fatal(err)
	}
	r, err := f.node.Update(ctx, Message{Canister: id, Method: method, Caller: user})
	var rej *Reject
	if err != nil {
		rej = f.reject(err)
	}
	after, err := f.node.Status(ctx, id)
	if err != nil {
		f.t.Fatal(err)
	}
	if after.CyclesBurned.Hi != before.CyclesBurned.Hi {
		f.t.Fatalf("%s burned more than 2^64 cycles", method)
	}
	return r, rej, after.CyclesBurned.Lo - before.CyclesBurned.Lo
}

// storeBytes is the size of the files under the node's home.
func storeBytes(t *testing.T, home string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(home, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Audit (HIGH): one update changing one byte of each page of a 1 GiB heap
// or stable memory was neither capped nor charged: 3.67 M instructions,
// 1.5 GiB written to the store, every message. Here a canister changing
// 8192 pages (32 MiB) of each memory under a cap of 64 traps: its state is
// unchanged, the delta never reaches the store, and the instructions it
// used (its pages' included) are paid. In both isolation modes.
func TestDirtyPagesCapped(t *testing.T) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := dirtyFixture(t, mode, 0)
			id := f.install(mustWat(t, dirtyWat), nil)
			_, rej, small := f.run(id, "heap_same") // 32 pages' work, no change
			if rej != nil {
				t.Fatalf("heap_same: %v", rej)
			}
			for _, tc := range []struct {
				method, want string
				paid         uint64 // instructions the pages cost at least
			}{
				// The engine found all 8192 heap pages: all are paid.
				{"heap_flood", "limit of 64 modified heap pages", 8192 * sysapi.HeapDirtyPageCost},
				// The stable write past the cap is refused before it dirties.
				{"stable_flood", "limit of 64 modified stable memory pages", 64 * sysapi.StableDirtyPageCost},
			} {
				hash, size := f.memoryHash(id), storeBytes(t, f.home)
				_, rej, burned := f.run(id, tc.method)
				if rej == nil || rej.Code != CanisterError || !strings.Contains(rej.Message, tc.want) {
					t.Fatalf("%s: want a trap at the dirty-page limit (%q), got %v", tc.method, tc.want, rej)
				}
				if f.memoryHash(id) != hash {
					t.Fatalf("%s: the trapped execution changed the canister's memory", tc.method)
				}
				if grew := storeBytes(t, f.home) - size; grew >= 32<<20 {
					t.Fatalf("%s: the store grew by %d bytes, as if the 32 MiB delta had been written", tc.method, grew)
				}
				if burned < small+tc.paid*f.cfg.Fees.PerInstruction {
					t.Fatalf("%s: burned %d cycles, a 32-page message without changes %d: the %d instructions of its pages were not paid", tc.method, burned, small, tc.paid)
				}
			}
			// At the cap, the canister still works and commits.
			if _, rej, _ := f.run(id, "heap_dirty"); rej != nil {
				t.Fatalf("heap_dirty (32 pages, under the cap): %v", rej)
			}
			if _, rej, _ := f.run(id, "stable_dirty"); rej != nil {
				t.Fatalf("stable_dirty (32 pages, under the cap): %v", rej)
			}
		})
	}
}

// A message that changes pages pays for each: exactly pages × cost more
// instructions, and cycles, than the same work leaving memory as it was.
// Both isolation modes count the same.
func TestDirtyPagesCharged(t *testing.T) {
	got := map[string][2]uint64{}
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := dirtyFixture(t, mode, 0)
			id := f.install(mustWat(t, dirtyWat), nil)
			for _, tc := range []struct {
				clean, dirty string
				extra        uint64
			}{
				{"heap_same", "heap_dirty", 32 * sysapi.HeapDirtyPageCost},
				{"stable_one", "stable_dirty", 31 * sysapi.StableDirtyPageCost},
			} {
				// stable_one's page is dirty in every run; heap_dirty's
				// pages differ from the committed ones every time.
				rc, rej, bc := f.run(id, tc.clean)
				if rej != nil {
					t.Fatalf("%s: %v", tc.clean, rej)
				}
				rd, rej, bd := f.run(id, tc.dirty)
				if rej != nil {
					t.Fatalf("%s: %v", tc.dirty, rej)
				}
				if rd.Instructions != rc.Instructions+tc.extra {
					t.Errorf("%s: %d instructions, %s %d: want %d more", tc.dirty, rd.Instructions, tc.clean, rc.Instructions, tc.extra)
				}
				if bd != bc+tc.extra*f.cfg.Fees.PerInstruction {
					t.Errorf("%s burned %d cycles, %s %d: want %d more", tc.dirty, bd, tc.clean, bc, tc.extra*f.cfg.Fees.PerInstruction)
				}
				got[mode+tc.dirty] = [2]uint64{rc.Instructions, rd.Instructions}
			}
		})
	}
	for _, m := range []string{"heap_dirty", "stable_dirty"} {
		if got["inprocess"+m] != got["sandbox"+m] {
			t.Errorf("%s: in-process counts %v, sandboxed %v", m, got["inprocess"+m], got["sandbox"+m])
		}
	}
}

// The page charge counts against the instruction limit: a message whose
// Wasm work fits but whose changed pages do not traps with the limit's
// error, and its state rolls back.
func TestDirtyPagesPastTheLimit(t *testing.T) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := dirtyFixture(t, mode, 50_000) // 32 heap pages cost 96 000
			id := f.install(mustWat(t, dirtyWat), nil)
			if _, rej, _ := f.run(id, "heap_same"); rej != nil {
				t.Fatalf("heap_same: %v", rej)
			}
			hash := f.memoryHash(id)
			_, rej, burned := f.run(id, "heap_dirty")
			if rej == nil || !strings.Contains(rej.Message, sysapi.ErrInstructionLimit.Message) {
				t.Fatalf("heap_dirty: want the instruction limit's trap, got %v", rej)
			}
			if f.memoryHash(id) != hash {
				t.Fatal("the trapped execution changed the canister's memory")
			}
			if burned < 50_000*f.cfg.Fees.PerInstruction {
				t.Fatalf("burned %d cycles, less than the %d instructions used", burned, 50_000)
			}
		})
	}
}
