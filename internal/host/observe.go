package host

// Metrics hooks. The node reports what it does to Config.Metrics (nil:
// nothing). Everything that computes a label or times something is here, so
// the scheduler, queries and Open each carry a single call:
//
//   - executions: the executor is wrapped (Open), one observation per
//     Execute, labelled by System API context;
//   - ingress messages: Update and Query defer observeIngress, which times
//     the message from arrival to answer;
//   - inter-canister requests: respondInstr calls observeResponse;
//   - store commits: the store's commit observer (Open).

import (
	"context"
	"errors"
	"time"

	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// metricsOf returns the recorder of cfg, Nop when none is configured.
func metricsOf(cfg Config) metrics.Recorder {
	if cfg.Metrics == nil {
		return metrics.Nop{}
	}
	return cfg.Metrics
}

// observeIngress records an ingress message when it is answered. Use as
// `defer n.observeIngress(kind, time.Now(), &err)`.
func (n *Node) observeIngress(kind string, start time.Time, err *error) {
	metricsOf(n.cfg).Message(kind, outcomeOf(*err), time.Since(start))
}

// observeResponse records the response to an inter-canister request.
func (n *Node) observeResponse(o origin, rej *Reject) {
	if o.ingress != nil || o.system {
		return // ingress is observed by Update; system tasks have no caller
	}
	var err error
	if rej != nil {
		err = rej
	}
	metricsOf(n.cfg).Message(metrics.KindInterCanister, outcomeOf(err), 0)
}

func outcomeOf(err error) string {
	if err == nil {
		return metrics.OutcomeReplied
	}
	var rej *Reject
	if errors.As(err, &rej) {
		return metrics.RejectOutcome(rej.Code.String())
	}
	return metrics.OutcomeError
}

// observedExecutor records every execution.
type observedExecutor struct {
	exec.Executor
	m metrics.Node
}

// observeExecutor wraps x when metrics are configured.
func observeExecutor(x exec.Executor, cfg Config) exec.Executor {
	if cfg.Metrics == nil {
		return x
	}
	return &observedExecutor{Executor: x, m: cfg.Metrics}
}

var contextLabels = func() map[sysapi.Context]string {
	m := map[sysapi.Context]string{}
	for c := sysapi.Context(0); c.Valid(); c++ {
		m[c] = metrics.ContextLabel(c.String())
	}
	return m
}()

func (x *observedExecutor) Execute(ctx context.Context, canisterID string, req *exec.Request) (*sysapi.Output, error) {
	start := time.Now()
	out, err := x.Executor.Execute(ctx, canisterID, req)
	label := "unknown"
	if req != nil && req.Input != nil {
		if l, ok := contextLabels[req.Input.Context]; ok {
			label = l
		}
	}
	switch {
	case err != nil:
		x.m.Execution(label, metrics.OutcomeError, 0, time.Since(start))
	case out.Trapped:
		x.m.Execution(label, metrics.OutcomeTrapped, out.Instructions, time.Since(start))
	default:
		x.m.Execution(label, metrics.OutcomeOK, out.Instructions, time.Since(start))
	}
	return out, err
}

// sandboxLister is implemented by executors that run sandboxes.
type sandboxLister interface {
	Sandboxes() []metrics.SandboxInfo
}

func (x *observedExecutor) Sandboxes() []metrics.SandboxInfo {
	if l, ok := x.Executor.(sandboxLister); ok {
		return l.Sandboxes()
	}
	return nil
}

// Sandboxes lists the node's live sandbox processes (of the node's
// executor and of the other mode's, when a canister overrides the mode):
// none in-process, or when the executor does not report them.
func (n *Node) Sandboxes() []metrics.SandboxInfo {
	n.mu.Lock()
	xs := []exec.Executor{n.exec, n.alt}
	n.mu.Unlock()
	out := []metrics.SandboxInfo{}
	for _, x := range xs {
		if l, ok := x.(sandboxLister); ok {
			out = append(out, l.Sandboxes()...)
		}
	}
	return out
}

// LiveCanisters is the number of canisters loaded in memory.
func (n *Node) LiveCanisters() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.canisters)
}

// StoreBytes is the size of the store file.
func (n *Node) StoreBytes() int64 { return n.store.Size() }
