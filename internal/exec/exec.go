// Package exec defines how the host has messages executed, and implements
// in-process execution. Sandboxed execution (one confined process per
// canister) implements the same interface, so the host does not know where a
// message runs: both must give bit-identical results.
package exec

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"runtime"
	"sync"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Module is a prepared (validated and compiled) module as the host sees it:
// what it exports, and an executor-specific handle.
type Module struct {
	Info engine.Info
	// Wasm is the module as installed, which a sandboxed executor hands to
	// the compiler sandbox again when its artifact is cold; nil when the
	// executor reads it from the host's store instead
	// (SandboxConfig.InstalledModule), and in process.
	Wasm   []byte
	handle any
}

// Request is one execution: see engine.Request, with the module abstracted.
type Request struct {
	Module   *Module
	Heap     *state.PageMap // nil: the module's initial memory
	Globals  []state.Global // nil: the module's initial values
	RunStart bool
	Input    *sysapi.Input
	// Reserve, if set, is asked for the bytes of the output's memory pages
	// (4 KiB each) before the executor hands them over: a sandboxed
	// executor asks once the answer's header announced them and before it
	// receives any (boundary.Expect.Reserve), an in-process one once the
	// engine returned. An error fails the execution with that error
	// (wrapped, errors.As finds it; a sandbox's answer is then dropped,
	// the sandbox kept). It may wait, bounded by Execute's context, except
	// for queries: the answers of a sandbox's concurrent queries are read
	// by one goroutine for all of them (queries.go), so there it must not.
	// It is asked at most once per attempt: an execution retried on a
	// fresh sandbox (its reused one died) asks again, and that ask
	// replaces the dead attempt's, whose pages were never handed over.
	Reserve func(bytes uint64) error
}

// trimImages gives back the pages an execution's reads of req's memories
// allocated in the holes of their images (state.PageMap.TrimImage): held
// by the files, not the executor, they would outlive it, charged to the
// node's sandbox group once a sandbox that read them is gone. At most one
// pass per image per gap; within it the pass is scheduled for the gap's
// end (state.TrimMinGap), so a stream of queries costs an fstat each.
func trimImages(req *Request) {
	req.Heap.TrimImage()
	if req.Input == nil {
		return
	}
	if pm, ok := req.Input.Stable.(*state.PageMap); ok {
		pm.TrimImage()
	}
}

// outputPageBytes is what Request.Reserve is asked for an output.
func outputPageBytes(out *sysapi.Output) uint64 {
	return uint64(len(out.Heap.Pages)+len(out.Stable.Pages)) * state.PageSize
}

// Executor validates modules and runs executions.
type Executor interface {
	// Prepare validates and compiles a module. A module is cached by hash
	// for as long as someone holds it: callers keep the *Module of every
	// module they may still run.
	Prepare(ctx context.Context, wasm []byte) (*Module, error)
	// Execute runs one execution of canisterID and returns its output. An
	// error means the execution could not be carried out; a canister trap is
	// an output.
	Execute(ctx context.Context, canisterID string, req *Request) (*sysapi.Output, error)
	// Forget drops what is cached for a canister (after delete or uninstall).
	Forget(canisterID string)
	// ForgetModule drops what is kept for a module no canister uses any
	// more and no install is using (the store released it, or the install
	// that prepared it failed): its compiled artifact. Sandboxes that
	// loaded it keep their copy.
	ForgetModule(hash [32]byte)
	// PruneModules drops what is kept for every module keep refuses (at
	// open: artifacts a crash or an older version left). No install may
	// be under way.
	PruneModules(keep func(hash [32]byte) bool) error
	// Close releases resources.
	Close() error
}

// InProcess runs executions in the host process. It is the baseline the
// sandbox is measured against and the mode for development.
type InProcess struct {
	engine *engine.Engine
	limits engine.ModuleLimits

	cache *moduleCache

	warnOnce sync.Once // the engine's slow-path warning, logged once

	// running bounds concurrent executions to twice the CPUs Go may use.
	// Wasm runs in cgo calls, each on an OS thread of its own outside the
	// Go scheduler: without a bound, many concurrent messages become many
	// threads time-sliced by the kernel, and the unlucky ones wait tens of
	// milliseconds (RATIONALE.md, "In-process executions are bounded").
	running chan struct{}
	// compiling bounds concurrent compilations the same way
	// (DefaultMaxCompiles): a canister can ask for many at once, through
	// install_code calls for many canisters it controls.
	compiling chan struct{}
}

// InProcessKeepInstances is how many query instances the in-process
// executor keeps for reuse (engine.Config.KeepInstances): as many as a
// sandboxed node keeps sandboxes live by default (SandboxConfig.MaxSandboxes).
// Its one engine serves every canister of the node, and kept instances
// are closed least recently used first, so with fewer than the canisters
// queried in turn none is ever reused: at the sandbox's 4, ten canisters
// queried round robin answered 10 times fewer queries per second than one
// (cordon bench, throughput). Each kept instance costs its wasmtime store,
// an address-space reservation and at most 64 private pages
// (engine.copyPages): 64 MiB of private pages at most for all of them.
const InProcessKeepInstances = 256

// NewInProcess creates an in-process executor.
func NewInProcess(limits engine.ModuleLimits) (*InProcess, error) {
	cfg := engine.DefaultConfig()
	cfg.KeepInstances = InProcessKeepInstances
	e, err := engine.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("create engine: %w", err)
	}
	return &InProcess{engine: e, limits: limits, cache: newModuleCache(),
		running: make(chan struct{}, 2*runtime.GOMAXPROCS(0)), compiling: make(chan struct{}, DefaultMaxCompiles())}, nil
}

// Prepare implements Executor.
func (x *InProcess) Prepare(ctx context.Context, wasm []byte) (*Module, error) {
	h := sha256.Sum256(wasm)
	if c := x.cache.get(h); c != nil {
		return c, nil
	}
	select {
	case x.compiling <- struct{}{}:
		defer func() { <-x.compiling }()
	case <-ctx.Done():
		return nil, fmt.Errorf("exec: waiting to compile: %w", ctx.Err())
	}
	m, err := x.engine.Compile(wasm, x.limits)
	if err != nil {
		return nil, err
	}
	return x.cache.put(h, &Module{Info: m.Info, handle: m}), nil // the compiled module is all it runs
}

// Execute implements Executor.
func (x *InProcess) Execute(ctx context.Context, canisterID string, req *Request) (*sysapi.Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m, ok := req.Module.handle.(*engine.Module)
	if !ok {
		return nil, fmt.Errorf("exec: module was not prepared by the in-process executor")
	}
	defer trimImages(req)
	warn := func(reason string) {
		x.warnOnce.Do(func() { slog.Warn("in-process execution: "+reason, "canister", canisterID) })
	}
	select {
	case x.running <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	out, err := x.engine.Run(&engine.Request{Module: m, Heap: req.Heap, Warn: warn, Globals: req.Globals, RunStart: req.RunStart, Input: req.Input})
	<-x.running // a wait for the output's memory holds no place of the engine
	if err == nil && req.Reserve != nil {
		if b := outputPageBytes(out); b > 0 {
			if err := req.Reserve(b); err != nil {
				return nil, fmt.Errorf("exec: output of %s: %w", canisterID, err)
			}
		}
	}
	return out, err
}

// Forget implements Executor.
func (x *InProcess) Forget(string) {}

// ForgetModule implements Executor: nothing is kept but the module, which
// goes with its last holder (moduleCache).
func (x *InProcess) ForgetModule([32]byte) {}

// PruneModules implements Executor: nothing is kept on disk.
func (x *InProcess) PruneModules(func([32]byte) bool) error { return nil }

// Close implements Executor.
func (x *InProcess) Close() error { return nil }
