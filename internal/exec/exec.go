// Package exec defines how the host has messages executed, and implements
// in-process execution. Sandboxed execution (one confined process per
// canister) implements the same interface, so the host does not know or care
// where a message runs: both must give bit-identical results.
package exec

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Executor validates modules and runs executions.
type Executor interface {
	// Prepare validates and compiles a module (cached by hash).
	Prepare(ctx context.Context, wasm []byte) (*engine.Module, error)
	// Execute runs one execution and returns its output. An error means the
	// execution could not be carried out; a canister trap is an output.
	Execute(ctx context.Context, canisterID string, req *engine.Request) (*sysapi.Output, error)
	// Forget drops what is cached for a canister (after delete or uninstall).
	Forget(canisterID string)
	// Close releases resources.
	Close() error
}

// InProcess runs executions in the host process. It is the baseline the
// sandbox is measured against and the mode for development.
type InProcess struct {
	engine *engine.Engine
	limits engine.ModuleLimits

	mu    sync.Mutex
	cache map[[32]byte]*engine.Module
}

// NewInProcess creates an in-process executor.
func NewInProcess(limits engine.ModuleLimits) (*InProcess, error) {
	e, err := engine.New(engine.DefaultConfig())
	if err != nil {
		return nil, fmt.Errorf("create engine: %w", err)
	}
	return &InProcess{engine: e, limits: limits, cache: map[[32]byte]*engine.Module{}}, nil
}

// Prepare implements Executor.
func (x *InProcess) Prepare(_ context.Context, wasm []byte) (*engine.Module, error) {
	h := sha256.Sum256(wasm)
	x.mu.Lock()
	c, ok := x.cache[h]
	x.mu.Unlock()
	if ok {
		return c, nil
	}
	m, err := x.engine.Compile(wasm, x.limits)
	if err != nil {
		return nil, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if c, ok := x.cache[m.Info.Hash]; ok {
		return c, nil
	}
	x.cache[m.Info.Hash] = m
	return m, nil
}

// Execute implements Executor.
func (x *InProcess) Execute(ctx context.Context, _ string, req *engine.Request) (*sysapi.Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return x.engine.Run(req)
}

// Forget implements Executor.
func (x *InProcess) Forget(string) {}

// Close implements Executor.
func (x *InProcess) Close() error { return nil }
