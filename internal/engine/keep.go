package engine

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"
	"weak"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Kept instances (RATIONALE.md, "Queries reuse their instance"): a plain
// query's memory and globals are discarded, so after one completes cleanly
// its instance can serve the next query of the same module from the same
// committed heap, once reset to exactly that state. A fresh instance costs a
// store, an instantiation, a memory reservation and its teardown (unmapping
// it, TLB shootdowns), and re-faults every page the query reads; a kept one
// costs the reset, which touches only what the query changed.
//
// What an instance can carry from one execution to the next, and how each
// is made exact again:
//   - linear memory: the committed heap file's data stays mapped
//     copy-on-write over the memory, its holes anonymous (holes.go); a
//     commit that writes into a hole changes the file's data spans, and the
//     instance is not reused. Every page of the data that is not a page of
//     that file (written copies, the shared zero page), and every written
//     page of a hole, is found with PAGEMAP_SCAN and made the file's again: up to copyPages of them by reading the
//     file's current bytes into them just before the next query runs, more
//     by mapping the file again over them (MAP_FIXED) when the query ends
//     (reset). The memory is then what a fresh mapping of the same file
//     shows, including later changes to the file. Pages the query only read
//     stay mapped. The memory must not have grown or moved.
//   - globals: every mutable global is set to the request's committed values
//     and the instruction counter afresh, as on a fresh instance.
//   - tables and passive segments: only a module without table.set/grow/
//     fill/copy/init, elem.drop and data.drop (wasmbin, decided when it is
//     compiled) is ever kept, so they cannot change.
//   - the execution itself: a trap, a limit, a host error or a failed reset
//     drops the instance instead.
// An instance is kept for requests with the same module, heap limit and
// heap file (device and inode of the descriptor: the kept mapping holds that
// file open, so its inode cannot be reused by another) and size.
//
// A kept instance names its module by a weak pointer, and the module's
// cleanup closes the instances kept for it: a module that every canister has
// dropped (deleted, upgraded) is freed with its compiled code, not held by
// the free list until newer instances push it out.

// keepable reports whether a request may use a kept instance or leave one.
// It does not ask the heap for its File: a page map makes its image on
// demand, and only an execution that maps the heap may make one.
func (e *Engine) keepable(req *Request, heap state.Memory) bool {
	m, in := req.Module, req.Input
	return e.keep > 0 && m.reusable && discardsState(in.Context) && !req.RunStart && in.Entry != "" &&
		heap != nil && heap.Size() > 0 && (req.Globals != nil || len(m.globals) == 0)
}

// mayHaveKept reports whether an instance of m for a heap of this size and
// limit is kept, before the heap's file is asked for.
func (e *Engine) mayHaveKept(req *Request, heap state.Memory) bool {
	mod := weak.Make(req.Module)
	e.kept.mu.Lock()
	defer e.kept.mu.Unlock()
	for _, r := range e.kept.list {
		if r.key.mod == mod && r.key.size == heap.Size() && r.key.heapLimit == req.Input.Limits.HeapBytes {
			return true
		}
	}
	return false
}

// keptKey identifies what a kept instance was reset to.
type keptKey struct {
	mod       weak.Pointer[Module]
	heapLimit uint64
	dev, ino  uint64
	size      uint64
}

func heapKey(req *Request, heap state.Memory) (keptKey, bool) {
	if heap.File() == nil {
		return keptKey{}, false
	}
	key := keptKey{mod: weak.Make(req.Module), heapLimit: req.Input.Limits.HeapBytes, size: heap.Size()}
	// A sandbox's memory knows its file from when it was opened.
	if id, ok := heap.(interface{ FileIdentity() (uint64, uint64, bool) }); ok {
		if dev, ino, ok := id.FileIdentity(); ok {
			key.dev, key.ino = dev, ino
			return key, true
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(heap.File().Fd()), &st); err != nil {
		return keptKey{}, false
	}
	key.dev, key.ino = uint64(st.Dev), st.Ino
	return key, true
}

// kept is the engine's free list of reset instances, at most Config.Keep
// of them over all modules (the oldest is dropped for a new one). An
// instance is either in the list or used by exactly one execution.
type kept struct {
	mu   sync.Mutex
	list []*run
	// fresh is the instance Warm made of module freshMod, unused: the
	// module's next execution that has no kept instance starts from it
	// (takeFresh). At most one: a primed sandbox warms one module.
	fresh    *run
	freshMod weak.Pointer[Module]
	// reused counts executions that ran on a kept instance.
	reused atomic.Uint64
}

// take removes and returns an instance reset to key, or nil.
func (e *Engine) take(key keptKey) *run {
	e.kept.mu.Lock()
	defer e.kept.mu.Unlock()
	for i, r := range e.kept.list {
		if r.key == key {
			e.kept.list = append(e.kept.list[:i], e.kept.list[i+1:]...)
			return r
		}
	}
	return nil
}

// put adds a reset instance of m to the free list.
func (e *Engine) put(m *Module, r *run) {
	m.keptOnce.Do(func() {
		runtime.AddCleanup(m, func(c keptCleanup) { c.k.dropModule(c.mod) }, keptCleanup{e.kept, r.key.mod})
	})
	e.kept.mu.Lock()
	var old *run
	if len(e.kept.list) >= e.keep {
		old = e.kept.list[0]
		e.kept.list = append(e.kept.list[:0], e.kept.list[1:]...)
	}
	e.kept.list = append(e.kept.list, r)
	e.kept.mu.Unlock()
	if old != nil {
		old.store.Close()
	}
}

// keptCleanup is the argument of a module's cleanup (put): it must not
// reference the module.
type keptCleanup struct {
	k   *kept
	mod weak.Pointer[Module]
}

// dropModule closes the instances kept for a module that is unreachable.
func (k *kept) dropModule(mod weak.Pointer[Module]) {
	var drop []*run
	k.mu.Lock()
	if k.fresh != nil && k.freshMod == mod {
		drop = append(drop, k.fresh)
		k.fresh = nil
	}
	list := k.list[:0]
	for _, r := range k.list {
		if r.key.mod == mod {
			drop = append(drop, r)
		} else {
			list = append(list, r)
		}
	}
	clear(k.list[len(list):])
	k.list = list
	k.mu.Unlock()
	for _, r := range drop {
		r.store.Close()
	}
}

// DropKept closes every kept instance and returns how many there were: an
// idle sandbox calls it when it trims, so that kept instances never hold
// memory while nothing runs. Instances in use are not affected, nor is
// Warm's fresh instance: it holds none of a canister's pages (its memory is
// the module's initial image, mapped and not touched) and is there for the
// message a primed sandbox waits for, which usually comes after the trim.
func (e *Engine) DropKept() int { return e.kept.dropAll() }

// putFresh makes r, a fresh instance of m that Warm made, the one m's next
// execution starts from; one made before is closed.
func (e *Engine) putFresh(m *Module, r *run) {
	m.keptOnce.Do(func() {
		runtime.AddCleanup(m, func(c keptCleanup) { c.k.dropModule(c.mod) }, keptCleanup{e.kept, weak.Make(m)})
	})
	e.kept.mu.Lock()
	old := e.kept.fresh
	e.kept.fresh, e.kept.freshMod = r, weak.Make(m)
	e.kept.mu.Unlock()
	if old != nil {
		old.store.Close()
	}
}

// takeFresh returns Warm's fresh instance of m, if there is one and it is
// what instantiating m for a heap limit of heapBytes gives: its memory's
// initial size within the limit (the limit it was made with is
// warmHeapBytes; a request's own limit is set on its store by the caller,
// before anything can grow the memory). Otherwise nil, and the instance is
// closed: the execution instantiates m itself and meets what it meets.
func (e *Engine) takeFresh(m *Module, heapBytes uint64) *run {
	e.kept.mu.Lock()
	r := e.kept.fresh
	if r == nil || e.kept.freshMod != weak.Make(m) {
		e.kept.mu.Unlock()
		return nil
	}
	e.kept.fresh = nil
	e.kept.mu.Unlock()
	if r.mem != nil && uint64(r.mem.DataSize(r.store)) > heapBytes {
		r.store.Close()
		return nil
	}
	return r
}

// Fresh reports whether Warm's fresh instance is waiting (tests).
func (e *Engine) Fresh() bool {
	e.kept.mu.Lock()
	defer e.kept.mu.Unlock()
	return e.kept.fresh != nil
}

// dropFresh closes Warm's fresh instance, if any.
func (k *kept) dropFresh() {
	k.mu.Lock()
	r := k.fresh
	k.fresh = nil
	k.mu.Unlock()
	if r != nil {
		r.store.Close()
	}
}

func (k *kept) dropAll() int {
	k.mu.Lock()
	list := k.list
	k.list = nil
	k.mu.Unlock()
	for _, r := range list {
		r.store.Close()
	}
	return len(list)
}

// Reused returns how many executions ran on a kept instance.
func (e *Engine) Reused() uint64 { return e.kept.reused.Load() }

// Kept returns how many instances are kept (tests, benchmarks).
func (e *Engine) Kept() int {
	e.kept.mu.Lock()
	defer e.kept.mu.Unlock()
	return len(e.kept.list)
}

// runKept executes a query on a kept instance r (taken from the free list:
// no one else uses it) and keeps or drops it afterwards.
func (e *Engine) runKept(r *run, req *Request, heap state.Memory) (*sysapi.Output, error) {
	m, in := req.Module, req.Input
	e.kept.reused.Add(1)
	r.hostErr, r.borrow = nil, false
	mt := newMeter(r.store, in.Limits.Instructions, e.noFuel)
	r.exec = sysapi.NewExecution(in, r, mt)
	if !e.noFuel {
		if err := mt.attach(r.counter); err != nil {
			r.store.Close()
			return nil, fmt.Errorf("engine: %w", err)
		}
	}
	if req.Globals != nil {
		if err := r.restoreGlobals(r.inst, m, req.Globals); err != nil {
			r.store.Close()
			return nil, err
		}
	}
	callErr := r.call(r.inst, m, req)
	if mt.exceeded() {
		callErr = sysapi.ErrInstructionLimit
	} else if callErr != nil && r.hostFailedGrow() {
		r.store.Close()
		return nil, fmt.Errorf("engine: memory.grow: %w", ErrHostMemory)
	}
	out := r.exec.Finish(callErr)
	if !out.Trapped {
		out.Stable = state.Delta{}
	}
	out, err := r.emit(req, out)
	e.release(r, req, heap, mt, out, err)
	return out, err
}

// release resets r to the committed state and keeps it if the execution
// ended cleanly, or closes it.
func (e *Engine) release(r *run, req *Request, heap state.Memory, mt *meter, out *sysapi.Output, err error) {
	if err != nil || out == nil || out.Trapped || r.hostErr != nil || mt.exceeded() {
		r.store.Close()
		return
	}
	if rerr := r.reset(req, heap, false); rerr != nil {
		r.store.Close()
		return
	}
	r.exec = nil
	e.put(req.Module, r)
}

// copyPages bounds the pages a kept instance restores by copying rather
// than by mapping the file again: 256 KiB per kept instance at most stays
// private between queries.
const copyPages = 64

// reset makes the memory exactly the committed heap file again: every page
// of it that is not one of the file's pages (copies queries wrote, the
// shared zero page) is found with PAGEMAP_SCAN and
//   - if there are more than copyPages, the file is mapped again over them,
//     when the query ends (beforeRun false) or before the next one;
//   - otherwise they stay private, and before the next query runs on the
//     instance (beforeRun true) the file's current bytes are read into them.
//
// Copying costs a read of each such page per query; mapping again costs
// unmapping them (a TLB shootdown that interrupts every other CPU this
// process ran on) and a copy-on-write fault per page the next query writes
// (another shootdown). A query writes mostly the same few pages each time
// (its stack, its allocations from the committed heap pointer), so they are
// copied, query after query, and never unmapped or faulted again. The bytes
// are read when the next query starts, not when this one ends, so that an
// update committed into the same file meanwhile is seen, as the file's own
// pages see it. An error: the instance cannot be reset.
func (r *run) reset(req *Request, heap state.Memory, beforeRun bool) error {
	f := heap.File()
	if r.mem == nil || r.mappedLen == 0 || f == nil {
		return errors.New("memory not mapped")
	}
	data := r.mem.UnsafeData(r.store)
	if uintptr(len(data)) != r.mappedLen || len(data) == 0 || uintptr(unsafe.Pointer(&data[0])) != r.mappedAddr {
		return errors.New("memory grew or moved")
	}
	if beforeRun {
		if gen, ok := imageGeneration(heap); !ok || !r.spansGenOK || gen != r.spansGen {
			if !slices.Equal(dataSpans(f, uint64(r.mappedLen)), r.spans) {
				// A commit wrote into a hole the memory has as anonymous zeros.
				return errors.New("the heap image's data spans changed")
			}
			r.spansGen, r.spansGenOK = gen, ok
		}
	}
	pages, known := r.restore, r.restoreKnown
	r.restore, r.restoreKnown = nil, false
	if !beforeRun || !known {
		pagemap := req.Pagemap
		if pagemap == nil {
			pagemap = SelfPagemap()
		}
		var err error
		if pages, err = r.pagesToRestore(pagemap); err != nil {
			return err
		}
	}
	copying := len(pages) <= copyPages
	if copying && !beforeRun {
		// Nothing runs on the instance until the next query, so these
		// are still the pages to read then, without scanning again.
		r.restore, r.restoreKnown = pages, true
		return nil
	}
	for i := 0; i < len(pages); {
		j := i + 1
		for j < len(pages) && pages[j] == pages[j-1]+1 {
			j++
		}
		lo, hi := pages[i]*state.PageSize, (pages[j-1]+1)*state.PageSize
		if hi > uint64(len(data)) {
			return errors.New("foreign page beyond the memory")
		}
		var err error
		if copying {
			err = readFullAt(f, data[lo:hi], int64(lo))
		} else {
			err = splitSpans(r.spans, lo, hi, func(lo, hi uint64, inSpan bool) error {
				if inSpan {
					return mapPrivateAt(data[lo:hi], f, int64(lo))
				}
				return mapZeros(data[lo:hi])
			})
		}
		if err != nil {
			return err
		}
		i = j
	}
	if !beforeRun {
		r.restore, r.restoreKnown = nil, true // mapped afresh: exact
	}
	return nil
}

// imageGeneration returns the generation of heap's image, if it keeps one
// (state.PageMap; a sandbox's state.FileMemory does not).
func imageGeneration(heap state.Memory) (uint64, bool) {
	if g, ok := heap.(interface{ ImageGeneration() (uint64, bool) }); ok {
		return g.ImageGeneration()
	}
	return 0, false
}

// readFullAt reads len(dst) bytes of f at off into dst.
func readFullAt(f *os.File, dst []byte, off int64) error {
	for len(dst) > 0 {
		n, err := unix.Pread(int(f.Fd()), dst, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read committed memory again: %w", err)
		}
		if n == 0 {
			return errors.New("read committed memory again: the heap file is shorter than the memory")
		}
		dst, off = dst[n:], off+int64(n)
	}
	return nil
}

// pagesToRestore returns the indices of the pages of the mapped memory
// that reset must make the file's again: in the file's spans every page
// that is not a page of the file (written copies, the shared zero page),
// in its holes every written page (a hole read shows the shared zero page,
// which is what the hole holds). One scan of the whole memory finds both:
// a kept query pays one ioctl, not one per span and hole.
func (r *run) pagesToRestore(pagemap *os.File) ([]uint64, error) {
	spans := r.spans
	return scanPages(pagemap, r.mappedAddr, r.mappedLen, pageIsFile, pageIsFile, func(i, categories uint64) bool {
		off := i * state.PageSize
		k, _ := slices.BinarySearchFunc(spans, off, func(s span, off uint64) int { return cmp.Compare(s.end, off+1) })
		inSpan := k < len(spans) && spans[k].off <= off
		return inSpan || categories&pageIsPFNZero == 0
	})
}

// foreignPages returns the indices of the pages in [addr, addr+size) that
// are present or swapped out and not pages of a file: written copies and the
// shared zero page.
func foreignPages(pagemap *os.File, addr, size uintptr) ([]uint64, error) {
	return scanPages(pagemap, addr, size, pageIsFile, pageIsFile, nil)
}

// mapPrivateAt maps len(dst) bytes of f from offset off over dst,
// copy-on-write.
func mapPrivateAt(dst []byte, f *os.File, off int64) error {
	if len(dst) == 0 {
		return nil
	}
	_, _, errno := unix.Syscall6(unix.SYS_MMAP, uintptr(unsafe.Pointer(&dst[0])), uintptr(len(dst)),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED, f.Fd(), uintptr(off))
	if errno != 0 {
		return fmt.Errorf("map committed memory again: %w", errno)
	}
	return nil
}

// keepInstance records, on a fresh instance that may be kept, what it
// needs to be reused: the instance and its instruction counter.
func (r *run) keepInstance(inst *wasmtime.Instance, counter *wasmtime.Global, key keptKey) {
	r.inst, r.counter, r.key = inst, counter, key
}
