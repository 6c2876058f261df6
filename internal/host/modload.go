package host

import (
	"bytes"
	"compress/gzip"
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// What an install holds while its module is decoded and compiled.
//
// install_code carries its module gzip'd or not; install_chunked_code
// names chunks. Either way the host materializes the module (inflates it,
// concatenates the chunks), then compiles it, which holds further copies
// for a while (the compile request to the compiler sandbox and the artifact
// it returns, or wasmtime's own in process). None of that is message
// memory, so it is bounded here instead: every install reserves its
// module's size from the node's preparing budget (Config.PreparingBytes)
// before it allocates the module, and holds it until the module is
// prepared. An install waits for its share with its context, holding
// nothing but its argument; it only waits once its caller is authorized
// (Install locks the target and checks its controller and balance first).

// preparingBudget bounds the bytes of modules being decoded and compiled
// on the node. It is a FIFO weighted semaphore: a large module is not
// starved by a stream of small ones.
type preparingBudget struct {
	mu      sync.Mutex
	size    uint64
	used    uint64
	peak    uint64    // the most ever held at once (tests)
	waiters list.List // of *budgetWaiter, in arrival order
}

type budgetWaiter struct {
	n     uint64
	ready chan struct{} // closed once n is granted
}

func newPreparingBudget(size uint64) *preparingBudget {
	return &preparingBudget{size: max(size, 1)}
}

// acquire reserves n bytes (at most the budget's size: a module as large
// as the whole budget runs alone), waiting while ctx allows.
func (b *preparingBudget) acquire(ctx context.Context, n uint64) (uint64, error) {
	n = min(n, b.size)
	b.mu.Lock()
	if b.waiters.Len() == 0 && b.size-b.used >= n {
		b.take(n)
		b.mu.Unlock()
		return n, nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	e := b.waiters.PushBack(w)
	b.mu.Unlock()
	select {
	case <-w.ready:
		return n, nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-w.ready: // granted meanwhile: give it back
			b.mu.Unlock()
			b.release(n)
		default:
			front := b.waiters.Front() == e
			b.waiters.Remove(e)
			if front {
				b.grant() // the next ones may fit now
			}
			b.mu.Unlock()
		}
		return 0, ctx.Err()
	}
}

// release returns n bytes of a reservation.
func (b *preparingBudget) release(n uint64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= min(n, b.used)
	b.grant()
	b.mu.Unlock()
}

// take and grant run with mu held.
func (b *preparingBudget) take(n uint64) {
	b.used += n
	b.peak = max(b.peak, b.used)
}

func (b *preparingBudget) grant() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*budgetWaiter)
		if b.size-b.used < w.n {
			return
		}
		b.take(w.n)
		b.waiters.Remove(e)
		close(w.ready)
	}
}

// peakBytes is the most the budget ever had reserved at once.
func (b *preparingBudget) peakBytes() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak
}

// preparingBytes is the node's budget: Config.PreparingBytes, by default
// twice the module size limit (two of the largest modules at once), and
// never less than the limit.
func preparingBytes(cfg Config) uint64 {
	limit := uint64(max(cfg.ModuleLimits.MaxBytes, 0))
	if cfg.PreparingBytes == 0 {
		return max(2*limit, 1)
	}
	return max(cfg.PreparingBytes, limit, 1)
}

// moduleSource is where an install's module comes from: install_code's
// wasm_module (.wasm or .wasm.gz), or install_chunked_code's chunks of a
// chunk store, whose concatenation (.wasm or .wasm.gz) has SHA-256 sum.
type moduleSource struct {
	raw []byte

	chunked bool
	store   principal.Principal
	hashes  [][]byte
	sum     []byte
}

// moduleClaim is what a module will take once materialized, known before
// any of it is.
type moduleClaim struct {
	size    uint64 // the module's size (a gzip'd one's held to it)
	reserve uint64 // what materializing it holds at most
	gzip    bool
	stored  uint64 // chunks: the size of their concatenation
}

// isGzip says whether a module (or its first bytes) is gzip'd.
func isGzip(b []byte) bool { return len(b) >= 2 && b[0] == 0x1f && b[1] == 0x8b }

// gzipClaim is the uncompressed size a gzip'd module of length n, ending
// with tail, claims in its trailer; beyond the size limit it is refused
// before any work.
func (n *Node) gzipClaim(length uint64, tail []byte) (uint64, error) {
	if length < 18 || len(tail) < 4 { // a gzip header and trailer at least
		return 0, fmt.Errorf("%w: gzip: %v", engine.ErrInvalidModule, io.ErrUnexpectedEOF)
	}
	size := uint64(binary.LittleEndian.Uint32(tail[len(tail)-4:]))
	if limit := uint64(max(n.cfg.ModuleLimits.MaxBytes, 0)); size > limit {
		return 0, fmt.Errorf("%w: decompressed module exceeds %d bytes", engine.ErrInvalidModule, limit)
	}
	return size, nil
}

// claimRaw is the claim of install_code's module: its length, or a gzip'd
// one's uncompressed size from its trailer (decode holds the stream to
// it). The argument is in memory already; what is reserved is the module.
//
// Bytes that are neither gzip nor a Wasm module are refused here, before
// the install is charged for preparing them: nothing was prepared.
func (n *Node) claimRaw(raw []byte) (moduleClaim, error) {
	if !isGzip(raw) {
		if err := engine.CheckHeader(raw); err != nil {
			return moduleClaim{}, err
		}
		return moduleClaim{size: uint64(len(raw)), reserve: uint64(len(raw))}, nil
	}
	size, err := n.gzipClaim(uint64(len(raw)), raw)
	return moduleClaim{size: size, reserve: size, gzip: true}, err
}

// claimChunks is the claim of install_chunked_code's module, read from the
// chunk store without copying the chunks: their concatenation, and a
// gzip'd one's uncompressed size besides.
func (n *Node) claimChunks(src moduleSource) (moduleClaim, error) {
	size, head, tail, missing, err := n.store.ChunksSize(src.store.Bytes(), src.hashes)
	if missing != nil {
		return moduleClaim{}, chunkStoreError("Chunk with hash %x is not in the chunk store of canister %s", missing, src.store)
	}
	if err != nil {
		return moduleClaim{}, fmt.Errorf("chunk store of %s: %w", src.store, err)
	}
	cl := moduleClaim{size: size, reserve: size, stored: size}
	if isGzip(head) {
		if cl.size, err = n.gzipClaim(size, tail); err != nil {
			return moduleClaim{}, err
		}
		cl.gzip, cl.reserve = true, satAdd(size, cl.size)
	}
	return cl, nil
}

// materialize produces the module of src as claimed.
func (n *Node) materialize(src moduleSource, cl moduleClaim) ([]byte, error) {
	wasm := src.raw
	if src.chunked {
		var err error
		if wasm, err = n.concatChunks(src.store, src.hashes); err != nil {
			return nil, err
		}
		if uint64(len(wasm)) != cl.stored {
			// The chunk store changed since the claim (it is read without
			// the store canister's lock: chunks.go).
			return nil, chunkStoreError("Chunk store of canister %s changed during the install", src.store)
		}
		if sum := sha256.Sum256(wasm); !bytes.Equal(sum[:], src.sum) {
			// The IC's message, with its (Rust) rendering of the hashes.
			return nil, chunkStoreError("Wasm module hash %s does not match given hash WasmHash(%s)", rustBytes(sum[:]), rustBytes(src.sum))
		}
	}
	if !cl.gzip {
		return wasm, nil
	}
	return inflate(wasm, cl.size, uint64(max(n.cfg.ModuleLimits.MaxBytes, 0)))
}

// inflate decompresses a gzip'd module into a buffer of exactly the size
// its trailer claims, which the stream must then have: shorter or longer
// is invalid (the trailer's size is modulo 2^32, so a module that only
// claims to be small is stopped once past its claim). Nothing grows beyond
// what was reserved.
func inflate(raw []byte, claimed, limit uint64) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: gzip: %v", engine.ErrInvalidModule, err)
	}
	out := make([]byte, claimed)
	if _, err := io.ReadFull(zr, out); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: gzip: the module is shorter than its gzip trailer says (%d bytes)", engine.ErrInvalidModule, claimed)
		}
		return nil, fmt.Errorf("%w: gzip: %v", engine.ErrInvalidModule, err)
	}
	// The end of the stream: this read also checks the CRC and size.
	var one [1]byte
	switch k, err := zr.Read(one[:]); {
	case k > 0 && claimed >= limit:
		return nil, fmt.Errorf("%w: decompressed module exceeds %d bytes", engine.ErrInvalidModule, limit)
	case k > 0:
		return nil, fmt.Errorf("%w: gzip: the module is longer than its gzip trailer says (%d bytes)", engine.ErrInvalidModule, claimed)
	case err != io.EOF:
		return nil, fmt.Errorf("%w: gzip: %v", engine.ErrInvalidModule, err)
	}
	return out, nil
}

// compileFee is what preparing a module of size bytes costs its canister
// (Fees.CompilePerByte per byte: decoding, validation, compilation).
func (n *Node) compileFee(size uint64) cycles.Amount {
	f, err := cycles.New(size).MulUint64(n.cfg.Fees.CompilePerByte)
	if err != nil {
		return cycles.Max
	}
	return f
}

// prepare materializes src's module as claimed and prepares it with x,
// within the node's preparing budget. The module is returned even when it
// does not prepare, so that its size is known.
//
// From the moment its key is known the module is in use (moduleuse.go):
// end, which the caller calls once the install has committed or failed,
// has the executors forget what preparing it made (a compiled artifact)
// unless the store holds the module or another install uses it.
func (n *Node) prepare(ctx context.Context, x exec.Executor, src moduleSource, cl moduleClaim) (wasm []byte, m *exec.Module, end func(), err error) {
	end = func() {}
	held, err := n.preparing.acquire(ctx, cl.reserve)
	if err != nil {
		return nil, nil, end, rejectf(SysTransient, "Waiting to prepare the module (limits.preparing_module_bytes): %v", err)
	}
	defer func() { n.preparing.release(held) }()
	wasm, err = n.materialize(src, cl)
	if err != nil {
		return nil, nil, end, err
	}
	end = n.beginInstall(store.ModuleKey(wasm))
	if size := uint64(len(wasm)); size < held {
		n.preparing.release(held - size) // the compressed chunks are garbage now
		held = size
	}
	m, err = x.Prepare(ctx, wasm)
	return wasm, m, end, err
}

// failPrepare charges the target for preparing a module that did not
// prepare (invalid, or its compiler failed), and returns err. A user's
// install_code commits its reject with the charge, as the management
// canister would phrase it.
func (n *Node) failPrepare(ctx context.Context, c *canister, fee cycles.Amount, err error) error {
	return n.failCharged(ctx, c, 0, fee, err)
}

// failCharged is failPrepare that also charges used instructions.
func (n *Node) failCharged(ctx context.Context, c *canister, used uint64, fee cycles.Amount, err error) error {
	var rej *Reject
	if !errors.As(err, &rej) {
		rej = rejectf(CanisterError, "%v", err)
	}
	ingress, answered := rejectionOf(ctx, rej)
	if cerr := n.chargeOnly(c, used, nil, fee, cycles.Amount{}, ingress...); cerr != nil {
		return cerr
	}
	answered()
	return err
}

// failExecute is asReject for an install's execution that failed, charging
// the module's preparation when its sandbox failed it (a crash, a
// violation: the canister's doing), and the install's whole instruction
// limit when it failed the execution itself (sandboxFault); a failure of
// the host's own is not charged.
func (n *Node) failExecute(ctx context.Context, c *canister, fee cycles.Amount, limit uint64, what string, err error) error {
	var se *exec.SandboxError
	var rej *Reject
	switch {
	case errors.As(err, &rej):
		return rej // the node's execution memory (execmem.go)
	case !errors.As(err, &se):
		return asReject(c.id, what, err)
	}
	var used uint64
	if sandboxFault(err) {
		used = limit
	}
	return n.failCharged(ctx, c, used, fee, asReject(c.id, what, err))
}
