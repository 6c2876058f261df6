package exec

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
