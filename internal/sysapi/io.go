package sysapi

import (
	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
)

// Status is a canister's run status as ic0.canister_status reports it.
type Status uint8

// The canister statuses of the specification.
const (
	StatusRunning  Status = 1
	StatusStopping Status = 2
	StatusStopped  Status = 3
)

// String names the status.
func (s Status) String() string {
	switch s {
	case StatusRunning:
		return "running"
	case StatusStopping:
		return "stopping"
	case StatusStopped:
		return "stopped"
	}
	return "unknown"
}

// Callback is a function-table entry and its environment, as given to
// ic0.call_new and ic0.call_on_cleanup.
type Callback struct {
	Fun uint64
	Env uint64
}

// Bounds on what the host passes an execution for certification: a data
// certificate (cordon's, without delegation, are about 300 bytes; the IC's
// with a delegation a few KiB) and the root key (133 bytes of DER). The
// sandbox refuses larger ones, the host never sends them.
const (
	MaxDataCertificate = 64 << 10
	MaxRootKey         = 1 << 10
)

// EnvVar is one canister environment variable (ic0.env_var_*).
type EnvVar struct {
	Name, Value string
}

// The IC's limits on a canister's environment variables: how many, and the
// bytes of a name and of a value.
const (
	MaxEnvVars     = 20
	MaxEnvVarName  = 128
	MaxEnvVarValue = 128
)

// Limits bound one execution. The host fills them from its configuration.
type Limits struct {
	Instructions    uint64      // instruction limit of this execution
	HeapBytes       uint64      // maximum Wasm memory size in bytes
	StableBytes     uint64      // maximum stable memory size in bytes
	ReplyBytes      uint64      // maximum reply or reject payload
	CallArgBytes    uint64      // maximum argument of an outgoing call
	MaxOutgoing     int         // maximum calls one execution may perform
	DebugPrintBytes int         // longest debug_print kept (longer is truncated)
	MaxLogLines     int         // debug_print lines kept per execution
	Calls           *CallLimits // queues, outstanding calls, message memory, call fees (calls.go); nil: none

	// HeapDirtyPages and StableDirtyPages bound the 4 KiB pages of each
	// memory one execution may change (dirty.go); 0: no bound.
	HeapDirtyPages   uint64
	StableDirtyPages uint64
}

// Input is everything an execution may observe. It is the read-only part of
// the function (module, memory, system state, message) → result.
type Input struct {
	Context  Context
	Entry    string // the export run, e.g. "canister_update inc"; for errors
	Callback Callback
	Memory64 bool

	CanisterID  []byte
	SubnetID    []byte
	Caller      []byte
	Arg         []byte
	MethodName  string // for canister_inspect_message
	Controllers [][]byte
	EnvVars     []EnvVar

	Balance          cycles.Amount
	CyclesAvailable  cycles.Amount // attached to the incoming call, not yet accepted
	CyclesRefunded   cycles.Amount // returned with a response (callbacks)
	RejectCode       uint32        // in callbacks: 0 for a reply
	RejectMessage    string
	Status           Status
	Version          uint64
	Time             uint64 // nanoseconds since 1970
	Deadline         uint64
	GlobalTimer      uint64
	DataCertificate  []byte // present only in the top-level non-replicated (composite) query
	RootKey          []byte // the IC root key (DER) ic0.root_key_copy gives; nil: none
	CallContextInstr uint64 // instructions already spent in this call context
	// Responded says the call context was already answered (replied or
	// rejected) before this execution, or has nobody to answer (a system
	// task's): msg_reply, msg_reject and msg_reply_data_append trap, as
	// on the IC. Only callbacks see it set.
	Responded bool

	Limits Limits
	Stable state.Memory // committed stable memory (read-only); nil: empty
}

// ResponseKind says how a message was answered.
type ResponseKind uint8

// The response kinds.
const (
	NoResponse ResponseKind = iota
	Replied
	Rejected
)

// Call is an outgoing inter-canister call performed by an execution.
type Call struct {
	Callee    []byte
	Method    string
	Arg       []byte
	Cycles    cycles.Amount
	OnReply   Callback
	OnReject  Callback
	OnCleanup *Callback
	Timeout   uint32 // best-effort timeout in seconds, 0 = guaranteed response
}

// LogLine is one debug_print.
type LogLine struct {
	Text      string
	Truncated bool
}

// Output is what an execution produced. Memory deltas and globals are
// filled by the engine; the rest by the System API.
type Output struct {
	Instructions uint64
	Trapped      bool
	TrapMessage  string

	Response      ResponseKind
	Reply         []byte
	RejectMessage string
	Accepted      bool // canister_inspect_message called ic0.accept_message

	CyclesAccepted cycles.Amount
	CyclesBurned   cycles.Amount
	CyclesSent     cycles.Amount // attached to Calls, sum of Call.Cycles
	Calls          []Call

	CertifiedData    []byte
	CertifiedDataSet bool
	GlobalTimer      uint64
	GlobalTimerSet   bool

	Heap    state.Delta
	Stable  state.Delta
	Globals []state.Global
	Logs    []LogLine
}
