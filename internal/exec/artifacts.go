package exec

import (
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The artifact cache holds the compiled artifacts of the modules the host
// still uses, and nothing else: every module a canister can install costs
// a compilation (a fresh .cwasm several times the module's size), so a
// cache that kept them all grew without bound for a canister installing
// new code into a child again and again. The host tells the executor when
// a module is no longer used (ForgetModule: the store released it, or the
// install that prepared it failed) and, at open, which modules it holds
// (PruneModules: the rest was left by a crash or by another version).
//
// Removing an artifact never breaks a sandbox: a sandbox receives a sealed
// memfd (sealed.go), never the file, and keeps its descriptor or mapping
// after the host's copy and the file are gone. The host reads the files
// only when it opens an artifact for a load (openArtifact) or prepares a
// module (cachedInfo); a module whose files are gone is compiled again
// there from its Wasm (load).

// The cache is also bounded in bytes (SandboxConfig.ArtifactCacheBytes):
// modules are bounded by the node's memory capacity, but an artifact may be
// far larger than its module (artifactLimit), and nothing else bounds the
// disk their artifacts take. A compilation that takes the cache beyond it
// removes the least recently used artifacts (loaded or prepared), first
// those of modules no live sandbox (canister or primed) runs, then the
// others, never the one just written: the cache exceeds its bound by at
// most that one. An artifact removed this way keeps its sealed memfd,
// which is bounded apart, and is compiled again from the store when
// needed (load).

// DefaultArtifactCacheBytes is the artifact cache's bound when none is
// configured: a tenth of the file system that holds dir, at least one
// artifact of the largest size (maxArtifact).
func DefaultArtifactCacheBytes(dir string, maxArtifact uint64) uint64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Bsize <= 0 {
		return max(8<<30, maxArtifact)
	}
	return max(st.Blocks*uint64(st.Bsize)/10, maxArtifact)
}

// artifactDisk accounts the bytes of this version's artifacts in the cache
// directory (both files of each) and when each was last used.
type artifactDisk struct {
	mu    sync.Mutex
	total uint64
	clock uint64
	m     map[[32]byte]*diskArtifact
}

type diskArtifact struct {
	bytes uint64
	used  uint64 // artifactDisk.clock at its last use
}

func newArtifactDisk() *artifactDisk {
	return &artifactDisk{m: map[[32]byte]*diskArtifact{}}
}

// scan accounts the artifacts of version tag that dir holds, the most
// recently written as the most recently used.
func (d *artifactDisk) scan(dir, tag string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("exec: artifact cache: %w", err)
	}
	type found struct {
		h     [32]byte
		bytes uint64
		mtime int64
	}
	byHash := map[[32]byte]*found{}
	for _, e := range entries {
		h, t, ok := parseArtifactName(e.Name())
		if !ok || t != tag {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		f := byHash[h]
		if f == nil {
			f = &found{h: h}
			byHash[h] = f
		}
		f.bytes += uint64(fi.Size())
		f.mtime = max(f.mtime, fi.ModTime().UnixNano())
	}
	all := make([]*found, 0, len(byHash))
	for _, f := range byHash {
		all = append(all, f)
	}
	slices.SortFunc(all, func(a, b *found) int { return cmp.Compare(a.mtime, b.mtime) })
	for _, f := range all {
		d.add(f.h, f.bytes)
	}
	return nil
}

// add accounts h's artifact (written again: its new size) as just used.
func (d *artifactDisk) add(h [32]byte, bytes uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.m[h]; ok {
		d.total -= a.bytes
	}
	d.clock++
	d.m[h] = &diskArtifact{bytes: bytes, used: d.clock}
	d.total += bytes
}

// touch records a use of h's artifact.
func (d *artifactDisk) touch(h [32]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.m[h]; ok {
		d.clock++
		a.used = d.clock
	}
}

// remove forgets h's artifact (its files are gone).
func (d *artifactDisk) remove(h [32]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if a, ok := d.m[h]; ok {
		d.total -= a.bytes
		delete(d.m, h)
	}
}

// bytes returns the bytes of the artifacts accounted.
func (d *artifactDisk) bytes() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.total
}

// byLastUse returns the artifacts' hashes, least recently used first.
func (d *artifactDisk) byLastUse() [][32]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	hs := make([][32]byte, 0, len(d.m))
	for h := range d.m {
		hs = append(hs, h)
	}
	slices.SortFunc(hs, func(a, b [32]byte) int { return cmp.Compare(d.m[a].used, d.m[b].used) })
	return hs
}

// trimArtifacts removes artifacts until the cache is within its bound,
// keeping keep's (just written).
func (x *Sandboxed) trimArtifacts(keep [32]byte) {
	limit := x.cfg.ArtifactCacheBytes
	if x.disk.bytes() <= limit {
		return
	}
	running := x.runningModules()
	order := x.disk.byLastUse()
	for _, pass := range []bool{false, true} { // not run by a live sandbox, then run
		for _, h := range order {
			if x.disk.bytes() <= limit {
				return
			}
			if h != keep && running[h] == pass {
				x.evictArtifact(h)
			}
		}
	}
}

// runningModules returns the modules live canister and primed sandboxes
// have loaded.
func (x *Sandboxed) runningModules() map[[32]byte]bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	running := map[[32]byte]bool{}
	for _, sb := range x.pool {
		if h := sb.running.Load(); h != nil {
			running[*h] = true
		}
	}
	for _, b := range x.primed {
		running[b.module] = true
	}
	return running
}

// evictArtifact removes h's artifact files, unless h is being compiled or
// forgotten (it then stays until a later trim).
func (x *Sandboxed) evictArtifact(h [32]byte) {
	unlock, ok := x.tryLockModule(h)
	if !ok {
		return
	}
	defer unlock()
	bytes := x.removeArtifactFiles(h)
	x.cfg.Logger.Info("artifact evicted from the cache", "module", hex.EncodeToString(h[:8]), "bytes", bytes,
		"cache_bytes", x.disk.bytes(), "limit", x.cfg.ArtifactCacheBytes)
}

// ForgetModule implements Executor: h's artifact files and sealed memfd
// are removed, a primed sandbox of it is stopped, and the next Prepare of
// it compiles again.
func (x *Sandboxed) ForgetModule(h [32]byte) {
	defer x.lockModule(h)() // not while a compilation of it writes its files
	x.modules.remove(h)
	x.unprimeModule(h)
	x.removeArtifact(h)
}

// PruneModules implements Executor: every artifact of this version whose
// module keep refuses is removed, with the artifacts of other versions
// (other tags: never loaded by this one) and the temporary files of writes
// a crash interrupted. Files the cache does not name are left alone.
func (x *Sandboxed) PruneModules(keep func(hash [32]byte) bool) error {
	entries, err := os.ReadDir(x.cfg.Dir)
	if err != nil {
		return fmt.Errorf("exec: artifact cache: %w", err)
	}
	var errs []error
	removed := 0
	for _, e := range entries {
		name := e.Name()
		h, tag, ok := parseArtifactName(name)
		switch {
		case strings.HasPrefix(name, ".tmp-"):
		case !ok:
			continue
		case tag == x.tag:
			if keep(h) {
				continue
			}
			x.ForgetModule(h)
			removed++
			continue
		}
		if err := os.Remove(filepath.Join(x.cfg.Dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		} else {
			removed++
		}
	}
	if removed > 0 {
		x.cfg.Logger.Info("artifact cache pruned", "removed", removed)
	}
	return errors.Join(errs...)
}

// parseArtifactName splits a cache file name, <hash>-<tag>.cwasm or .info
// (artifactPath).
func parseArtifactName(name string) (h [32]byte, tag string, ok bool) {
	base, found := strings.CutSuffix(name, ".cwasm")
	if !found {
		if base, found = strings.CutSuffix(name, ".info"); !found {
			return h, "", false
		}
	}
	hexHash, tag, found := strings.Cut(base, "-")
	if !found || tag == "" || len(hexHash) != 2*len(h) {
		return h, "", false
	}
	if _, err := hex.Decode(h[:], []byte(hexHash)); err != nil {
		return h, "", false
	}
	return h, tag, true
}
