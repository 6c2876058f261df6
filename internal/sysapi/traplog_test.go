package sysapi

import "testing"

func TestTrapLogRecord(t *testing.T) {
	for _, c := range []struct {
		msg, rec string
		ok       bool
	}{
		{"Canister called `ic0.trap` with message: 'oops!'", "[TRAP]: oops!", true},
		{"Canister called `ic0.trap` with message: ''", "[TRAP]: (no message)", true},
		{"Canister called `ic0.trap` with message: 'it's '' quoted'", "[TRAP]: it's '' quoted", true},
		{"Canister called `ic0.trap` with message: 'unterminated", "", false},
		{"Canister trapped: heap out of bounds", "[TRAP]: heap out of bounds", true},
		{"Canister trapped: stack overflow", "[TRAP]: stack overflow", true},
		{"Canister trapped: integer division by 0", "[TRAP]: integer division by 0", true},
		{"Canister trapped: unreachable", "[TRAP]: unreachable", true},
		{"Canister trapped: table out of bounds", "[TRAP]: table out of bounds", true},
		{"Canister trapped: integer overflow", "[TRAP]: unknown", true},
		{"stable memory out of bounds: read at 0 of 8 bytes, stable memory is 0 bytes", "[TRAP]: stable memory out of bounds", true},
		// Not traps the IC logs.
		{ErrInstructionLimit.Message, "", false},
		{"ic0.debug_print: heap out of bounds (offset 1, size 2, heap 0 bytes)", "", false},
		{"ic0.msg_reply: the call was already replied or rejected", "", false},
		{"Canister trapped: callback 7 outside the table", "", false},
		{"Canister exceeded its Wasm memory limit", "", false},
		{"", "", false},
	} {
		rec, ok := TrapLogRecord(c.msg)
		if rec != c.rec || ok != c.ok {
			t.Errorf("TrapLogRecord(%q) = %q, %v; want %q, %v", c.msg, rec, ok, c.rec, c.ok)
		}
	}
}
