package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// memWat grows its memories on request. Arguments are a little-endian
// u32 (pages); replies are a little-endian i64: what memory.grow,
// stable64_grow or stable_grow returned (-1: refused).
const memWat = `
(module
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "stable64_grow" (func $sgrow64 (param i64) (result i64)))
  (import "ic0" "stable64_size" (func $ssize64 (result i64)))
  (import "ic0" "stable_grow" (func $sgrow32 (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $calls (mut i64) (i64.const 0))
  (func $arg (result i32)
    (call $arg_copy (i32.const 0) (i32.const 0) (i32.const 4))
    (i32.load (i32.const 0)))
  (func $answer (param i64)
    (global.set $calls (i64.add (global.get $calls) (i64.const 1)))
    (i64.store (i32.const 16) (local.get 0))
    (call $append (i32.const 16) (i32.const 8))
    (call $reply))
  (func (export "canister_update grow") (call $answer (i64.extend_i32_s (memory.grow (call $arg)))))
  (func (export "canister_query qgrow") (call $answer (i64.extend_i32_s (memory.grow (call $arg)))))
  (func (export "canister_update sgrow") (call $answer (call $sgrow64 (i64.extend_i32_u (call $arg)))))
  (func (export "canister_update sgrow32") (call $answer (i64.extend_i32_s (call $sgrow32 (call $arg)))))
  (func (export "canister_update both")
    (drop (memory.grow (i32.const 1)))
    (drop (call $sgrow64 (i64.const 1)))
    (call $answer (i64.const 0)))
  (func (export "canister_update ping") (call $answer (i64.const 1)))
  (func (export "canister_query sizes")
    (i64.store (i32.const 32) (i64.extend_i32_u (memory.size)))
    (i64.store (i32.const 40) (call $ssize64))
    (call $append (i32.const 32) (i32.const 16))
    (call $reply))
)`

const wasmPage = 64 << 10

func pagesArg(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }

// grow calls a growing method and returns what the grow returned.
func (f *fixture) grow(id principal.Principal, method string, pages uint32) int64 {
	f.t.Helper()
	return int64(binary.LittleEndian.Uint64(f.update(id, method, pagesArg(pages))))
}

// sizes returns the heap and stable memory sizes in Wasm pages.
func (f *fixture) sizes(id principal.Principal) (heap, stable uint64) {
	f.t.Helper()
	b := f.query(id, "sizes", nil)
	return binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])
}

// mgmt calls the management canister as the user (a controller).
func (f *fixture) mgmt(method, arg string) (string, error) {
	f.t.Helper()
	reply, _, err := f.node.managementCall(context.Background(), &message{kind: kindRequest, ingress: true, caller: user, method: method, arg: encodeText(f.t, arg)})
	if err != nil {
		return "", err
	}
	return decodeText(f.t, reply), nil
}

func (f *fixture) setMemory(id principal.Principal, field string, bytes uint64) error {
	f.t.Helper()
	_, err := f.mgmt("update_settings", fmt.Sprintf(`(record { canister_id = principal %q; settings = record { %s = opt (%d : nat) } })`, id, field, bytes))
	return err
}

func (f *fixture) status(id principal.Principal) *Status {
	f.t.Helper()
	st, err := f.node.Status(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

// forIsolations runs a test on a fresh node in each isolation mode.
func forIsolations(t *testing.T, test func(t *testing.T, f *fixture)) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			cfg := testConfig(t, mode)
			cfg.UpdateInstructions = 2_000_000_000
			f := openFixture(t, cfg)
			test(t, f)
			if live := len(f.node.Sandboxes()); (mode == "sandbox") != (live > 0) {
				t.Fatalf("%s mode: %d live sandboxes", mode, live)
			}
		})
	}
}

// wasm_memory_limit: memory.grow beyond it returns -1 in updates and the
// canister keeps working; queries ignore it; a heap above a lowered limit
// makes updates trap with the IC's message until the limit is raised; an
// install whose initial memory exceeds it fails.
func TestWasmMemoryLimit(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		id := f.install(mustWat(t, memWat), nil)
		if err := f.setMemory(id, "wasm_memory_limit", 3*wasmPage); err != nil {
			t.Fatal(err)
		}
		if st := f.status(id); st.WasmMemoryLimit != 3*wasmPage {
			t.Fatalf("status wasm_memory_limit %d", st.WasmMemoryLimit)
		}
		if got := f.grow(id, "grow", 2); got != 1 {
			t.Fatalf("grow to the limit: %d, want 1", got)
		}
		if got := f.grow(id, "grow", 1); got != -1 {
			t.Fatalf("grow beyond wasm_memory_limit: %d, want -1", got)
		}
		if got := f.grow(id, "ping", 0); got != 1 {
			t.Fatalf("ping after a refused grow: %d", got)
		}
		if h, _ := f.sizes(id); h != 3 {
			t.Fatalf("heap %d pages, want 3", h)
		}
		// Queries are not bound by it (IC interface specification); their
		// growth is discarded.
		if got := int64(binary.LittleEndian.Uint64(f.query(id, "qgrow", pagesArg(5)))); got != 3 {
			t.Fatalf("query grow: %d, want 3", got)
		}
		if h, _ := f.sizes(id); h != 3 {
			t.Fatalf("heap %d pages after a query, want 3", h)
		}

		// A limit below the heap is accepted; updates then trap.
		if err := f.setMemory(id, "wasm_memory_limit", wasmPage); err != nil {
			t.Fatal(err)
		}
		hash := f.memoryHash(id)
		_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "ping", Caller: user})
		if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "exceeded its current Wasm memory limit of 65536 bytes") {
			t.Fatalf("update above the limit: %v", r)
		}
		if f.memoryHash(id) != hash {
			t.Fatal("a trapped update changed the state")
		}
		if h, _ := f.sizes(id); h != 3 {
			t.Fatalf("queries stopped working: heap %d", h)
		}
		if err := f.setMemory(id, "wasm_memory_limit", 0); err != nil {
			t.Fatal(err)
		}
		if got := f.grow(id, "grow", 1); got != 3 {
			t.Fatalf("grow without a limit: %d, want 3", got)
		}

		// Install: the module's initial memory is bound by it too.
		ctx := context.Background()
		small, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.setMemory(small, "wasm_memory_limit", wasmPage/2); err != nil {
			t.Fatal(err)
		}
		if _, err := f.node.Install(ctx, small, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, memWat), Caller: user}); err == nil {
			t.Fatal("install with initial memory above wasm_memory_limit succeeded")
		} else {
			t.Logf("install refused: %v", err)
		}
		f.checkConservation()
	})
}

// memory_allocation: stable and heap growth beyond it return -1 (stable64,
// 32-bit stable and memory.grow alike), a message growing both past it
// traps and changes nothing, and an allocation below the memory in use is
// refused.
func TestMemoryAllocation(t *testing.T) {
	t.Parallel()
	forIsolations(t, func(t *testing.T, f *fixture) {
		id := f.install(mustWat(t, memWat), nil)
		st := f.status(id)
		used := st.MemorySize
		if used != wasmPage+st.StableBytes+f.moduleBytes(id)+8 {
			t.Fatalf("memory_size %d: heap %d, stable %d, module %d, one global", used, st.HeapBytes, st.StableBytes, f.moduleBytes(id))
		}

		err := f.setMemory(id, "memory_allocation", used-1)
		if r := f.reject(err); r.Code != CanisterReject || !strings.Contains(r.Message, "memory allocation but at least") {
			t.Fatalf("allocation below usage: %v", r)
		}
		if f.status(id).MemoryAllocation != 0 {
			t.Fatal("a refused allocation was stored")
		}

		if err := f.setMemory(id, "memory_allocation", used+2*wasmPage); err != nil {
			t.Fatal(err)
		}
		if got := f.grow(id, "sgrow", 1); got != 0 {
			t.Fatalf("stable64_grow within the allocation: %d", got)
		}
		if got := f.grow(id, "sgrow32", 1); got != 1 {
			t.Fatalf("stable_grow within the allocation: %d", got)
		}
		if got := f.grow(id, "sgrow", 1); got != -1 {
			t.Fatalf("stable64_grow beyond the allocation: %d, want -1", got)
		}
		if got := f.grow(id, "sgrow32", 1); got != -1 {
			t.Fatalf("stable_grow beyond the allocation: %d, want -1", got)
		}
		if got := f.grow(id, "grow", 1); got != -1 {
			t.Fatalf("memory.grow beyond the allocation: %d, want -1", got)
		}
		if h, s := f.sizes(id); h != 1 || s != 2 {
			t.Fatalf("sizes %d, %d pages, want 1, 2", h, s)
		}
		if got := f.grow(id, "ping", 0); got != 1 {
			t.Fatal("canister stopped working")
		}

		// One page of room: each memory alone may take it, both together
		// exceed the allocation, which the host catches after the message.
		used = f.status(id).MemorySize
		if err := f.setMemory(id, "memory_allocation", used+wasmPage); err != nil {
			t.Fatal(err)
		}
		hash := f.memoryHash(id)
		_, err = f.node.Update(context.Background(), Message{Canister: id, Method: "both", Caller: user})
		if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, "exceeded its memory allocation") {
			t.Fatalf("growing both memories past the allocation: %v", r)
		}
		if f.memoryHash(id) != hash {
			t.Fatal("a message beyond the allocation changed the state")
		}
		if got := f.grow(id, "grow", 1); got != 1 {
			t.Fatalf("heap grow into the last page: %d", got)
		}
		if got := f.grow(id, "sgrow", 1); got != -1 {
			t.Fatalf("stable grow with a full allocation: %d", got)
		}

		// Reported by canister_status; an allocation exactly at the usage
		// is accepted, and 0 lifts it.
		reply, err := f.mgmt("canister_status", fmt.Sprintf("(record { canister_id = principal %q })", id))
		if err != nil {
			t.Fatal(err)
		}
		st = f.status(id)
		for _, want := range []string{fmt.Sprint(st.MemorySize), fmt.Sprint(st.MemoryAllocation), st.IdleCyclesBurnedPerDay.String()} {
			if !strings.Contains(strings.ReplaceAll(reply, "_", ""), want) {
				t.Errorf("canister_status lacks %s: %s", want, reply)
			}
		}
		if st.MemoryAllocation != st.MemorySize {
			t.Fatalf("allocation %d, usage %d", st.MemoryAllocation, st.MemorySize)
		}
		if err := f.setMemory(id, "memory_allocation", 0); err != nil {
			t.Fatal(err)
		}
		if got := f.grow(id, "sgrow", 1); got != 2 {
			t.Fatalf("stable grow without an allocation: %d", got)
		}
		f.checkConservation()
	})
}

func (f *fixture) moduleBytes(id principal.Principal) uint64 {
	c, err := f.node.get(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.moduleBytes
}

// fakeClock is a node clock the test moves.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// expectedFee is the storage fee of bytes over d at the default rate.
func expectedFee(bytes uint64, d time.Duration) cycles.Amount {
	fee, _ := storageFee(DefaultConfig().Fees.GiBStoragePerSecond, bytes, uint64(d), 0)
	return fee
}

// within1 compares two amounts up to one cycle: node time runs a few
// nanoseconds ahead of a stopped clock, and charges carry a fraction.
func within1(a, b cycles.Amount) bool {
	if a.Cmp(b) < 0 {
		a, b = b, a
	}
	return a.SaturatingSub(b).Cmp(cycles.New(1)) <= 0
}

// waitCharged waits until the timer loop has charged id's storage fee
// (its balance changed from before) and returns the status.
func (f *fixture) waitCharged(id principal.Principal, before cycles.Amount) *Status {
	f.t.Helper()
	var st *Status
	waitFor(f.t, 10*time.Second, func() bool { st = f.status(id); return st.Balance != before })
	return st
}

// The storage fee: proportional to the time that passes and to the memory
// held (at least the allocation), charged by the timer loop and before
// messages, kept across a restart without charging an interval twice, and a
// canister that cannot pay is frozen until topped up.
func TestStorageFee(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{}
	clk.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	cfg := testConfig(t, "")
	cfg.UpdateInstructions = 2_000_000_000
	cfg.Clock = clk.now
	f := openFixture(t, cfg)
	ctx := context.Background()

	id := f.install(mustWat(t, memWat), nil)
	s0 := f.status(id)
	day := f.node.idleBurnPerDay(s0.MemorySize)
	if s0.IdleCyclesBurnedPerDay != day || day.IsZero() {
		t.Fatalf("idle_cycles_burned_per_day %s, want %s", s0.IdleCyclesBurnedPerDay, day)
	}

	// 1000 s of the memory held: charged by the timer loop.
	clk.advance(1000 * time.Second)
	s1 := f.waitCharged(id, s0.Balance)
	fee1 := s0.Balance.SaturatingSub(s1.Balance)
	if want := expectedFee(s0.MemorySize, 1000*time.Second); !within1(fee1, want) {
		t.Fatalf("fee for 1000 s of %d bytes: %s, want %s", s0.MemorySize, fee1, want)
	}
	if s1.CyclesBurned.SaturatingSub(s0.CyclesBurned) != fee1 {
		t.Fatal("storage fee not booked as burned")
	}

	// Twice the time, more memory: proportional to both.
	if got := f.grow(id, "sgrow", 64); got != 0 { // +4 MiB of stable memory
		t.Fatalf("sgrow: %d", got)
	}
	s2 := f.status(id)
	clk.advance(2000 * time.Second)
	s3 := f.waitCharged(id, s2.Balance)
	fee2 := s2.Balance.SaturatingSub(s3.Balance)
	if want := expectedFee(s2.MemorySize, 2000*time.Second); !within1(fee2, want) {
		t.Fatalf("fee for 2000 s of %d bytes: %s, want %s", s2.MemorySize, fee2, want)
	}

	// Across a restart: the time paid up to is kept, so the next charge
	// covers only what passed since.
	f.restart()
	if f.status(id).Balance != s3.Balance {
		t.Fatal("balance changed across a restart")
	}
	clk.advance(500 * time.Second)
	s4 := f.waitCharged(id, s3.Balance)
	fee3 := s3.Balance.SaturatingSub(s4.Balance)
	if want := expectedFee(s2.MemorySize, 500*time.Second); !within1(fee3, want) {
		t.Fatalf("fee for 500 s after a restart: %s, want %s", fee3, want)
	}

	// A message pays before it runs, for the time since the last charge.
	clk.advance(30 * time.Second) // less than the timer loop's interval
	r, err := f.node.Update(ctx, Message{Canister: id, Method: "ping", Caller: user})
	if err != nil {
		t.Fatal(err)
	}
	s5 := f.status(id)
	execFee := f.node.executionFee(r.Instructions).SaturatingAdd(cycles.New(f.cfg.Fees.IngressReception))
	if got, want := s4.Balance.SaturatingSub(s5.Balance).SaturatingSub(execFee), expectedFee(s2.MemorySize, 30*time.Second); !within1(got, want) {
		t.Fatalf("fee charged with a message: %s, want %s", got, want)
	}

	// An allocation is paid for in full, used or not.
	if err := f.setMemory(id, "memory_allocation", 1<<30); err != nil {
		t.Fatal(err)
	}
	s6 := f.status(id)
	if s6.IdleCyclesBurnedPerDay != cycles.New(127_000*86_400) {
		t.Fatalf("idle_cycles_burned_per_day with 1 GiB allocated: %s", s6.IdleCyclesBurnedPerDay)
	}
	clk.advance(100 * time.Second)
	s7 := f.waitCharged(id, s6.Balance)
	if fee := s6.Balance.SaturatingSub(s7.Balance); !within1(fee, cycles.New(12_700_000)) {
		t.Fatalf("fee for 100 s of 1 GiB allocated: %s", fee)
	}
	f.checkConservation()

	// Running out: a canister with 1 T cycles and 1 GiB allocated pays
	// 11 G cycles a day; after 100 days its balance is gone, not negative,
	// and it refuses updates until it is topped up.
	amount := cycles.New(1_000_000_000_000)
	poor, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}, Cycles: &amount, Minted: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.Install(ctx, poor, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, memWat), Caller: user}); err != nil {
		t.Fatal(err)
	}
	if err := f.setMemory(poor, "memory_allocation", 1<<30); err != nil {
		t.Fatal(err)
	}
	if got := f.grow(poor, "ping", 0); got != 1 {
		t.Fatal("ping")
	}
	before := f.status(poor)
	clk.advance(100 * 24 * time.Hour)
	_, err = f.node.Update(ctx, Message{Canister: poor, Method: "ping", Caller: user})
	if r := f.reject(err); r.Code != SysTransient || !strings.Contains(r.Message, "out of cycles") {
		t.Fatalf("update to a canister that could not pay its memory: %v", r)
	}
	after := f.status(poor)
	if !after.Balance.IsZero() || after.CyclesBurned.SaturatingSub(before.CyclesBurned) != before.Balance {
		t.Fatalf("frozen canister: balance %s, burned %s more (had %s)", after.Balance, after.CyclesBurned.SaturatingSub(before.CyclesBurned), before.Balance)
	}
	if h, _ := f.sizes(poor); h != 1 {
		t.Fatal("a frozen canister lost its state")
	}
	f.checkConservation()
	if err := f.node.deposit(ctx, poor, cycles.New(2_000_000_000_000), true); err != nil {
		t.Fatal(err)
	}
	if got := f.grow(poor, "ping", 0); got != 1 {
		t.Fatal("ping after a top-up")
	}
	// Raising an allocation the balance cannot sustain is refused.
	if err := f.setMemory(poor, "memory_allocation", 1<<40); err == nil || !strings.Contains(err.Error(), "insufficient cycles") {
		t.Fatalf("allocation the balance cannot sustain: %v", err)
	}
	f.checkConservation()
}
