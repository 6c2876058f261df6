package host

import (
	"context"
	"encoding/binary"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
	"github.com/cordon-dev/cordon/pkg/principal"
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
	t.Parallel()
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

// burnWat burns: "burn" calls cycles_burn128 with the largest amount and
// answers [balance it saw: 16 bytes][burned: 16 bytes]; canister_init does
// the same when its argument is not empty.
const burnWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "canister_cycle_balance128" (func $balance (param i32)))
  (import "ic0" "cycles_burn128" (func $burn (param i64 i64 i32)))
  (memory 1)
  (func $burn_all
    (call $balance (i32.const 300))
    (call $burn (i64.const -1) (i64.const -1) (i32.const 316)))
  (func (export "canister_init") (if (call $arg_size) (then (call $burn_all))))
  (func (export "canister_update burn")
    (call $burn_all)
    (call $append (i32.const 300) (i32.const 32))
    (call $reply))
)`

func amountAt(b []byte) cycles.Amount {
	return cycles.Amount{Lo: binary.LittleEndian.Uint64(b), Hi: binary.LittleEndian.Uint64(b[8:])}
}

// An update that burns all it can burns down to what pays for it: its own
// largest fee (ingress included) and the freezing limit stay, to the cycle.
// It then pays its real fee, so it ends above the freezing limit, and the
// next update is refused as out of cycles without taking anything. What
// the canister paid is exactly what was burned. The clock stands still, so
// the storage fee (which makes the freezing limit) charges nothing between
// the steps.
func TestBurnStopsAtTheFeeAndFreezingLimit(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, iso := range []string{"inprocess", "sandbox"} {
		t.Run(iso, func(t *testing.T) {
			f := queueFixture(t, iso, func(c *Config) {
				c.Fees.GiBStoragePerSecond = 127_000
				c.Clock = func() time.Time { return at }
			})
			a := f.install(mustWat(t, burnWat), nil)
			cfg := f.cfg
			fees := cfg.Fees
			before := f.status(a)
			freezing := new(big.Int).Mul(before.IdleCyclesBurnedPerDay.Big(), new(big.Int).SetUint64(before.FreezingThreshold))
			freezing.Quo(freezing, big.NewInt(86_400))
			if freezing.Sign() == 0 {
				t.Fatal("no freezing limit: the test needs one")
			}
			keep := new(big.Int).SetUint64(fees.UpdateExecution + fees.PerInstruction*cfg.UpdateInstructions + fees.IngressReception)
			keep.Add(keep, freezing)

			out := f.update(a, "burn", nil)
			seen, burned := amountAt(out), amountAt(out[16:])
			after := f.status(a)
			if seen != before.Balance {
				t.Fatalf("the execution saw %s, the balance was %s", seen, before.Balance)
			}
			if want := new(big.Int).Sub(seen.Big(), keep); burned.Big().Cmp(want) != 0 {
				t.Fatalf("burned %s of %s, want all but %s: %s", burned, seen, keep, want)
			}
			used := after.Instructions - before.Instructions
			// Left: the unused part of the largest fee, and the freezing limit.
			left := new(big.Int).SetUint64(fees.PerInstruction * (cfg.UpdateInstructions - used))
			left.Add(left, freezing)
			if after.Balance.Big().Cmp(left) != 0 {
				t.Fatalf("balance %s after the burn, want %s", after.Balance, left)
			}
			paid := before.Balance.SaturatingSub(after.Balance)
			if got := after.CyclesBurned.SaturatingSub(before.CyclesBurned); got != paid {
				t.Fatalf("paid %s, burned %s", paid, got)
			}

			_, err := f.node.Update(context.Background(), Message{Canister: a, Method: "burn", Caller: user})
			if r := f.reject(err); r.Code != SysTransient || !strings.Contains(r.Message, "out of cycles") {
				t.Fatalf("update below the freezing limit: %v", err)
			}
			if again := f.status(a); again.Balance != after.Balance || again.CyclesBurned != after.CyclesBurned {
				t.Fatalf("a refused update moved cycles: %s → %s", after.Balance, again.Balance)
			}
			if iso == "sandbox" {
				f.checkSandboxed(a)
			}
			f.checkConservation()
		})
	}
}

// canister_init may burn the whole balance (the IC's init has no fee held
// back either); the install's fee then takes what is left, nothing, and
// what is recorded as burned is exactly the balance that went: no negative
// balance, no burned cycles that never left one.
func TestInitBurnsTheWholeBalance(t *testing.T) {
	t.Parallel()
	for _, iso := range []string{"inprocess", "sandbox"} {
		t.Run(iso, func(t *testing.T) {
			f := queueFixture(t, iso, nil)
			ctx := context.Background()
			id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
			if err != nil {
				t.Fatal(err)
			}
			before := f.status(id)
			if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: mustWat(t, burnWat), Arg: []byte{1}, Caller: user}); err != nil {
				t.Fatal(err)
			}
			after := f.status(id)
			if !after.Balance.IsZero() {
				t.Fatalf("balance %s after init burned it all", after.Balance)
			}
			if got := after.CyclesBurned.SaturatingSub(before.CyclesBurned); got != before.Balance {
				t.Fatalf("burned %s, the balance was %s", got, before.Balance)
			}
			f.checkConservation()
		})
	}
}

// The fee of an execution takes the balance, never more: commitExecution
// and chargeOnly with a balance below the fee leave zero and record as
// burned exactly what was taken. (Executions with call limits cannot get
// here, cycles_burn128 and call_perform keep their fee; this is the floor
// under every other path.)
func TestFeeTakesAtMostTheBalance(t *testing.T) {
	t.Parallel()
	f := queueFixture(t, "inprocess", nil)
	a := f.install(mustWat(t, burnWat), nil)
	c, err := f.node.get(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	for _, tc := range []struct {
		name   string
		charge func() error
	}{
		{"commitExecution", func() error {
			out := &sysapi.Output{Heap: state.Delta{Size: c.heap.Size()}, Stable: state.Delta{Size: c.stable.Size()},
				Globals: c.globals, Instructions: 1_000_000}
			return f.node.commitExecution(c, out, cycles.New(1_200_000), cycles.Amount{}, nil, nil)
		}},
		{"chargeOnly", func() error { return f.node.chargeOnly(c, 1_000_000, nil, cycles.New(1_200_000), cycles.Amount{}) }},
	} {
		// Leave 1 000 cycles: the rest counted as burned, or what is
		// missing minted (the conservation count holds).
		thousand := cycles.New(1_000)
		c.meta.CyclesBurned = c.meta.CyclesBurned.SaturatingAdd(c.meta.Balance.SaturatingSub(thousand))
		c.meta.CyclesMinted = c.meta.CyclesMinted.SaturatingAdd(thousand.SaturatingSub(c.meta.Balance))
		c.meta.Balance = thousand
		burned := c.meta.CyclesBurned
		err := tc.charge()
		bal, got := c.meta.Balance, c.meta.CyclesBurned.SaturatingSub(burned)
		if err != nil || !bal.IsZero() || got != thousand {
			c.mu.Unlock()
			t.Fatalf("%s: balance %s, burned %s more (%v); want 0 and 1000", tc.name, bal, got, err)
		}
	}
	c.mu.Unlock()
	f.checkConservation()
}
