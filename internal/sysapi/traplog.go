package sysapi

import "strings"

// The canister log records of traps (IC interface specification,
// fetch_canister_logs: "a vector of logs of that canister including its
// trap messages"). The IC appends one record to the log of an execution
// that traps, kept although the execution's state is rolled back:
// `[TRAP]: <message>` for ic0.trap ("(no message)" when it is empty) and
// `[TRAP]: <trap code>` for a Wasm trap, the code named as the IC names it.
// Other failures (the instruction limit, a misused ic0 call, a memory
// limit) leave no record, as on the IC.
//
// The record is derived from the trap message, whose forms are made in
// this package and in internal/engine, so it needs nothing new to cross
// the sandbox boundary: a sandbox that lies about its trap message only
// changes its own canister's log, which its canister could write anyway.

// TrapRecordPrefix starts every trap record.
const TrapRecordPrefix = "[TRAP]: "

// Forms of the trap messages the records are derived from.
const (
	calledTrapPrefix = "Canister called `ic0.trap` with message: '"
	calledTrapSuffix = "'"
	wasmTrapPrefix   = "Canister trapped: "
	stableOOBPrefix  = "stable memory out of bounds"
)

// wasmTrapCode maps the engine's Wasm trap messages to the IC's trap code
// names; a Wasm trap the IC does not name is "unknown" there (TrapCode::Other).
// A switch, not a map: nothing to build at every sandbox's initialisation.
func wasmTrapCode(msg string) (string, bool) {
	switch msg {
	case "stack overflow", "heap out of bounds", "integer division by 0", "unreachable", "table out of bounds":
		return msg, true
	case "integer overflow", "indirect call to null", "invalid conversion to integer":
		return "unknown", true
	}
	return "", false
}

// TrapLogRecord returns the canister log record of an execution that
// trapped with msg, and false when the IC keeps none for such a trap.
func TrapLogRecord(msg string) (string, bool) {
	if rest, ok := strings.CutPrefix(msg, calledTrapPrefix); ok {
		text, ok := strings.CutSuffix(rest, calledTrapSuffix)
		if !ok {
			return "", false
		}
		if text == "" {
			text = "(no message)"
		}
		return TrapRecordPrefix + text, true
	}
	if strings.HasPrefix(msg, stableOOBPrefix) {
		return TrapRecordPrefix + stableOOBPrefix, true
	}
	if rest, ok := strings.CutPrefix(msg, wasmTrapPrefix); ok {
		if code, ok := wasmTrapCode(rest); ok {
			return TrapRecordPrefix + code, true
		}
	}
	return "", false
}
