package engine

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/wasmbin"
)

// artifactMagic starts every serialized module; the last two bytes are the
// format version. 02: metering by instrumentation (the instruction counter
// export is stored; 01 artifacts were compiled for fuel and are refused).
// 03: whether a query's instance may be kept (Module.reusable) is stored.
// 04: the pages the data segments write (Module.data) are stored.
// 05: memory.grow is checked (wasmbin.GrowLimitExportName): the grow
// limit's export and the memory's most pages are stored.
var artifactMagic = [8]byte{'c', 'o', 'r', 'd', 'a', 'r', '0', '5'}

// maxArtifactName bounds the export names stored in an artifact. The names
// are the ones the instrumenter generates (a few dozen bytes) and a table
// export name taken from the module.
const maxArtifactName = 1 << 16

// Serialize returns the compiled module as bytes that Engine.Deserialize
// turns back into a Module: what the engine needs to run it (memory width,
// global descriptors, start/memory/table export names, the module hash) and
// wasmtime's serialized machine code. Method names and metadata are not
// included: they are what the host knows, not what the runner needs.
//
// An artifact is native code. Deserializing one is as dangerous as running
// it: only sandboxes ever deserialize artifacts, and only their own.
func (m *Module) Serialize() ([]byte, error) {
	code, err := m.wt.Serialize()
	if err != nil {
		return nil, fmt.Errorf("engine: serialize: %w", err)
	}
	b := append([]byte(nil), artifactMagic[:]...)
	b = append(b, m.Info.Hash[:]...)
	b = append(b, boolByte(m.Info.Memory64), boolByte(m.Info.HasStart), boolByte(m.reusable))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.globals)))
	for _, g := range m.globals {
		b = binary.LittleEndian.AppendUint32(b, g.Index)
		b = append(b, byte(g.Type.Type), boolByte(g.Type.Mutable))
		b = appendName(b, g.Export)
	}
	b = appendName(b, m.start)
	b = appendName(b, m.memory)
	b = appendName(b, m.table)
	b = appendName(b, m.counter)
	b = appendName(b, m.growLimitExport)
	b = binary.LittleEndian.AppendUint64(b, m.maxPages)
	b = append(b, boolByte(m.dataKnown))
	b = binary.LittleEndian.AppendUint64(b, uint64(len(m.data)))
	for _, p := range m.data {
		b = binary.LittleEndian.AppendUint64(b, p.First)
		b = binary.LittleEndian.AppendUint64(b, p.End)
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(len(code)))
	return append(b, code...), nil
}

// GlobalTypes returns the types of the module's globals in index order, as
// executions report them in Output.Globals. A global of a type cordon does
// not persist (only possible for immutable globals) is reported as 0.
func (m *Module) GlobalTypes() []state.GlobalType {
	out := make([]state.GlobalType, len(m.globals))
	for i, g := range m.globals {
		out[i] = globalType(g.Type.Type)
	}
	return out
}

func globalType(t wasmbin.ValType) state.GlobalType {
	switch t {
	case wasmbin.I32:
		return state.GlobalI32
	case wasmbin.I64:
		return state.GlobalI64
	case wasmbin.F32:
		return state.GlobalF32
	case wasmbin.F64:
		return state.GlobalF64
	}
	return 0
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func appendName(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// ErrBadArtifact reports bytes that are not an artifact of this version.
var ErrBadArtifact = errors.New("engine: not a compiled module artifact of this version")

type artReader struct {
	b   []byte
	err error
}

func (r *artReader) take(n uint64) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("%w: truncated", ErrBadArtifact)
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *artReader) u32() uint32 {
	b := r.take(4)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint32(b)
}

func (r *artReader) u64() uint64 {
	b := r.take(8)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint64(b)
}

func (r *artReader) bool() bool {
	b := r.take(1)
	if b == nil {
		return false
	}
	if b[0] > 1 {
		r.err = fmt.Errorf("%w: bad boolean", ErrBadArtifact)
	}
	return b[0] == 1
}

func (r *artReader) name() string {
	n := r.u32()
	if n > maxArtifactName {
		r.err = fmt.Errorf("%w: name of %d bytes", ErrBadArtifact, n)
		return ""
	}
	return string(r.take(uint64(n)))
}

// Deserialize turns an artifact made by Module.Serialize (by an engine with
// the same configuration and version) back into a runnable module. The
// returned Info has only what the artifact keeps: Hash, Memory64, HasStart
// and NumGlobals.
func (e *Engine) Deserialize(b []byte) (*Module, error) {
	r := &artReader{b: b}
	if magic := r.take(uint64(len(artifactMagic))); r.err != nil || string(magic) != string(artifactMagic[:]) {
		return nil, ErrBadArtifact
	}
	m := &Module{Info: Info{Methods: map[string]MethodKind{}}}
	copy(m.Info.Hash[:], r.take(32))
	m.Info.Memory64 = r.bool()
	m.Info.HasStart = r.bool()
	m.reusable = r.bool()
	n := r.u32()
	if r.err == nil && uint64(n) > uint64(len(r.b))/10 { // each global takes at least 10 bytes
		return nil, fmt.Errorf("%w: %d globals", ErrBadArtifact, n)
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		var g wasmbin.InstrumentedGlobal
		g.Index = r.u32()
		if t := r.take(1); t != nil {
			g.Type.Type = wasmbin.ValType(t[0])
		}
		g.Type.Mutable = r.bool()
		g.Export = r.name()
		m.globals = append(m.globals, g)
	}
	m.Info.NumGlobals = len(m.globals)
	m.start = r.name()
	m.memory = r.name()
	m.table = r.name()
	m.counter = r.name()
	m.growLimitExport = r.name()
	m.maxPages = r.u64()
	m.dataKnown = r.bool()
	if n := r.u64(); r.err == nil {
		if n > uint64(len(r.b))/16 {
			return nil, fmt.Errorf("%w: %d runs of data pages", ErrBadArtifact, n)
		}
		m.data = make([]wasmbin.PageRange, 0, n)
		for i := uint64(0); i < n && r.err == nil; i++ {
			p := wasmbin.PageRange{First: r.u64(), End: r.u64()}
			// Sorted and apart, as DataPages makes them: run.go walks them
			// beside the kernel's sorted answer.
			if p.First >= p.End || (i > 0 && p.First <= m.data[i-1].End) {
				return nil, fmt.Errorf("%w: data pages %d-%d out of order", ErrBadArtifact, p.First, p.End)
			}
			m.data = append(m.data, p)
		}
	}
	codeLen := r.u64()
	if r.err != nil {
		return nil, r.err
	}
	if m.growLimitExport != "" && m.counter == "" {
		return nil, fmt.Errorf("%w: a grow limit without metering", ErrBadArtifact)
	}
	if (m.counter == "") != e.noFuel {
		return nil, fmt.Errorf("%w: compiled with metering %v, the engine meters %v", ErrBadArtifact, m.counter != "", !e.noFuel)
	}
	if codeLen != uint64(len(r.b)) {
		return nil, fmt.Errorf("%w: code length %d, %d bytes remain", ErrBadArtifact, codeLen, len(r.b))
	}
	wt, err := wasmtime.NewModuleDeserialize(e.wasmtime(m.Info.Memory64), r.b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadArtifact, err)
	}
	m.wt = wt
	return m, nil
}

// Warm makes a loaded module ready for its first execution without running
// any of it: it instantiates the module (no canister state, no host call can
// happen: instantiation runs no canister code, the start function having
// been removed), which makes wasmtime build what it builds lazily on a
// module's first instantiation (the copy-on-write images of its initial
// memory) and faults in its code and data, and looks up the exports every
// execution uses. The instance is kept, unused, for the module's first
// execution (takeFresh): a fresh instance is what that execution would
// instantiate, so it starts from it instead of paying for a store, an
// instantiation and the lookups while its caller waits. A primed sandbox
// (the host's exec package) calls it between loading the module of a
// recently evicted canister and that canister's next message, which then
// finds the module as a second message would. An error means the
// instantiation failed (a resource limit): nothing is kept, and the
// execution fails the same way and reports it then.
func (e *Engine) Warm(m *Module) error {
	if m == nil || m.wt == nil {
		return errors.New("engine: warm: no module")
	}
	r := &run{}
	store := wasmtime.NewStoreWithData(e.wasmtime(m.Info.Memory64), r)
	r.store = store
	store.Limiter(warmHeapBytes, maxTableElements, 1, 1, 1)
	linker, err := e.Linker(m.Info.Memory64)
	if err != nil {
		store.Close()
		return fmt.Errorf("engine: warm: %w", err)
	}
	inst, err := linker.Instantiate(store, m.wt)
	if err != nil {
		msg := err.Error()
		closeError(err)
		store.Close()
		return fmt.Errorf("engine: warm: instantiate: %s", msg)
	}
	r.inst = inst
	if m.counter != "" {
		if r.counter = exportedGlobal(store, inst, m.counter); r.counter == nil {
			store.Close()
			return fmt.Errorf("engine: warm: instruction counter export %s missing", m.counter)
		}
	}
	if m.growLimitExport != "" {
		if r.growLimit = exportedGlobal(store, inst, m.growLimitExport); r.growLimit == nil {
			store.Close()
			return fmt.Errorf("engine: warm: grow limit export %s missing", m.growLimitExport)
		}
	}
	if m.memory != "" {
		r.mem = exportedMemory(store, inst, m.memory)
	}
	// What an execution does to an instance before its code runs, done
	// once here so that its code paths have run in this process: the
	// counter and grow limit set (each execution sets them again first
	// thing), the mutable globals read and set to the values they hold.
	if r.counter != nil {
		if err := newMeter(store, 0, false).attach(r.counter); err != nil {
			store.Close()
			return fmt.Errorf("engine: warm: %w", err)
		}
	}
	if err := r.setGrowLimit(inst, m, warmHeapBytes); err != nil {
		store.Close()
		return fmt.Errorf("engine: warm: %w", err)
	}
	gs, err := r.readGlobals(inst, m)
	if err == nil {
		err = r.restoreGlobals(inst, m, gs)
	}
	if err != nil {
		store.Close()
		return fmt.Errorf("engine: warm: %w", err)
	}
	e.putFresh(m, r)
	enterWasmOnce(e.wasmtime(m.Info.Memory64))
	return nil
}

// enterWasmOnce calls a host function that does nothing through wasmtime,
// in a store of its own: the calling thread's first call sets up what
// wasmtime sets up per thread (its signal stack, its thread state), and the
// Go side of a call and of a host call runs once, so that a canister's
// first execution, which usually runs on the same thread, does not do it.
func enterWasmOnce(wt *wasmtime.Engine) {
	store := wasmtime.NewStore(wt)
	defer store.Close()
	ty := wasmtime.NewFuncType(nil, nil)
	f := wasmtime.NewFunc(store, ty, func(*wasmtime.Caller, []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) { return nil, nil })
	ty.Close()
	if _, err := f.Call(store); err != nil {
		closeError(err)
	}
}

// warmHeapBytes bounds the memory of Warm's throwaway instance: a module's
// initial memory, at most a 32-bit memory's whole (the sandbox's cgroup
// bounds what is touched; instantiation touches only data segments).
const warmHeapBytes = 4 << 30
