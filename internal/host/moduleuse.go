package host

import (
	"encoding/hex"
	"sync"

	"github.com/cordon-dev/cordon/internal/exec"
)

// Compiled modules follow the store's modules. The store keeps a module
// while a canister uses it (a code change or deletion releases it, open
// collects what a crash left); the executors keep what they derived from
// it (in sandbox mode a compiled artifact on disk, several times the
// module's size) for those modules and for the installs under way, and no
// others: an executor forgets a module when the store no longer holds it
// and no install is using it, and at open prunes what is not the store's.
// Otherwise a canister that installs new code into a child again and again
// filled the disk with artifacts nothing would load again.
type moduleUse struct {
	// mu orders the decision to forget a module with the start of an
	// install of it: an install counted here before the check keeps the
	// module; one that starts after it prepares the module again.
	mu         sync.Mutex
	installing map[string]int // installs under way, by module key (store.ModuleKey)
}

// beginInstall counts an install of the module with key as under way,
// from before the module is prepared until end is called, after the
// install committed or failed. end forgets the module if the install did
// not store it and nothing else uses it.
func (n *Node) beginInstall(key string) (end func()) {
	u := &n.modules
	u.mu.Lock()
	if u.installing == nil {
		u.installing = map[string]int{}
	}
	u.installing[key]++
	u.mu.Unlock()
	return func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.installing[key]--; u.installing[key] <= 0 {
			delete(u.installing, key)
		}
		n.forgetUnusedLocked(key)
	}
}

// releaseModules releases the modules (by key) that a committed code
// change or deletion replaced: the store deletes those no canister uses,
// and the executors forget them.
func (n *Node) releaseModules(keys ...string) {
	_ = n.backgroundWrite(n.store.ReleaseModules(keys...), "releasing replaced modules", "modules", keys)
	n.modules.mu.Lock()
	defer n.modules.mu.Unlock()
	for _, k := range keys {
		if k != "" {
			n.forgetUnusedLocked(k)
		}
	}
}

// forgetUnusedLocked has the executors forget the module with key unless
// an install is using it or the store holds it (n.modules.mu held). When
// the store cannot say, the module is kept: the next open prunes it.
func (n *Node) forgetUnusedLocked(key string) {
	if n.modules.installing[key] > 0 {
		return
	}
	if held, err := n.store.HasModule(key); err != nil || held {
		return
	}
	b, err := hex.DecodeString(key)
	if err != nil || len(b) != 32 {
		return
	}
	h := [32]byte(b)
	n.mu.Lock()
	alt := n.alt
	n.mu.Unlock()
	n.exec.ForgetModule(h)
	if alt != nil {
		alt.ForgetModule(h)
	}
}

// pruneModules has x drop what it keeps for modules the store does not
// hold (at open, and when the other mode's executor is created: before
// any install uses it).
func (n *Node) pruneModules(x exec.Executor) {
	held, err := n.store.ModuleKeys()
	if err != nil {
		n.log.Warn("pruning compiled modules: listing the store's", "err", err)
		return
	}
	if err := x.PruneModules(func(h [32]byte) bool { return held[hex.EncodeToString(h[:])] }); err != nil {
		n.log.Warn("pruning compiled modules", "err", err)
	}
}
