package host

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// The Wasm chunk store (IC interface specification, management canister:
// upload_chunk, stored_chunks, clear_chunk_store, install_chunked_code). A
// module too large for one message is uploaded in chunks of at most 1 MiB
// into a canister's chunk store, then installed by the list of the chunks'
// SHA-256 hashes and the whole module's. The chunks are kept in the
// canister's bucket of the store (store/chunks.go), so they survive a
// restart and go with the canister; their number is in its metadata. As on
// the IC each chunk counts as a full 1 MiB of the canister's memory: it is
// paid by the storage fee, bounded by memory_allocation, and held against
// the node's memory capacity.

const (
	// maxChunkBytes is the largest chunk, and what each chunk counts as.
	maxChunkBytes = 1 << 20
	// maxChunks is the IC's chunk store size: 100 MiB of chunks, which
	// also bounds the chunk list of one install_chunked_code.
	maxChunks = 100
)

// chunkStoreBytes is the memory a canister's chunk store counts as.
func chunkStoreBytes(m store.Meta) uint64 { return m.WasmChunks * maxChunkBytes }

// chunkStoreError is the IC's reject for the chunk store's refusals
// (CanisterManagerError::WasmChunkStoreError).
func chunkStoreError(format string, args ...any) *Reject {
	return rejectf(CanisterError, "Error from Wasm chunk store: %s.", fmt.Sprintf(format, args...))
}

// checkControllerOrSelf lets a canister's controllers and the canister
// itself use its chunk store.
func (n *Node) checkControllerOrSelf(c *canister, caller principal.Principal, op string) error {
	if caller == c.id {
		return nil
	}
	return n.checkController(c, caller, op)
}

// UploadChunk adds chunk to canister id's chunk store and returns its
// SHA-256. A chunk already stored is not stored (nor counted) twice.
func (n *Node) UploadChunk(ctx context.Context, id, caller principal.Principal, chunk []byte) ([]byte, error) {
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return nil, err
	}
	defer n.unlock(c)
	if err := n.checkControllerOrSelf(c, caller, "upload_chunk"); err != nil {
		return nil, err
	}
	if len(chunk) > maxChunkBytes {
		return nil, chunkStoreError("Wasm chunk size %d exceeds the maximum chunk size of %d", len(chunk), maxChunkBytes)
	}
	hash := store.ChunkHash(chunk)
	if _, err := n.store.Chunk(id.Bytes(), hash); err == nil {
		return hash, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("chunk store of %s: %w", id, err)
	}
	if c.meta.WasmChunks >= maxChunks {
		return nil, chunkStoreError("Wasm chunk store has already reached maximum capacity of %d chunks", maxChunks)
	}
	n.chargeStorage(c, n.now()) // the memory held so far is paid up to the upload
	meta := c.meta
	meta.WasmChunks++
	u := usageOf(c)
	u.chunks = chunkStoreBytes(meta)
	if a := meta.Settings.MemoryAllocation; a > 0 && u.total() > a {
		return nil, chunkStoreError("Cannot upload chunk: canister %s would use %d bytes of memory, beyond its memory allocation of %d bytes", id, u.total(), a)
	}
	if limit := n.freezingLimit(meta.Settings, u); meta.Balance.Cmp(limit) < 0 {
		return nil, chunkStoreError("Cannot upload chunk. At least %s additional cycles are required", limit.SaturatingSub(meta.Balance))
	}
	if !n.mem.reserveChunks(id, u.chunks) {
		used, capacity := n.mem.inUse()
		return nil, chunkStoreError("Cannot upload chunk: the node's memory capacity of %d bytes (limits.memory_capacity) has %d bytes in use", capacity, used)
	}
	ingress, answered := answerOf(ctx, hash)
	if err := n.commit(store.Change{ID: id.Bytes(), Meta: meta, Chunks: [][]byte{chunk}, Ingress: ingress}); err != nil {
		n.mem.setChunks(id, chunkStoreBytes(c.meta))
		return nil, err
	}
	answered()
	c.meta = meta
	return hash, nil
}

// StoredChunks lists the hashes in canister id's chunk store.
func (n *Node) StoredChunks(ctx context.Context, id, caller principal.Principal) ([][]byte, error) {
	c, err := n.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := n.readLockWithin(ctx, c); err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()
	if c.deleted {
		return nil, rejectf(DestinationInvalid, "Canister %s not found", id)
	}
	if err := n.checkControllerOrSelf(c, caller, "stored_chunks"); err != nil {
		return nil, err
	}
	hs, err := n.store.ChunkHashes(id.Bytes())
	if err != nil {
		return nil, fmt.Errorf("chunk store of %s: %w", id, err)
	}
	return hs, nil
}

// ClearChunkStore empties canister id's chunk store.
func (n *Node) ClearChunkStore(ctx context.Context, id, caller principal.Principal) error {
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return err
	}
	defer n.unlock(c)
	if err := n.checkControllerOrSelf(c, caller, "clear_chunk_store"); err != nil {
		return err
	}
	n.chargeStorage(c, n.now())
	meta := c.meta
	meta.WasmChunks = 0
	ingress, answered := answerOf(ctx, nil)
	if err := n.commit(store.Change{ID: id.Bytes(), Meta: meta, ClearChunks: true, Ingress: ingress}); err != nil {
		return err
	}
	answered()
	c.meta = meta
	n.mem.setChunks(id, 0)
	return nil
}

// InstallChunkedOptions describe an install_chunked_code call.
type InstallChunkedOptions struct {
	Mode   InstallMode
	Target principal.Principal
	// Store is the canister whose chunk store holds the chunks (nil: the
	// target's).
	Store      *principal.Principal
	Hashes     [][]byte // the chunks, in order
	ModuleHash []byte   // SHA-256 of the chunks' concatenation
	Arg        []byte
	Caller     principal.Principal
	// The upgrade options, as InstallOptions has them.
	KeepHeap         *bool
	KeepEOPByDefault bool
	SkipPreUpgrade   bool
}

// InstallChunked installs the module made of chunks in a chunk store, as
// install_code would install it. The caller must be a controller of the
// store canister or the store canister itself, and (install_code's rule) a
// controller of the target. The chunks are put together only once both
// hold and the target can pay for preparing them (Install).
func (n *Node) InstallChunked(ctx context.Context, opts InstallChunkedOptions) (*InstallResult, error) {
	storeID := opts.Target
	if opts.Store != nil {
		storeID = *opts.Store
	}
	if len(opts.Hashes) > maxChunks {
		return nil, chunkStoreError("Wasm module is made of %d chunks, at most %d are allowed", len(opts.Hashes), maxChunks)
	}
	if err := n.authorizeChunks(ctx, storeID, opts.Caller); err != nil {
		return nil, err
	}
	src := moduleSource{chunked: true, store: storeID, hashes: opts.Hashes, sum: opts.ModuleHash}
	return n.install(ctx, opts.Target, InstallOptions{Mode: opts.Mode, Arg: opts.Arg, Caller: opts.Caller,
		KeepHeap: opts.KeepHeap, KeepEOPByDefault: opts.KeepEOPByDefault, SkipPreUpgrade: opts.SkipPreUpgrade}, src)
}

// authorizeChunks checks that caller may use storeID's chunk store.
func (n *Node) authorizeChunks(ctx context.Context, storeID, caller principal.Principal) error {
	c, err := n.get(ctx, storeID)
	if err != nil {
		return err
	}
	if err := n.readLockWithin(ctx, c); err != nil {
		return err
	}
	defer c.mu.RUnlock()
	if c.deleted {
		return rejectf(DestinationInvalid, "Canister %s not found", storeID)
	}
	return n.checkControllerOrSelf(c, caller, "install_chunked_code")
}

// concatChunks concatenates chunks of storeID's chunk store. It runs under
// the target's lock, so it does not take the store canister's (a lock of
// one canister is never awaited holding another's): the chunks are read
// from the store, where a chunk store emptied or deleted since
// authorizeChunks has no chunks.
func (n *Node) concatChunks(storeID principal.Principal, hashes [][]byte) ([]byte, error) {
	wasm, missing, err := n.store.ConcatChunks(storeID.Bytes(), hashes)
	if missing != nil {
		return nil, chunkStoreError("Chunk with hash %x is not in the chunk store of canister %s", missing, storeID)
	}
	if err != nil {
		return nil, fmt.Errorf("chunk store of %s: %w", storeID, err)
	}
	return wasm, nil
}

// rustBytes renders b as Rust's Debug does a byte vector: [1, 2, 255].
func rustBytes(b []byte) string {
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprint(x)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
