package host

import (
	"github.com/cordon-dev/cordon/internal/store"
)

// The low Wasm memory hook (IC interface specification, "On low Wasm
// memory"). canister_on_low_wasm_memory runs as a system task, like the
// heartbeat and the global timer, once the canister's remaining Wasm
// memory, wasm_memory_limit - heap size, is below its
// wasm_memory_threshold; then not again until the condition has cleared
// and arises anew. As on the IC the condition is evaluated again whenever
// the heap or the settings change (every committed execution, install,
// uninstall, update_settings), and the hook's state goes with the metadata
// in the same commit, so a restart neither loses a pending hook nor runs
// one twice:
//
//	not satisfied ──condition──► ready ──hook taken──► executed
//	      ▲                                               │
//	      └──────────────── condition cleared ────────────┘
//
// (ready also falls back to not satisfied if the condition clears before
// the hook ran). The hook is marked executed when it is taken, before it
// runs, so one that traps is not retried, as on the IC; in memory, and
// durably with the hook's own commit (its execution's, or its trap's
// charge): a crash before that leaves it ready, and it runs after the
// restart.

// The states of the hook (store.Meta.LowMemoryHook).
const (
	hookNotSatisfied uint8 = iota
	hookReady
	hookExecuted
)

// defaultWasmMemoryLimit is the limit the condition uses when
// wasm_memory_limit is not set (the IC's: 4 GiB).
const defaultWasmMemoryLimit = 4 << 30

// lowMemoryCondition is the IC's condition, written without a subtraction
// that could wrap (the heap may exceed wasm_memory_limit, which some
// contexts ignore): wasm_memory_limit < heap + wasm_memory_threshold.
func lowMemoryCondition(s store.Settings, heap uint64) bool {
	limit := s.WasmMemoryLimit
	if limit == 0 {
		limit = defaultWasmMemoryLimit
	}
	return limit < satAdd(heap, s.WasmMemoryThreshold)
}

// updateLowMemory sets the hook's state in meta for a heap of heap bytes.
func updateLowMemory(meta *store.Meta, heap uint64) {
	switch {
	case !lowMemoryCondition(meta.Settings, heap):
		meta.LowMemoryHook = hookNotSatisfied
	case meta.LowMemoryHook == hookNotSatisfied:
		meta.LowMemoryHook = hookReady
	}
}

// lowMemoryDue reports whether c's hook is ready to be queued (c.mu held).
func lowMemoryDue(c *canister) bool {
	return !c.deleted && c.module != nil && c.meta.Status == "running" &&
		c.meta.LowMemoryHook == hookReady && !c.lowMemoryQueued
}

// scheduleLowMemory queues the hook of c when it is ready (c.mu held
// exclusively). At most one waits in the queue.
func (n *Node) scheduleLowMemory(c *canister) {
	if !lowMemoryDue(c) {
		return
	}
	c.lowMemoryQueued = true
	n.enqueue(c, &message{kind: kindLowMemory})
}

// handleLowMemory takes the hook and runs canister_on_low_wasm_memory
// (c.mu held exclusively, from the take to the commit). A module without
// the export takes it too, as the IC's task queue does: it is executed
// with nothing to run, and that is committed on its own.
func (n *Node) handleLowMemory(c *canister) {
	c.lowMemoryQueued = false
	if c.module == nil || c.meta.Status != "running" || c.meta.LowMemoryHook != hookReady {
		return
	}
	c.meta.LowMemoryHook = hookExecuted
	if !n.handleSystemTask(c, "canister_on_low_wasm_memory") {
		n.commitMeta(c, "take low wasm memory hook")
	}
}
