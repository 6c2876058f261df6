package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/internal/wasmbin"
)

// maxTableElements bounds every table of an instance (the JS embedding's
// limit). Without a finite bound, wasmtime 39 aborts the whole process on a
// 64-bit table whose minimum size overflows (RUSTSEC-2026-0114,
// GHSA-p8xm-42r7-89xg); with it, instantiation fails and the message traps.
const maxTableElements = 10_000_000

// Request is one execution: which module, from which state, with what input.
type Request struct {
	Module *Module
	// Heap is the committed Wasm memory; nil means the module's initial
	// memory (install, reinstall, upgrade without keeping the heap). When
	// it has a File, the file is mapped copy-on-write instead of copied.
	Heap state.Memory
	// Pagemap is the executing process's /proc/<pid>/pagemap, used to find
	// the pages the message wrote (dirty.go); nil: SelfPagemap. Without one
	// every page is compared with the committed heap.
	Pagemap *os.File
	// Warn, if set, hears why a mapped heap's written pages had to be
	// found by comparing every page (a kernel without PAGEMAP_SCAN, a
	// memory that moved): correct, but slow on large heaps.
	Warn func(reason string)
	// Globals are the committed mutable globals in index order; nil means
	// the module's initial values.
	Globals []state.Global
	// RunStart runs the module's start function (context "start") before
	// the entry point, as on install and upgrade.
	RunStart bool
	// Input is the System API's view; Input.Context and Input.Entry choose
	// the entry point (Entry "" runs nothing but the start function).
	Input *sysapi.Input
	// Emit, if set, is given the output of an execution that completed
	// (Run's error is nil) while the instance still exists: the heap
	// delta's pages are then the linear memory's own, not copies, valid
	// only during the call. A sandbox sends its output from it, so a large
	// delta is never held twice in the sandbox. Run returns the output
	// without the heap's pages, and Emit's error.
	Emit func(*sysapi.Output) error
}

// run is the per-execution state the ic0 host functions reach through the
// store's data.
type run struct {
	exec    *sysapi.Execution
	hostErr error
	mem     *wasmtime.Memory
	store   *wasmtime.Store
	ctx     storeCtx // store's context, looked up on the first Bytes
	// globals are the instance's exported globals in the module's order,
	// looked up once (exportGlobals).
	globals []*wasmtime.Global
	// mapped is the linear memory's address range that holds the
	// committed heap's file mapping, if restoreHeap mapped it.
	mappedAddr, mappedLen uintptr
	// spans are the parts of the mapped range mapped from the file; the
	// rest are its holes, anonymous memory (holes.go). spansGen is the
	// image generation they were found at (spansGenOK: the heap keeps one,
	// state.PageMap.ImageGeneration).
	spans      []span
	spansGen   uint64
	spansGenOK bool
	// data and dataKnown are the module's (Module.data): the pages of a
	// fresh instance's memory that can be other than zero.
	data      []wasmbin.PageRange
	dataKnown bool
	// restore, if restoreKnown, are the pages a kept instance's next query
	// must read again from the file: found when the last query ended, and
	// unchanged since, as no execution ran on the instance (keep.go).
	restore      []uint64
	restoreKnown bool
	// borrow: the heap delta's pages point into the linear memory
	// (Request.Emit) instead of being copied.
	borrow bool
	// funcs caches exported functions: looking one up adds to the store,
	// which a kept instance (keep.go) must not grow query after query.
	funcs map[string]*wasmtime.Func
	// A kept or keepable instance (keep.go): the instance, its instruction
	// counter and what it is reset to.
	inst    *wasmtime.Instance
	counter *wasmtime.Global
	key     keptKey
	// growLimit is the instance's grow limit global (growfail.go), nil
	// until set; limitPages the most pages the memory may have in this
	// execution (Module.growLimit).
	growLimit  *wasmtime.Global
	limitPages uint64
}

// exportedFunc returns an exported function, looked up once per instance.
func (r *run) exportedFunc(inst *wasmtime.Instance, name string) *wasmtime.Func {
	if f, ok := r.funcs[name]; ok {
		return f
	}
	f := exportedFunc(r.store, inst, name)
	if r.funcs == nil {
		r.funcs = map[string]*wasmtime.Func{}
	}
	r.funcs[name] = f
	return f
}

func (r *run) Bytes() []byte {
	if r.mem == nil {
		return nil
	}
	if !handlesOK {
		return r.mem.UnsafeData(r.store)
	}
	if r.ctx == nil {
		r.ctx = storeContext(r.store)
	}
	return memoryBytes(r.ctx, r.mem)
}

// Run executes a request. The returned output says whether the canister
// trapped; an error means the execution could not be carried out at all
// (a bug or a broken state), never that the canister misbehaved.
func (e *Engine) Run(req *Request) (*sysapi.Output, error) {
	m, in := req.Module, req.Input
	if m == nil || in == nil {
		return nil, errors.New("engine: request without module or input")
	}
	if in.Memory64 != m.Info.Memory64 {
		return nil, errors.New("engine: input memory width does not match the module")
	}
	if req.Globals != nil && len(req.Globals) != len(m.globals) {
		return nil, fmt.Errorf("engine: %d globals given, module has %d", len(req.Globals), len(m.globals))
	}
	heap := req.Heap
	if pm, ok := heap.(*state.PageMap); ok && pm == nil {
		heap = nil // a typed nil is no heap, not an empty one
	}
	keep := e.keepable(req, heap)
	if keep && e.mayHaveKept(req, heap) {
		if key, ok := heapKey(req, heap); ok {
			if r := e.take(key); r != nil {
				if err := r.reset(req, heap, true); err == nil {
					return e.runKept(r, req, heap)
				}
				r.store.Close() // cannot be made exact: run fresh
			}
		}
	}
	// A fresh instance Warm made (a primed sandbox's first execution) is
	// what instantiating gives: it is used instead, with its exports
	// already looked up.
	r := e.takeFresh(m, in.Limits.HeapBytes)
	fresh := r != nil
	if !fresh {
		r = &run{}
		r.store = wasmtime.NewStoreWithData(e.wasmtime(m.Info.Memory64), r)
	}
	store := r.store
	kept := false
	defer func() {
		if !kept {
			store.Close()
		}
	}()
	store.Limiter(clampInt64(in.Limits.HeapBytes), maxTableElements, 1, 1, 1)
	if !e.noFuel && m.counter == "" {
		return nil, errors.New("engine: module was compiled without metering")
	}
	mt := newMeter(store, in.Limits.Instructions, e.noFuel)
	r.exec = sysapi.NewExecution(in, r, mt)

	inst := r.inst
	if !fresh {
		linker, err := e.Linker(m.Info.Memory64)
		if err != nil {
			return nil, fmt.Errorf("engine: %w", err)
		}
		if inst, err = linker.Instantiate(store, m.wt); err != nil {
			// Instantiation runs no canister code (the start function was
			// removed), so a failure is either the canister's own limit (a
			// memory or table minimum above it: a trap) or the host's (the
			// kernel refused to map the instance's reservation or its initial
			// memory: not the canister's doing, so ErrHostMemory, as for a
			// grow the kernel refuses, which charges and answers nothing).
			msg := errorCause(err.Error())
			closeError(err)
			if hostResourceFailure(msg) {
				return nil, fmt.Errorf("engine: host could not instantiate the module: %s: %w", msg, ErrHostMemory)
			}
			return r.emit(req, r.exec.Finish(&sysapi.Trap{Message: "Canister trapped during instantiation: " + msg}))
		}
	}
	counter := r.counter
	if !e.noFuel {
		if counter == nil {
			counter = exportedGlobal(store, inst, m.counter)
		}
		if counter == nil {
			return nil, fmt.Errorf("engine: instruction counter export %s missing", m.counter)
		}
		if err := mt.attach(counter); err != nil {
			return nil, fmt.Errorf("engine: %w", err)
		}
	}
	r.limitPages = m.growLimit(in.Limits.HeapBytes)
	if err := r.setGrowLimit(inst, m, in.Limits.HeapBytes); err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	if m.memory != "" && r.mem == nil {
		r.mem = exportedMemory(store, inst, m.memory)
	}
	r.data, r.dataKnown = m.data, m.dataKnown
	pagemap := req.Pagemap
	if pagemap == nil {
		pagemap = SelfPagemap()
	}
	if err := r.restoreHeap(heap, pagemap); err != nil {
		if errors.Is(err, ErrHostMemory) {
			return nil, err
		}
		var trap *sysapi.Trap
		if errors.As(err, &trap) {
			return r.emit(req, r.exec.Finish(err))
		}
		return nil, err
	}
	if req.Globals != nil {
		if err := r.restoreGlobals(inst, m, req.Globals); err != nil {
			return nil, err
		}
	}

	callErr := r.call(inst, m, req)
	if mt.exceeded() {
		// The counter is negative: a limit check trapped (with
		// `unreachable`), or the code ran past the limit between checks
		// and then ended or trapped. Either way more instructions ran
		// than allowed: the deterministic outcome is the limit.
		callErr = sysapi.ErrInstructionLimit
	} else if callErr != nil && r.hostFailedGrow() {
		return nil, fmt.Errorf("engine: memory.grow: %w", ErrHostMemory)
	}
	var heapDelta state.Delta
	if callErr == nil && !discardsState(in.Context) {
		// The pages the message changed are charged before it completes:
		// too many, or a charge past the limit, trap like the code would.
		r.borrow = req.Emit != nil
		if heapDelta, callErr = r.heapDelta(heap, pagemap, req.Warn); callErr == nil {
			callErr = r.exec.ChargeHeapPages(uint64(len(heapDelta.Pages)))
		}
	}
	out := r.exec.Finish(callErr)
	if out.Trapped {
		return r.emit(req, out)
	}
	if discardsState(in.Context) {
		// Nothing of a plain query is kept: skip the page diff.
		out.Stable = state.Delta{}
		out, err := r.emit(req, out)
		var key keptKey
		if keep && r.mappedLen != 0 {
			// restoreHeap mapped the heap's file: it has one.
			key, keep = heapKey(req, heap)
		}
		if keep && err == nil && r.mappedLen != 0 {
			// The instance may serve the next query (keep.go): release
			// resets and keeps it, or closes it.
			r.keepInstance(inst, counter, key)
			kept = true
			e.release(r, req, heap, mt, out, err)
		}
		return out, err
	}
	out.Heap = heapDelta
	var err error
	if out.Globals, err = r.readGlobals(inst, m); err != nil {
		return nil, err
	}
	return r.emit(req, out)
}

// emit hands an output to req.Emit, if set, and drops the borrowed pages.
func (r *run) emit(req *Request, out *sysapi.Output) (*sysapi.Output, error) {
	if req.Emit == nil {
		return out, nil
	}
	err := req.Emit(out)
	out.Heap.Pages = nil
	return out, err
}

// call runs the start function if asked, then the entry point.
func (r *run) call(inst *wasmtime.Instance, m *Module, req *Request) error {
	in := req.Input
	if req.RunStart && m.start != "" {
		ctx := in.Context
		in.Context = sysapi.CtxStart
		err := r.invoke(r.exportedFunc(inst, m.start))
		in.Context = ctx
		if err != nil {
			return err
		}
	}
	switch in.Context {
	case sysapi.CtxReply, sysapi.CtxReject, sysapi.CtxCleanup,
		sysapi.CtxCompositeReply, sysapi.CtxCompositeReject, sysapi.CtxCompositeCleanup:
		return r.invokeCallback(inst, m, in.Callback)
	}
	if in.Entry == "" {
		return nil
	}
	f := r.exportedFunc(inst, in.Entry)
	if f == nil {
		return &sysapi.Trap{Message: fmt.Sprintf("Canister has no entry point %q", in.Entry)}
	}
	return r.invoke(f)
}

func (r *run) invoke(f *wasmtime.Func, args ...any) error {
	if f == nil {
		return &sysapi.Trap{Message: "Canister trapped: missing function"}
	}
	_, err := f.Call(r.store, args...)
	if err == nil {
		return nil
	}
	defer closeError(err)
	if r.hostErr != nil {
		return r.hostErr
	}
	return trapMessage(err)
}

// invokeCallback calls a callback as the IC does: cb.Fun indexes the
// module's table 0 (exported or not: the rewriter exports it as
// wasmbin.TableExportName), the entry must be a function of type (I) -> ()
// and gets cb.Env. A callback the table cannot resolve traps, and a trap
// rolls the callback back like any other.
func (r *run) invokeCallback(inst *wasmtime.Instance, m *Module, cb sysapi.Callback) error {
	var tbl *wasmtime.Table
	if m.table != "" {
		tbl = exportedTable(r.store, inst, m.table)
	}
	if tbl == nil {
		return &sysapi.Trap{Message: fmt.Sprintf("Canister violated contract: table not found (the module has no table for callback %d)", cb.Fun)}
	}
	if cb.Fun >= tbl.Size(r.store) {
		return &sysapi.Trap{Message: fmt.Sprintf("Canister requested to invoke a non-existent Wasm function %d from table 0", cb.Fun)}
	}
	v, err := tbl.Get(r.store, cb.Fun)
	if err != nil {
		closeError(err)
		return &sysapi.Trap{Message: fmt.Sprintf("Canister requested to invoke a non-existent Wasm function %d from table 0", cb.Fun)}
	}
	// Table 0 may hold externrefs (reference types); Funcref would panic.
	if v.Kind() != wasmtime.KindFuncref {
		return &sysapi.Trap{Message: fmt.Sprintf("Canister violated contract: table 0 entry %d is not a function reference", cb.Fun)}
	}
	f := v.Funcref()
	if f == nil {
		return &sysapi.Trap{Message: fmt.Sprintf("Canister violated contract: unexpected null function reference (callback %d)", cb.Fun)}
	}
	want, arg := wasmtime.KindI32, any(int32(uint32(cb.Env)))
	if m.Info.Memory64 {
		want, arg = wasmtime.KindI64, any(int64(cb.Env))
	} else if cb.Env > math.MaxUint32 {
		// call_new's env is an i32 here; the boundary refuses larger ones.
		return &sysapi.Trap{Message: fmt.Sprintf("Canister violated contract: callback environment %d does not fit a 32-bit canister", cb.Env)}
	}
	ft := f.Type(r.store)
	ps := ft.Params() // owned by ft: read before it closes
	ok := len(ps) == 1 && ps[0].Kind() == want && len(ft.Results()) == 0
	var shape string
	if !ok {
		shape = funcTypeString(ft)
	}
	ft.Close()
	if !ok {
		return &sysapi.Trap{Message: fmt.Sprintf("Canister violated contract: callback %d has type %s, a callback must be (%s) -> ()", cb.Fun, shape, kindName(want))}
	}
	return r.invoke(f, arg)
}

func kindName(k wasmtime.ValKind) string {
	switch k {
	case wasmtime.KindI32:
		return "i32"
	case wasmtime.KindI64:
		return "i64"
	case wasmtime.KindF32:
		return "f32"
	case wasmtime.KindF64:
		return "f64"
	case wasmtime.KindFuncref:
		return "funcref"
	case wasmtime.KindExternref:
		return "externref"
	}
	return "v128"
}

// funcTypeString renders a function type as "(i32, i64) -> (i32)".
func funcTypeString(ft *wasmtime.FuncType) string {
	list := func(vs []*wasmtime.ValType) string {
		names := make([]string, len(vs))
		for i, v := range vs {
			names[i] = kindName(v.Kind())
		}
		return "(" + strings.Join(names, ", ") + ")"
	}
	return list(ft.Params()) + " -> " + list(ft.Results())
}

// restoreHeap makes the instance's memory equal to the committed heap: it
// grows the memory to the heap's size, then maps the heap's image over it
// copy-on-write (its data, not its holes: holes.go), or, without an image
// or for a heap smaller than the module's initial memory (kept across an
// upgrade), copies it.
func (r *run) restoreHeap(heap state.Memory, pagemap *os.File) error {
	if heap == nil {
		return nil
	}
	if r.mem == nil {
		if heap.Size() == 0 {
			return nil
		}
		return errors.New("engine: state has a heap but the module has no memory")
	}
	initial := r.mem.DataSize(r.store)
	want := heap.Size()
	if want%state.WasmPageSize != 0 {
		return fmt.Errorf("engine: heap size %d is not a multiple of 64 KiB", want)
	}
	if want > uint64(initial) {
		delta := (want - uint64(initial)) / state.WasmPageSize
		if _, err := r.mem.Grow(r.store, delta); err != nil {
			cause := errorCause(err.Error())
			closeError(err)
			if want/state.WasmPageSize <= r.limitPages {
				// Within the canister's limits: the kernel refused it.
				return fmt.Errorf("engine: restore a heap of %d bytes: %w (%s)", want, ErrHostMemory, cause)
			}
			return &sysapi.Trap{Message: fmt.Sprintf("Canister trapped: cannot restore heap of %d bytes: %s", want, cause)}
		}
	}
	data := r.mem.UnsafeData(r.store)
	if want > 0 && want == uint64(len(data)) && heap.File() != nil {
		// The generation before the extents are looked up: a write
		// between the two makes the instance look again, never miss one.
		r.spansGen, r.spansGenOK = imageGeneration(heap)
		spans, err := mapHeapImage(data[:want], heap.File())
		if err != nil {
			return fmt.Errorf("engine: %w", err)
		}
		r.mappedAddr, r.mappedLen, r.spans = uintptr(unsafe.Pointer(&data[0])), uintptr(want), spans
		return nil
	}
	if lm, ok := heap.(state.LayeredMemory); ok && want > 0 && want == uint64(len(data)) {
		if l, ok := lm.Layers(); ok {
			return r.mapLayers(data, l)
		}
	}
	// Copied: only what can differ is touched, never the whole memory (a
	// module may declare 4 GiB at no cost). The heap's pages are written
	// in; a fresh memory is zero but for the pages its data segments
	// wrote, and those the heap does not hold become zeros.
	heapPages := want / state.PageSize
	put := func(i uint64, src *state.Page) {
		copiedPages.Add(1)
		if src == nil {
			src = state.ZeroPage()
		}
		if dst := data[i*state.PageSize : (i+1)*state.PageSize]; !bytes.Equal(dst, src[:]) {
			copy(dst, src[:])
		}
	}
	if pm, ok := heap.(*state.PageMap); ok {
		for _, i := range pm.StoredPages() {
			if i < heapPages {
				put(i, pm.Page(i))
			}
		}
	} else {
		// A heap that lists no pages: each, up to its size (what the
		// canister holds and pays for).
		for i := uint64(0); i < heapPages; i++ {
			put(i, heap.Page(i))
		}
	}
	fresh, err := r.unmappedCandidates(pagemap, data, nil)
	if err != nil {
		return err
	}
	for _, i := range fresh {
		var src *state.Page
		if i < heapPages {
			src = heap.Page(i)
		}
		if src == nil {
			put(i, nil)
		}
	}
	return nil
}

// copiedPages counts the pages restoreHeap wrote into linear memories
// from a heap it did not map, or laid over a mapped image (mapLayers).
var copiedPages atomic.Uint64

// CopiedHeapPages returns how many heap pages executions in this process
// have copied into their linear memories rather than mapped: what a heap
// without an image costs, page by page (tests and benchmarks).
func CopiedHeapPages() uint64 { return copiedPages.Load() }

// mapLayers makes data (the linear memory, grown to the heap's size) the
// heap given as layers: the image's first l.Base bytes mapped copy-on-write
// as restoreHeap maps a whole image, fresh zeros beyond (the module's data
// segments may have written there), and l.Pages written over both. The
// written pages are anonymous copies like the pages the message writes,
// so heapDelta finds them among its candidates and compares them with the
// heap, which holds the same bytes: they cost their copy and a compare,
// and the heap's other pages nothing. Kept instances never map layers
// (the heap has no File to key them by: keep.go).
func (r *run) mapLayers(data []byte, l state.Layers) error {
	want := uint64(len(data))
	if l.Base > want || l.Base%state.PageSize != 0 || l.Size != want {
		return fmt.Errorf("engine: heap layers of %d bytes over %d image bytes for a memory of %d", l.Size, l.Base, want)
	}
	spans, err := mapHeapImage(data[:l.Base], l.File)
	if err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	if err := mapZeros(data[l.Base:]); err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	pages := want / state.PageSize
	for _, p := range l.Pages {
		if p.Index >= pages || p.Data == nil {
			return fmt.Errorf("engine: heap page %d laid over a memory of %d pages", p.Index, pages)
		}
		copiedPages.Add(1)
		copy(data[p.Index*state.PageSize:(p.Index+1)*state.PageSize], p.Data[:])
	}
	r.mappedAddr, r.mappedLen, r.spans = uintptr(unsafe.Pointer(&data[0])), uintptr(want), spans
	r.spansGen, r.spansGenOK = 0, false
	return nil
}

// MaxComparedBytes bounds the memory an execution without a mapped heap
// (install, reinstall, an upgrade that replaces the heap, a heap copied)
// compares page by page when it cannot tell which pages may differ: the
// kernel cannot report the pages written (no PAGEMAP_SCAN), or the
// module's data segments were not all understood. Beyond it the execution
// traps instead of touching every page of what may be a 4 GiB memory the
// module declared for free (RATIONALE.md). A variable for tests.
var MaxComparedBytes uint64 = 256 << 20

// unmappedCandidates returns, sorted, the pages of an instance's memory
// (data) without a mapped heap that may be other than zero: those written
// since the instance was made, which the kernel reports (anonymous,
// present or swapped, not the zero page), and those the module's data
// segments wrote, which wasmtime may map from its image file instead
// (copy-on-write: then the kernel reports them as file pages until
// written). Without one of the two: every page, within MaxComparedBytes.
func (r *run) unmappedCandidates(pagemap *os.File, data []byte, warn func(string)) ([]uint64, error) {
	n := uint64(len(data)) / state.PageSize
	if n == 0 {
		return nil, nil
	}
	why := "its data segments' offsets are not all known"
	if r.dataKnown {
		written, err := writtenPages(pagemap, uintptr(unsafe.Pointer(&data[0])), uintptr(len(data)))
		if err == nil {
			return withRuns(written, r.data, n), nil
		}
		why = err.Error()
	}
	if uint64(len(data)) > MaxComparedBytes {
		return nil, &sysapi.Trap{Message: fmt.Sprintf("Canister trapped: a memory of %d bytes cannot be checked on this node: "+
			"without the kernel's report of written pages (PAGEMAP_SCAN, Linux 6.7) it compares every page, "+
			"which it does for at most %d bytes (%s)", len(data), MaxComparedBytes, why)}
	}
	if warn != nil {
		warn(fmt.Sprintf("written pages found by comparing all %d pages: %s", n, why))
	}
	all := make([]uint64, n)
	for i := range all {
		all[i] = uint64(i)
	}
	return all, nil
}

// withRuns merges the sorted pages ps with the sorted, disjoint runs of
// pages rs, clipped to n pages.
func withRuns(ps []uint64, rs []wasmbin.PageRange, n uint64) []uint64 {
	if len(rs) == 0 {
		return ps
	}
	out := make([]uint64, 0, len(ps))
	for _, rg := range rs {
		end := min(rg.End, n)
		for len(ps) > 0 && ps[0] < rg.First {
			out = append(out, ps[0])
			ps = ps[1:]
		}
		for i := rg.First; i < end; i++ {
			out = append(out, i)
		}
		for len(ps) > 0 && ps[0] < rg.End {
			ps = ps[1:] // inside the run: listed
		}
	}
	return append(out, ps...)
}

// heapDelta lists the pages that differ from the committed heap (nil: all
// zeros). When the heap was mapped and the memory has not moved, only the
// pages the kernel reports written are compared (dirty.go), and all when
// it cannot say; without a mapped heap, the candidates unmappedCandidates
// finds, which may make it trap.
func (r *run) heapDelta(base state.Memory, pagemap *os.File, warn func(string)) (state.Delta, error) {
	if r.mem == nil {
		return state.Delta{}, nil
	}
	data := r.mem.UnsafeData(r.store)
	d := state.Delta{Size: uint64(len(data))}
	if len(data) == 0 {
		return d, nil
	}
	if base == nil {
		base = (*state.PageMap)(nil)
	}
	differs := func(i uint64) bool {
		old := base.Page(i)
		if old == nil {
			old = state.ZeroPage()
		}
		return !bytes.Equal(data[i*state.PageSize:(i+1)*state.PageSize], old[:])
	}
	add := func(i uint64) {
		if r.borrow {
			// Valid while the store lives: Emit runs before it closes.
			d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: (*state.Page)(unsafe.Pointer(&data[i*state.PageSize]))})
			return
		}
		p := new(state.Page)
		copy(p[:], data[i*state.PageSize:])
		d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: p})
	}
	n := uint64(len(data)) / state.PageSize
	if r.mappedLen == 0 {
		cand, err := r.unmappedCandidates(pagemap, data, warn)
		if err != nil {
			return state.Delta{}, err
		}
		for _, i := range cand {
			if i < n && differs(i) {
				add(i)
			}
		}
		return d, nil
	}
	var err error
	if uintptr(unsafe.Pointer(&data[0])) != r.mappedAddr {
		err = errors.New("the linear memory moved while growing")
	} else {
		var cand []uint64
		if cand, err = writtenPages(pagemap, r.mappedAddr, uintptr(len(data))); err == nil {
			for _, i := range cand {
				if i < n && differs(i) {
					add(i)
				}
			}
			return d, nil
		}
	}
	if warn != nil {
		warn(fmt.Sprintf("written pages found by comparing all %d pages: %v", n, err))
	}
	for i := uint64(0); i < n; i++ {
		if differs(i) {
			add(i)
		}
	}
	return d, nil
}

// exportGlobals looks the module's globals up in the instance once per
// execution (restoreGlobals and readGlobals both use them).
func (r *run) exportGlobals(inst *wasmtime.Instance, m *Module) ([]*wasmtime.Global, error) {
	if r.globals != nil || len(m.globals) == 0 {
		return r.globals, nil
	}
	gs := make([]*wasmtime.Global, len(m.globals))
	for i, g := range m.globals {
		if gs[i] = exportedGlobal(r.store, inst, g.Export); gs[i] == nil {
			return nil, fmt.Errorf("engine: global export %s missing", g.Export)
		}
	}
	r.globals = gs
	return gs, nil
}

// restoreGlobals sets the module's mutable globals to the committed values.
// Mutability comes from the module's description (recorded when it was
// instrumented), not from asking wasmtime per global and execution: a
// description that calls an immutable global mutable makes Set fail (an
// error, as a missing export is); one that calls a mutable global immutable
// leaves it at its initial value, which only the module's own compilation
// could cause, for its own canister.
func (r *run) restoreGlobals(inst *wasmtime.Instance, m *Module, gs []state.Global) error {
	globs, err := r.exportGlobals(inst, m)
	if err != nil {
		return err
	}
	for i, g := range m.globals {
		if !g.Type.Mutable {
			continue
		}
		v, err := toVal(gs[i])
		if err != nil {
			return fmt.Errorf("engine: global %d: %w", g.Index, err)
		}
		if err := globs[i].Set(r.store, v); err != nil {
			msg := err.Error()
			closeError(err)
			return fmt.Errorf("engine: set global %d: %s", g.Index, msg)
		}
	}
	return nil
}

func (r *run) readGlobals(inst *wasmtime.Instance, m *Module) ([]state.Global, error) {
	globs, err := r.exportGlobals(inst, m)
	if err != nil {
		return nil, err
	}
	out := make([]state.Global, len(m.globals))
	for i, g := range m.globals {
		v, err := fromVal(globs[i].Get(r.store))
		if err != nil {
			return nil, fmt.Errorf("engine: global %d: %w", g.Index, err)
		}
		out[i] = v
	}
	return out, nil
}

func toVal(g state.Global) (wasmtime.Val, error) {
	switch g.Type {
	case state.GlobalI32:
		return wasmtime.ValI32(int32(uint32(g.Bits))), nil
	case state.GlobalI64:
		return wasmtime.ValI64(int64(g.Bits)), nil
	case state.GlobalF32:
		return wasmtime.ValF32(math.Float32frombits(uint32(g.Bits))), nil
	case state.GlobalF64:
		return wasmtime.ValF64(math.Float64frombits(g.Bits)), nil
	}
	return wasmtime.Val{}, fmt.Errorf("unsupported global type %s", g.Type)
}

func fromVal(v wasmtime.Val) (state.Global, error) {
	switch v.Kind() {
	case wasmtime.KindI32:
		return state.Global{Type: state.GlobalI32, Bits: uint64(uint32(v.I32()))}, nil
	case wasmtime.KindI64:
		return state.Global{Type: state.GlobalI64, Bits: uint64(v.I64())}, nil
	case wasmtime.KindF32:
		return state.Global{Type: state.GlobalF32, Bits: uint64(math.Float32bits(v.F32()))}, nil
	case wasmtime.KindF64:
		return state.Global{Type: state.GlobalF64, Bits: math.Float64bits(v.F64())}, nil
	}
	return state.Global{}, fmt.Errorf("unsupported global kind %v", v.Kind())
}

// discardsState reports contexts whose memory changes nobody reads. A
// composite query is not one: its callbacks see what it wrote.
func discardsState(c sysapi.Context) bool {
	switch c {
	case sysapi.CtxNonReplicatedQuery, sysapi.CtxReplicatedQuery, sysapi.CtxTransformQuery, sysapi.CtxInspect:
		return true
	}
	return false
}

// errorCause drops the backtrace wasmtime appends to an error's text (when
// RUST_BACKTRACE is set, as it may be for the host but never in a
// sandbox's environment): addresses that differ between builds have no
// place in a trap message, which must be the same on every replica and in
// both isolation modes.
func errorCause(msg string) string {
	if i := strings.Index(msg, "\nStack backtrace:"); i >= 0 {
		msg = msg[:i]
	}
	return strings.TrimSpace(msg)
}

// hostResourceFailure reports whether an instantiation error came from the
// operating system (wasmtime renders a failed system call's io::Error as
// "... (os error N)"), such as mmap refusing the instance's address-space
// reservation under RLIMIT_AS. Limits the canister hits are wasmtime's own
// errors and carry no OS error.
func hostResourceFailure(msg string) bool {
	return strings.Contains(msg, "(os error ")
}
