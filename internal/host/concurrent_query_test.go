package host

import (
	"context"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"testing"
)

// twoWordsWat bumps word A, computes a while, then copies A to word B two
// Wasm pages further; its query writes garbage into A (private to it) and
// traps if the two words it read differ.
const twoWordsWat = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory (export "memory") 4)
  (data (i32.const 100) "torn")
  (func $spin (param $n i32)
    (loop $l
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l (i32.gt_s (local.get $n) (i32.const 0)))))
  (func (export "canister_update bump")
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (call $spin (i32.const 200000))
    (i32.store (i32.const 131072) (i32.load (i32.const 0)))
    (i32.store (i32.const 200) (i32.load (i32.const 0)))
    (call $append (i32.const 200) (i32.const 4))
    (call $reply))
  (func (export "canister_query check")
    (local $a i32)
    (local.set $a (i32.load (i32.const 0)))
    (i32.store (i32.const 0) (i32.add (local.get $a) (i32.const 1000)))
    (call $spin (i32.const 200000))
    (if (i32.ne (local.get $a) (i32.load (i32.const 131072)))
      (then (call $trap (i32.const 100) (i32.const 4))))
    (i32.store (i32.const 200) (local.get $a))
    (call $append (i32.const 200) (i32.const 4))
    (call $reply)))`

// Concurrent queries of one canister while its updates commit, through the
// node in both isolation modes: every query is answered, sees a committed
// state (the two words agree), never an older one than a query before it
// in the same client saw, and both modes end with the same answers.
func TestConcurrentQueriesWhileUpdating(t *testing.T) {
	t.Parallel()
	const bumps, clients = 12, 6
	final := map[string]uint32{}
	for _, iso := range []string{"inprocess", "sandbox"} {
		t.Run(iso, func(t *testing.T) {
			cfg := testConfig(t, iso)
			cfg.Sandbox.Strict = true
			cfg.Sandbox.QueryThreads = 4
			f := openFixture(t, cfg)
			id := f.install(mustWat(t, twoWordsWat), noArgs)
			ctx := context.Background()
			word := func(b []byte) uint32 {
				if len(b) != 4 {
					t.Errorf("reply %x", b)
					return 0
				}
				return binary.LittleEndian.Uint32(b)
			}
			var committed atomic.Uint32
			done := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer close(done)
				for i := 1; i <= bumps; i++ {
					r, err := f.node.Update(ctx, Message{Canister: id, Method: "bump", Arg: noArgs, Caller: user})
					if err != nil {
						t.Errorf("bump %d: %v", i, err)
						return
					}
					if got := word(r.Data); got != uint32(i) {
						t.Errorf("bump %d answered %d", i, got)
					}
					committed.Store(uint32(i))
				}
			}()
			var answered atomic.Int64
			for c := 0; c < clients; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					last := uint32(0)
					for i := 0; ; i++ {
						select {
						case <-done:
							if i >= 3 {
								return
							}
						default:
						}
						floor := committed.Load()
						r, err := f.node.Query(ctx, Message{Canister: id, Method: "check", Arg: noArgs, Caller: user})
						if err != nil {
							t.Errorf("query: %v", err)
							return
						}
						got := word(r.Data)
						if got < floor || got < last || got > bumps {
							t.Errorf("query saw %d after %d was committed (its previous answer %d)", got, floor, last)
							return
						}
						last = got
						answered.Add(1)
					}
				}()
			}
			wg.Wait()
			final[iso] = word(f.query(id, "check", noArgs))
			t.Logf("%d queries answered", answered.Load())
		})
	}
	if final["inprocess"] != bumps || final["sandbox"] != bumps {
		t.Fatalf("final answers: %v", final)
	}
}
