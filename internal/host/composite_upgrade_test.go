package host

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// snapUpgradeWat is snapWat with a pre_upgrade that writes 99 to heap[0]
// and a post_upgrade that traps when heap[4] is 7 ("arm" sets it).
var snapUpgradeWat = strings.Replace(snapWat, `(func (export "canister_update inc")`, `(func (export "canister_pre_upgrade") (i32.store (i32.const 0) (i32.const 99)))
  (func (export "canister_post_upgrade") (if (i32.eq (i32.load (i32.const 4)) (i32.const 7)) (then unreachable)))
  (func (export "canister_update arm") (i32.store (i32.const 4) (i32.const 7)) (call $reply))
  (func (export "canister_update inc")`, 1)

// A composite query whose callee is still running while its caller is
// upgraded with its heap kept (the caller's memories are forked and their
// images handed over, pre_upgrade's pages written into them) finishes on
// its snapshot or is refused; it never sees the upgrade's writes. The same
// when the upgrade fails and the images go back to the old memories.
func TestCompositeQueryAcrossKeptHeapUpgrade(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		for _, fail := range []bool{false, true} {
			name := mode + "/ok"
			if fail {
				name = mode + "/fails"
			}
			t.Run(name, func(t *testing.T) {
				f := newFeelessFixture(t, mode)
				wasm := eopWat(t, snapUpgradeWat) // keep needs enhanced orthogonal persistence
				x := f.install(wasm, nil)
				y := f.install(wasm, nil)
				f.update(x, "inc", nil) // heap[0] = 1
				if fail {
					f.update(x, "arm", nil)
				}
				held := newGate()
				defer held.open()
				f.node.exec = &gatedExec{Executor: f.node.exec, hold: func(id string, in *sysapi.Input) *gate {
					if id == y.String() && in.Context == sysapi.CtxNonReplicatedQuery {
						return held
					}
					return nil
				}}
				type answer struct {
					data []byte
					err  error
				}
				qdone := make(chan answer, 1)
				go func() {
					r, err := f.node.Query(context.Background(), Message{Canister: x, Method: "cq", Arg: y.Bytes(), Caller: user})
					if err != nil {
						qdone <- answer{err: err}
						return
					}
					qdone <- answer{data: r.Data}
				}()
				held.await(t, "the callee's execution")
				keep := true
				_, err := f.node.Install(context.Background(), x, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Caller: user, KeepHeap: &keep})
				if (err != nil) != fail {
					t.Fatalf("upgrade: %v", err)
				}
				held.open()
				a := <-qdone
				t.Logf("composite query: %x %v", a.data, a.err)
				if a.err == nil {
					if len(a.data) != 8 || binary.LittleEndian.Uint32(a.data) != 1 || binary.LittleEndian.Uint32(a.data[4:]) != 1 {
						t.Fatalf("the callback saw %x, want heap[0] = 1 and its copy 1 (the snapshot)", a.data)
					}
				}
				want := uint32(99)
				if fail {
					want = 1
				}
				if got := binary.LittleEndian.Uint32(f.query(x, "get", nil)); got != want {
					t.Fatalf("heap[0] = %d after the upgrade, want %d", got, want)
				}
				f.restart()
				if got := binary.LittleEndian.Uint32(f.query(x, "get", nil)); got != want {
					t.Fatalf("heap[0] = %d after restart, want %d", got, want)
				}
			})
		}
	}
}
