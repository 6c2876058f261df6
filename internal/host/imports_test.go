package host

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// everyImportWat imports every ic0 function the System API table offers for
// a memory width, with its signature, generated from sysapi.Imports (so an
// import added to the table is covered here). Its methods call the imports
// cordon cannot honour after writing to the heap and growing stable memory:
// the trap must undo both.
func everyImportWat(memory64 bool) (src string, imported int) {
	ptr, mem := "i32", ""
	if memory64 {
		ptr, mem = "i64", "i64"
	}
	kind := func(k sysapi.Kind) string {
		switch {
		case k == sysapi.I32:
			return "i32"
		case k == sysapi.I64:
			return "i64"
		}
		return ptr
	}
	var b strings.Builder
	b.WriteString("(module\n")
	for _, s := range sysapi.Imports {
		if s.Only32 && memory64 {
			continue
		}
		imported++
		fmt.Fprintf(&b, "  (import \"ic0\" %q (func $%s", s.Name, s.Name)
		if len(s.Params) > 0 {
			b.WriteString(" (param")
			for _, k := range s.Params {
				b.WriteString(" " + kind(k))
			}
			b.WriteString(")")
		}
		for _, k := range s.Results {
			b.WriteString(" (result " + kind(k) + ")")
		}
		b.WriteString("))\n")
	}
	r := strings.NewReplacer("%I", ptr)
	b.WriteString(r.Replace(`
  (memory ` + mem + ` 1)
  (func $dirty
    (i64.store (%I.const 64) (i64.const 0x0102030405060708))
    (drop (call $stable64_grow (i64.const 1))))
  (func (export "canister_update mint128")
    (call $dirty)
    (call $mint_cycles128 (i64.const 0) (i64.const 1000000000000) (%I.const 128)))
  (func (export "canister_update mint128_max")
    (call $dirty)
    (call $mint_cycles128 (i64.const -1) (i64.const -1) (%I.const 128)))
  (func (export "canister_update mint")
    (call $dirty)
    (drop (call $mint_cycles (i64.const 1000000000000))))
  (func (export "canister_query qmint")
    (call $mint_cycles128 (i64.const 0) (i64.const 1) (%I.const 128)))
  (func (export "canister_update http_v2")
    (call $dirty)
    (call $cost_http_request_v2 (%I.const 0) (%I.const 8) (%I.const 128)))
  (func (export "canister_update ping") (call $msg_reply))
  (func (export "canister_query sizes")
    (i64.store (%I.const 256) (i64.extend_i32_u (call $in_replicated_execution)))
    (i64.store (%I.const 264) (call $stable64_size))
    (call $msg_reply_data_append (%I.const 256) (%I.const 16))
    (call $msg_reply))
)`))
	return b.String(), imported
}

// Every import of the System API table installs, in both widths where it
// exists; those cordon cannot honour trap only when called, with a message
// naming them, and the trap leaves the canister's state and every balance
// as it was (beyond the execution fee): mint_cycles128 never creates cycles.
func TestEveryImportInstalls(t *testing.T) {
	t.Parallel()
	for _, memory64 := range []bool{false, true} {
		t.Run(width(memory64), func(t *testing.T) {
			forIsolations(t, func(t *testing.T, f *fixture) {
				src, n := everyImportWat(memory64)
				t.Logf("%d ic0 imports", n)
				id := f.install(mustWat(t, src), nil)
				other := f.install(mustWat(t, `(module (memory 1))`), nil)
				ctx := context.Background()
				eq(t, "ping", f.update(id, "ping", nil), []byte{})

				for _, tc := range []struct{ method, want string }{
					{"mint128", "ic0.mint_cycles128 cannot be executed on non Cycles Minting Canister"},
					{"mint128_max", "ic0.mint_cycles128 cannot be executed on non Cycles Minting Canister"},
					{"mint", "ic0.mint_cycles cannot be executed on non Cycles Minting Canister"},
					{"http_v2", "HTTP outcalls: not supported"},
				} {
					before, otherBefore := f.status(id), f.status(other)
					hash := f.memoryHash(id)
					_, err := f.node.Update(ctx, Message{Canister: id, Method: tc.method, Caller: user})
					if r := f.reject(err); r.Code != CanisterError || !strings.Contains(r.Message, tc.want) {
						t.Fatalf("%s: %v, want %q", tc.method, r, tc.want)
					}
					after, otherAfter := f.status(id), f.status(other)
					if f.memoryHash(id) != hash {
						t.Fatalf("%s: the trap left heap or stable memory changed", tc.method)
					}
					fee := after.CyclesBurned.SaturatingSub(before.CyclesBurned)
					if after.Balance.Cmp(before.Balance) > 0 || before.Balance.SaturatingSub(after.Balance) != fee {
						t.Fatalf("%s: balance %s -> %s with %s burned: more than the fee moved", tc.method, before.Balance, after.Balance, fee)
					}
					if after.CyclesMinted != before.CyclesMinted || otherAfter.Balance != otherBefore.Balance {
						t.Fatalf("%s: minted %s -> %s, other canister %s -> %s", tc.method, before.CyclesMinted, after.CyclesMinted, otherBefore.Balance, otherAfter.Balance)
					}
				}
				// Outside its contexts it traps on the context, like every import.
				_, err := f.node.Query(ctx, Message{Canister: id, Method: "qmint", Caller: user})
				if r := f.reject(err); !strings.Contains(r.Message, `"ic0.mint_cycles128" cannot be executed in non-replicated query mode`) {
					t.Fatalf("qmint: %v", r)
				}
				if b := f.query(id, "sizes", nil); len(b) != 16 || b[8] != 0 {
					t.Fatalf("stable memory grew: %x", b)
				}
				f.checkConservation()
			})
		})
	}
}
