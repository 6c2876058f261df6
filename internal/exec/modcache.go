package exec

import (
	"runtime"
	"sync"
	"weak"
)

// moduleCache finds a prepared module by its hash without keeping it alive.
// The canisters that run a module hold it; once none does (deleted,
// reinstalled or upgraded to other code), the garbage collector frees it,
// with its Wasm bytes and, in-process, its compiled code, and its entry
// goes. A cache that held modules strongly grew with every module ever
// installed (12 × 20 MiB modules installed and deleted left +740 MB).
type moduleCache struct {
	mu sync.Mutex
	m  map[[32]byte]weak.Pointer[Module]
}

func newModuleCache() *moduleCache {
	return &moduleCache{m: map[[32]byte]weak.Pointer[Module]{}}
}

// get returns the live module with hash h, or nil.
func (c *moduleCache) get(h [32]byte) *Module {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[h].Value()
}

// put records mod under h and returns it, or the module already recorded
// under h if one is still alive (two callers prepared it at once).
func (c *moduleCache) put(h [32]byte, mod *Module) *Module {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[h].Value(); old != nil {
		return old
	}
	wp := weak.Make(mod)
	c.m[h] = wp
	runtime.AddCleanup(mod, c.drop, cacheEntry{h, wp})
	return mod
}

// remove forgets h: the next Prepare of it compiles again, even while a
// holder keeps the module alive.
func (c *moduleCache) remove(h [32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, h)
}

type cacheEntry struct {
	hash [32]byte
	ptr  weak.Pointer[Module]
}

// drop removes an entry whose module was collected, unless the hash has
// been prepared again since (a newer entry).
func (c *moduleCache) drop(e cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[e.hash] == e.ptr {
		delete(c.m, e.hash)
	}
}

// len returns the number of entries (live or not yet cleaned up).
func (c *moduleCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
