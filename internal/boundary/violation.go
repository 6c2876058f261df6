package boundary

import "fmt"

// ViolationKind classifies a protocol violation, for logs and counters.
type ViolationKind uint8

// The kinds of violations.
const (
	VFraming       ViolationKind = iota + 1 // bad packet: size, header, continuation, truncation
	VSize                                   // a declared length above its cap
	VUnknownKind                            // a message kind outside the protocol
	VUnexpected                             // a known kind where it is not allowed
	VDescriptors                            // file descriptors where none were declared or allowed
	VDecode                                 // a malformed message body
	VID                                     // a response to a request that was not made
	VInstructions                           // more instructions than the limit, or fewer than the output proves
	VMemory                                 // memory sizes or dirty pages
	VCycles                                 // cycles created or moved illegally
	VResponse                               // reply and reject, sizes, contexts
	VCalls                                  // outgoing calls
	VCertifiedData                          // certified data
	VTimer                                  // global timer
	VGlobals                                // globals count or types
	VLogs                                   // log lines: too many, too long, not UTF-8
	VQueryState                             // a query returned state changes
	VTrapState                              // a trapped execution returned state changes
	VInfo                                   // a compiled module's info
	VUnsolicited                            // a packet while no request was pending (Conn.WatchIdle)
	numViolationKinds
)

var violationNames = [numViolationKinds]string{
	VFraming:       "framing",
	VSize:          "size",
	VUnknownKind:   "unknown message kind",
	VUnexpected:    "unexpected message",
	VDescriptors:   "file descriptors",
	VDecode:        "malformed message",
	VID:            "wrong request id",
	VInstructions:  "instructions",
	VMemory:        "memory",
	VCycles:        "cycles",
	VResponse:      "response",
	VCalls:         "calls",
	VCertifiedData: "certified data",
	VTimer:         "global timer",
	VGlobals:       "globals",
	VLogs:          "logs",
	VQueryState:    "query state changes",
	VTrapState:     "trap state changes",
	VInfo:          "module info",
	VUnsolicited:   "unsolicited message",
}

// String names the kind.
func (k ViolationKind) String() string {
	if k > 0 && k < numViolationKinds {
		return violationNames[k]
	}
	return fmt.Sprintf("violation(%d)", uint8(k))
}

// AllViolationKinds lists every kind (for metrics).
func AllViolationKinds() []ViolationKind {
	out := make([]ViolationKind, 0, numViolationKinds-1)
	for k := ViolationKind(1); k < numViolationKinds; k++ {
		out = append(out, k)
	}
	return out
}

// Violation is a message from a sandbox that breaks the protocol. It is
// always the sandbox's fault: the host kills the sandbox and applies nothing.
type Violation struct {
	Kind   ViolationKind
	Detail string
}

func (v *Violation) Error() string {
	return "sandbox protocol violation: " + v.Kind.String() + ": " + v.Detail
}

func violation(k ViolationKind, format string, args ...any) *Violation {
	return &Violation{Kind: k, Detail: fmt.Sprintf(format, args...)}
}
