package host

import (
	"fmt"
	"math/big"
	"runtime/debug"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Memory accounting: the per-canister memory limits of the IC's canister
// settings and the storage fee.
//
// Limits. wasm_memory_limit bounds the Wasm heap of update methods,
// canister_init and canister_post_upgrade (the IC interface specification
// ignores it for queries, callbacks, timers, heartbeats and pre_upgrade);
// memory_allocation, when non-zero, bounds the canister's whole memory
// (heap + stable memory + module + globals) in every execution whose state
// is kept. Both are expressed as the execution's sysapi.Limits (HeapBytes,
// StableBytes), so a memory.grow beyond them returns -1 and so does a stable
// grow, in both isolation modes, without anything new crossing the sandbox
// boundary. What a per-memory bound cannot see (heap and stable memory both
// growing in one message, a heap already above a lowered wasm_memory_limit)
// is caught after the execution: it becomes a trap (checkMemory), and
// commitExecution refuses such a state as a last line.
//
// Storage fee. Memory held costs Fees.GiBStoragePerSecond cycles per GiB per
// second, on max(usage, memory_allocation) as on the IC. It is charged lazily
// for the node time elapsed since the canister was last charged: before each
// message the canister processes (and before install, uninstall and
// update_settings, which change what is held), and by the timer loop every
// StorageChargeInterval. The time paid up to and the fraction of a cycle
// owed are in the canister's metadata and change together with its balance,
// so a restart neither charges an interval twice nor forgets one. A balance
// that cannot pay goes to zero (never negative) and the canister is frozen:
// it refuses updates, timers and heartbeats until it is topped up.

const (
	gib           = 1 << 30
	nsPerSecond   = 1_000_000_000
	secondsPerDay = 24 * 60 * 60
	globalBytes   = 8 // a persisted global: its 64 value bits
)

// feeUnit is the storage fee's unit of account: cycles × GiB × ns/s, so the
// fee of a byte held for a nanosecond is an integer number of units.
var feeUnit = new(big.Int).Mul(big.NewInt(gib), big.NewInt(nsPerSecond))

// memUsage is what a canister's memory consists of, in bytes. chunks is
// its Wasm chunk store (chunks.go), each chunk counted as a full
// maxChunkBytes as on the IC.
type memUsage struct {
	heap, stable, module, globals, chunks uint64
}

func satAdd(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return ^uint64(0)
}

func satSub(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return 0
}

func (u memUsage) total() uint64 {
	return satAdd(satAdd(satAdd(u.heap, u.stable), satAdd(u.module, u.globals)), u.chunks)
}

func globalsBytes(gs []state.Global) uint64 { return uint64(len(gs)) * globalBytes }

// usageOf is the memory of a canister's committed state.
func usageOf(c *canister) memUsage {
	return memUsage{heap: c.heap.Size(), stable: c.stable.Size(), module: c.moduleBytes, globals: globalsBytes(c.globals), chunks: chunkStoreBytes(c.meta)}
}

// wasmLimitApplies reports whether wasm_memory_limit bounds an execution
// context: update methods, canister_init and canister_post_upgrade (IC
// interface specification, canister settings).
func wasmLimitApplies(ctx sysapi.Context) bool {
	return ctx == sysapi.CtxUpdate || ctx == sysapi.CtxInit
}

// memoryLimits returns the heap and stable memory limits of an execution of
// module m in context ctx, for a canister with settings s whose memory is u
// when the execution starts. They never go below the current sizes (a
// memory cannot shrink; a limit lowered below them only stops growth).
// Queries, whose changes are discarded, get the node's limits. Others also
// leave the memory of every other canister within the node's capacity
// (capacity.go).
func (n *Node) memoryLimits(id principal.Principal, s store.Settings, m *exec.Module, ctx sysapi.Context, u memUsage) (heap, stable uint64) {
	heap, stable = n.heapLimit(m), n.cfg.StableBytes
	if ctx.IsQuery() {
		return heap, stable
	}
	avail := n.mem.available(id)
	heap = min(heap, satSub(avail, u.stable))
	stable = min(stable, satSub(avail, u.heap))
	if s.WasmMemoryLimit > 0 && wasmLimitApplies(ctx) {
		heap = min(heap, s.WasmMemoryLimit)
	}
	if a := s.MemoryAllocation; a > 0 {
		heap = min(heap, satSub(a, satAdd(satAdd(satAdd(u.stable, u.module), u.globals), u.chunks)))
		stable = min(stable, satSub(a, satAdd(satAdd(satAdd(u.heap, u.module), u.globals), u.chunks)))
	}
	return max(heap, u.heap), max(stable, u.stable)
}

// checkMemory turns an execution that ends beyond the canister's memory
// limits into a trap, as the IC does: its state changes are then discarded
// and only its fee is charged. moduleBytes is the size of the module the
// state belongs to (the new one during an install), chunkBytes what the
// canister's Wasm chunk store counts as (chunks.go).
func checkMemory(s store.Settings, ctx sysapi.Context, moduleBytes, chunkBytes uint64, out *sysapi.Output) {
	if out.Trapped || ctx.IsQuery() {
		return
	}
	if msg := memoryViolation(s, ctx, moduleBytes, chunkBytes, out); msg != "" {
		out.Trapped, out.TrapMessage = true, msg
	}
}

// memoryViolation says which limit the state an execution produced
// exceeds, or "".
func memoryViolation(s store.Settings, ctx sysapi.Context, moduleBytes, chunkBytes uint64, out *sysapi.Output) string {
	if l := s.WasmMemoryLimit; l > 0 && wasmLimitApplies(ctx) && out.Heap.Size > l {
		// The IC's message (HypervisorError::WasmMemoryLimitExceeded).
		return fmt.Sprintf("Canister exceeded its current Wasm memory limit of %d bytes. The peak Wasm memory usage was %d bytes.", l, out.Heap.Size)
	}
	return allocationViolation(s, moduleBytes, chunkBytes, out)
}

// allocationViolation says how the state an execution produced exceeds the
// canister's memory allocation, or "".
func allocationViolation(s store.Settings, moduleBytes, chunkBytes uint64, out *sysapi.Output) string {
	u := memUsage{heap: out.Heap.Size, stable: out.Stable.Size, module: moduleBytes, globals: globalsBytes(out.Globals), chunks: chunkBytes}
	if a := s.MemoryAllocation; a > 0 && u.total() > a {
		chunks := ""
		if u.chunks > 0 {
			chunks = fmt.Sprintf(", chunk store %d", u.chunks)
		}
		return fmt.Sprintf("Canister exceeded its memory allocation of %d bytes: its memory usage would be %d bytes (heap %d, stable %d, module %d, globals %d%s).",
			a, u.total(), u.heap, u.stable, u.module, u.globals, chunks)
	}
	return ""
}

// growthUnpaid says how an execution that grew a canister's memory from
// old to grown would leave it below its freezing limit, or "": its
// balance after the execution, bal, less its fee, must cover the freezing
// limit of the grown memory, as on the IC
// (InsufficientCyclesInMemoryGrow, whose message this is). Growth within
// the memory allocation changes nothing: the allocation is what the limit
// is on already.
func (n *Node) growthUnpaid(s store.Settings, old, grown memUsage, bal, fee cycles.Amount) string {
	if grown.total() <= old.total() || (s.MemoryAllocation > 0 && grown.total() <= s.MemoryAllocation) {
		return ""
	}
	left, need := bal.SaturatingSub(fee), n.freezingLimit(s, grown)
	if left.Cmp(need) >= 0 {
		return ""
	}
	return fmt.Sprintf("Canister cannot grow memory by %d bytes due to insufficient cycles. At least %s additional cycles are required.",
		grown.total()-old.total(), need.SaturatingSub(left))
}

// chargedBytes is the memory the storage fee is charged on: the usage, or
// the memory allocation when that is larger (IC: reserved memory is paid).
func chargedBytes(s store.Settings, u memUsage) uint64 { return max(u.total(), s.MemoryAllocation) }

// storageFee is the fee of bytes held for ns nanoseconds at rate cycles per
// GiB-second, plus rem units carried from earlier charges; it returns the
// whole cycles and the units left over.
func storageFee(rate, bytes, ns, rem uint64) (cycles.Amount, uint64) {
	x := new(big.Int).SetUint64(rate)
	x.Mul(x, new(big.Int).SetUint64(bytes))
	x.Mul(x, new(big.Int).SetUint64(ns))
	x.Add(x, new(big.Int).SetUint64(rem))
	q, r := new(big.Int).QuoRem(x, feeUnit, new(big.Int))
	a, err := cycles.FromBig(q)
	if err != nil {
		a = cycles.Max
	}
	return a, r.Uint64() // r < feeUnit < 2^64
}

// idleBurnPerDay is what holding bytes costs per day (canister_status's
// idle_cycles_burned_per_day).
func (n *Node) idleBurnPerDay(bytes uint64) cycles.Amount {
	fee, _ := storageFee(n.cfg.Fees.GiBStoragePerSecond, bytes, secondsPerDay*nsPerSecond, 0)
	return fee
}

// freezingLimit is the balance below which a canister is frozen: what it
// burns idle during its freezing threshold (IC interface specification:
// idle_cycles_burned_rate × freezing_threshold / (24 × 60 × 60)).
func (n *Node) freezingLimit(s store.Settings, u memUsage) cycles.Amount {
	x := n.idleBurnPerDay(chargedBytes(s, u)).Big()
	x.Mul(x, new(big.Int).SetUint64(s.FreezingThreshold))
	x.Quo(x, big.NewInt(secondsPerDay))
	a, err := cycles.FromBig(x)
	if err != nil {
		return cycles.Max
	}
	return a
}

// chargeStorage charges c's storage fee for the node time from the last
// charge to now, in memory: the change becomes durable with the canister's
// next commit (a crash before it loses the charge and the time it covers
// together, so the interval is charged again later, once). The caller holds
// c.mu exclusively. It reports whether the balance could not pay.
func (n *Node) chargeStorage(c *canister, now uint64) (frozen bool) {
	m := &c.meta
	if m.StoragePaidUntil == 0 {
		m.StoragePaidUntil = now // stored before storage was charged: start now
		return false
	}
	if now <= m.StoragePaidUntil {
		return false
	}
	owed, rem := storageFee(n.cfg.Fees.GiBStoragePerSecond, chargedBytes(m.Settings, usageOf(c)), now-m.StoragePaidUntil, m.StorageFeeRemainder)
	paid := cycles.Min(owed, m.Balance)
	if paid != owed && !m.Balance.IsZero() {
		n.log.Warn("canister frozen: its balance cannot pay for its memory", "canister", c.id.String(),
			"owed", owed.String(), "paid", paid.String())
	}
	m.Balance = m.Balance.SaturatingSub(paid)
	m.CyclesBurned = m.CyclesBurned.SaturatingAdd(paid)
	m.StoragePaidUntil, m.StorageFeeRemainder = now, rem
	return paid != owed
}

// chargeStorageNow charges the storage fee and commits it at once (the
// timer loop, for canisters no message has charged for a while).
func (n *Node) chargeStorageNow(c *canister) error {
	before := c.meta
	n.chargeStorage(c, n.now())
	if c.meta.Balance == before.Balance && c.meta.StorageFeeRemainder == before.StorageFeeRemainder {
		return nil // nothing owed: the time paid up to advances with the next commit
	}
	if err := n.commit(store.Change{ID: c.id.Bytes(), Meta: c.meta}); err != nil {
		c.meta = before
		return fmt.Errorf("charge storage of %s: %w", c.id, err)
	}
	return nil
}

// affords reports whether c's balance pays cost and stays at or above its
// freezing limit (c.mu held).
func (n *Node) affords(c *canister, cost cycles.Amount) bool {
	return c.meta.Balance.Cmp(cost.SaturatingAdd(n.freezingLimit(c.meta.Settings, usageOf(c)))) >= 0
}

// outOfCycles refuses an execution whose worst-case cost would leave c
// below its freezing limit (or that c cannot pay at all).
func (n *Node) outOfCycles(c *canister, what string, cost cycles.Amount) error {
	if n.affords(c, cost) {
		return nil
	}
	limit := n.freezingLimit(c.meta.Settings, usageOf(c))
	need := cost.SaturatingAdd(limit)
	r := rejectf(SysTransient, "Canister %s is out of cycles: %s needs up to %s cycles and its freezing limit is %s, the balance is %s; please top up the canister with at least %s additional cycles",
		c.id, what, cost, limit, c.meta.Balance, need.SaturatingSub(c.meta.Balance))
	r.need = need
	return r
}

// returnAfterApply is the size of applied deltas from which their pages are
// handed back to the OS at once.
const returnAfterApply = 64 << 20

// returnApplied returns to the OS the pages of large deltas just applied to
// backed memories (n bytes of pages; the caller no longer references them):
// their bytes are in the images now, and left to the collector's pace the
// garbage kept the process one copy of them larger until the next
// collection. The live heap no longer holds the committed memory, so a
// forced collection costs little.
func returnApplied(n uint64) {
	if n >= returnAfterApply {
		debug.FreeOSMemory()
	}
}

// deltaBytes is the size of the pages of deltas.
func deltaBytes(ds ...state.Delta) uint64 {
	var n uint64
	for _, d := range ds {
		n += uint64(len(d.Pages)) * state.PageSize
	}
	return n
}
