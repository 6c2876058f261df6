// Package sysapi implements the IC System API (the `ic0` imports) against the
// context of one execution.
//
// It knows nothing about Wasm engines: the engine package binds each import to
// [Execution.Call], which checks that the call is allowed in the current
// context, charges its instructions and runs its semantics against the
// execution's [Input], accumulating the [Output]. The same code runs in the
// host (in-process isolation) and inside a sandbox process.
package sysapi

import "strings"

// Context is the kind of code that is running, which decides which ic0 calls
// it may make (the IC interface specification's "I G U RQ NRQ …" letters).
type Context uint8

// The contexts of the IC interface specification.
const (
	CtxStart              Context = iota // s: the module's (start) function
	CtxInit                              // I: canister_init or canister_post_upgrade
	CtxPreUpgrade                        // G: canister_pre_upgrade
	CtxUpdate                            // U: canister_update
	CtxReplicatedQuery                   // RQ: canister_query in replicated mode
	CtxNonReplicatedQuery                // NRQ: canister_query in non-replicated mode
	CtxTransformQuery                    // TQ: http outcall transform
	CtxCompositeQuery                    // CQ: canister_composite_query
	CtxReply                             // Ry: reply callback
	CtxReject                            // Rt: reject callback
	CtxCompositeReply                    // CRy: reply callback in a composite query
	CtxCompositeReject                   // CRt: reject callback in a composite query
	CtxCleanup                           // C: cleanup callback
	CtxCompositeCleanup                  // CC: cleanup callback in a composite query
	CtxInspect                           // F: canister_inspect_message
	CtxSystemTask                        // T: canister_heartbeat / canister_global_timer
	numContexts
)

var contextNames = [numContexts]string{
	CtxStart:              "start",
	CtxInit:               "init",
	CtxPreUpgrade:         "pre_upgrade",
	CtxUpdate:             "update",
	CtxReplicatedQuery:    "replicated query",
	CtxNonReplicatedQuery: "non-replicated query",
	CtxTransformQuery:     "transform query",
	CtxCompositeQuery:     "composite query",
	CtxReply:              "reply callback",
	CtxReject:             "reject callback",
	CtxCompositeReply:     "composite reply callback",
	CtxCompositeReject:    "composite reject callback",
	CtxCleanup:            "cleanup",
	CtxCompositeCleanup:   "composite cleanup",
	CtxInspect:            "inspect_message",
	CtxSystemTask:         "system task",
}

// String names the context the way error messages show it.
func (c Context) String() string {
	if c < numContexts {
		return contextNames[c]
	}
	return "unknown context"
}

// Valid reports whether c is one of the defined contexts.
func (c Context) Valid() bool { return c < numContexts }

// IsQuery reports whether state changes of this context are discarded.
func (c Context) IsQuery() bool {
	switch c {
	case CtxReplicatedQuery, CtxNonReplicatedQuery, CtxTransformQuery, CtxCompositeQuery,
		CtxCompositeReply, CtxCompositeReject, CtxCompositeCleanup, CtxInspect:
		return true
	}
	return false
}

// Replicated reports whether the context runs in replicated mode (the value
// of ic0.in_replicated_execution).
func (c Context) Replicated() bool {
	switch c {
	case CtxNonReplicatedQuery, CtxTransformQuery, CtxCompositeQuery, CtxCompositeReply,
		CtxCompositeReject, CtxCompositeCleanup, CtxInspect:
		return false
	}
	return true
}

// ContextSet is a set of contexts.
type ContextSet uint32

// Has reports whether c is in the set.
func (s ContextSet) Has(c Context) bool { return c < numContexts && s&(1<<c) != 0 }

func set(cs ...Context) ContextSet {
	var s ContextSet
	for _, c := range cs {
		s |= 1 << c
	}
	return s
}

// String lists the contexts of the set.
func (s ContextSet) String() string {
	var names []string
	for c := Context(0); c < numContexts; c++ {
		if s.Has(c) {
			names = append(names, c.String())
		}
	}
	return strings.Join(names, ", ")
}

// The availability classes of the specification.
var (
	// everywhere is "*": every context but (start).
	everywhere = set(CtxInit, CtxPreUpgrade, CtxUpdate, CtxReplicatedQuery, CtxNonReplicatedQuery,
		CtxTransformQuery, CtxCompositeQuery, CtxReply, CtxReject, CtxCompositeReply, CtxCompositeReject,
		CtxCleanup, CtxCompositeCleanup, CtxInspect, CtxSystemTask)
	// everywhereAndStart is "* s".
	everywhereAndStart = everywhere | set(CtxStart)
)
