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

// wasmTrapCodes maps the engine's Wasm trap messages to the IC's trap code
// names; a Wasm trap the IC does not name is "unknown" there (TrapCode::Other).
var wasmTrapCodes = map[string]string{
	"stack overflow":                "stack overflow",
	"heap out of bounds":            "heap out of bounds",
	"integer division by 0":         "integer division by 0",
	"unreachable":                   "unreachable",
	"table out of bounds":           "table out of bounds",
	"integer overflow":              "unknown",
	"indirect call to null":         "unknown",
	"invalid conversion to integer": "unknown",
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
		if code, ok := wasmTrapCodes[rest]; ok {
			return TrapRecordPrefix + code, true
		}
	}
	return "", false
}
