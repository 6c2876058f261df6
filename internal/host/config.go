// Package host is the cordon node: the canister registry, the lifecycle
// (create, install, upgrade, stop, delete), message execution with cycles
// accounting, and persistence of every committed change.
package host

import (
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// Config configures a node. DefaultConfig gives the IC's defaults.
type Config struct {
	Home      string // store directory
	Isolation string // "inprocess" or "sandbox"

	UpdateInstructions  uint64 // per update message (IC: 40 billion)
	QueryInstructions   uint64 // per query (IC: 5 billion)
	InstallInstructions uint64 // per install/upgrade (IC: 300 billion)
	// QueryWalltime bounds the wall time of a query with all the calls a
	// composite query makes (IC: max_query_call_walltime, 10 s); beyond it
	// the query fails with CANISTER_ERROR (query.go). 0: no bound.
	QueryWalltime time.Duration

	HeapBytes32 uint64 // Wasm heap limit, 32-bit canisters (4 GiB)
	HeapBytes64 uint64 // Wasm heap limit, 64-bit canisters (6 GiB)
	StableBytes uint64 // stable memory limit (500 GiB)
	// MemoryCapacity bounds the heap and stable memory of all canisters
	// together (capacity.go); 0: half of the machine's memory.
	MemoryCapacity uint64
	// DiskMargin is the free space kept on the file system of the store
	// (Home): a commit that writes canister data (memory pages, a module,
	// Wasm chunks) and would leave less is refused with SYS_TRANSIENT,
	// and so are updates and installs once less is left (diskmargin.go);
	// 0: store.DefaultDiskMargin of the file system's size.
	DiskMargin uint64
	// NoDiskMargin keeps no margin: only a full file system (ENOSPC)
	// refuses a commit. For tests of that last line of defence.
	NoDiskMargin bool
	// ExecutionMemory bounds the memory pages executions in flight hand
	// the host (their outputs until committed, composite queries' working
	// state) all together (execmem.go); 0: a quarter of the machine's
	// memory. Messages wait for room; a query that finds none fails with
	// SYS_TRANSIENT.
	ExecutionMemory uint64
	ReplyBytes      uint64 // reply and reject payload limit (2 MiB)
	// HeapDirty and StableDirty bound the bytes of each memory (in 4 KiB
	// pages) one execution may change; more traps. Every changed page is
	// also charged in instructions (sysapi/dirty.go).
	HeapDirty   DirtyLimits
	StableDirty DirtyLimits
	// MemoryImages is how many canisters keep memory images (images.go);
	// the least recently executed beyond it give theirs back (0: 1024).
	MemoryImages int
	ModuleLimits engine.ModuleLimits
	// PreparingBytes bounds the bytes of the modules being decoded and
	// compiled on the node at once (modload.go); installs beyond it wait.
	// 0: twice ModuleLimits.MaxBytes; never less than ModuleLimits.MaxBytes.
	PreparingBytes uint64
	// ReservedDescriptors is how many file descriptors the embedder needs
	// besides the node's (a server's connections): Open fits the node's
	// bounds to RLIMIT_NOFILE less these (descriptors.go).
	ReservedDescriptors int

	Fees          Fees
	Messages      MessageLimits
	InitialCycles cycles.Amount // balance of a canister created from the CLI
	// Provisional says who may mint cycles with the provisional methods
	// and install --cycles (policy.go): ProvisionalIngress ("" too) or
	// ProvisionalNone. Canisters never may.
	Provisional string
	LogLines    int // debug_print lines kept per canister
	// LogBytes bounds what a canister's kept log holds (memory and store),
	// counted by store.LogEntry.Size: the oldest lines are dropped first,
	// a longer line is cut (0: DefaultLogBytes).
	LogBytes int

	Metrics metrics.Recorder // where the node (and its sandboxes) report events; nil: nowhere (observe.go)

	// StorageChargeInterval is how often the timer loop charges the storage
	// fee of a loaded canister that has not been charged by a message since
	// (memory.go); 0: never (only messages charge it).
	StorageChargeInterval time.Duration
	// Clock is the node's time source (ic0.time, the storage fee, timers);
	// nil: time.Now. Tests inject a clock here.
	Clock func() time.Time

	// Certifier gives canisters the IC root key and signs the data
	// certificates of queries (certify.go); nil: the BLS root key in
	// <Home>/ic_root_key, made on first use, the key `cordon serve`'s IC
	// HTTP interface certifies with.
	Certifier Certifier

	Sandbox SandboxConfig // used when Isolation is "sandbox"
}

// DirtyLimits bound the bytes of one memory an execution may change, by
// kind of execution; 0: no bound. The IC's stable memory limits are 2 GiB
// per update, 1 GiB per query and 8 GiB per install or upgrade.
type DirtyLimits struct {
	Update  uint64 // updates, callbacks, timers, heartbeats
	Query   uint64 // queries, composite queries and their callbacks, inspect_message
	Install uint64 // init, pre_upgrade, post_upgrade (each)
}

// pages returns the bound of an execution in ctx, in 4 KiB pages.
func (d DirtyLimits) pages(ctx sysapi.Context) uint64 {
	b := d.Update
	switch {
	case ctx.IsQuery():
		b = d.Query
	case ctx == sysapi.CtxInit || ctx == sysapi.CtxPreUpgrade || ctx == sysapi.CtxStart:
		b = d.Install
	}
	// A bound that is not a whole number of pages is rounded up, so
	// a nonzero one never becomes 0 (no bound).
	return b/state.PageSize + min(b%state.PageSize, 1)
}

// SandboxConfig tunes sandboxed execution.
type SandboxConfig struct {
	// Strict refuses to start a sandbox when a confinement layer is missing,
	// except the layers listed in AllowMissing (--insecure-allow-missing).
	Strict       bool
	AllowMissing []string
	Binary       string        // sandbox executable; "" runs this binary again
	MemoryBytes  uint64        // cgroup memory limit per canister sandbox (0: default)
	CPUPercent   int           // cgroup CPU quota per canister sandbox, % of one core (0: none)
	MaxSandboxes int           // live canister sandboxes before the coldest is evicted (0: default)
	IdleTimeout  time.Duration // a sandbox idle this long is stopped (0: default)
	// WarmPool is the number of blank sandboxes (confined and verified,
	// holding no canister) kept ready for the next canister that needs a
	// sandbox; they count in MaxSandboxes. 0: none.
	WarmPool int
	// PreloadPool is the number of primed sandboxes: sandboxes that have
	// loaded the module of a recently evicted canister, whose next message
	// then only restores its state; they count in MaxSandboxes like blank
	// ones. 0: none.
	PreloadPool int
	// SealedArtifactBytes bounds the sealed artifact memfds kept to hand
	// compiled modules to sandboxes (0: the default, 256 MiB).
	SealedArtifactBytes uint64
	// ArtifactCacheBytes bounds the compiled artifacts cached on disk in
	// <home>/artifacts (0: exec.DefaultArtifactCacheBytes).
	ArtifactCacheBytes uint64
	// MaxCompiles bounds the modules compiled at once, each in a compiler
	// sandbox (0: exec.DefaultMaxCompiles).
	MaxCompiles int
	// SealedArtifacts bounds how many sealed artifact memfds are kept, each
	// a descriptor (0: the default, exec.DefaultSealedArtifacts).
	SealedArtifacts int
	// MemoryBudget bounds the memory of all canister sandboxes together
	// (their cgroups' charge, else RSS): past it the coldest idle
	// sandboxes are evicted (0: half of NodeMemoryBytes).
	MemoryBudget uint64
	// NodeMemoryBytes is the hard memory limit of all the node's sandboxes
	// together: their group cgroup's (0: exec.DefaultNodeMemory, a quarter
	// of the machine's memory).
	NodeMemoryBytes uint64
	// QueryThreads bounds the queries of one canister run at once in its
	// sandbox (0: twice the cores of CPUPercent; 1: one at a time).
	QueryThreads int
	// AllowInProcess lets a strict node take in-process canisters
	// (install --canister-isolation inprocess); refused otherwise.
	AllowInProcess bool
	// HostIDs is "FIRST-LAST": host uids/gids for sandboxes, one per live
	// sandbox, when running as root ("": all sandboxes are 65534).
	HostIDs string
}

// Fees are the cycles costs (IC defaults of a 13-node subnet).
type Fees struct {
	UpdateExecution  uint64 // per update message
	PerInstruction   uint64 // per instruction executed (updates)
	IngressReception uint64 // per ingress message
	IngressPerByte   uint64 // per byte of ingress payload
	CanisterCreation uint64
	// Call and CallPerByte price an inter-canister call: Call plus
	// CallPerByte per byte of method name and argument, and CallPerByte per
	// byte of its response, reserved for a ReplyBytes one and refunded
	// (IC: xnet_call_fee 260_000, xnet_byte_transmission_fee 1_000).
	// ic0.cost_call reports the call's fee plus its response reservation.
	Call        uint64
	CallPerByte uint64
	// GiBStoragePerSecond is the storage fee: cycles per GiB of memory held
	// (heap, stable memory, module, globals; at least the memory allocation)
	// per second (IC: 127_000 on a 13-node application subnet, i.e. about
	// 4 T cycles per GiB per year; 0 makes memory free).
	GiBStoragePerSecond uint64
	// CompilePerByte is what an install pays per byte of its module
	// (decompressed): decoding, validating and compiling it, charged
	// whether or not the install then succeeds (IC: 6000 instructions per
	// Wasm instruction compiled; see RATIONALE.md).
	CompilePerByte uint64
}

// MessageLimits bound what calls between canisters may hold in memory
// (queues.go). A call beyond them is refused at call_perform (SYS_TRANSIENT).
// Each call awaiting its response takes its method name and argument plus
// ReplyBytes reserved for the response, as the IC counts guaranteed
// response message memory.
type MessageLimits struct {
	// QueueCapacity is how many calls from one canister to another may
	// await responses (the IC's queue capacity per canister pair and
	// direction: 500; each reserves a slot for its response).
	QueueCapacity int
	// CallbackQuota is how many outstanding calls every canister may have
	// whatever the node's load (IC: 50); beyond it a canister may open more
	// while the node has fewer than CallbackSoftLimit (IC: 1_000_000).
	CallbackQuota     int
	CallbackSoftLimit int
	// CanisterBytes and NodeBytes bound message memory per canister and per
	// node (IC: 15 GiB of guaranteed response message memory per subnet).
	CanisterBytes uint64
	NodeBytes     uint64
	// IngressQueue is how many ingress messages may wait in one canister's
	// queue; beyond it an ingress message is refused at once with
	// SYS_TRANSIENT (sched.go). 0: no bound.
	IngressQueue int
	// IngressArgBytes bounds the argument of an ingress message, by
	// whatever route it comes (IC: 2 MiB); a larger one is refused
	// (SYS_FATAL). 0: no bound.
	IngressArgBytes uint64
	// IngressQueueBytes and NodeIngressBytes bound the argument bytes of
	// the ingress messages waiting in one canister's queue and in all
	// queues of the node; beyond them an ingress message is refused at
	// once with SYS_TRANSIENT (ingressq.go). 0: no bound.
	IngressQueueBytes uint64
	NodeIngressBytes  uint64
	// MgmtCalls and MgmtCallBytes bound the ingress calls to the
	// management canister in progress about one canister (its
	// canister_id; calls about none count under aaaaa-aa), in number and
	// argument bytes; NodeMgmtCalls and NodeMgmtCallBytes bound them on
	// the node. Beyond them a call is refused at once with SYS_TRANSIENT
	// (mgmtq.go). 0: no bound.
	MgmtCalls         int
	MgmtCallBytes     uint64
	NodeMgmtCalls     int
	NodeMgmtCallBytes uint64
}

// DefaultConfig returns IC defaults; Home must still be set.
func DefaultConfig() Config {
	return Config{
		Isolation:           "inprocess",
		UpdateInstructions:  40_000_000_000,
		QueryInstructions:   5_000_000_000,
		InstallInstructions: 300_000_000_000,
		QueryWalltime:       10 * time.Second,
		HeapBytes32:         4 << 30,
		HeapBytes64:         6 << 30,
		StableBytes:         500 << 30,
		ReplyBytes:          2 << 20,
		HeapDirty:           DirtyLimits{Update: 2 << 30, Query: 1 << 30, Install: 8 << 30},
		StableDirty:         DirtyLimits{Update: 2 << 30, Query: 1 << 30, Install: 8 << 30},
		ModuleLimits:        engine.DefaultModuleLimits(),
		Fees: Fees{
			UpdateExecution:     5_000_000,
			PerInstruction:      1,
			IngressReception:    1_200_000,
			IngressPerByte:      2_000,
			CanisterCreation:    100_000_000_000,
			Call:                260_000,
			CallPerByte:         1_000,
			GiBStoragePerSecond: 127_000,
			CompilePerByte:      2_000,
		},
		Messages: MessageLimits{
			QueueCapacity:     500,
			CallbackQuota:     50,
			CallbackSoftLimit: 1_000_000,
			CanisterBytes:     1 << 30,
			NodeBytes:         15 << 30,
			IngressQueue:      500,
			IngressArgBytes:   DefaultIngressArgBytes,
			IngressQueueBytes: 64 << 20,
			NodeIngressBytes:  256 << 20,
			MgmtCalls:         100,
			MgmtCallBytes:     32 << 20,
			NodeMgmtCalls:     1000,
			NodeMgmtCallBytes: 128 << 20,
		},
		StorageChargeInterval: time.Minute,
		InitialCycles:         cycles.New(100_000_000_000_000), // 100 T, like a local dfx replica
		Provisional:           ProvisionalIngress,
		LogLines:              1000,
		LogBytes:              DefaultLogBytes,
		Sandbox:               SandboxConfig{CPUPercent: 100, WarmPool: 2, PreloadPool: 1},
	}
}
