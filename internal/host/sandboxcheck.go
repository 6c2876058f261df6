package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// checkCanisterWAT is the canister CheckSandbox runs: an update that
// writes its heap and replies with what it wrote, so the sandbox loads a
// module, runs it, and reports written pages and a reply.
const checkCanisterWAT = `(module
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func (export "canister_update check")
    (i32.store16 (i32.const 0) (i32.const 0x6b6f))
    (call $append (i32.const 0) (i32.const 2))
    (call $reply)))`

// checkReply is what the check canister answers ("ok").
var checkReply = []byte("ok")

// checkLabel is the check canister's id as the executor knows it (its
// sandbox's label and cgroup name); no canister has it.
const checkLabel = "sandbox-check"

var checkWasm = sync.OnceValues(func() ([]byte, error) { return wasmtime.Wat2Wasm(checkCanisterWAT) })

// The stages of CheckSandbox, where it can fail.
const (
	CheckConfig  = "config"  // the configuration a node would refuse
	CheckCompile = "compile" // the compiler sandbox compiling the check canister
	CheckRun     = "run"     // the canister sandbox starting and running it
	CheckVerify  = "verify"  // the host's check of the canister sandbox's layers
)

// SandboxCheck is what CheckSandbox found.
type SandboxCheck struct {
	Pid    int                  // the canister sandbox's pid on the host (0: none started)
	Layers []sandbox.LayerCheck // its layers, as the host checked them after the canister ran
	Reply  []byte               // what the check canister answered
	Stage  string               // where it failed (Check*); "" if it passed
	Err    error                // nil if it passed
}

// FailedLayer is the confinement layer the check failed in, if the
// failure names one.
func (c *SandboxCheck) FailedLayer() (sandbox.Layer, bool) { return sandbox.FailedLayer(c.Err) }

// CheckSandbox starts the sandboxes a node opened with cfg would start,
// with the same settings (strict mode, allowed layers, executable, limits,
// host ids) and through the same spawner, compiles a tiny canister built
// here in its compiler sandbox, runs one update of it in a canister
// sandbox, and then checks from the host every layer of that sandbox
// while it lives (sandbox.Process.Verify). Nothing of the home is used:
// the compiled artifact goes to a directory of its own, removed after,
// and no canister is created. cordon serve runs it before it opens the
// node and refuses to start when it fails; cordon doctor reports it.
func CheckSandbox(ctx context.Context, cfg Config, logger *slog.Logger) *SandboxCheck {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	res := &SandboxCheck{}
	fail := func(stage string, err error) *SandboxCheck {
		res.Stage, res.Err = stage, err
		return res
	}
	if cfg.Isolation != "sandbox" {
		return fail(CheckConfig, fmt.Errorf("isolation %q: no sandbox to check", cfg.Isolation))
	}
	// The node's bounds, fitted to the open file limit as Open fits them
	// (it says so; the check need not), and its refusal when they cannot be.
	if err := applyDescriptors(&cfg, slog.New(slog.DiscardHandler)); err != nil {
		return fail(CheckConfig, err)
	}
	sc, err := sandboxConfig(cfg, logger)
	if err != nil {
		return fail(CheckConfig, err)
	}
	dir, err := os.MkdirTemp("", "cordon-check-")
	if err != nil {
		return fail(CheckConfig, fmt.Errorf("artifact directory: %w", err))
	}
	defer os.RemoveAll(dir)
	sc.Dir = dir
	sc.WarmPool, sc.PreloadPool = 0, 0 // one canister, one message
	sc.Metrics = nil                   // not the node's traffic
	// The executor starts the spawner only for sandbox.Start itself; the
	// check wraps it, and must spawn as the node does.
	if err := sandbox.StartSpawner(); err != nil {
		logger.Warn("sandbox spawner not started; sandboxes are cloned from the host", "err", err)
	}
	var (
		mu   sync.Mutex
		proc *sandbox.Process
	)
	sc.Launch = func(ctx context.Context, s sandbox.Spec) (exec.Process, error) {
		p, err := sandbox.Start(ctx, s)
		if err != nil {
			return nil, err
		}
		if s.Label == checkLabel {
			mu.Lock()
			proc = p
			mu.Unlock()
		}
		return p, nil
	}
	x, err := exec.NewSandboxed(sc)
	if err != nil {
		return fail(CheckConfig, err)
	}
	defer x.Close()

	wasm, err := checkWasm()
	if err != nil {
		return fail(CheckCompile, fmt.Errorf("the check canister: %w", err))
	}
	m, err := x.Prepare(ctx, wasm)
	if err != nil {
		return fail(CheckCompile, fmt.Errorf("compiler sandbox: %w", err))
	}
	out, err := x.Execute(ctx, checkLabel, &exec.Request{Module: m, Input: checkInput()})
	mu.Lock()
	p := proc
	mu.Unlock()
	if p != nil {
		res.Pid = p.Pid()
	}
	switch {
	case err != nil:
		return fail(CheckRun, fmt.Errorf("canister sandbox: %w", err))
	case out.Trapped:
		return fail(CheckRun, fmt.Errorf("canister sandbox: the check canister trapped: %s", out.TrapMessage))
	case out.Response != sysapi.Replied || !bytes.Equal(out.Reply, checkReply):
		return fail(CheckRun, fmt.Errorf("canister sandbox: the check canister answered %q, want %q", out.Reply, checkReply))
	case p == nil:
		return fail(CheckRun, errors.New("canister sandbox: not started by sandbox.Start"))
	}
	res.Reply = out.Reply
	res.Layers, err = p.Verify()
	if err != nil {
		return fail(CheckVerify, fmt.Errorf("canister sandbox: %w", err))
	}
	return res
}

// checkInput is the check canister's update.
func checkInput() *sysapi.Input {
	return &sysapi.Input{
		Context:    sysapi.CtxUpdate,
		Entry:      "canister_update check",
		CanisterID: []byte(checkLabel),
		SubnetID:   subnetID.Bytes(),
		Caller:     []byte{4}, // the anonymous principal
		Balance:    cycles.New(1e12),
		Status:     sysapi.StatusRunning,
		Time:       1,
		// What the check canister needs, whatever the node's limits.
		Limits: sysapi.Limits{
			Instructions:    1e9,
			HeapBytes:       1 << 20,
			ReplyBytes:      1 << 10,
			CallArgBytes:    1 << 10,
			DebugPrintBytes: 1 << 10,
			MaxLogLines:     16,
		},
	}
}
