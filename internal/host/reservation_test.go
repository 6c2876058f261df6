package host

import (
	"context"
	"strings"
	"testing"
)

// A commit that fails after the execution reserved its memory in the
// node's ledger (reserveMemory) leaves the ledger at the committed sizes,
// on the install and the update paths alike: the canister does not keep
// capacity it does not have.
func TestFailedCommitReleasesReservation(t *testing.T) {
	t.Parallel()
	grow := `(drop (call $sgrow (i64.const 1000)))`
	wat := `(module
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func (export "canister_post_upgrade") ` + grow + `)
  (func (export "canister_update grow") ` + grow + ` (call $reply)))`
	for _, path := range []string{"upgrade", "update"} {
		t.Run(path, func(t *testing.T) {
			f := newFeelessFixture(t, "inprocess")
			id := f.install(mustWat(t, `(module (memory 1))`), nil)
			if path == "update" {
				f.upgrade(id, mustWat(t, strings.Replace(wat, grow, "", 1)))
			}
			used, _ := f.node.mem.inUse()
			if err := f.node.store.Close(); err != nil { // every commit fails from here
				t.Fatal(err)
			}
			var err error
			if path == "upgrade" {
				_, err = f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: mustWat(t, wat), Caller: user})
			} else {
				_, err = f.node.Update(context.Background(), Message{Canister: id, Method: "grow", Caller: user})
			}
			if err == nil {
				t.Fatal("committed into a closed store")
			}
			if st := f.status(id); st.StableBytes != 0 {
				t.Fatalf("stable memory %d after a failed commit", st.StableBytes)
			}
			if now, _ := f.node.mem.inUse(); now != used {
				t.Fatalf("memory ledger %d bytes after the failed %s, %d before", now, path, used)
			}
		})
	}
}
