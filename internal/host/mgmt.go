package host

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// The management canister aaaaa-aa, as canisters and users see it. Its
// interface is the subset of the IC's (interface specification, ic.did) that
// cordon implements, with the IC's types; arguments are decoded with Candid
// subtyping, so callers may send more (or fewer optional) fields.
const managementDid = `
type log_visibility = variant { controllers; public; allowed_viewers : vec principal };
type environment_variable = record { name : text; value : text };
type canister_settings = record {
  controllers : opt vec principal;
  compute_allocation : opt nat;
  memory_allocation : opt nat;
  freezing_threshold : opt nat;
  reserved_cycles_limit : opt nat;
  log_visibility : opt log_visibility;
  wasm_memory_limit : opt nat;
  wasm_memory_threshold : opt nat;
  environment_variables : opt vec environment_variable;
};
type definite_canister_settings = record {
  controllers : vec principal;
  compute_allocation : nat;
  memory_allocation : nat;
  freezing_threshold : nat;
  reserved_cycles_limit : nat;
  log_visibility : log_visibility;
  wasm_memory_limit : nat;
  wasm_memory_threshold : nat;
  environment_variables : vec environment_variable;
};
type canister_log_record = record { idx : nat64; timestamp_nanos : nat64; content : blob };
type canister_install_mode = variant {
  install;
  reinstall;
  upgrade : opt record { skip_pre_upgrade : opt bool; wasm_memory_persistence : opt variant { keep; replace } };
};
type id_arg = record { canister_id : principal };
type chunk_hash = record { hash : blob };
type canister_status_result = record {
  status : variant { running; stopping; stopped };
  ready_for_migration : bool;
  version : nat64;
  settings : definite_canister_settings;
  module_hash : opt blob;
  memory_size : nat;
  memory_metrics : record {
    wasm_memory_size : nat;
    stable_memory_size : nat;
    global_memory_size : nat;
    wasm_binary_size : nat;
    custom_sections_size : nat;
    canister_history_size : nat;
    wasm_chunk_store_size : nat;
    snapshots_size : nat;
  };
  cycles : nat;
  reserved_cycles : nat;
  idle_cycles_burned_per_day : nat;
  query_stats : record {
    num_calls_total : nat;
    num_instructions_total : nat;
    request_payload_bytes_total : nat;
    response_payload_bytes_total : nat;
  };
};
service : {
  raw_rand : () -> (blob);
  create_canister : (record { settings : opt canister_settings; sender_canister_version : opt nat64 }) -> (record { canister_id : principal });
  install_code : (record { mode : canister_install_mode; canister_id : principal; wasm_module : blob; arg : blob; sender_canister_version : opt nat64 }) -> ();
  uninstall_code : (record { canister_id : principal; sender_canister_version : opt nat64 }) -> ();
  update_settings : (record { canister_id : principal; settings : canister_settings; sender_canister_version : opt nat64 }) -> ();
  start_canister : (id_arg) -> ();
  stop_canister : (id_arg) -> ();
  delete_canister : (id_arg) -> ();
  deposit_cycles : (id_arg) -> ();
  canister_status : (id_arg) -> (canister_status_result);
  provisional_create_canister_with_cycles : (record { amount : opt nat; settings : opt canister_settings; specified_id : opt principal; sender_canister_version : opt nat64 }) -> (record { canister_id : principal });
  provisional_top_up_canister : (record { canister_id : principal; amount : nat }) -> ();
  fetch_canister_logs : (id_arg) -> (record { canister_log_records : vec canister_log_record }) query;
  upload_chunk : (record { canister_id : principal; chunk : blob }) -> (chunk_hash);
  stored_chunks : (id_arg) -> (vec chunk_hash);
  clear_chunk_store : (id_arg) -> ();
  install_chunked_code : (record { mode : canister_install_mode; target_canister : principal; store_canister : opt principal; chunk_hashes_list : vec chunk_hash; wasm_module_hash : blob; arg : blob; sender_canister_version : opt nat64 }) -> ();
}`

// ManagementInterface is the management canister's Candid interface, for
// clients that type arguments and replies (`cordon call aaaaa-aa`).
func ManagementInterface() (*candid.Service, error) { return managementService() }

var (
	mgmtOnce sync.Once
	mgmtSvc  *candid.Service
	mgmtErr  error
)

func managementService() (*candid.Service, error) {
	mgmtOnce.Do(func() { mgmtSvc, mgmtErr = candid.ParseService(managementDid) })
	return mgmtSvc, mgmtErr
}

// canisterOnly are the management methods the IC refuses in an ingress
// message: they need cycles attached or a canister caller.
var canisterOnly = map[string]bool{"raw_rand": true, "deposit_cycles": true, "create_canister": true}

// managementIngress executes an ingress message to aaaaa-aa, as the IC does:
// the management canister runs it with the user as the caller, so the
// methods that need a controller check the user. canister_status is also
// answered as a query (it changes nothing).
func (n *Node) managementIngress(ctx context.Context, msg Message, query bool) (*Reply, error) {
	svc, err := managementService()
	if err != nil {
		return nil, fmt.Errorf("management interface: %w", err)
	}
	if _, ok := svc.Method(msg.Method); !ok {
		return nil, rejectf(DestinationInvalid, "Management canister has no method '%s'", EchoedName(msg.Method))
	}
	if canisterOnly[msg.Method] {
		return nil, rejectf(CanisterReject, "Only canisters can call ic00 method %s", msg.Method)
	}
	if query && msg.Method != "canister_status" {
		return nil, rejectf(CanisterReject, "Management canister method %s cannot be called as a query", msg.Method)
	}
	// Bounded while in progress (mgmtq.go): each holds a goroutine and
	// its argument, a stop for as long as the canister takes to stop.
	target, ok := ManagementTarget(msg.Method, msg.Arg)
	if !ok {
		target = principal.Management()
	}
	// A caller the canister's controllers refuse is refused before it
	// counts, so that it cannot use up the bound of the canister's own
	// controllers.
	if rej := n.refuseUncontrolled(msg.Method, target, msg.Caller); rej != nil {
		return nil, rej
	}
	size := uint64(len(msg.Arg))
	if rej := n.mgmtCalls.admit(n.cfg.Messages, target, msg.Method, size); rej != nil {
		return nil, rej
	}
	ch := make(chan result, 1)
	m := &message{kind: kindRequest, ingress: true, caller: msg.Caller, method: msg.Method, arg: msg.Arg, origin: origin{ingress: ch, status: msg.Status}}
	n.busy.Add(1)
	go func() {
		defer n.busy.Done()
		defer n.mgmtCalls.release(target, size)
		if rest := n.management(m); rest != nil {
			rest() // a stop stays counted until it is answered
		}
	}()
	select {
	case r := <-ch:
		return r.reply, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the reply of aaaaa-aa.%s: %w (the call may still complete)", msg.Method, ctx.Err())
	}
}

// mgmtCallTimeout bounds one management call, its waits (for a lock, for
// a stop's call contexts) and its executions (an install's, whose own
// watchdog allows the install limit at a deliberately slow rate: 50
// minutes for the default 300 B instructions) alike: a canister whose
// install hangs holds its lock, and its caller's queue to aaaaa-aa
// (mgmtorder.go), this long at most. The IC's own longest install, its
// whole limit in slices of 2 B instructions a round, takes about as long.
const mgmtCallTimeout = 5 * time.Minute

// management executes a request to aaaaa-aa and responds to it (the
// caller counted it in n.busy). Once the node is closing it runs nothing
// new; what runs is given up with the node's executions (n.stopping).
//
// A call that has taken effect and must wait to be answered (a stop
// waiting for the canister's calls) returns the wait and its answer as
// rest, for the caller to run (on its own goroutine, counted in n.busy,
// when calls are queued behind it: mgmtorder.go).
func (n *Node) management(m *message) (rest func()) {
	if n.closing() {
		n.respondTo(m.origin, nil, rejectf(SysTransient, "Management canister: the node is shutting down"), m.cycles)
		return nil
	}
	ctx, cancel := context.WithTimeout(n.stopping, n.mgmtTimeout)
	var wait func(context.Context) error
	reply, used, err := n.managementStep(ctx, m, &wait)
	if err != nil || wait == nil {
		cancel()
		n.answerManagement(m, reply, used, err)
		return nil
	}
	return func() {
		defer cancel()
		if err := wait(ctx); err != nil {
			n.answerManagement(m, nil, used, err)
			return
		}
		n.answerManagement(m, reply, used, nil)
	}
}

// answerManagement responds to m with reply, or with err as a reject,
// refunding what of its cycles the call did not use.
func (n *Node) answerManagement(m *message, reply []byte, used cycles.Amount, err error) {
	refund := m.cycles.SaturatingSub(used)
	if err != nil {
		var rej *Reject
		switch {
		case errors.As(err, &rej):
		case errors.Is(err, context.DeadlineExceeded):
			// Its call's deadline: say which, as what ran out of it may
			// be the canister's own code (an install that hangs).
			rej = rejectf(SysTransient, "Management canister: %s was given up: it did not end within %s, the longest a management call may take (%v)",
				m.method, n.mgmtTimeout, contextErr(err))
		case errors.Is(err, context.Canceled):
			rej = rejectf(SysTransient, "Management canister: %s was given up (%v)", m.method, contextErr(err))
		case errors.Is(err, engine.ErrInvalidModule):
			// The caller's module, refused: its reason is for the caller.
			rej = rejectf(CanisterError, "Management canister: %s: %v", m.method, err)
		default:
			// The node's own failure (its store, a file): the caller,
			// a client or a canister, learns an id, not its detail.
			rej = n.internalReject(CanisterError, "Management canister: "+m.method, err)
		}
		// What the call used stays used (a canister it created keeps
		// its cycles); the rest goes back.
		n.respondTo(m.origin, nil, rej, refund)
		return
	}
	n.respondTo(m.origin, reply, nil, refund)
}

// contextErr is the context error err wraps, without what wraps it.
func contextErr(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return context.Canceled
}

// mgmtDecoder decodes the management canister's arguments: records of
// principals, nats and blobs (which share the argument's bytes), a few
// bytes of Go values per byte on the wire, so a tight memory budget refuses
// a value made to expand (vec vec null) long before the default would.
var mgmtDecoder = &candid.Decoder{MemoryPerByte: 8}

// managementCall executes m, to its end.
func (n *Node) managementCall(ctx context.Context, m *message) (reply []byte, used cycles.Amount, err error) {
	var wait func(context.Context) error
	reply, used, err = n.managementStep(ctx, m, &wait)
	if err == nil && wait != nil {
		if err = wait(ctx); err != nil {
			reply = nil
		}
	}
	return reply, used, err
}

// managementStep executes m until it has taken effect: a stop that must
// wait for the canister's calls sets *wait to the rest of it, which the
// reply awaits, instead of waiting here.
func (n *Node) managementStep(ctx context.Context, m *message, wait *func(context.Context) error) (reply []byte, used cycles.Amount, err error) {
	svc, err := managementService()
	if err != nil {
		return nil, used, fmt.Errorf("management interface: %w", err)
	}
	meth, ok := svc.Method(m.method)
	if !ok {
		return nil, used, rejectf(DestinationInvalid, "Management canister has no method '%s'", EchoedName(m.method))
	}
	if err := n.checkProvisional(m); err != nil { // policy.go
		return nil, used, err
	}
	args, err := mgmtDecoder.DecodeAs(m.arg, meth.Args())
	if err != nil {
		return nil, used, rejectf(CanisterError, "Error decoding the argument of management method %s: %v", m.method, err)
	}
	var arg candid.Record
	if len(args.Values) > 0 {
		arg, _ = args.Values[0].(candid.Record)
	}
	encode := func(vals ...candid.Value) ([]byte, error) {
		return candid.EncodeArgs(candid.Args{Types: meth.Results(), Values: vals})
	}
	// A user's call that changes state commits its reply with the change
	// (ingress.go): the reply of each method, from what its change returns.
	ctx = answering(ctx, m, func(result any) ([]byte, error) {
		switch m.method {
		case "provisional_create_canister_with_cycles":
			id, ok := result.(principal.Principal)
			if !ok {
				return nil, fmt.Errorf("%s answered with %T", m.method, result)
			}
			return encode(candid.Record{{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: id}}})
		case "upload_chunk":
			hash, ok := result.([]byte)
			if !ok {
				return nil, fmt.Errorf("%s answered with %T", m.method, result)
			}
			return encode(chunkHashValue(hash))
		}
		return encode()
	})
	target, _ := principalField(arg, "canister_id")
	about := target
	if m.method == "install_chunked_code" {
		about, _ = principalField(arg, "target_canister")
	}
	if rej := n.refuseUncontrolled(m.method, about, m.caller); rej != nil {
		return nil, used, rej // before waiting for the canister's lock
	}
	switch m.method {
	case "raw_rand":
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return nil, used, err
		}
		reply, err = encode(candid.Blob(b))
		return reply, used, err

	case "create_canister", "provisional_create_canister_with_cycles":
		opts := CreateOptions{Controllers: []principal.Principal{m.caller}}
		amount := m.cycles
		if m.method == "provisional_create_canister_with_cycles" {
			amount = n.cfg.InitialCycles
			if v, ok := optNat(arg, "amount"); ok {
				if amount, err = cycles.FromBig(v); err != nil {
					return nil, used, rejectf(CanisterError, "amount: %v", err)
				}
			}
			if p, ok := optPrincipal(arg, "specified_id"); ok {
				opts.ID = &p
			}
			opts.Minted = true
		} else {
			fee := cycles.New(n.cfg.Fees.CanisterCreation)
			if amount.Cmp(fee) < 0 {
				return nil, used, rejectf(CanisterError, "create_canister: %s cycles attached, creating a canister costs %s", amount, fee)
			}
			used = amount
			amount = amount.SaturatingSub(fee)
			// The creation fee is burned; it is booked on the new canister
			// so that the node's cycles add up. The cycles arrive with the
			// creation's commit.
			opts.fee = fee
			opts.delivers = delivered(m.origin)
		}
		opts.Cycles = &amount
		if s, ok := settingsField(arg); ok {
			opts.settings = &s // controllers given there replace the caller
		}
		id, err := n.Create(ctx, opts)
		if err != nil {
			// A refused setting or id is a reject; anything else is the
			// node's own, which answerManagement answers by its id.
			return nil, cycles.Amount{}, fmt.Errorf("create_canister: %w", err)
		}
		reply, err = encode(candid.Record{{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: id}}})
		return reply, used, err

	case "install_code":
		modeV, _ := arg.GetNamed("mode")
		mode, up := installMode(modeV)
		wasm, _ := blobField(arg, "wasm_module")
		initArg, _ := blobField(arg, "arg")
		_, err := n.Install(ctx, target, InstallOptions{Mode: mode, Wasm: wasm, Arg: initArg, Caller: m.caller,
			KeepHeap: up.keepHeap, SkipPreUpgrade: up.skipPreUpgrade})
		if err != nil {
			return nil, used, err
		}
		reply, err = encode()
		return reply, used, err

	case "upload_chunk":
		chunk, _ := blobField(arg, "chunk")
		hash, err := n.UploadChunk(ctx, target, m.caller, chunk)
		if err != nil {
			return nil, used, err
		}
		reply, err = encode(chunkHashValue(hash))
		return reply, used, err
	case "stored_chunks":
		hs, err := n.StoredChunks(ctx, target, m.caller)
		if err != nil {
			return nil, used, err
		}
		vec := candid.Vec{}
		for _, h := range hs {
			vec = append(vec, chunkHashValue(h))
		}
		reply, err = encode(vec)
		return reply, used, err
	case "clear_chunk_store":
		if err := n.ClearChunkStore(ctx, target, m.caller); err != nil {
			return nil, used, err
		}
	case "install_chunked_code":
		opts := InstallChunkedOptions{Caller: m.caller}
		modeV, _ := arg.GetNamed("mode")
		var up upgradeOptions
		opts.Mode, up = installMode(modeV)
		opts.KeepHeap, opts.SkipPreUpgrade = up.keepHeap, up.skipPreUpgrade
		opts.Target, _ = principalField(arg, "target_canister")
		if p, ok := optPrincipal(arg, "store_canister"); ok {
			opts.Store = &p
		}
		if v, ok := arg.GetNamed("chunk_hashes_list"); ok {
			vec, _ := v.(candid.Vec)
			for _, e := range vec {
				r, _ := e.(candid.Record)
				h, _ := blobField(r, "hash")
				opts.Hashes = append(opts.Hashes, h)
			}
		}
		opts.ModuleHash, _ = blobField(arg, "wasm_module_hash")
		opts.Arg, _ = blobField(arg, "arg")
		if _, err := n.InstallChunked(ctx, opts); err != nil {
			return nil, used, err
		}
	case "uninstall_code":
		if err := n.Uninstall(ctx, target, m.caller); err != nil {
			return nil, used, err
		}
	case "start_canister":
		if _, err := n.setStatus(ctx, target, m.caller, "running"); err != nil {
			return nil, used, err
		}
	case "stop_canister":
		if target == m.caller {
			return nil, used, rejectf(CanisterError, "Canister %s cannot stop itself", target)
		}
		stop, err := n.setStatus(ctx, target, m.caller, "stopped")
		if err != nil {
			return nil, used, err
		}
		if stop != nil {
			*wait = func(ctx context.Context) error { return n.awaitStop(ctx, target, stop) }
		}
	case "delete_canister":
		if err := n.Delete(ctx, target, m.caller); err != nil {
			return nil, used, err
		}
	case "update_settings":
		c, err := n.get(ctx, target)
		if err != nil {
			return nil, used, err
		}
		if err := n.readLockWithin(ctx, c); err != nil {
			return nil, used, err
		}
		err = n.checkController(c, m.caller, "update_settings")
		c.mu.RUnlock()
		if err != nil {
			return nil, used, err
		}
		s, _ := settingsField(arg)
		if err := n.applySettings(ctx, target, s, true); err != nil {
			return nil, used, err
		}
	case "deposit_cycles", "provisional_top_up_canister":
		amount := m.cycles
		if m.method == "provisional_top_up_canister" {
			v, ok := natField(arg, "amount")
			if !ok {
				return nil, used, rejectf(CanisterError, "provisional_top_up_canister: amount missing")
			}
			if amount, err = cycles.FromBig(v); err != nil {
				return nil, used, rejectf(CanisterError, "amount: %v", err)
			}
		}
		var delivers []store.CallCycles
		if m.method == "deposit_cycles" {
			delivers = delivered(m.origin) // all of them arrive with the deposit's commit
		}
		if err := n.deposit(ctx, target, amount, m.method == "provisional_top_up_canister", delivers...); err != nil {
			return nil, used, err
		}
		if m.method == "deposit_cycles" {
			used = amount
		}
	case "fetch_canister_logs":
		return nil, used, errLogsReplicated // canlog.go
	case "canister_status":
		st, ctrls, err := n.statusFor(ctx, target, m.caller)
		if err != nil {
			return nil, used, err
		}
		reply, err = encode(st.candid(ctrls))
		return reply, used, err
	}
	reply, err = encode()
	return reply, used, err
}

type settings struct {
	controllers       []principal.Principal
	freezingThreshold *big.Int
	memoryAllocation  *big.Int
	computeAllocation *big.Int
	wasmMemoryLimit   *big.Int
	// canlog.go
	wasmMemoryThreshold *big.Int
	logVisibility       *logVisibility
	err                 error          // a setting refused while reading
	envVars             []store.EnvVar // nil: not given
}

func settingsField(r candid.Record) (settings, bool) {
	v, ok := r.GetNamed("settings")
	if !ok {
		return settings{}, false
	}
	if o, isOpt := v.(candid.Opt); isOpt {
		if o.Value == nil {
			return settings{}, false
		}
		v = o.Value
	}
	sr, ok := v.(candid.Record)
	if !ok {
		return settings{}, false
	}
	var s settings
	if cv, ok := sr.GetNamed("controllers"); ok {
		if o, ok := cv.(candid.Opt); ok && o.Value != nil {
			s.controllers = principals(o.Value)
		}
	}
	s.freezingThreshold, _ = optNat(sr, "freezing_threshold")
	s.memoryAllocation, _ = optNat(sr, "memory_allocation")
	s.computeAllocation, _ = optNat(sr, "compute_allocation")
	s.wasmMemoryLimit, _ = optNat(sr, "wasm_memory_limit")
	s.err = logSettings(sr, &s) // canlog.go
	if ev, ok := sr.GetNamed("environment_variables"); ok {
		if o, ok := ev.(candid.Opt); ok && o.Value != nil {
			vec, _ := o.Value.(candid.Vec)
			s.envVars = []store.EnvVar{}
			for _, e := range vec {
				er, _ := e.(candid.Record)
				name, _ := textField(er, "name")
				value, _ := textField(er, "value")
				s.envVars = append(s.envVars, store.EnvVar{Name: name, Value: value})
			}
		}
	}
	return s, true
}

func principals(v candid.Value) []principal.Principal {
	out := []principal.Principal{}
	vec, _ := v.(candid.Vec)
	for _, e := range vec {
		if p, ok := e.(candid.Principal); ok {
			out = append(out, p.Principal)
		}
	}
	return out
}

func textField(r candid.Record, name string) (string, bool) {
	v, ok := r.GetNamed(name)
	if !ok {
		return "", false
	}
	t, ok := v.(candid.Text)
	return string(t), ok
}

// The IC's limits on canister environment variables (its execution
// environment configuration); sysapi holds them so that the sandbox's
// decoder bounds what it accepts by the same numbers.
const (
	maxEnvVars     = sysapi.MaxEnvVars
	maxEnvVarName  = sysapi.MaxEnvVarName
	maxEnvVarValue = sysapi.MaxEnvVarValue
	maxControllers = 10
)

// checkEnvVars validates environment variables as update_settings and
// create_canister receive them, and returns them sorted by name (the IC
// keeps them in a map ordered by name, which ic0.env_var_name_* index).
func checkEnvVars(vars []store.EnvVar) ([]store.EnvVar, error) {
	if len(vars) > maxEnvVars {
		return nil, rejectf(CanisterError, "Too many environment variables: %d (at most %d)", len(vars), maxEnvVars)
	}
	out := slices.Clone(vars)
	slices.SortFunc(out, func(a, b store.EnvVar) int { return strings.Compare(a.Name, b.Name) })
	for i, v := range out {
		switch {
		case len(v.Name) > maxEnvVarName:
			return nil, rejectf(CanisterError, "Environment variable name %.32q… is %d bytes long (at most %d)", v.Name, len(v.Name), maxEnvVarName)
		case len(v.Value) > maxEnvVarValue:
			return nil, rejectf(CanisterError, "Environment variable %q has a value of %d bytes (at most %d)", v.Name, len(v.Value), maxEnvVarValue)
		case i > 0 && out[i-1].Name == v.Name:
			return nil, rejectf(CanisterError, "Duplicate environment variable %q", v.Name)
		}
	}
	return out, nil
}

// CheckEnvVars reports whether vars are acceptable as a canister's
// environment variables (the IC's limits, names unique).
func CheckEnvVars(vars []store.EnvVar) error {
	_, err := checkEnvVars(vars)
	return err
}

// SetEnvVars replaces a canister's environment variables, as
// update_settings with only environment_variables does; caller must be a
// controller.
func (n *Node) SetEnvVars(ctx context.Context, id, caller principal.Principal, vars []store.EnvVar) error {
	c, err := n.get(ctx, id)
	if err != nil {
		return err
	}
	if err := n.readLockWithin(ctx, c); err != nil {
		return err
	}
	err = n.checkController(c, caller, "update_settings")
	c.mu.RUnlock()
	if err != nil {
		return err
	}
	if vars == nil {
		vars = []store.EnvVar{}
	}
	return n.applySettings(ctx, id, settings{envVars: vars}, true)
}

// applySettings changes a canister's settings; bump says the change counts
// as a message execution for canister_version (update_settings does).
func (n *Node) applySettings(ctx context.Context, id principal.Principal, s settings, bump bool) error {
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return err
	}
	defer n.unlock(c)
	set, err := n.settingsWith(c.id.String(), c.meta, usageOf(c), s)
	if err != nil {
		return err
	}
	// The memory held so far is paid at the old allocation, then the
	// new settings apply.
	n.chargeStorage(c, n.now())
	meta := c.meta
	meta.Settings = set
	updateLowMemory(&meta, c.heap.Size()) // the limit or threshold may have moved (lowmem.go)
	if bump {
		meta.Version++
	}
	ingress, answered := answerOf(ctx, id)
	if err := n.commit(store.Change{ID: id.Bytes(), Meta: meta, Ingress: ingress}); err != nil {
		return err
	}
	ctrls := slices.Clone(meta.Settings.Controllers)
	c.controllers.Store(&ctrls) // before anyone learns of the change
	answered()
	c.meta = meta
	n.scheduleLowMemory(c)
	return nil
}

// settingsWith returns the settings of a canister (named name in errors,
// with metadata meta and memory use u) changed as s asks, every value
// checked; nothing is changed. update_settings commits what it returns;
// create_canister checks the new canister's settings with it before the
// canister exists, so that a refused setting creates nothing.
func (n *Node) settingsWith(name string, meta store.Meta, u memUsage, s settings) (store.Settings, error) {
	if s.err != nil {
		return store.Settings{}, s.err
	}
	set := meta.Settings
	set.Controllers = slices.Clone(set.Controllers)
	if s.controllers != nil {
		if len(s.controllers) > maxControllers {
			return store.Settings{}, rejectf(CanisterError, "A canister can have at most %d controllers, got %d", maxControllers, len(s.controllers))
		}
		set.Controllers = set.Controllers[:0:0]
		for _, p := range s.controllers {
			set.Controllers = append(set.Controllers, p.String())
		}
	}
	setU64 := func(dst *uint64, v *big.Int, name string, max uint64) error {
		if v == nil {
			return nil
		}
		if !v.IsUint64() || v.Uint64() > max {
			return rejectf(CanisterError, "%s %s is out of range (at most %d)", name, v, max)
		}
		*dst = v.Uint64()
		return nil
	}
	for _, f := range []struct {
		dst  *uint64
		v    *big.Int
		name string
		max  uint64
	}{
		{&set.FreezingThreshold, s.freezingThreshold, "freezing_threshold", 1 << 62},
		{&set.MemoryAllocation, s.memoryAllocation, "memory_allocation", 1 << 48},
		{&set.ComputeAllocation, s.computeAllocation, "compute_allocation", 100},
		{&set.WasmMemoryLimit, s.wasmMemoryLimit, "wasm_memory_limit", 1<<48 - 1},
		{&set.WasmMemoryThreshold, s.wasmMemoryThreshold, "wasm_memory_threshold", 1<<48 - 1},
	} {
		if err := setU64(f.dst, f.v, f.name, f.max); err != nil {
			return store.Settings{}, err
		}
	}
	applyLogSettings(&set, s) // canlog.go
	if s.envVars != nil {
		vars, err := checkEnvVars(s.envVars)
		if err != nil {
			return store.Settings{}, err
		}
		set.EnvVars = vars
	}
	if err := n.checkAllocation(name, meta, u, set); err != nil {
		return store.Settings{}, err
	}
	return set, nil
}

// deposit adds cycles to a canister; minted marks cycles created from
// nothing (provisional top-up), which the conservation count must know.
// delivers are the records in flight of the call that brought them, which
// the deposit's commit removes (inflight.go).
func (n *Node) deposit(ctx context.Context, id principal.Principal, amount cycles.Amount, minted bool, delivers ...store.CallCycles) error {
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return err
	}
	defer n.unlock(c)
	meta := c.meta
	bal, err := meta.Balance.Add(amount)
	if err != nil {
		return rejectf(CanisterError, "deposit_cycles: %v", err)
	}
	meta.Balance = bal
	if minted {
		meta.CyclesMinted = meta.CyclesMinted.SaturatingAdd(amount)
	}
	ingress, answered := answerOf(ctx, nil)
	if err := n.commit(store.Change{ID: id.Bytes(), Meta: meta, Ingress: ingress, Left: delivers}); err != nil {
		return err
	}
	answered()
	c.meta = meta
	return nil
}

// statusFor returns a canister's status to a controller or to itself.
func (n *Node) statusFor(ctx context.Context, id, caller principal.Principal) (*Status, []principal.Principal, error) {
	st, err := n.Status(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if caller != id && !slices.Contains(st.Controllers, caller.String()) {
		return nil, nil, rejectf(CanisterError, "Only controllers of canister %s can call canister_status (caller %s)", id, caller)
	}
	var ctrls []principal.Principal
	for _, s := range st.Controllers {
		if p, err := principal.FromText(s); err == nil {
			ctrls = append(ctrls, p)
		}
	}
	return st, ctrls, nil
}

// candid is s as the management canister's canister_status_result.
func (s *Status) candid(ctrls []principal.Principal) candid.Value {
	h := candid.Hash
	nat := func(v uint64) candid.Value { return candid.NatOf(v) }
	pvec := func(ps []principal.Principal) candid.Vec {
		vec := candid.Vec{}
		for _, p := range ps {
			vec = append(vec, candid.Principal{Principal: p})
		}
		return vec
	}
	statusID := map[string]uint32{"running": h("running"), "stopping": h("stopping"), "stopped": h("stopped")}[s.Status]
	var modHash candid.Value = candid.Opt{}
	if b, err := hex.DecodeString(s.ModuleHash); err == nil && len(b) > 0 {
		modHash = candid.Opt{Value: candid.Blob(b)}
	}
	logVis := candid.Variant{ID: h("controllers"), Value: candid.Null{}}
	switch s.LogVisibility {
	case "public":
		logVis = candid.Variant{ID: h("public"), Value: candid.Null{}}
	case "allowed_viewers":
		var viewers []principal.Principal
		for _, v := range s.LogViewers {
			if p, err := principal.FromText(v); err == nil {
				viewers = append(viewers, p)
			}
		}
		logVis = candid.Variant{ID: h("allowed_viewers"), Value: pvec(viewers)}
	}
	env := candid.Vec{}
	for _, v := range s.EnvVars {
		env = append(env, sortRecord(candid.Record{{ID: h("name"), Value: candid.Text(v.Name)}, {ID: h("value"), Value: candid.Text(v.Value)}}))
	}
	settings := sortRecord(candid.Record{
		{ID: h("controllers"), Value: pvec(ctrls)},
		{ID: h("compute_allocation"), Value: nat(s.ComputeAllocation)},
		{ID: h("memory_allocation"), Value: nat(s.MemoryAllocation)},
		{ID: h("freezing_threshold"), Value: nat(s.FreezingThreshold)},
		{ID: h("reserved_cycles_limit"), Value: nat(0)},
		{ID: h("log_visibility"), Value: logVis},
		{ID: h("wasm_memory_limit"), Value: nat(s.WasmMemoryLimit)},
		{ID: h("wasm_memory_threshold"), Value: nat(s.WasmMemoryThreshold)},
		{ID: h("environment_variables"), Value: env},
	})
	// cordon has no snapshots or canister history, and keeps custom
	// sections inside the module's bytes.
	metrics := sortRecord(candid.Record{
		{ID: h("wasm_memory_size"), Value: nat(s.HeapBytes)},
		{ID: h("stable_memory_size"), Value: nat(s.StableBytes)},
		{ID: h("global_memory_size"), Value: nat(s.GlobalBytes)},
		{ID: h("wasm_binary_size"), Value: nat(s.ModuleBytes)},
		{ID: h("custom_sections_size"), Value: nat(0)},
		{ID: h("canister_history_size"), Value: nat(0)},
		{ID: h("wasm_chunk_store_size"), Value: nat(s.WasmChunkStoreBytes)},
		{ID: h("snapshots_size"), Value: nat(0)},
	})
	qs := sortRecord(candid.Record{
		{ID: h("num_calls_total"), Value: nat(s.QueryStats.Calls)},
		{ID: h("num_instructions_total"), Value: nat(s.QueryStats.Instructions)},
		{ID: h("request_payload_bytes_total"), Value: nat(s.QueryStats.RequestBytes)},
		{ID: h("response_payload_bytes_total"), Value: nat(s.QueryStats.ResponseBytes)},
	})
	return sortRecord(candid.Record{
		{ID: h("status"), Value: candid.Variant{ID: statusID, Value: candid.Null{}}},
		{ID: h("ready_for_migration"), Value: candid.Bool(false)},
		{ID: h("version"), Value: candid.Nat64(s.Version)},
		{ID: h("settings"), Value: settings},
		{ID: h("module_hash"), Value: modHash},
		{ID: h("memory_size"), Value: nat(s.MemorySize)},
		{ID: h("memory_metrics"), Value: metrics},
		{ID: h("cycles"), Value: candid.Nat{Int: s.Balance.Big()}},
		{ID: h("reserved_cycles"), Value: nat(0)},
		{ID: h("idle_cycles_burned_per_day"), Value: candid.Nat{Int: s.IdleCyclesBurnedPerDay.Big()}},
		{ID: h("query_stats"), Value: qs},
	})
}

// chunkHashValue is a chunk's hash as the management canister's chunk_hash.
func chunkHashValue(h []byte) candid.Value {
	return candid.Record{{ID: candid.Hash("hash"), Value: candid.Blob(h)}}
}

func sortRecord(r candid.Record) candid.Record {
	slices.SortFunc(r, func(a, b candid.FieldValue) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return r
}

// upgradeOptions are install_code's options of mode upgrade.
type upgradeOptions struct {
	keepHeap       *bool // wasm_memory_persistence; nil: omitted
	skipPreUpgrade bool
}

func installMode(v candid.Value) (InstallMode, upgradeOptions) {
	var up upgradeOptions
	vr, ok := v.(candid.Variant)
	if !ok {
		return "", up
	}
	switch vr.ID {
	case candid.Hash("install"):
		return ModeInstall, up
	case candid.Hash("reinstall"):
		return ModeReinstall, up
	case candid.Hash("upgrade"):
		o, _ := vr.Value.(candid.Opt)
		r, ok := o.Value.(candid.Record)
		if !ok {
			return ModeUpgrade, up
		}
		if p, ok := r.GetNamed("wasm_memory_persistence"); ok {
			if po, ok := p.(candid.Opt); ok {
				if pv, ok := po.Value.(candid.Variant); ok {
					keep := pv.ID == candid.Hash("keep")
					up.keepHeap = &keep
				}
			}
		}
		if p, ok := r.GetNamed("skip_pre_upgrade"); ok {
			if po, ok := p.(candid.Opt); ok {
				b, _ := po.Value.(candid.Bool)
				up.skipPreUpgrade = bool(b)
			}
		}
		return ModeUpgrade, up
	}
	return "", up
}

func principalField(r candid.Record, name string) (principal.Principal, bool) {
	v, ok := r.GetNamed(name)
	if !ok {
		return principal.Principal{}, false
	}
	p, ok := v.(candid.Principal)
	return p.Principal, ok
}

func optPrincipal(r candid.Record, name string) (principal.Principal, bool) {
	v, ok := r.GetNamed(name)
	if !ok {
		return principal.Principal{}, false
	}
	o, ok := v.(candid.Opt)
	if !ok || o.Value == nil {
		return principal.Principal{}, false
	}
	p, ok := o.Value.(candid.Principal)
	return p.Principal, ok
}

func blobField(r candid.Record, name string) ([]byte, bool) {
	v, ok := r.GetNamed(name)
	if !ok {
		return nil, false
	}
	switch b := v.(type) {
	case candid.Blob:
		return b, true
	case candid.Vec:
		out := make([]byte, 0, len(b))
		for _, e := range b {
			if x, ok := e.(candid.Nat8); ok {
				out = append(out, byte(x))
			}
		}
		return out, true
	}
	return nil, false
}

func natField(r candid.Record, name string) (*big.Int, bool) {
	v, ok := r.GetNamed(name)
	if !ok {
		return nil, false
	}
	nv, ok := v.(candid.Nat)
	if !ok {
		return nil, false
	}
	if nv.Int == nil {
		return new(big.Int), true
	}
	return nv.Int, true
}

func optNat(r candid.Record, name string) (*big.Int, bool) {
	v, ok := r.GetNamed(name)
	if !ok {
		return nil, false
	}
	o, ok := v.(candid.Opt)
	if !ok || o.Value == nil {
		return nil, false
	}
	nv, ok := o.Value.(candid.Nat)
	if !ok {
		return nil, false
	}
	if nv.Int == nil {
		return new(big.Int), true
	}
	return nv.Int, true
}

// checkAllocation refuses a memory allocation s below the memory u a
// canister (named name, with metadata meta) holds, and an increase of it
// that the balance cannot sustain (IC interface specification,
// update_settings; the IC's messages).
func (n *Node) checkAllocation(name string, meta store.Meta, u memUsage, s store.Settings) error {
	a := s.MemoryAllocation
	if a == 0 {
		return nil
	}
	if used := u.total(); used > a {
		return rejectf(CanisterReject, "Canister %s was given %d memory allocation but at least %d of memory is needed.", name, a, used)
	}
	if a > meta.Settings.MemoryAllocation {
		if limit := n.freezingLimit(s, u); meta.Balance.Cmp(limit) < 0 {
			return rejectf(CanisterReject, "Cannot increase memory allocation to %d bytes for canister %s due to insufficient cycles. At least %s additional cycles are required.",
				a, name, limit.SaturatingSub(meta.Balance))
		}
	}
	return nil
}
