package host

import (
	"encoding/binary"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
)

// feeWat calls and answers. "call" takes [callee id (10 bytes)][method
// byte][n: u32]: it asks cost_call for the call it is about to make, then
// calls "reply_n" ('p'), "reject_n" ('j') or "reply_n" on a callee that
// does not exist ('x', the system rejects it) with the 4-byte argument n.
// Its callback answers [cost_call: 16 bytes][size of the response it got:
// u64]. "reply_n" replies with n bytes, "reject_n" rejects with a message
// of n bytes.
const feeWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reject" (func $reject (param i32 i32)))
  (import "ic0" "msg_reject_msg_size" (func $reject_size (result i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $data (param i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (import "ic0" "cost_call" (func $cost_call (param i64 i64 i32)))
  (memory (export "memory") 40)
  (table (export "table") 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (data (i32.const 100) "reply_nreject_n")
  (data (i32.const 130) "nobody____")
  (func (export "canister_update call")
    (local $m i32) (local $mlen i32) (local $callee i32)
    (call $arg_copy (i32.const 0) (i32.const 0) (i32.const 15))
    (local.set $m (i32.const 100)) (local.set $mlen (i32.const 7)) (local.set $callee (i32.const 0))
    (if (i32.eq (i32.load8_u (i32.const 10)) (i32.const 106)) ;; 'j'
      (then (local.set $m (i32.const 107)) (local.set $mlen (i32.const 8))))
    (if (i32.eq (i32.load8_u (i32.const 10)) (i32.const 120)) ;; 'x'
      (then (local.set $callee (i32.const 130))))
    (call $cost_call (i64.extend_i32_u (local.get $mlen)) (i64.const 4) (i32.const 300))
    (call $call_new (local.get $callee) (i32.const 10) (local.get $m) (local.get $mlen)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (call $data (i32.const 11) (i32.const 4))
    (if (call $perform) (then unreachable)))
  (func $answer (param $size i32)
    (i64.store (i32.const 316) (i64.extend_i32_u (local.get $size)))
    (call $append (i32.const 300) (i32.const 24))
    (call $reply))
  (func $on_reply (param i32) (call $answer (call $arg_size)))
  (func $on_reject (param i32) (call $answer (call $reject_size)))
  (func (export "canister_update reply_n")
    (call $arg_copy (i32.const 0) (i32.const 0) (i32.const 4))
    (call $append (i32.const 65536) (i32.load (i32.const 0)))
    (call $reply))
  (func (export "canister_update reject_n")
    (call $arg_copy (i32.const 0) (i32.const 0) (i32.const 4))
    (call $reject (i32.const 65536) (i32.load (i32.const 0))))
)`

// A call costs exactly what the interface specification documents, in both
// isolation modes: ic0.cost_call reports the fee, the request's bytes and
// the reservation for the largest response (transmission of ReplyBytes and
// a callback of the instruction limit); call_perform takes that; when the
// response arrives the transmission of its real size is burned and the
// rest of the reservation comes back. The caller's balance moves by the
// documented sum to the cycle, and everything it paid is burned.
func TestCallAndResponseFees(t *testing.T) {
	for _, iso := range []string{"inprocess", "sandbox"} {
		t.Run(iso, func(t *testing.T) {
			f := queueFixture(t, iso, nil)
			wasm := mustWat(t, feeWat)
			a, b := f.install(wasm, nil), f.install(wasm, nil)
			cfg := f.cfg
			fees := cfg.Fees
			for _, tc := range []struct {
				name   string
				method byte
				n      uint32
				mlen   uint64
			}{
				{"empty reply", 'p', 0, 7},
				{"reply of 1 MB", 'p', 1_000_000, 7},
				{"largest reply", 'p', uint32(cfg.ReplyBytes), 7},
				{"reject of 3000 bytes", 'j', 3000, 8},
				{"system reject", 'x', 5, 7},
			} {
				arg := append(append([]byte{}, b.Bytes()...), tc.method)
				arg = binary.LittleEndian.AppendUint32(arg, tc.n)
				before := f.status(a)
				out := f.update(a, "call", arg)
				after := f.status(a)
				if len(out) != 24 {
					t.Fatalf("%s: answer of %d bytes", tc.name, len(out))
				}
				cost := cycles.Amount{Lo: binary.LittleEndian.Uint64(out), Hi: binary.LittleEndian.Uint64(out[8:])}
				got := binary.LittleEndian.Uint64(out[16:])
				switch {
				case tc.method != 'x' && got != uint64(tc.n):
					t.Fatalf("%s: the response had %d bytes, want %d", tc.name, got, tc.n)
				case tc.method == 'x' && got == 0:
					t.Fatalf("%s: empty system reject", tc.name)
				}
				// The documented sum, written out from the fees.
				request := fees.Call + fees.CallPerByte*(tc.mlen+4)
				wantCost := cycles.New(request + fees.CallPerByte*cfg.ReplyBytes + fees.UpdateExecution + fees.PerInstruction*cfg.UpdateInstructions)
				if cost != wantCost {
					t.Fatalf("%s: cost_call = %s, want %s", tc.name, cost, wantCost)
				}
				msgs, instr := after.Messages-before.Messages, after.Instructions-before.Instructions
				if msgs != 2 {
					t.Fatalf("%s: %d executions, want the call and its callback", tc.name, msgs)
				}
				want := cycles.New(fees.IngressReception + fees.IngressPerByte*uint64(len(arg)) +
					msgs*fees.UpdateExecution + instr*fees.PerInstruction +
					request + fees.CallPerByte*got)
				paid := before.Balance.SaturatingSub(after.Balance)
				burned := after.CyclesBurned.SaturatingSub(before.CyclesBurned)
				if paid != want || burned != want {
					t.Fatalf("%s: the caller paid %s and burned %s, want %s", tc.name, paid, burned, want)
				}
			}
			if iso == "sandbox" {
				f.checkSandboxed(a)
			}
			f.checkCallsReleased(a, b)
		})
	}
}
