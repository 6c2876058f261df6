// Package engine runs canister Wasm on wasmtime: it validates and compiles
// modules, and executes one message as a function of (module, memory,
// globals, input) → output, with deterministic instruction metering.
//
// The engine never keeps canister state between executions: every execution
// instantiates the compiled module in a fresh store, restores the committed
// heap and globals, runs one entry point, and reports what changed. The same
// code runs in-process and inside a sandbox process.
package engine

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Config tunes the engine. The zero value is not valid; use DefaultConfig.
type Config struct {
	// MaxWasmStack bounds the native stack Wasm may use (bytes). It must stay
	// well below the stack of the threads that run Wasm.
	MaxWasmStack int
	// ParallelCompilation lets Cranelift use threads to compile.
	ParallelCompilation bool
	// DisableFuel turns metering off: modules are compiled without the
	// metering instrumentation, so there is no instruction limit and no
	// instruction count (Output.Instructions is 0). Only `cordon bench`
	// sets it, to measure what metering costs; the host never does. (The
	// name predates metering by instrumentation; wasmtime's fuel is never
	// used.)
	DisableFuel bool
	// KeepInstances is how many instances of plain queries the engine
	// keeps, reset, for the next query of the same module and committed
	// heap (keep.go); 0 keeps none. At most as many queries run at once
	// benefit, so it should not exceed that.
	KeepInstances int
}

// DefaultKeepInstances is Config.KeepInstances by default: the sandbox's
// default query_threads on this machine's kind (2 cores); a canister
// sandbox keeps one per query thread when it has more (worker).
const DefaultKeepInstances = 4

// DefaultConfig returns the configuration cordon runs with.
func DefaultConfig() Config {
	return Config{MaxWasmStack: 2 << 20, ParallelCompilation: true, KeepInstances: DefaultKeepInstances}
}

// Engine compiles and runs canister modules. It is safe for concurrent use.
type Engine struct {
	// wt32 compiles and runs canisters with a 32-bit memory (or none),
	// wt64 those with a 64-bit memory: they differ only in the address
	// space a memory reserves (reserve.go), which a 32-bit memory does not
	// need. A module and its stores belong to one of them.
	wt32, wt64 *wasmtime.Engine
	noFuel     bool // Config.DisableFuel: compile and run unmetered
	// linkers[0] for 32-bit canisters, [1] for 64-bit ones: built on
	// first use (Linker), not by New. A sandbox serves one canister of
	// one width, and a compile sandbox runs none, so building both at
	// start-up was work before the worker's Ready that half the time (or
	// always) went unused.
	linkers [2]lazyLinker
	// keep bounds kept, the reset instances of plain queries (keep.go).
	keep int
	// kept is allocated apart from the Engine so that an engine nobody
	// references any more closes its kept instances (New's cleanup): a
	// store is reachable from wasmtime-go's global table until closed.
	kept *kept
}

type lazyLinker struct {
	once sync.Once
	l    *wasmtime.Linker
	err  error
}

// Linker returns the linker defining every ic0 import for canisters of
// one memory width, building it on first use; it is safe for concurrent
// use. A canister worker calls it when it loads its module, so that its
// first execution does not pay for it.
func (e *Engine) Linker(memory64 bool) (*wasmtime.Linker, error) {
	k := &e.linkers[0]
	if memory64 {
		k = &e.linkers[1]
	}
	k.once.Do(func() {
		k.l, k.err = newLinker(e.wasmtime(memory64), memory64)
		if k.err != nil {
			k.err = fmt.Errorf("define ic0 for %s canisters: %w", width(memory64), k.err)
		}
	})
	return k.l, k.err
}

// wasmtime returns the wasmtime engine of canisters of one memory width.
func (e *Engine) wasmtime(memory64 bool) *wasmtime.Engine {
	if memory64 {
		return e.wt64
	}
	return e.wt32
}

// New creates an engine: Wasm features as the IC enables them, NaN
// canonicalization so floats are deterministic. Metering is not wasmtime's
// fuel but the instrumentation Compile adds (wasmbin.InstrumentMetering):
// an instruction counter in a Wasm global, so fuel stays off.
func New(cfg Config) (*Engine, error) {
	c64 := newWasmtimeConfig(cfg)
	if err := reserveMaxHeap(c64); err != nil {
		c64.Close()
		return nil, err
	}
	e := &Engine{wt32: wasmtime.NewEngineWithConfig(newWasmtimeConfig(cfg)), wt64: wasmtime.NewEngineWithConfig(c64),
		noFuel: cfg.DisableFuel, keep: max(cfg.KeepInstances, 0), kept: &kept{}}
	runtime.AddCleanup(e, func(k *kept) { k.dropAll(); k.dropFresh() }, e.kept)
	return e, nil
}

// newWasmtimeConfig is the configuration both wasmtime engines share.
func newWasmtimeConfig(cfg Config) *wasmtime.Config {
	c := wasmtime.NewConfig()
	c.SetConsumeFuel(false)
	c.SetCraneliftNanCanonicalization(true)
	c.SetWasmMemory64(true)
	c.SetWasmBulkMemory(true)
	c.SetWasmMultiValue(true)
	c.SetWasmReferenceTypes(true)
	c.SetWasmSIMD(true)
	c.SetWasmRelaxedSIMD(false) // not deterministic across CPUs
	c.SetWasmThreads(false)
	c.SetWasmMultiMemory(false)
	c.SetWasmGC(false)
	c.SetWasmFunctionReferences(false)
	c.SetWasmTailCall(false)
	c.SetParallelCompilation(cfg.ParallelCompilation)
	if cfg.MaxWasmStack > 0 {
		c.SetMaxWasmStack(cfg.MaxWasmStack)
	}
	return c
}

// funcType returns the Wasm signature of an ic0 import for a memory width.
func funcType(s *sysapi.Spec, memory64 bool) *wasmtime.FuncType {
	conv := func(ks []sysapi.Kind) []*wasmtime.ValType {
		out := make([]*wasmtime.ValType, len(ks))
		for i, k := range ks {
			switch {
			case k == sysapi.I32 || (k == sysapi.Ptr && !memory64):
				out[i] = wasmtime.NewValType(wasmtime.KindI32)
			default:
				out[i] = wasmtime.NewValType(wasmtime.KindI64)
			}
		}
		return out
	}
	return wasmtime.NewFuncType(conv(s.Params), conv(s.Results))
}

// newLinker defines every ic0 import as a store-independent host function
// that dispatches to the store's current execution.
func newLinker(e *wasmtime.Engine, memory64 bool) (*wasmtime.Linker, error) {
	l := wasmtime.NewLinker(e)
	for i := range sysapi.Imports {
		spec := &sysapi.Imports[i]
		if spec.Only32 && memory64 {
			continue
		}
		ty := funcType(spec, memory64)
		resultKinds := make([]wasmtime.ValKind, len(spec.Results))
		for j, r := range ty.Results() {
			resultKinds[j] = r.Kind()
		}
		err := l.FuncNew("ic0", spec.Name, ty, func(c *wasmtime.Caller, args []wasmtime.Val) ([]wasmtime.Val, *wasmtime.Trap) {
			r, ok := c.Data().(*run)
			if !ok || r == nil {
				return nil, wasmtime.NewTrap("ic0 called outside an execution")
			}
			return r.hostCall(spec, args, resultKinds)
		})
		if err != nil {
			return nil, fmt.Errorf("ic0.%s: %w", spec.Name, err)
		}
	}
	return l, nil
}

// hostCall adapts a Wasm call of an ic0 import to sysapi.Execution.Call.
func (r *run) hostCall(spec *sysapi.Spec, args []wasmtime.Val, results []wasmtime.ValKind) ([]wasmtime.Val, *wasmtime.Trap) {
	var raw [8]uint64
	a := raw[:len(args)]
	for i, v := range args {
		switch v.Kind() {
		case wasmtime.KindI32:
			a[i] = uint64(uint32(v.I32()))
		case wasmtime.KindI64:
			a[i] = uint64(v.I64())
		}
	}
	res, err := r.exec.Call(spec, a)
	if err != nil {
		r.hostErr = err
		return nil, wasmtime.NewTrap(err.Error())
	}
	if len(results) == 0 {
		return nil, nil
	}
	if results[0] == wasmtime.KindI32 {
		return []wasmtime.Val{wasmtime.ValI32(int32(uint32(res)))}, nil
	}
	return []wasmtime.Val{wasmtime.ValI64(int64(res))}, nil
}

// meter implements sysapi.Meter on the instance's instruction counter
// (the global wasmbin.InstrumentMetering adds, holding the instructions
// left; negative once the limit is exceeded). Before the instance exists
// the counter lives in pending. off: unmetered, nothing is counted. The
// counter is read and written through hostcall.go's helpers, one cgo call
// each, on the store's context.
type meter struct {
	store   *wasmtime.Store
	ctx     storeCtx
	g       *wasmtime.Global
	limit   uint64 // at most math.MaxInt64
	pending int64
	off     bool
}

func newMeter(store *wasmtime.Store, limit uint64, off bool) *meter {
	l := uint64(clampInt64(limit))
	return &meter{store: store, limit: l, pending: int64(l), off: off}
}

// attach moves the counter into the instance's global. It sets it through
// wasmtime-go and reads it back through the helpers, so a wasmtime whose
// value layout the helpers do not match fails here, not in a charge.
func (m *meter) attach(g *wasmtime.Global) error {
	if !handlesOK {
		return errHandles
	}
	if err := g.Set(m.store, wasmtime.ValI64(m.pending)); err != nil {
		msg := err.Error()
		closeError(err)
		return fmt.Errorf("set instruction counter: %s", msg)
	}
	m.ctx = storeContext(m.store)
	if v, ok := counterGet(m.ctx, g); !ok || v != m.pending {
		return fmt.Errorf("instruction counter reads back as %d (ok %v), set to %d: wasmtime_val_t layout mismatch", v, ok, m.pending)
	}
	m.g = g
	return nil
}

// remaining reads the counter.
func (m *meter) remaining() int64 {
	if m.g == nil {
		return m.pending
	}
	v, ok := counterGet(m.ctx, m.g)
	if !ok {
		return -1 // not the counter Compile added: treat as exhausted
	}
	return v
}

// exceeded reports whether the execution used more than its limit.
func (m *meter) exceeded() bool { return !m.off && m.remaining() < 0 }

func (m *meter) Charge(n uint64) error {
	if m.off {
		return nil
	}
	if m.g != nil {
		switch counterCharge(m.ctx, m.g, n) {
		case 0:
			return nil
		case 1:
			return sysapi.ErrInstructionLimit
		}
		return errors.New("charge instruction counter: not an i64")
	}
	c := m.pending
	if c < 0 || uint64(c) < n {
		m.pending = min(c, -1)
		return sysapi.ErrInstructionLimit
	}
	m.pending = c - int64(n)
	return nil
}

func (m *meter) Used() uint64 {
	if m.off {
		return 0
	}
	c := m.remaining()
	if c < 0 || uint64(c) > m.limit {
		return m.limit
	}
	return m.limit - uint64(c)
}

// trapMessage turns a wasmtime error into the canister-facing trap message.
func trapMessage(err error) error {
	var t *wasmtime.Trap
	if errors.As(err, &t) {
		if code := t.Code(); code != nil {
			switch *code {
			case wasmtime.OutOfFuel:
				return sysapi.ErrInstructionLimit
			case wasmtime.StackOverflow:
				return &sysapi.Trap{Message: "Canister trapped: stack overflow"}
			case wasmtime.MemoryOutOfBounds:
				return &sysapi.Trap{Message: "Canister trapped: heap out of bounds"}
			case wasmtime.IntegerDivisionByZero:
				return &sysapi.Trap{Message: "Canister trapped: integer division by 0"}
			case wasmtime.IntegerOverflow:
				return &sysapi.Trap{Message: "Canister trapped: integer overflow"}
			case wasmtime.UnreachableCodeReached:
				return &sysapi.Trap{Message: "Canister trapped: unreachable"}
			case wasmtime.TableOutOfBounds:
				return &sysapi.Trap{Message: "Canister trapped: table out of bounds"}
			case wasmtime.IndirectCallToNull:
				return &sysapi.Trap{Message: "Canister trapped: indirect call to null"}
			case wasmtime.BadSignature:
				return &sysapi.Trap{Message: "Canister trapped: indirect call signature mismatch"}
			case wasmtime.BadConversionToInteger:
				return &sysapi.Trap{Message: "Canister trapped: invalid conversion to integer"}
			}
		}
	}
	// Traps without a code (and errors) carry a backtrace in their text;
	// keep only the cause.
	msg := err.Error()
	if t != nil {
		msg = t.Message()
	}
	if _, cause, ok := strings.Cut(msg, "wasm trap: "); ok {
		msg = strings.TrimSpace(strings.SplitN(cause, "\n", 2)[0])
	} else {
		msg = errorCause(msg)
	}
	switch {
	case strings.Contains(msg, "all fuel consumed"):
		return sysapi.ErrInstructionLimit
	case strings.Contains(msg, "call stack exhausted"):
		return &sysapi.Trap{Message: "Canister trapped: stack overflow"}
	}
	return &sysapi.Trap{Message: "Canister trapped: " + msg}
}

// clampInt64 converts a limit for wasmtime's signed API.
func clampInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}
