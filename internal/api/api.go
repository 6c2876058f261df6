// Package api is the interface between cordon's commands and a node: the
// request and response types, and two implementations of Backend — Local,
// which opens the store in this process, and Client, which talks to a
// running `cordon serve` over HTTP (see server.go).
package api

import (
	"context"
	"errors"
	"fmt"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// InstallRequest installs code, creating the canister when needed.
type InstallRequest struct {
	ID     string `json:"id,omitempty"`     // "" with mode install: create a new canister
	Mode   string `json:"mode"`             // install, reinstall, upgrade
	Wasm   []byte `json:"wasm"`             // .wasm or .wasm.gz (base64 in JSON)
	Arg    []byte `json:"arg"`              // Candid-encoded init/post_upgrade argument
	Caller string `json:"caller,omitempty"` // "" = anonymous
	Cycles string `json:"cycles,omitempty"` // initial balance of a new canister (decimal)
	// KeepHeap is the upgrade option wasm_memory_persistence ("keep" or
	// "replace"); "" keeps the heap when the installed module uses
	// enhanced orthogonal persistence and replaces it otherwise, as dfx
	// does (host.InstallOptions.KeepEOPByDefault).
	KeepHeap string `json:"wasm_memory_persistence,omitempty"`
	// SkipPreUpgrade is the upgrade option skip_pre_upgrade: the installed
	// module's canister_pre_upgrade does not run.
	SkipPreUpgrade bool `json:"skip_pre_upgrade,omitempty"`
	// Isolation overrides the node's isolation mode for this canister
	// ("sandbox" or "inprocess"; "" keeps the canister's setting).
	Isolation string `json:"isolation,omitempty"`
	// Env, when given, replaces the canister's environment variables
	// (ic0.env_var_*) before the code runs.
	Env []store.EnvVar `json:"environment_variables,omitempty"`
}

var errSkipPreUpgradeMode = errors.New("skip_pre_upgrade is an option of mode upgrade")

// InstallResponse reports an install.
type InstallResponse struct {
	ID           string `json:"id"`
	ModuleHash   string `json:"module_hash"`
	Instructions uint64 `json:"instructions"`
	Created      bool   `json:"created"`
}

// CallRequest is an update call or a query.
type CallRequest struct {
	ID     string `json:"id"`
	Method string `json:"method"`
	Arg    []byte `json:"arg"`
	Caller string `json:"caller,omitempty"`
	Query  bool   `json:"query"`
}

// CallResponse is a reply.
type CallResponse struct {
	Reply        []byte `json:"reply"`
	Instructions uint64 `json:"instructions"`
}

// Backend is what every command needs from a node.
type Backend interface {
	Install(ctx context.Context, req InstallRequest) (*InstallResponse, error)
	Call(ctx context.Context, req CallRequest) (*CallResponse, error)
	Status(ctx context.Context, id string) (*host.Status, error)
	List(ctx context.Context) ([]*host.Status, error)
	Logs(ctx context.Context, id string) ([]store.LogEntry, error)
	SetStatus(ctx context.Context, id, caller, status string) error
	Delete(ctx context.Context, id, caller string) error
	Close() error
}

// Local is a Backend on a node opened in this process.
type Local struct{ Node *host.Node }

func parseID(s string) (principal.Principal, error) {
	if s == "" {
		return principal.Principal{}, errors.New("a canister id is required")
	}
	p, err := principal.FromText(s)
	if err != nil {
		return p, fmt.Errorf("canister id %q: %w", s, err)
	}
	return p, nil
}

// parseCaller parses the principal an ingress message is sent as. Only
// users may send ingress: the anonymous principal and self-authenticating
// (or derived) ones. The management canister and canister ids are system
// principals: a user posing as one would pass for a canister's controller
// or for the management canister to any canister that trusts its caller.
func parseCaller(s string) (principal.Principal, error) {
	if s == "" {
		return principal.Anonymous(), nil
	}
	p, err := principal.FromText(s)
	if err != nil {
		return p, fmt.Errorf("caller %q: %w", s, err)
	}
	if err := checkIngressSender(p); err != nil {
		return p, fmt.Errorf("caller %q: %w", s, err)
	}
	return p, nil
}

// Principal classes: the last byte of a principal (IC interface
// specification, "Principals").
const (
	classOpaque            = 0x01 // canister ids
	classSelfAuthenticated = 0x02
	classDerived           = 0x03
	classAnonymous         = 0x04
)

func checkIngressSender(p principal.Principal) error {
	b := p.Bytes()
	if len(b) == 0 {
		return errors.New("the management canister cannot send ingress messages")
	}
	switch b[len(b)-1] {
	case classSelfAuthenticated, classDerived:
		return nil
	case classAnonymous:
		if len(b) == 1 {
			return nil
		}
	case classOpaque:
		return errors.New("a canister id cannot send ingress messages (want a user principal or anonymous)")
	}
	return errors.New("not a user principal: ingress messages come from self-authenticating principals or anonymous")
}

// Install implements Backend.
func (l *Local) Install(ctx context.Context, req InstallRequest) (*InstallResponse, error) {
	caller, err := parseCaller(req.Caller)
	if err != nil {
		return nil, err
	}
	mode := host.InstallMode(req.Mode)
	switch mode {
	case "":
		mode = host.ModeInstall
	case host.ModeInstall, host.ModeReinstall, host.ModeUpgrade:
	default:
		return nil, fmt.Errorf("unknown install mode %q (want install, reinstall or upgrade)", req.Mode)
	}
	if req.SkipPreUpgrade && mode != host.ModeUpgrade {
		return nil, errSkipPreUpgradeMode
	}
	var keep *bool
	switch req.Isolation {
	case "", "sandbox", "inprocess":
	default:
		return nil, fmt.Errorf("isolation %q: want sandbox or inprocess", req.Isolation)
	}
	// Before anything is created: a strict node refuses in-process canisters.
	if err := l.Node.CheckIsolation(req.Isolation); err != nil {
		return nil, err
	}
	switch req.KeepHeap {
	case "":
	case "keep", "replace":
		k := req.KeepHeap == "keep"
		keep = &k
	default:
		return nil, fmt.Errorf("wasm_memory_persistence %q: want keep or replace", req.KeepHeap)
	}
	resp := &InstallResponse{}
	var id principal.Principal
	exists := false
	if req.ID != "" {
		if id, err = parseID(req.ID); err != nil {
			return nil, err
		}
		_, err := l.Node.Status(ctx, id)
		exists = err == nil
	}
	if !exists {
		if mode != host.ModeInstall && req.ID == "" {
			return nil, fmt.Errorf("mode %s needs the id of an installed canister", mode)
		}
		if mode != host.ModeInstall {
			return nil, &host.Reject{Code: host.DestinationInvalid,
				Message: fmt.Sprintf("Canister %s not found: it does not exist, and mode %s needs an installed canister", req.ID, mode)}
		}
		opts := host.CreateOptions{Controllers: []principal.Principal{caller}}
		if req.ID != "" {
			opts.ID = &id
		}
		if req.Cycles != "" {
			c, err := cycles.Parse(req.Cycles)
			if err != nil {
				return nil, err
			}
			opts.Cycles = &c
			opts.Minted = true // created from nothing: the node may refuse (fees.provisional)
		}
		opts.EnvVars = req.Env
		if id, err = l.Node.Create(ctx, opts); err != nil {
			return nil, err
		}
		resp.Created = true
	}
	var res *host.InstallResult
	if req.Env != nil && !resp.Created {
		// Before the code runs, so canister_init and post_upgrade see them.
		err = l.Node.SetEnvVars(ctx, id, caller, req.Env)
	}
	if err == nil {
		res, err = l.Node.Install(ctx, id, host.InstallOptions{Mode: mode, Wasm: req.Wasm, Arg: req.Arg, Caller: caller,
			KeepHeap: keep, KeepEOPByDefault: true, SkipPreUpgrade: req.SkipPreUpgrade, Isolation: req.Isolation})
	}
	if err != nil {
		if resp.Created {
			// Nothing half-done: a canister created for a failed install
			// goes away, also when the install was cancelled.
			dctx := context.WithoutCancel(ctx)
			_ = l.Node.SetStatus(dctx, id, caller, "stopped")
			_ = l.Node.Delete(dctx, id, caller)
			var rej *host.Reject
			if errors.As(err, &rej) {
				if need, ok := rej.CyclesNeeded(); ok {
					// The reject's advice (top the canister up) cannot be
					// followed: the canister is gone.
					return nil, &host.Reject{Code: rej.Code, Message: fmt.Sprintf(
						"a new canister with %s cycles cannot pay for its install, which needs a balance of at least %s (its worst-case cost and freezing limit); the canister was not kept: install again with at least %s cycles (cordon install --cycles %s)",
						givenCycles(req.Cycles), need, need, need)}
				}
			}
		}
		return nil, err
	}
	resp.ID, resp.ModuleHash, resp.Instructions = id.String(), res.ModuleHash, res.Instructions
	return resp, nil
}

// givenCycles names a new canister's initial balance for a message.
func givenCycles(s string) string {
	if s == "" {
		return "the initial"
	}
	return s
}

// Call implements Backend.
func (l *Local) Call(ctx context.Context, req CallRequest) (*CallResponse, error) {
	id, err := parseID(req.ID)
	if err != nil {
		return nil, err
	}
	caller, err := parseCaller(req.Caller)
	if err != nil {
		return nil, err
	}
	msg := host.Message{Canister: id, Method: req.Method, Arg: req.Arg, Caller: caller}
	var r *host.Reply
	if req.Query {
		r, err = l.Node.Query(ctx, msg)
	} else {
		r, err = l.Node.Update(ctx, msg)
	}
	if err != nil {
		return nil, err
	}
	return &CallResponse{Reply: r.Data, Instructions: r.Instructions}, nil
}

// Status implements Backend.
func (l *Local) Status(ctx context.Context, id string) (*host.Status, error) {
	p, err := parseID(id)
	if err != nil {
		return nil, err
	}
	return l.Node.Status(ctx, p)
}

// List implements Backend.
func (l *Local) List(ctx context.Context) ([]*host.Status, error) {
	ids, err := l.Node.List()
	if err != nil {
		return nil, err
	}
	out := make([]*host.Status, 0, len(ids))
	for _, id := range ids {
		s, err := l.Node.Status(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Logs implements Backend.
func (l *Local) Logs(ctx context.Context, id string) ([]store.LogEntry, error) {
	p, err := parseID(id)
	if err != nil {
		return nil, err
	}
	return l.Node.Logs(ctx, p)
}

// SetStatus implements Backend.
func (l *Local) SetStatus(ctx context.Context, id, caller, status string) error {
	p, err := parseID(id)
	if err != nil {
		return err
	}
	c, err := parseCaller(caller)
	if err != nil {
		return err
	}
	return l.Node.SetStatus(ctx, p, c, status)
}

// Delete implements Backend: it stops the canister first, as dfx does.
func (l *Local) Delete(ctx context.Context, id, caller string) error {
	p, err := parseID(id)
	if err != nil {
		return err
	}
	c, err := parseCaller(caller)
	if err != nil {
		return err
	}
	if err := l.Node.SetStatus(ctx, p, c, "stopped"); err != nil {
		return err
	}
	return l.Node.Delete(ctx, p, c)
}

// Close implements Backend.
func (l *Local) Close() error { return l.Node.Close() }

// Sandboxes lists the node's live sandbox processes (empty in-process).
func (l *Local) Sandboxes(context.Context) ([]metrics.SandboxInfo, error) {
	return l.Node.Sandboxes(), nil
}
