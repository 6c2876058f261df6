package host

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// The management canister aaaaa-aa, as canisters see it. Its interface is
// the subset of the IC's that cordon implements; arguments are decoded with
// Candid subtyping, so callers may send more (or fewer optional) fields.
const managementDid = `
type canister_settings = record {
  controllers : opt vec principal;
  compute_allocation : opt nat;
  memory_allocation : opt nat;
  freezing_threshold : opt nat;
  reserved_cycles_limit : opt nat;
  wasm_memory_limit : opt nat;
  wasm_memory_threshold : opt nat;
  log_visibility : opt log_visibility;
};
type definite_canister_settings = record {
  controllers : vec principal;
  compute_allocation : nat;
  memory_allocation : nat;
  freezing_threshold : nat;
  reserved_cycles_limit : nat;
  wasm_memory_limit : nat;
  wasm_memory_threshold : nat;
  log_visibility : log_visibility;
};
type log_visibility = variant { controllers; public; allowed_viewers : vec principal };
type canister_log_record = record { idx : nat64; timestamp_nanos : nat64; content : blob };
type canister_install_mode = variant {
  install;
  reinstall;
  upgrade : opt record { skip_pre_upgrade : opt bool; wasm_memory_persistence : opt variant { keep; replace } };
};
type id_arg = record { canister_id : principal };
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
  canister_status : (id_arg) -> (record {
    status : variant { running; stopping; stopped };
    settings : definite_canister_settings;
    module_hash : opt blob;
    memory_size : nat;
    cycles : nat;
    reserved_cycles : nat;
    idle_cycles_burned_per_day : nat;
  });
  provisional_create_canister_with_cycles : (record { amount : opt nat; settings : opt canister_settings; specified_id : opt principal }) -> (record { canister_id : principal });
  provisional_top_up_canister : (record { canister_id : principal; amount : nat }) -> ();
  fetch_canister_logs : (id_arg) -> (record { canister_log_records : vec canister_log_record }) query;
}`

var (
	mgmtOnce sync.Once
	mgmtSvc  *candid.Service
	mgmtErr  error
)

func managementService() (*candid.Service, error) {
	mgmtOnce.Do(func() { mgmtSvc, mgmtErr = candid.ParseService(managementDid) })
	return mgmtSvc, mgmtErr
}

// mgmtTimeout bounds one management call (a stop waits for call contexts).
const mgmtTimeout = 5 * time.Minute

// management executes a request to aaaaa-aa and responds to it.
func (n *Node) management(m *message) {
	ctx, cancel := context.WithTimeout(context.Background(), mgmtTimeout)
	defer cancel()
	reply, used, err := n.managementCall(ctx, m)
	refund := m.cycles.SaturatingSub(used)
	if err != nil {
		var rej *Reject
		if !errors.As(err, &rej) {
			rej = rejectf(CanisterError, "%v", err)
		}
		n.respondTo(m.origin, nil, rej, m.cycles)
		return
	}
	n.respondTo(m.origin, reply, nil, refund)
}

func (n *Node) managementCall(ctx context.Context, m *message) (reply []byte, used cycles.Amount, err error) {
	svc, err := managementService()
	if err != nil {
		return nil, used, fmt.Errorf("management interface: %w", err)
	}
	meth, ok := svc.Method(m.method)
	if !ok {
		return nil, used, rejectf(DestinationInvalid, "Management canister has no method '%s'", m.method)
	}
	if err := n.checkProvisional(m); err != nil { // policy.go
		return nil, used, err
	}
	args, err := candid.DecodeAs(m.arg, meth.Args())
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
	target, _ := principalField(arg, "canister_id")
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
		}
		opts.Cycles = &amount
		if s, ok := settingsField(arg); ok && s.controllers != nil {
			opts.Controllers = s.controllers
		}
		id, err := n.Create(ctx, opts)
		if err != nil {
			return nil, cycles.Amount{}, rejectf(CanisterError, "create_canister: %v", err)
		}
		if m.method == "create_canister" {
			// The creation fee is burned; it is booked on the new canister
			// so that the node's cycles add up.
			if err := n.bookBurned(ctx, id, cycles.New(n.cfg.Fees.CanisterCreation)); err != nil {
				return nil, used, err
			}
		}
		if s, ok := settingsField(arg); ok {
			if err := n.applySettings(ctx, id, s); err != nil {
				return nil, used, err
			}
		}
		reply, err = encode(candid.Record{{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: id}}})
		return reply, used, err

	case "install_code":
		modeV, _ := arg.GetNamed("mode")
		mode, keep := installMode(modeV)
		wasm, _ := blobField(arg, "wasm_module")
		initArg, _ := blobField(arg, "arg")
		_, err := n.Install(ctx, target, InstallOptions{Mode: mode, Wasm: wasm, Arg: initArg, Caller: m.caller, KeepHeap: keep})
		if err != nil {
			return nil, used, err
		}
		reply, err = encode()
		return reply, used, err

	case "uninstall_code":
		if err := n.Uninstall(ctx, target, m.caller); err != nil {
			return nil, used, err
		}
	case "start_canister":
		if err := n.SetStatus(ctx, target, m.caller, "running"); err != nil {
			return nil, used, err
		}
	case "stop_canister":
		if target == m.caller {
			return nil, used, rejectf(CanisterError, "Canister %s cannot stop itself", target)
		}
		if err := n.SetStatus(ctx, target, m.caller, "stopped"); err != nil {
			return nil, used, err
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
		c.mu.RLock()
		err = n.checkController(c, m.caller, "update_settings")
		c.mu.RUnlock()
		if err != nil {
			return nil, used, err
		}
		s, _ := settingsField(arg)
		if err := n.applySettings(ctx, target, s); err != nil {
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
		if err := n.deposit(ctx, target, amount, m.method == "provisional_top_up_canister"); err != nil {
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
	err                 error // a setting refused while reading
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
			if vec, ok := o.Value.(candid.Vec); ok {
				s.controllers = []principal.Principal{}
				for _, e := range vec {
					if p, ok := e.(candid.Principal); ok {
						s.controllers = append(s.controllers, p.Principal)
					}
				}
			}
		}
	}
	s.freezingThreshold, _ = optNat(sr, "freezing_threshold")
	s.memoryAllocation, _ = optNat(sr, "memory_allocation")
	s.computeAllocation, _ = optNat(sr, "compute_allocation")
	s.wasmMemoryLimit, _ = optNat(sr, "wasm_memory_limit")
	s.err = logSettings(sr, &s) // canlog.go
	return s, true
}

func (n *Node) applySettings(ctx context.Context, id principal.Principal, s settings) error {
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	meta := c.meta
	if s.controllers != nil {
		if len(s.controllers) > 10 {
			return rejectf(CanisterError, "A canister can have at most 10 controllers, got %d", len(s.controllers))
		}
		meta.Settings.Controllers = meta.Settings.Controllers[:0:0]
		for _, p := range s.controllers {
			meta.Settings.Controllers = append(meta.Settings.Controllers, p.String())
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
	if err := setU64(&meta.Settings.FreezingThreshold, s.freezingThreshold, "freezing_threshold", 1<<62); err != nil {
		return err
	}
	if err := setU64(&meta.Settings.MemoryAllocation, s.memoryAllocation, "memory_allocation", 1<<48); err != nil {
		return err
	}
	if err := setU64(&meta.Settings.ComputeAllocation, s.computeAllocation, "compute_allocation", 100); err != nil {
		return err
	}
	if err := setU64(&meta.Settings.WasmMemoryLimit, s.wasmMemoryLimit, "wasm_memory_limit", 1<<48-1); err != nil {
		return err
	}
	if err := setU64(&meta.Settings.WasmMemoryThreshold, s.wasmMemoryThreshold, "wasm_memory_threshold", 1<<48-1); err != nil {
		return err
	}
	applyLogSettings(&meta.Settings, s) // canlog.go
	if err := n.checkAllocation(c, meta.Settings); err != nil {
		return err
	}
	// The memory held so far is paid at the old allocation, then the
	// new settings apply.
	n.chargeStorage(c, n.now())
	settings := meta.Settings
	meta = c.meta
	meta.Settings = settings
	updateLowMemory(&meta, c.heap.Size()) // the limit or threshold may have moved (lowmem.go)
	if err := n.store.Commit(store.Change{ID: id.Bytes(), Meta: meta}); err != nil {
		return err
	}
	c.meta = meta
	n.scheduleLowMemory(c)
	return nil
}

// deposit adds cycles to a canister; minted marks cycles created from
// nothing (provisional top-up), which the conservation count must know.
func (n *Node) deposit(ctx context.Context, id principal.Principal, amount cycles.Amount, minted bool) error {
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	meta := c.meta
	bal, err := meta.Balance.Add(amount)
	if err != nil {
		return rejectf(CanisterError, "deposit_cycles: %v", err)
	}
	meta.Balance = bal
	if minted {
		meta.CyclesMinted = meta.CyclesMinted.SaturatingAdd(amount)
	}
	if err := n.store.Commit(store.Change{ID: id.Bytes(), Meta: meta}); err != nil {
		return err
	}
	c.meta = meta
	return nil
}

// bookBurned records cycles burned on a canister's behalf.
func (n *Node) bookBurned(ctx context.Context, id principal.Principal, amount cycles.Amount) error {
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return err
	}
	defer c.mu.Unlock()
	meta := c.meta
	meta.CyclesBurned = meta.CyclesBurned.SaturatingAdd(amount)
	if err := n.store.Commit(store.Change{ID: id.Bytes(), Meta: meta}); err != nil {
		return err
	}
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

func (s *Status) candid(ctrls []principal.Principal) candid.Value {
	h := candid.Hash
	nat := func(v uint64) candid.Value { return candid.NatOf(v) }
	vec := candid.Vec{}
	for _, p := range ctrls {
		vec = append(vec, candid.Principal{Principal: p})
	}
	statusID := map[string]uint32{"running": h("running"), "stopping": h("stopping"), "stopped": h("stopped")}[s.Status]
	var modHash candid.Value = candid.Opt{}
	if b, err := hex.DecodeString(s.ModuleHash); err == nil && len(b) > 0 {
		modHash = candid.Opt{Value: candid.Blob(b)}
	}
	settings := sortRecord(candid.Record{
		{ID: h("controllers"), Value: vec},
		{ID: h("compute_allocation"), Value: nat(s.ComputeAllocation)},
		{ID: h("memory_allocation"), Value: nat(s.MemoryAllocation)},
		{ID: h("freezing_threshold"), Value: nat(s.FreezingThreshold)},
		{ID: h("reserved_cycles_limit"), Value: nat(0)},
		{ID: h("wasm_memory_limit"), Value: nat(s.WasmMemoryLimit)},
		{ID: h("wasm_memory_threshold"), Value: nat(s.WasmMemoryThreshold)},
		{ID: h("log_visibility"), Value: logVisibilityValue(s.LogVisibility, s.LogViewers)},
	})
	return sortRecord(candid.Record{
		{ID: h("status"), Value: candid.Variant{ID: statusID, Value: candid.Null{}}},
		{ID: h("settings"), Value: settings},
		{ID: h("module_hash"), Value: modHash},
		{ID: h("memory_size"), Value: nat(s.MemorySize)},
		{ID: h("cycles"), Value: candid.Nat{Int: s.Balance.Big()}},
		{ID: h("reserved_cycles"), Value: nat(0)},
		{ID: h("idle_cycles_burned_per_day"), Value: candid.Nat{Int: s.IdleCyclesBurnedPerDay.Big()}},
	})
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

func installMode(v candid.Value) (InstallMode, *bool) {
	vr, ok := v.(candid.Variant)
	if !ok {
		return "", nil
	}
	switch vr.ID {
	case candid.Hash("install"):
		return ModeInstall, nil
	case candid.Hash("reinstall"):
		return ModeReinstall, nil
	case candid.Hash("upgrade"):
		o, _ := vr.Value.(candid.Opt)
		if r, ok := o.Value.(candid.Record); ok {
			if p, ok := r.GetNamed("wasm_memory_persistence"); ok {
				if po, ok := p.(candid.Opt); ok {
					if pv, ok := po.Value.(candid.Variant); ok {
						keep := pv.ID == candid.Hash("keep")
						return ModeUpgrade, &keep
					}
				}
			}
		}
		return ModeUpgrade, nil
	}
	return "", nil
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

// checkAllocation refuses a memory allocation below the memory c holds, and
// an increase of it that the balance cannot sustain (IC interface
// specification, update_settings; the IC's messages).
func (n *Node) checkAllocation(c *canister, s store.Settings) error {
	a := s.MemoryAllocation
	if a == 0 {
		return nil
	}
	if used := usageOf(c).total(); used > a {
		return rejectf(CanisterReject, "Canister %s was given %d memory allocation but at least %d of memory is needed.", c.id, a, used)
	}
	if a > c.meta.Settings.MemoryAllocation {
		if limit := n.freezingLimit(s, usageOf(c)); c.meta.Balance.Cmp(limit) < 0 {
			return rejectf(CanisterReject, "Cannot increase memory allocation to %d bytes for canister %s due to insufficient cycles. At least %s additional cycles are required.",
				a, c.id, limit.SaturatingSub(c.meta.Balance))
		}
	}
	return nil
}
