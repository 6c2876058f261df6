package host

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/exec"
)

// RejectCode is the IC's reject code of a failed call.
type RejectCode uint32

// The IC's reject codes.
const (
	SysFatal           RejectCode = 1
	SysTransient       RejectCode = 2
	DestinationInvalid RejectCode = 3
	CanisterReject     RejectCode = 4
	CanisterError      RejectCode = 5
)

// String names the code as the IC does.
func (c RejectCode) String() string {
	switch c {
	case SysFatal:
		return "SYS_FATAL"
	case SysTransient:
		return "SYS_TRANSIENT"
	case DestinationInvalid:
		return "DESTINATION_INVALID"
	case CanisterReject:
		return "CANISTER_REJECT"
	case CanisterError:
		return "CANISTER_ERROR"
	}
	return fmt.Sprintf("REJECT_CODE_%d", uint32(c))
}

// Reject is a call that did not succeed: the canister rejected it, trapped,
// or the system refused it. It is an error so lifecycle operations can
// return it too.
type Reject struct {
	Code    RejectCode
	Message string
	// need is, for an execution refused for want of cycles (outOfCycles),
	// the balance that would have let it run; zero otherwise.
	need cycles.Amount
	// cause is what the reject says, for errors.Is (storefail.go); nil
	// for most.
	cause error
}

// Unwrap is the reject's cause, if any (ErrWritesStopped and the like).
func (r *Reject) Unwrap() error { return r.cause }

// CyclesNeeded is, for a reject of an execution its canister's balance
// could not pay for, the balance that would have let it run.
func (r *Reject) CyclesNeeded() (cycles.Amount, bool) {
	return r.need, !r.need.IsZero()
}

func (r *Reject) Error() string { return fmt.Sprintf("reject %d (%s): %s", r.Code, r.Code, r.Message) }

func rejectf(code RejectCode, format string, args ...any) *Reject {
	return &Reject{Code: code, Message: fmt.Sprintf(format, args...)}
}

// maxEchoedName bounds what a reject message repeats of a name its caller
// chose: a method name may be the whole of an ingress message (2 MiB),
// and its reject is kept for request_status and answered to whoever polls.
const maxEchoedName = 128

// EchoedName is name as a message may repeat it: whole when short, else
// its first maxEchoedName bytes (whole characters), "…" and its length.
// Every reject that names a method the caller chose goes through it.
func EchoedName(name string) string {
	if len(name) <= maxEchoedName {
		return name
	}
	return fmt.Sprintf("%s… (%d bytes)", ClipText(name, maxEchoedName), len(name))
}

// ClipText is s cut to at most max bytes without splitting a character.
func ClipText(s string, max int) string {
	if len(s) <= max {
		return s
	}
	i := max
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

// ErrorID is a short random id that ties a generic error message to the
// log record that holds its detail.
func ErrorID() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail (it aborts the process)
	return hex.EncodeToString(b[:])
}

// internalReject is the reject a caller gets for an error of the node's own
// (its store's, a file's): the detail, which may name paths of the host,
// goes to the node's log under an id the message gives, not to the caller,
// which may be an untrusted canister or client.
func (n *Node) internalReject(code RejectCode, what string, err error) *Reject {
	id := ErrorID()
	n.log.Error(what+": internal error", "error_id", id, "error", err)
	return rejectf(code, "%s: internal error %s (the node's log has the detail)", what, id)
}

// executionReject is the reject of an execution of canister id that
// failed with err: a reject as it is; its sandbox's failure (the
// canister's doing) or the node giving the execution up (a context error)
// said as it is; any other error, the node's own, by its id only
// (internalReject).
func (n *Node) executionReject(id fmt.Stringer, err error) *Reject {
	var rej *Reject
	var se *exec.SandboxError
	switch {
	case errors.As(err, &rej):
		return rej
	case errors.As(err, &se) && se.Fault == exec.FaultNodeMemory:
		return nodeMemoryReject(id, err)
	case errors.As(err, &se), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return rejectf(CanisterError, "Error from Canister %s: %v", id, err)
	case errors.Is(err, engine.ErrHostMemory): // in process
		return nodeMemoryReject(id, err)
	}
	return n.internalReject(CanisterError, "Canister "+id.String(), err)
}

// asReject turns a sandbox failure into the CANISTER_ERROR reject the caller
// sees (the sandbox is already killed and nothing was applied); other errors
// pass through with context.
func asReject(id fmt.Stringer, what string, err error) error {
	var se *exec.SandboxError
	if errors.As(err, &se) {
		if se.Fault == exec.FaultNodeMemory {
			return nodeMemoryReject(id, err)
		}
		return rejectf(CanisterError, "Error from Canister %s: %v", id, err)
	}
	if errors.Is(err, engine.ErrHostMemory) {
		return nodeMemoryReject(id, err)
	}
	return fmt.Errorf("%s %s: %w", what, id, err)
}

// nodeMemoryReject answers an execution whose sandbox the kernel killed for
// the node's memory (exec.FaultNodeMemory): all the node's sandboxes
// together reached sandbox.node_memory_bytes and the kernel took this one,
// within its own limit. Not the canister's doing, so not charged
// (sandboxFault); nothing was applied, and the caller may try again. The
// same for a memory.grow the kernel refused within the canister's limits
// (engine.ErrHostMemory: in a sandbox the node's by its cgroup, in process
// the node's always): the canister never sees that -1; and for an
// instantiation the kernel refused, which is ErrHostMemory too.
func nodeMemoryReject(id fmt.Stringer, err error) *Reject {
	if errors.Is(err, engine.ErrHostMemory) {
		return rejectf(SysTransient, "Canister %s: its execution was stopped because the node could not map or grow its memory within its limits (the node is out of memory); nothing was applied, try again later.", id)
	}
	return rejectf(SysTransient, "Canister %s: its execution was stopped because the node's sandboxes together ran out of memory (sandbox.node_memory_bytes); nothing was applied, try again later.", id)
}
