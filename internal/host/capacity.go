package host

import (
	"fmt"
	"sync"

	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// The node's memory capacity bounds the heap and stable memory of all its
// canisters together, as a subnet's memory capacity does on the IC. Without
// it one canister, or many, can grow until the host runs out of memory: each
// canister's own limits (wasm_memory_limit, memory_allocation, the node's
// per-canister heap and stable limits) say nothing about the sum.
//
// The ledger holds every canister's committed heap and stable size, loaded
// from the store's metadata at open. An execution is given limits that leave
// the others' memory untouched (memoryLimits), so a memory.grow or stable
// grow beyond the capacity returns -1; when it ends, what it grew is reserved
// before it may be committed (reserveMemory), so two canisters growing at
// the same time cannot both take the last bytes: the second traps. A commit
// sets the canister's exact size again.
//
// The ledger also holds each canister's Wasm chunk store and installed
// module, as the IC counts both in a canister's memory: a module shared by
// several canisters (stored once, by its hash) counts for each, so what a
// canister holds does not depend on what others installed. An install
// reserves its module's size before it compiles anything.

// defaultCapacityShare is the part of the machine's memory a node's
// canisters may hold by default: half. The host keeps each committed page
// once (in its memory's image, state/backing.go), about 1.1 times the
// committed bytes in all; the other half is for what is transient (a
// message or install changing n bytes needs up to about 2.5 n while it
// commits), executions, sandboxes and the page cache (RATIONALE.md). Of
// that half, the sandboxes get a quarter of the machine by default, a hard
// limit on all of them together (sandbox.node_memory_bytes,
// exec.DefaultNodeMemoryShare), and idle ones are evicted beyond an eighth
// (sandbox.memory_budget); the host's transient memory, of which the pages
// executions hand it are bounded by a quarter (limits.execution_memory,
// execmem.go), and the page cache keep the rest.
const defaultCapacityShare = 2

// memoryCapacity is the configured capacity, or the machine's default.
func memoryCapacity(configured uint64) uint64 {
	if configured > 0 {
		return configured
	}
	if m := sandbox.MachineMemory(); m > 0 {
		return m / defaultCapacityShare
	}
	return 1 << 40 // unknown machine: no practical bound
}

// memoryLedger tracks the memory of every canister against the capacity.
type memoryLedger struct {
	capacity uint64

	mu    sync.Mutex
	used  uint64
	sizes map[principal.Principal]uint64 // heap + stable memory
	// chunks is each canister's Wasm chunk store (chunks.go): it counts
	// in used, so heap and stable memory have less room beside it.
	chunks map[principal.Principal]uint64
	// modules is each canister's installed Wasm module, counted as chunks.
	modules map[principal.Principal]uint64
}

func newMemoryLedger(capacity uint64) *memoryLedger {
	return &memoryLedger{capacity: capacity, sizes: map[principal.Principal]uint64{}, chunks: map[principal.Principal]uint64{},
		modules: map[principal.Principal]uint64{}}
}

// load fills the ledger from the store's metadata and module sizes.
func (l *memoryLedger) load(st *store.Store) error {
	moduleSizes, err := st.ModuleSizes()
	if err != nil {
		return fmt.Errorf("module sizes: %w", err)
	}
	return st.Metas(func(id []byte, m store.Meta) error {
		p, err := principal.FromBytes(id)
		if err != nil {
			return fmt.Errorf("canister id %x: %w", id, err)
		}
		l.set(p, satAdd(m.HeapSize, m.StableSize))
		l.setChunks(p, chunkStoreBytes(m))
		// A module missing from the store counts nothing: loading its
		// canister fails, and says so.
		l.setModule(p, moduleSizes[m.ModuleHash])
		return nil
	})
}

// available is the heap and stable memory canister id may hold: what it
// holds now plus what no canister holds.
func (l *memoryLedger) available(id principal.Principal) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return satSub(l.capacity, satSub(l.used, l.sizes[id]))
}

// reserve records that id will hold size bytes of heap and stable memory,
// unless that would take the node beyond its capacity while growing id.
// Not growing always succeeds.
func (l *memoryLedger) reserve(id principal.Principal, size uint64) bool {
	return l.account(l.sizes, id, size, false)
}

// set records id's committed heap and stable memory, whatever the capacity.
func (l *memoryLedger) set(id principal.Principal, size uint64) {
	l.account(l.sizes, id, size, true)
}

// reserveChunks is reserve for id's chunk store.
func (l *memoryLedger) reserveChunks(id principal.Principal, size uint64) bool {
	return l.account(l.chunks, id, size, false)
}

// setChunks is set for id's chunk store.
func (l *memoryLedger) setChunks(id principal.Principal, size uint64) {
	l.account(l.chunks, id, size, true)
}

// reserveModule is reserve for id's installed module.
func (l *memoryLedger) reserveModule(id principal.Principal, size uint64) bool {
	return l.account(l.modules, id, size, false)
}

// setModule is set for id's installed module.
func (l *memoryLedger) setModule(id principal.Principal, size uint64) {
	l.account(l.modules, id, size, true)
}

// account makes id's entry in one of the ledger's accounts (sizes, chunks
// or modules) size, unless it grows beyond the capacity and !force.
func (l *memoryLedger) account(held map[principal.Principal]uint64, id principal.Principal, size uint64, force bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	old := held[id]
	if !force && size > old && satAdd(satSub(l.used, old), size) > l.capacity {
		return false
	}
	l.used = satAdd(satSub(l.used, old), size)
	held[id] = size
	return true
}

// remove forgets a deleted canister.
func (l *memoryLedger) remove(id principal.Principal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.used = satSub(satSub(satSub(l.used, l.sizes[id]), l.chunks[id]), l.modules[id])
	delete(l.sizes, id)
	delete(l.chunks, id)
	delete(l.modules, id)
}

// inUse returns the memory held and the capacity.
func (l *memoryLedger) inUse() (used, capacity uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.used, l.capacity
}

// reserveMemory reserves the memory an execution of id ends with, or turns
// the execution into a trap when the node cannot hold it.
func (n *Node) reserveMemory(id principal.Principal, heap, stable uint64) (ok bool, msg string) {
	if n.mem.reserve(id, satAdd(heap, stable)) {
		return true, ""
	}
	used, capacity := n.mem.inUse()
	return false, fmt.Sprintf("Canister %s cannot hold %d bytes of heap and stable memory: the node's memory capacity of %d bytes (limits.memory_capacity) has %d bytes in use.",
		id, satAdd(heap, stable), capacity, used)
}

// reserveModule reserves the memory of the module (of at most size bytes)
// an install gives canister id, or returns the reject that refuses it.
func (n *Node) reserveModule(id principal.Principal, size uint64) error {
	if n.mem.reserveModule(id, size) {
		return nil
	}
	used, capacity := n.mem.inUse()
	return rejectf(CanisterError, "Canister %s cannot hold its Wasm module of %d bytes: the node's memory capacity of %d bytes (limits.memory_capacity) has %d bytes in use.",
		id, size, capacity, used)
}
