package host

import (
	"context"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// ic0Loops calls the cheapest ic0 import in loops: a thousand times, and
// until the instruction limit.
const ic0Loops = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "canister_status" (func $status (result i32)))
  (func (export "canister_query thousand") (local $i i32)
    (loop $l (drop (call $status)) (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))
    (call $reply))
  (func (export "canister_query forever") (loop $l (drop (call $status)) (br $l))))`

// An ic0 call costs the host microseconds (a cgo callback), a thousand
// times a Wasm instruction; a canister calling the cheapest import in a
// loop is charged for that, so a free query spinning on ic0 calls reaches
// its instruction limit in seconds, and ends with the same deterministic
// limit trap in both isolation modes, not a watchdog kill (sandbox, after
// a minute of CPU) or minutes of host CPU (in-process).
func TestIC0LoopChargedForHostCPU(t *testing.T) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newModeFixture(t, mode)
			id := f.install(mustWat(t, ic0Loops), nil)
			r, err := f.node.Query(context.Background(), Message{Canister: id, Method: "thousand", Caller: user})
			if err != nil {
				t.Fatal(err)
			}
			// At least 5,000 instructions a call (1 µs at plain Wasm's
			// 0.2 ns an instruction); it was 25 with the loop.
			if r.Instructions < 1000*5000 {
				t.Fatalf("1,000 ic0 calls charged %d instructions", r.Instructions)
			}
			_, err = f.node.Query(context.Background(), Message{Canister: id, Method: "forever", Caller: user})
			rej := f.reject(err)
			if rej.Code != CanisterError || !strings.Contains(rej.Message, sysapi.ErrInstructionLimit.Message) {
				t.Fatalf("forever: %v, want the instruction limit", err)
			}
			// The host is fine: the canister still answers.
			if _, err := f.node.Query(context.Background(), Message{Canister: id, Method: "thousand", Caller: user}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
