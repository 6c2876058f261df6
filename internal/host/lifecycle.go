package host

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// CreateOptions describe a new canister.
type CreateOptions struct {
	ID          *principal.Principal // nil: the next free canister id
	Controllers []principal.Principal
	Cycles      *cycles.Amount // nil: Config.InitialCycles
	Minted      bool           // Cycles are new (provisional), not moved from a canister
	EnvVars     []store.EnvVar // environment variables (checked by CheckEnvVars)

	// create_canister (mgmt.go): the settings it was given, checked
	// before anything is created, and the creation fee, booked as burned
	// on the new canister. Both are committed with the creation, so a
	// refused setting creates nothing.
	settings *settings
	fee      cycles.Amount
	// delivers: the Cycles came with a call, whose record in flight the
	// creation's commit removes (inflight.go).
	delivers []store.CallCycles
}

// Create makes a new, empty canister.
func (n *Node) Create(ctx context.Context, opts CreateOptions) (principal.Principal, error) {
	var id principal.Principal
	if err := n.checkMint(opts); err != nil {
		return id, err
	}
	env, err := checkEnvVars(opts.EnvVars)
	if err != nil {
		return id, err
	}
	if len(env) == 0 {
		env = nil
	}
	bal := n.cfg.InitialCycles
	if opts.Cycles != nil {
		bal = *opts.Cycles
	}
	ctrls := make([]string, 0, len(opts.Controllers))
	for _, c := range opts.Controllers {
		ctrls = append(ctrls, c.String())
	}
	meta := store.Meta{
		Settings: store.Settings{Controllers: ctrls, FreezingThreshold: 2_592_000, EnvVars: env},
		Balance:  bal,
		Status:   "running",
		// Only cycles not taken from another canister are minted.
		CyclesMinted:     map[bool]cycles.Amount{true: bal, false: {}}[opts.Cycles == nil || opts.Minted],
		CyclesBurned:     opts.fee,
		StoragePaidUntil: n.now(),
	}
	if opts.settings != nil {
		// Before an id is taken: a refused setting leaves no trace.
		name := "(to be created)"
		if opts.ID != nil {
			name = opts.ID.String()
		}
		set, err := n.settingsWith(name, meta, memUsage{}, *opts.settings)
		if err != nil {
			return id, err
		}
		meta.Settings = set
		updateLowMemory(&meta, 0)
	}
	if opts.ID != nil {
		id = *opts.ID
		// Only the form the IC allocates canister ids in: any other
		// principal may be a user's (self-authenticating), and a canister
		// under it would act, and be controlled, as that user.
		if _, ok := id.CanisterIndex(); !ok {
			return id, rejectf(CanisterReject, "%s cannot be a canister id: a canister id is 8 bytes of index followed by 0x01 0x01, as the IC allocates them", id)
		}
	}
	var answered func()
	for {
		if opts.ID == nil {
			var err error
			if id, err = n.freeCanisterID(); err != nil {
				return id, err
			}
		}
		meta.ID = id.String()
		meta.Created = n.clock().UTC()
		var ingress []store.IngressRecord
		ingress, answered = answerOf(ctx, id)
		// Create: the commit fails if the id was taken since it was
		// found free (another creation of a specified id, or of this
		// one), so of two creations of one id only one succeeds.
		err := n.commit(store.Change{ID: id.Bytes(), Create: true, Meta: meta, Heap: &store.MemoryChange{Replace: true},
			Stable: &store.MemoryChange{Replace: true}, SetGlobals: true, Ingress: ingress, Left: opts.delivers})
		if errors.Is(err, store.ErrExists) || errors.Is(err, store.ErrDeleted) {
			if opts.ID == nil {
				continue // a specified id took the one allocated: the next
			}
			// The caller's to know (a reject): it chose the id.
			if errors.Is(err, store.ErrDeleted) {
				// Responses to its calls may still come (store/deleted.go).
				return id, rejectf(CanisterError, "canister %s was deleted: its id is not given out again", id)
			}
			return id, rejectf(CanisterError, "canister %s already exists", id)
		}
		if err != nil {
			return id, fmt.Errorf("create canister %s: %w", id, err)
		}
		break
	}
	answered()
	n.log.Info("canister created", "canister", id.String())
	return id, nil
}

// freeCanisterID allocates the next canister index whose id no canister
// holds (one may have been created under a specified id).
func (n *Node) freeCanisterID() (principal.Principal, error) {
	for {
		idx, err := n.store.NextCanisterIndex()
		if rej := n.storageReject(err); rej != nil {
			return principal.Principal{}, rej
		}
		if err != nil {
			return principal.Principal{}, fmt.Errorf("allocate canister id: %w", err)
		}
		id := principal.CanisterID(idx)
		sc, err := n.store.Load(id.Bytes())
		if errors.Is(err, store.ErrNotFound) {
			return id, nil
		}
		if err == nil {
			sc.Release()
		}
	}
}

// InstallMode is how install_code treats existing state.
type InstallMode string

// The install modes.
const (
	ModeInstall   InstallMode = "install"
	ModeReinstall InstallMode = "reinstall"
	ModeUpgrade   InstallMode = "upgrade"
)

// InstallOptions describe an install_code call.
type InstallOptions struct {
	Mode   InstallMode
	Wasm   []byte // .wasm or gzip-compressed .wasm.gz
	Arg    []byte
	Caller principal.Principal
	// Isolation overrides the node's isolation mode for this canister
	// ("sandbox" or "inprocess"); "" keeps the canister's setting.
	Isolation string
	// KeepHeap is the upgrade option wasm_memory_persistence: keep (true)
	// or replace (false) the Wasm heap. nil, the option omitted, replaces
	// it, and is refused when the installed module uses Motoko's enhanced
	// orthogonal persistence (EOP), as on the IC (upgradeKeepsHeap).
	KeepHeap *bool
	// KeepEOPByDefault, with KeepHeap nil, asks for keep when the installed
	// module uses EOP, replace otherwise: what dfx sends when not told, and
	// what cordon's own CLI and HTTP API do. The management canister's
	// install_code never sets it.
	KeepEOPByDefault bool
	// SkipPreUpgrade is the upgrade option skip_pre_upgrade: the old
	// module's canister_pre_upgrade does not run (the way out for a
	// canister whose pre_upgrade traps).
	SkipPreUpgrade bool
}

// InstallResult reports a successful install.
type InstallResult struct {
	ModuleHash   string
	Instructions uint64
}

func (n *Node) checkController(c *canister, caller principal.Principal, op string) error {
	if slices.Contains(c.meta.Settings.Controllers, caller.String()) {
		return nil
	}
	return rejectf(CanisterError, "Only controllers of canister %s can call %s (caller %s)", c.id, op, caller)
}

// Install installs, reinstalls or upgrades code. Either every effect happens
// and is durable, or none does.
func (n *Node) Install(ctx context.Context, id principal.Principal, opts InstallOptions) (*InstallResult, error) {
	return n.install(ctx, id, opts, moduleSource{raw: opts.Wasm})
}

// install is Install of the module src gives. Nothing of the module is
// materialized before the caller is known to control the target and the
// target to afford compiling it (modload.go); then the target pays for
// preparing it whatever the outcome, the work being done.
func (n *Node) install(ctx context.Context, id principal.Principal, opts InstallOptions, src moduleSource) (*InstallResult, error) {
	if rej := n.refuseWrites(); rej != nil {
		return nil, rej // storefail.go
	}
	// Before anything is decoded, compiled or written: the module at
	// least (as sent; a chunked one's size is not known yet) must leave
	// the disk margin free. Its commit is checked again with its state.
	if rej := n.refuseNoRoom(uint64(len(src.raw))); rej != nil {
		return nil, rej // diskmargin.go
	}
	if err := n.CheckIsolation(opts.Isolation); err != nil {
		return nil, err
	}
	var cl moduleClaim
	if !src.chunked {
		// What the argument claims is checked before anything (no work).
		var err error
		if cl, err = n.claimRaw(src.raw); err != nil {
			return nil, err
		}
	}
	if rej := n.refuseUncontrolled("install_code", id, opts.Caller); rej != nil {
		return nil, rej // before waiting for the lock (mgmtq.go)
	}
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return nil, err
	}
	defer n.unlock(c)
	if err := n.checkController(c, opts.Caller, "install_code"); err != nil {
		return nil, err
	}
	switch opts.Mode {
	case ModeInstall:
		if c.module != nil {
			return nil, rejectf(CanisterError, "Canister %s already has a module installed; use mode reinstall or upgrade", id)
		}
	case ModeReinstall:
	case ModeUpgrade:
		if c.module == nil {
			return nil, rejectf(CanisterError, "Canister %s has no module to upgrade; use mode install", id)
		}
	default:
		return nil, fmt.Errorf("unknown install mode %q (want install, reinstall or upgrade)", opts.Mode)
	}
	isolation := c.meta.Settings.Isolation
	if opts.Isolation != "" {
		isolation = opts.Isolation
		if isolation == n.cfg.Isolation {
			isolation = ""
		}
	}
	x, err := n.executorFor(isolation)
	if err != nil {
		return nil, err
	}
	if src.chunked {
		if cl, err = n.claimChunks(src); err != nil {
			return nil, err
		}
	}
	n.chargeStorage(c, n.now()) // the old memory is paid up to the install
	limit := n.cfg.InstallInstructions
	// The worst case: the whole instruction limit, and preparing the
	// module at the size it claims (it cannot turn out larger).
	compileFee := n.compileFee(cl.size)
	if err := n.outOfCycles(c, "installing", n.executionFee(limit).SaturatingAdd(compileFee)); err != nil {
		return nil, err
	}
	// The new module is held against the node's capacity (capacity.go)
	// before anything is compiled, at the size it claims; whatever the
	// outcome, the ledger ends with the module the canister then holds.
	if err := n.reserveModule(id, cl.size); err != nil {
		return nil, err
	}
	defer func() { n.mem.setModule(id, c.moduleBytes) }()
	wasm, m, end, err := n.prepare(ctx, x, src, cl)
	defer end()
	if wasm != nil {
		compileFee = n.compileFee(uint64(len(wasm))) // what it is: at most what it claimed
	}
	if err != nil {
		var se *exec.SandboxError
		switch {
		case errors.As(err, &se):
			return nil, n.failPrepare(ctx, c, compileFee, rejectf(CanisterError, "Error from Canister %s: compiling the module: %v", id, err))
		case errors.Is(err, engine.ErrInvalidModule):
			return nil, n.failPrepare(ctx, c, compileFee, err)
		}
		return nil, err
	}

	// The pages the executions hand the host are held until the install
	// is done: committed, or dropped (execmem.go).
	pages := n.pages.messageHold(ctx)
	defer pages.close()
	var (
		used         uint64
		logs         []sysapi.LogLine
		heapBase     *state.PageMap // heap the new module starts from (nil: its initial memory)
		stableBase   *state.PageMap
		stableDeltas []state.Delta
		newHeap      *state.PageMap // the new heap, when it does not start from heapBase
		adopted      bool
	)
	// The new memories are backed page maps (state.NewBackedPageMap): if
	// the install does not replace c's with them, they are released, and
	// forks of c's hand its images back to c.
	defer func() {
		if !adopted {
			heapBase.Release()
			stableBase.Release()
			newHeap.Release()
		}
	}()
	var heapDeltas []state.Delta // what the upgrade changed in a kept heap
	if opts.Mode != ModeUpgrade {
		stableBase = state.NewBackedPageMap(0)
	}
	var pre *sysapi.Output // pre_upgrade's, if it ran
	if opts.Mode == ModeUpgrade {
		// Decided before anything runs: the IC decides after pre_upgrade,
		// which a refused upgrade then only costs the caller.
		keep, rej := upgradeKeepsHeap(opts, c.module.Info, m.Info)
		if rej != nil {
			return nil, n.failPrepare(ctx, c, compileFee, rej)
		}
		if c.module.Info.HasPreUpgrade && !opts.SkipPreUpgrade {
			in := n.input(c, c.module, sysapi.CtxPreUpgrade, "canister_pre_upgrade", limit)
			in.Caller = opts.Caller.Bytes()
			req := &exec.Request{Module: c.module, Heap: c.heap, Globals: c.globals, Input: in}
			ep := pages.execution(req)
			out, err := n.execOf(c).Execute(ctx, id.String(), req)
			ep.end()
			if err != nil {
				return nil, n.failExecute(ctx, c, compileFee, limit, "run pre_upgrade of", err)
			}
			used, logs = out.Instructions, logsOf(out)
			if out.Trapped {
				return nil, n.failInstall(ctx, c, used, compileFee, logs, "pre_upgrade", out.TrapMessage)
			}
			pre = out
		}
		// The new module's memories will replace the old ones: they take
		// over their images (c.mu is held), so post_upgrade maps them and
		// the commit updates them by the pages changed, instead of copying
		// the whole memory. If the upgrade fails, c's memories rebuild
		// their images when next used.
		stableBase = c.stable.Fork()
		if keep {
			heapBase = c.heap.Fork()
		}
		if pre != nil {
			if err := stableBase.Apply(pre.Stable); err != nil {
				return nil, fmt.Errorf("apply pre_upgrade stable memory of %s: %w", id, err)
			}
			stableDeltas = append(stableDeltas, pre.Stable)
			if keep {
				if err := heapBase.Apply(pre.Heap); err != nil {
					return nil, fmt.Errorf("apply pre_upgrade heap of %s: %w", id, err)
				}
				heapDeltas = append(heapDeltas, pre.Heap)
			}
		}
	}

	entry, ctxKind := "", sysapi.CtxInit
	switch {
	case opts.Mode == ModeUpgrade && m.Info.HasPostUpgrade:
		entry = "canister_post_upgrade"
	case opts.Mode != ModeUpgrade && m.Info.HasInit:
		entry = "canister_init"
	}
	in := n.input(c, m, ctxKind, entry, limit-used)
	in.Caller, in.Arg, in.Stable = opts.Caller.Bytes(), opts.Arg, stableBase
	// The IC counts the code change before the new module runs: init and
	// post_upgrade see the version the install commits (pre_upgrade the
	// old one).
	in.Version = c.meta.Version + 1
	if pre != nil {
		// What pre_upgrade burned is gone before post_upgrade runs
		// (validation kept it within the balance).
		if in.Balance, err = in.Balance.Sub(pre.CyclesBurned); err != nil {
			return nil, fmt.Errorf("install %s: cycles accounting: %w", id, err)
		}
	}
	in.GlobalTimer = 0 // timers do not survive install, reinstall or upgrade
	// The memory limits of the new module's state.
	newUsage := memUsage{stable: stableBase.Size(), module: uint64(len(wasm)), globals: uint64(m.Info.NumGlobals) * globalBytes, chunks: chunkStoreBytes(c.meta)}
	if heapBase != nil {
		newUsage.heap = heapBase.Size()
	}
	in.Limits.HeapBytes, in.Limits.StableBytes = n.memoryLimits(id, c.meta.Settings, m, ctxKind, newUsage)
	req := &exec.Request{Module: m, Heap: heapBase, RunStart: true, Input: in}
	ep := pages.execution(req)
	out, err := x.Execute(ctx, id.String(), req)
	ep.end()
	if err != nil {
		return nil, n.failExecute(ctx, c, compileFee, limit, "install", err)
	}
	checkMemory(c.meta.Settings, ctxKind, uint64(len(wasm)), chunkStoreBytes(c.meta), out)
	n.checkInstallGrowthPaid(c, in, out, uint64(len(wasm)), n.executionFee(used+out.Instructions).SaturatingAdd(compileFee))
	if !out.Trapped {
		if ok, msg := n.reserveMemory(id, out.Heap.Size, out.Stable.Size); !ok {
			out.Trapped, out.TrapMessage = true, msg
		} else {
			// Reserved for the new state: until it is committed, a failure
			// gives the ledger back the canister's committed size.
			defer func() {
				if !adopted {
					n.mem.set(id, satAdd(c.heap.Size(), c.stable.Size()))
				}
			}()
		}
	} else if strings.Contains(out.TrapMessage, "exceeds memory limits") && in.Limits.HeapBytes < n.heapLimit(m) {
		// The module's initial memory did not fit: say when the node's
		// capacity, not the canister's own limits, is why.
		if used, capacity := n.mem.inUse(); satSub(n.mem.available(id), newUsage.stable) < n.heapLimit(m) {
			first, rest, _ := strings.Cut(out.TrapMessage, "\n") // the note goes after its first line
			out.TrapMessage = fmt.Sprintf("%s (the heap may grow to %d bytes: the node's memory capacity of %d bytes (limits.memory_capacity) has %d bytes in use)",
				first, in.Limits.HeapBytes, capacity, used)
			if rest != "" {
				out.TrapMessage += "\n" + rest
			}
		}
	}
	used += out.Instructions
	logs = append(logs, logsOf(out)...)
	if out.Trapped {
		what := "canister_init"
		if opts.Mode == ModeUpgrade {
			what = "post_upgrade"
		}
		return nil, n.failInstall(ctx, c, used, compileFee, logs, what, out.TrapMessage)
	}

	heap := heapBase // not shared with anyone: the new state
	if heap == nil {
		newHeap = state.NewBackedPageMap(0)
		heap = newHeap
	}
	if err := out.Heap.Validate(n.heapLimit(m)); err != nil {
		return nil, fmt.Errorf("install %s: %w", id, err)
	}
	if err := heap.Apply(out.Heap); err != nil {
		return nil, fmt.Errorf("install %s: %w", id, err)
	}
	heapDeltas = append(heapDeltas, out.Heap)
	stable := stableBase
	if err := stable.Apply(out.Stable); err != nil {
		return nil, fmt.Errorf("install %s: %w", id, err)
	}
	stableDeltas = append(stableDeltas, out.Stable)

	meta := c.meta
	key := store.ModuleKey(wasm)
	replaced := "" // the module this one replaces, if another
	if c.meta.ModuleHash != "" && c.meta.ModuleHash != key {
		replaced = c.meta.ModuleHash
	}
	meta.Settings.Isolation = isolation
	meta.ModuleHash = key
	meta.Version++
	meta.HeapSize, meta.StableSize = heap.Size(), stable.Size()
	updateLowMemory(&meta, heap.Size())
	timer := uint64(0)
	if out.GlobalTimerSet {
		timer = out.GlobalTimer
	}
	deactivateTimer(&meta, timer)
	if opts.Mode != ModeUpgrade {
		meta.CertifiedData = nil
	}
	// pre_upgrade, then post_upgrade, may set the certified data and burn
	// cycles (ic0.certified_data_set, ic0.cycles_burn128): both are the
	// canister's system state, which the upgrade keeps.
	burned := out.CyclesBurned
	if pre != nil {
		if pre.CertifiedDataSet {
			meta.CertifiedData = pre.CertifiedData
		}
		burned = burned.SaturatingAdd(pre.CyclesBurned)
	}
	if out.CertifiedDataSet {
		meta.CertifiedData = out.CertifiedData
	}
	// The executions burned out of its balance; the fee (the executions'
	// and the module's preparation) takes what is left when that cannot
	// pay it: what is burned is what was taken.
	bal, err := meta.Balance.Add(out.CyclesAccepted)
	if err == nil {
		bal, err = bal.Sub(burned)
	}
	if err != nil {
		return nil, fmt.Errorf("install %s: cycles accounting: %w", id, err)
	}
	var taken cycles.Amount
	meta.Balance, taken = takeFee(bal, n.executionFee(used).SaturatingAdd(compileFee))
	meta.CyclesBurned = meta.CyclesBurned.SaturatingAdd(taken).SaturatingAdd(burned)
	meta.Instructions += used
	meta.Messages++

	stableChange := &store.MemoryChange{Delta: combine(stable, stableDeltas...)}
	if opts.Mode != ModeUpgrade {
		stableChange = &store.MemoryChange{Replace: true, Delta: allPages(stable)}
	}
	// A kept heap is stored already: only the pages the upgrade changed
	// are written, as for stable memory. A new heap replaces the old one.
	var heapChange *store.MemoryChange
	if heapBase != nil {
		heapChange = &store.MemoryChange{Delta: combine(heap, heapDeltas...)}
	} else {
		heapChange = &store.MemoryChange{Replace: true, Delta: allPages(heap)}
	}
	// The changes read the new memories' pages (in their images): the
	// executions' copies go before the commit, which then needs room only
	// for the store's own buffers (bounded for a replacement: stage.go).
	applied := deltaBytes(heapDeltas...) + deltaBytes(stableDeltas...)
	heapDeltas, stableDeltas = nil, nil
	out.Heap.Pages, out.Stable.Pages = nil, nil
	returnApplied(applied)
	entries := c.logs.prepare(n.logEntries(logs))
	// A reinstall purges the log, as on the IC; what canister_init printed
	// starts the new one, numbered on.
	purge := opts.Mode == ModeReinstall
	if purge {
		meta.LogNextSeq = c.logs.next() + uint64(len(entries))
	}
	change := store.Change{
		ID: id.Bytes(), Meta: meta, Module: wasm,
		Heap:    heapChange,
		Stable:  stableChange,
		Globals: out.Globals, SetGlobals: true,
		Logs: entries, KeepLogs: n.cfg.LogLines, KeepLogBytes: n.cfg.LogBytes, ClearLogs: purge,
	}
	var answered func()
	change.Ingress, answered = answerOf(ctx, nil)
	if err := n.commit(change); err != nil {
		if errors.Is(err, ErrDiskNearlyFull) {
			// Charged as a failed install: the margin refused the state
			// its executions made, whose size the canister chose
			// (finish, diskmargin.go).
			if cerr := n.chargeOnly(c, used, logs, compileFee, cycles.Amount{}); cerr != nil {
				n.log.Error("charge of an install the disk margin refused failed", "canister", id.String(), "err", cerr)
			}
		}
		return nil, err
	}
	answered()
	if old := n.execOf(c); old != x {
		old.Forget(id.String()) // the canister moved to the other isolation mode
	}
	adopted = true
	releaseReplaced(c, heap, stable)
	c.meta, c.module, c.heap, c.stable, c.globals = meta, m, heap, stable, out.Globals
	c.moduleChanged() // a timer task queued for the old module runs nothing (sched.go)
	n.mem.set(id, satAdd(heap.Size(), stable.Size()))
	c.moduleBytes = uint64(len(wasm))
	if purge {
		c.logs.clear()
	}
	c.logs.publish(entries)
	n.scheduleLowMemory(c)
	n.images.used(c)
	n.releaseModules(replaced)
	n.log.Info("code installed", "canister", id.String(), "mode", string(opts.Mode), "module", meta.ModuleHash[:16], "instructions", used)
	return &InstallResult{ModuleHash: meta.ModuleHash, Instructions: used}, nil
}

// upgradeKeepsHeap decides whether an upgrade from the module old to new
// keeps the Wasm heap, as the IC does (execution environment, upgrade.rs:
// determine_main_memory_handling): the option omitted replaces it, unless
// the old module uses enhanced orthogonal persistence, whose state is the
// heap (refused, lest it be lost); keep needs a new module that uses it
// too. A kept heap must also fit the new module's memory: there must be
// one, indexed as the old one was.
func upgradeKeepsHeap(opts InstallOptions, old, new engine.Info) (bool, *Reject) {
	keep := opts.KeepHeap
	if keep == nil && opts.KeepEOPByDefault {
		keep = &old.EnhancedOrthogonalPersistence
	}
	switch {
	case keep == nil:
		if old.EnhancedOrthogonalPersistence {
			return false, rejectf(CanisterError, "Missing upgrade option: Enhanced orthogonal persistence requires the `wasm_memory_persistence` upgrade option.")
		}
		return false, nil
	case !*keep:
		return false, nil
	case !new.EnhancedOrthogonalPersistence:
		return false, rejectf(CanisterError, "Invalid upgrade option: The `wasm_memory_persistence: opt Keep` upgrade option requires that the new canister module supports enhanced orthogonal persistence.")
	case old.HasMemory && !new.HasMemory:
		return false, rejectf(CanisterError, "Invalid upgrade option: The `wasm_memory_persistence: opt Keep` upgrade option keeps the Wasm memory, and the new canister module declares none.")
	case old.HasMemory && old.Memory64 != new.Memory64:
		return false, rejectf(CanisterError, "Invalid upgrade option: The `wasm_memory_persistence: opt Keep` upgrade option keeps a %s Wasm memory, and the new canister module declares a %s one.",
			memoryWidth(old.Memory64), memoryWidth(new.Memory64))
	}
	return true, nil
}

func memoryWidth(memory64 bool) string {
	if memory64 {
		return "64-bit"
	}
	return "32-bit"
}

// failInstall charges a failed install (its executions and the module's
// preparation, compileFee) and keeps its logs; the state stays. A user's
// install_code commits its reject with the charge.
func (n *Node) failInstall(ctx context.Context, c *canister, used uint64, compileFee cycles.Amount, logs []sysapi.LogLine, what, msg string) error {
	rej := rejectf(CanisterError, "Error from Canister %s: %s trapped: %s", c.id, what, msg)
	ingress, answered := rejectionOf(ctx, rej)
	if err := n.chargeOnly(c, used, logs, compileFee, cycles.Amount{}, ingress...); err != nil {
		return err
	}
	answered()
	return rej
}

// chargeOnly commits the cost and logs of an execution whose state changes
// are discarded (a trap, a replicated query), plus an extra fee and a credit
// (a refund that arrived with a response), and ingress statuses in the
// same transaction (a trapped call's, so a replay is not charged again).
func (n *Node) chargeOnly(c *canister, used uint64, logs []sysapi.LogLine, extraFee, credit cycles.Amount, ingress ...store.IngressRecord) error {
	return n.charge(c, used, logs, extraFee, credit, nil, ingress)
}

// chargeRefund is chargeOnly for a response whose callback commits nothing
// of its own (it trapped, failed, or the caller has no code): the refund is
// credited, and its record in flight removed, in the same commit.
func (n *Node) chargeRefund(c *canister, used uint64, logs []sysapi.LogLine, refund cycles.Amount, call uint64) error {
	return n.charge(c, used, logs, cycles.Amount{}, refund, refunded(c, call), nil)
}

// charge is chargeOnly that also writes left, records of cycles in flight
// (inflight.go).
func (n *Node) charge(c *canister, used uint64, logs []sysapi.LogLine, extraFee, credit cycles.Amount, left []store.CallCycles, ingress []store.IngressRecord) error {
	meta := c.meta
	fee := extraFee
	if used > 0 {
		fee = fee.SaturatingAdd(n.executionFee(used))
	}
	// A credit past 2^128-1 is burned, what does not fit: it is the
	// canister's, and nowhere else to go (a refund, its record removed).
	bal, over := meta.Balance.AddCapped(credit)
	var taken cycles.Amount
	meta.Balance, taken = takeFee(bal, fee)
	meta.CyclesBurned = meta.CyclesBurned.SaturatingAdd(taken).SaturatingAdd(over)
	meta.Instructions += used
	meta.Messages++
	entries := c.logs.prepare(n.logEntries(logs))
	if err := n.commit(store.Change{ID: c.id.Bytes(), Meta: meta, Logs: entries, KeepLogs: n.cfg.LogLines, KeepLogBytes: n.cfg.LogBytes, Ingress: ingress, Left: left}); err != nil {
		return err
	}
	c.meta = meta
	c.logs.publish(entries)
	return nil
}

func (n *Node) logEntries(lines []sysapi.LogLine) []store.LogEntry {
	if len(lines) == 0 {
		return nil
	}
	t := n.clock().UTC()
	out := make([]store.LogEntry, len(lines))
	for i, l := range lines {
		// A line longer than the whole log is cut to fit it, so the
		// newest line (a trap's record) is always kept.
		out[i] = store.ClipLog(store.LogEntry{Time: t, Text: l.Text, Truncated: l.Truncated}, n.cfg.LogBytes)
	}
	return out
}

// allPages lists every stored page of m as a delta (for a replacement).
func allPages(m *state.PageMap) state.Delta {
	d := state.Delta{Size: m.Size()}
	for _, i := range m.StoredPages() {
		d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: m.Page(i)})
	}
	return d
}

// combine turns several deltas applied in order into one, reading the final
// contents from m.
func combine(m *state.PageMap, ds ...state.Delta) state.Delta {
	seen := map[uint64]bool{}
	out := state.Delta{Size: m.Size()}
	for _, d := range ds {
		for _, p := range d.Pages {
			seen[p.Index] = true
		}
	}
	idx := make([]uint64, 0, len(seen))
	for i := range seen {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	for _, i := range idx {
		p := m.Page(i)
		if p == nil {
			p = state.ZeroPage()
		}
		out.Pages = append(out.Pages, state.DirtyPage{Index: i, Data: p})
	}
	return out
}

// Uninstall removes a canister's code and state, keeping its id, settings
// and cycles. The calls it had not answered are rejected, and the
// responses to its calls will run no callback (dropContexts).
func (n *Node) Uninstall(ctx context.Context, id, caller principal.Principal) error {
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return err
	}
	defer n.unlock(c)
	if err := n.checkController(c, caller, "uninstall_code"); err != nil {
		return err
	}
	n.chargeStorage(c, n.now()) // the memory is paid up to its removal
	meta := c.meta
	replaced := meta.ModuleHash
	meta.ModuleHash, meta.CertifiedData = "", nil
	deactivateTimer(&meta, 0)
	meta.HeapSize, meta.StableSize = 0, 0
	updateLowMemory(&meta, 0)
	meta.Version++
	meta.LogNextSeq = c.logs.next() // the log is purged, as on the IC; numbering goes on
	meta.WasmChunks = 0             // and so is the chunk store (chunks.go)
	ingress, answered := answerOf(ctx, nil)
	rejected, deliver := n.dropContexts(c) // sched.go
	if err := n.commit(store.Change{ID: id.Bytes(), Meta: meta, Heap: &store.MemoryChange{Replace: true},
		Stable: &store.MemoryChange{Replace: true}, SetGlobals: true, ClearLogs: true, ClearChunks: true, Ingress: append(ingress, rejected...)}); err != nil {
		return err
	}
	answered()
	c.logs.clear()
	releaseReplaced(c, nil, nil)
	c.meta, c.module, c.heap, c.stable, c.globals = meta, nil, state.NewPageMap(0), state.NewPageMap(0), nil
	c.moduleChanged()
	n.mem.set(id, 0)
	n.mem.setChunks(id, 0)
	n.mem.setModule(id, 0)
	c.moduleBytes = 0
	n.execOf(c).Forget(id.String())
	n.releaseModules(replaced)
	deliver()
	return nil
}

// SetStatus stops or starts a canister ("running" or "stopped"). Stopping a
// canister with open call contexts puts it in "stopping" until they finish
// (new calls are refused meanwhile); SetStatus waits for that, bounded by ctx.
func (n *Node) SetStatus(ctx context.Context, id, caller principal.Principal, status string) error {
	stop, err := n.setStatus(ctx, id, caller, status)
	if err != nil || stop == nil {
		return err
	}
	return n.awaitStop(ctx, id, stop)
}

// setStatus is SetStatus up to the wait: a stop of a canister with open
// call contexts returns the stop it must wait for, having made the
// canister stopping.
func (n *Node) setStatus(ctx context.Context, id, caller principal.Principal, status string) (*pendingStop, error) {
	if status != "running" && status != "stopped" {
		return nil, fmt.Errorf("unknown status %q", status)
	}
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return nil, err
	}
	op := "start_canister"
	if status == "stopped" {
		op = "stop_canister"
	}
	if err := n.checkController(c, caller, op); err != nil {
		n.unlock(c)
		return nil, err
	}
	meta := c.meta
	meta.Status = status
	var wait *pendingStop
	if status == "stopped" && len(c.contexts) > 0 {
		meta.Status = "stopping"
		if c.stopping == nil {
			c.stopping = &pendingStop{done: make(chan struct{})}
		}
		wait = c.stopping
	}
	// A stop that must wait answers later, on its own: this commit
	// stores it as in progress (a restart completes the stop).
	actx := ctx
	if wait != nil {
		actx = answeringLater(ctx)
	}
	ingress, answered := answerOf(actx, nil)
	if err := n.commit(store.Change{ID: id.Bytes(), Meta: meta, Ingress: ingress}); err != nil {
		n.unlock(c)
		return nil, err
	}
	answered()
	c.meta = meta
	if status == "running" && c.stopping != nil {
		// The stops waiting are rejected (IC interface specification,
		// start_canister): the canister did not stop.
		c.stopping.end(rejectf(CanisterError, "Canister %s was started again before it stopped", id))
		c.stopping = nil
	}
	n.unlock(c)
	return wait, nil
}

// awaitStop waits for the stop of canister id to end: nil once it is
// stopped, a reject when it was started again first.
func (n *Node) awaitStop(ctx context.Context, id principal.Principal, wait *pendingStop) error {
	select {
	case <-wait.done:
		return wait.err
	case <-ctx.Done():
		return rejectf(SysTransient, "Canister %s is still stopping: %v", id, ctx.Err())
	case <-n.done:
		// Close does not wait for the canister's calls: it drops them.
		return rejectf(SysTransient, "Canister %s is still stopping: the node is shutting down", id)
	}
}

// pendingStop is what the stop_canister calls waiting for a stopping
// canister learn when it stops (err nil) or is started again first.
type pendingStop struct {
	done chan struct{} // closed when err is set
	err  error
}

func (p *pendingStop) end(err error) {
	p.err = err
	close(p.done)
}

// Delete removes a stopped canister and everything it holds. Its cycles
// are burned (IC interface specification: they are discarded); the commit
// leaves its tombstone, which keeps the node's conservation count
// (store/deleted.go).
func (n *Node) Delete(ctx context.Context, id, caller principal.Principal) error {
	c, err := n.lockCanister(ctx, id)
	if err != nil {
		return err
	}
	defer n.unlock(c)
	if err := n.checkController(c, caller, "delete_canister"); err != nil {
		return err
	}
	if c.meta.Status != "stopped" {
		return rejectf(CanisterError, "Canister %s must be stopped before it is deleted", id)
	}
	ingress, answered := answerOf(ctx, nil)
	if err := n.commit(store.Change{ID: id.Bytes(), Meta: c.meta, Delete: true, Ingress: ingress}); err != nil {
		return err
	}
	answered()
	c.deleted = true
	n.dropCalls(c) // queues.go
	releaseReplaced(c, nil, nil)
	n.images.forget(c)
	n.mu.Lock()
	delete(n.canisters, id)
	n.mem.remove(id)
	n.mu.Unlock()
	n.execOf(c).Forget(id.String())
	n.releaseModules(c.meta.ModuleHash)
	n.log.Info("canister deleted", "canister", id.String())
	return nil
}

// Status is what `cordon status` shows about a canister.
type Status struct {
	ID                string        `json:"id"`
	Status            string        `json:"status"`
	Controllers       []string      `json:"controllers"`
	Balance           cycles.Amount `json:"cycles"`
	ModuleHash        string        `json:"module_hash,omitempty"`
	Memory64          bool          `json:"memory64"`
	Version           uint64        `json:"version"`
	HeapBytes         uint64        `json:"heap_bytes"`
	StableBytes       uint64        `json:"stable_bytes"`
	Globals           int           `json:"globals"`
	CertifiedData     string        `json:"certified_data,omitempty"`
	GlobalTimer       uint64        `json:"global_timer"`
	Updates           []string      `json:"update_methods,omitempty"`
	Queries           []string      `json:"query_methods,omitempty"`
	Composite         []string      `json:"composite_query_methods,omitempty"`
	Messages          uint64        `json:"messages"`
	Instructions      uint64        `json:"instructions"`
	CyclesBurned      cycles.Amount `json:"cycles_burned"`
	StateHash         string        `json:"state_hash"`
	CandidService     string        `json:"candid_service,omitempty"`
	FreezingThreshold uint64        `json:"freezing_threshold"`
	CyclesMinted      cycles.Amount `json:"cycles_minted"`
	// Memory accounting (memory.go): the memory held (heap, stable memory,
	// module, globals), the settings that bound it (0: no limit), and what
	// holding max(memory_size, memory_allocation) costs per day.
	MemorySize             uint64        `json:"memory_size"`
	MemoryAllocation       uint64        `json:"memory_allocation"`
	WasmMemoryLimit        uint64        `json:"wasm_memory_limit"`
	ComputeAllocation      uint64        `json:"compute_allocation"`
	IdleCyclesBurnedPerDay cycles.Amount `json:"idle_cycles_burned_per_day"`
	// The rest of canister_status: memory by kind, the settings not
	// above, and what the canister's queries have cost.
	ModuleBytes         uint64           `json:"module_bytes"`
	WasmChunkStoreBytes uint64           `json:"wasm_chunk_store_bytes"` // chunks.go
	GlobalBytes         uint64           `json:"global_bytes"`
	WasmMemoryThreshold uint64           `json:"wasm_memory_threshold"`
	LogVisibility       string           `json:"log_visibility"`
	LogViewers          []string         `json:"log_viewers,omitempty"`
	EnvVars             []store.EnvVar   `json:"environment_variables"`
	QueryStats          store.QueryStats `json:"query_stats"`
	ReservedCyclesLimit cycles.Amount    `json:"reserved_cycles_limit"`
	// Isolation is the mode the canister executes in on this node;
	// IsolationOverride the mode install --canister-isolation recorded
	// for it ("": it follows the node's), which a strict node does not
	// honour for inprocess.
	Isolation         string `json:"isolation"`
	IsolationOverride string `json:"isolation_override,omitempty"`
}

// Status reports a canister's state, including its deterministic state hash.
func (n *Node) Status(ctx context.Context, id principal.Principal) (*Status, error) {
	c, err := n.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := n.readLockWithin(ctx, c); err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()
	if c.deleted {
		return nil, rejectf(DestinationInvalid, "Canister %s not found", id)
	}
	s := &Status{
		ID: id.String(), Status: c.meta.Status, Controllers: c.meta.Settings.Controllers, Balance: c.meta.Balance,
		ModuleHash: c.meta.ModuleHash, Version: c.meta.Version, HeapBytes: c.heap.Size(), StableBytes: c.stable.Size(),
		Globals: len(c.globals), CertifiedData: hex.EncodeToString(c.meta.CertifiedData), GlobalTimer: c.globalTimer(),
		Messages: c.meta.Messages, Instructions: c.meta.Instructions, CyclesBurned: c.meta.CyclesBurned,
		StateHash: hex.EncodeToString(n.stateHash(c)), FreezingThreshold: c.meta.Settings.FreezingThreshold,
		CyclesMinted: c.meta.CyclesMinted,
		MemorySize:   usageOf(c).total(), MemoryAllocation: c.meta.Settings.MemoryAllocation,
		WasmMemoryLimit: c.meta.Settings.WasmMemoryLimit, ComputeAllocation: c.meta.Settings.ComputeAllocation,
		IdleCyclesBurnedPerDay: n.idleBurnPerDay(chargedBytes(c.meta.Settings, usageOf(c))),
		ModuleBytes:            c.moduleBytes, GlobalBytes: globalsBytes(c.globals),
		WasmChunkStoreBytes: chunkStoreBytes(c.meta),
		WasmMemoryThreshold: c.meta.Settings.WasmMemoryThreshold,
		LogVisibility:       c.meta.Settings.LogVisibility, LogViewers: c.meta.Settings.LogViewers,
		EnvVars:             append([]store.EnvVar{}, c.meta.Settings.EnvVars...),
		QueryStats:          c.qstats.pending(c.meta.QueryStats),
		ReservedCyclesLimit: c.meta.Settings.ReservedCycles,
		Isolation:           n.isolationOf(c.meta.Settings.Isolation), IsolationOverride: c.meta.Settings.Isolation,
	}
	if s.LogVisibility == "" {
		s.LogVisibility = "controllers"
	}
	if c.module != nil {
		s.Memory64 = c.module.Info.Memory64
		s.Updates = c.module.Info.MethodNames(engine.UpdateMethod)
		s.Queries = c.module.Info.MethodNames(engine.QueryMethod)
		s.Composite = c.module.Info.MethodNames(engine.CompositeQueryMethod)
		s.CandidService = c.module.Info.CandidService
	}
	return s, nil
}

// stateHash covers everything a message can change: memories, globals and
// the metadata that execution observes or produces, as committed, so a
// restart gives the same hash. For the global timer that is the armed
// value and the run owed besides it (Meta.TimerPending): both decide
// whether canister_global_timer runs again. A due timer a queued task
// took in memory hashes as the armed value the store keeps: taking it
// changes nothing a restart would keep.
func (n *Node) stateHash(c *canister) []byte {
	h := state.NewHasher()
	h.Bytes("id", c.id.Bytes())
	h.Bytes("module", []byte(c.meta.ModuleHash))
	h.Bytes("status", []byte(c.meta.Status))
	h.Uint("version", c.meta.Version)
	b := c.meta.Balance.Bytes()
	h.Bytes("balance", b[:])
	h.Bytes("certified_data", c.meta.CertifiedData)
	h.Uint("global_timer", c.meta.GlobalTimer)
	pending := uint64(0)
	if c.meta.TimerPending {
		pending = 1
	}
	h.Uint("global_timer_run_owed", pending)
	for _, ctl := range c.meta.Settings.Controllers {
		h.Bytes("controller", []byte(ctl))
	}
	h.Memory("heap", c.heap)
	h.Memory("stable", c.stable)
	h.Globals(c.globals)
	sum := h.Sum()
	return sum[:]
}

// Logs returns a canister's recent debug_print output.
func (n *Node) Logs(ctx context.Context, id principal.Principal) ([]store.LogEntry, error) {
	c, err := n.get(ctx, id)
	if err != nil {
		return nil, err
	}
	return c.logs.snapshot(), nil
}

// releaseReplaced closes the memory images of the canister's memories that
// heap and stable replace (c.mu held exclusively: nothing executes on them).
func releaseReplaced(c *canister, heap, stable *state.PageMap) {
	if c.heap != heap {
		c.heap.Release()
	}
	if c.stable != stable {
		c.stable.Release()
	}
}

// Metadata returns the "icp:public <name>" or "icp:private <name>" custom
// section of canister id's module (ok false: no module, or no such
// section) and the canister's controllers, read together so that a
// caller deciding who may read a private section decides on one version.
func (n *Node) Metadata(ctx context.Context, id principal.Principal, name string) (md engine.Metadata, ok bool, controllers []string, err error) {
	c, err := n.get(ctx, id)
	if err != nil {
		return engine.Metadata{}, false, nil, err
	}
	if err := n.readLockWithin(ctx, c); err != nil {
		return engine.Metadata{}, false, nil, err
	}
	defer c.mu.RUnlock()
	if c.deleted {
		return engine.Metadata{}, false, nil, rejectf(DestinationInvalid, "Canister %s not found", id)
	}
	controllers = append([]string(nil), c.meta.Settings.Controllers...)
	if c.module == nil {
		return engine.Metadata{}, false, controllers, nil
	}
	md, ok = c.module.Info.Lookup(name)
	return md, ok, controllers, nil
}
