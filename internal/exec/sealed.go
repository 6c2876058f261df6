package exec

import (
	"bytes"
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Sealed artifacts: a canister sandbox receives its module's compiled
// artifact as a sealed memfd (F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW|
// F_SEAL_SEAL), not as the cache file. The host checks the cache file
// against its recorded hash once, when it copies it into the memfd; from
// then on every load of that module (a blank sandbox taken by an evicted
// canister, a primed sandbox) passes a duplicate of the same descriptor
// with no read or hash of the artifact on the message path. The seals make
// one memfd safe to share between sandboxes: no sandbox can change the
// bytes another one (or the host) maps, nor add or remove seals, whatever
// it does with its descriptor. The host's memfds are bounded in bytes
// (SandboxConfig.SealedArtifactBytes) and in number (SealedArtifacts: each
// is a host descriptor, and a byte bound alone let many small modules take
// thousands); the least recently used go first.

// artifactSeals are the seals every artifact memfd carries.
const artifactSeals = unix.F_SEAL_WRITE | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// sealedCache holds sealed artifact memfds by module hash, bounded in bytes
// and in number.
type sealedCache struct {
	mu    sync.Mutex
	max   uint64 // bytes
	maxN  int    // memfds
	used  uint64
	m     map[[32]byte]*list.Element // of *sealedEntry
	order *list.List                 // front: most recently used
	fills uint64                     // artifacts copied and checked (tests, stats)
}

type sealedEntry struct {
	hash [32]byte
	f    *os.File
	size uint64
}

func newSealedCache(max uint64, maxN int) *sealedCache {
	return &sealedCache{max: max, maxN: maxN, m: map[[32]byte]*list.Element{}, order: list.New()}
}

// get returns a duplicate of the sealed memfd of h (the caller closes it),
// or nil.
func (c *sealedCache) get(h [32]byte) (*os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[h]
	if !ok {
		return nil, nil
	}
	c.order.MoveToFront(e)
	return dupFile(e.Value.(*sealedEntry).f)
}

// put keeps f (sealed, of size bytes) under h, evicting the least recently
// used entries to stay within the bounds; false when it does not fit at all
// or h is already cached (the caller keeps f then).
func (c *sealedCache) put(h [32]byte, f *os.File, size uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[h]; ok || size > c.max || c.maxN < 1 {
		return false
	}
	for c.used+size > c.max || c.order.Len() >= c.maxN {
		c.removeLocked(c.order.Back())
	}
	c.m[h] = c.order.PushFront(&sealedEntry{hash: h, f: f, size: size})
	c.used += size
	return true
}

// drop closes and forgets h's memfd (a sandbox refused the artifact, or it
// was removed from the cache directory). Sandboxes that hold a duplicate
// keep theirs.
func (c *sealedCache) drop(h [32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[h]; ok {
		c.removeLocked(e)
	}
}

func (c *sealedCache) removeLocked(e *list.Element) {
	s := e.Value.(*sealedEntry)
	c.order.Remove(e)
	delete(c.m, s.hash)
	c.used -= s.size
	s.f.Close()
}

// close closes every memfd.
func (c *sealedCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.order.Len() > 0 {
		c.removeLocked(c.order.Back())
	}
}

// checks returns how many artifacts were copied and checked.
func (c *sealedCache) checks() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fills
}

// count returns the memfds held.
func (c *sealedCache) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// bytes returns the bytes held.
func (c *sealedCache) bytes() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("exec: dup artifact memfd: %w", err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// sealedMemfd makes a sealed memfd holding what r yields (at most max
// bytes) and returns it with the SHA-256 of its content.
func sealedMemfd(name string, r io.Reader, max uint64) (*os.File, [32]byte, uint64, error) {
	var sum [32]byte
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, sum, 0, fmt.Errorf("exec: artifact memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, int64(max)+1))
	if err == nil && uint64(n) > max {
		err = fmt.Errorf("artifact larger than %d bytes", max)
	}
	if err == nil {
		_, err = unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, artifactSeals)
	}
	if err != nil {
		f.Close()
		return nil, sum, 0, fmt.Errorf("exec: artifact memfd: %w", err)
	}
	copy(sum[:], h.Sum(nil))
	return f, sum, uint64(n), nil
}

// openArtifact returns the module's artifact as a sealed memfd (the caller
// closes it). The first call for a module copies the cache file into a
// memfd and checks it against the hash recorded when it was written (a
// damaged file is compiled again rather than handed to a sandbox to crash
// on); later calls duplicate the cached memfd.
func (x *Sandboxed) openArtifact(h [32]byte) (*os.File, error) {
	x.disk.touch(h)
	if f, err := x.sealed.get(h); f != nil || err != nil {
		return f, err
	}
	info, err := os.ReadFile(x.artifactPath(h, ".info"))
	if err != nil {
		return nil, err
	}
	src, err := os.Open(x.artifactPath(h, ".cwasm"))
	if err != nil {
		return nil, err
	}
	defer src.Close()
	f, sum, size, err := sealedMemfd("cordon-artifact-"+hex.EncodeToString(h[:6]), src, x.cfg.MaxArtifactBytes)
	if err != nil {
		return nil, err
	}
	if len(info) < sha256.Size || !bytes.Equal(sum[:], info[:sha256.Size]) {
		f.Close()
		return nil, errDamagedArtifact
	}
	return x.keepSealed(h, f, size)
}

// sealArtifact puts an artifact the compiler sandbox just returned (and the
// host just wrote and hashed) into the sealed cache.
func (x *Sandboxed) sealArtifact(h [32]byte, art []byte) {
	f, _, size, err := sealedMemfd("cordon-artifact-"+hex.EncodeToString(h[:6]), bytes.NewReader(art), x.cfg.MaxArtifactBytes)
	if err != nil {
		x.cfg.Logger.Warn("artifact not kept sealed", "err", err)
		return
	}
	if g, err := x.keepSealed(h, f, size); err == nil {
		g.Close()
	}
}

// keepSealed caches f under h and returns a descriptor for the caller (f
// itself when it is not cached).
func (x *Sandboxed) keepSealed(h [32]byte, f *os.File, size uint64) (*os.File, error) {
	x.sealed.mu.Lock()
	x.sealed.fills++
	x.sealed.mu.Unlock()
	if !x.sealed.put(h, f, size) {
		return f, nil
	}
	g, err := dupFile(f)
	if err != nil {
		return nil, err
	}
	return g, nil
}

var errDamagedArtifact = errors.New("exec: cached artifact does not match its recorded hash")
