package exec

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// At most 2 × GOMAXPROCS executions run in-process at once: one more waits
// for a slot (and gives up with its context), then runs once one is free.
func TestInProcessBoundsConcurrency(t *testing.T) {
	x, err := NewInProcess(engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	wasm, err := wasmtime.Wat2Wasm(`(module
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (func (export "canister_query spin") (loop $l (br $l)))
  (func (export "canister_query quick") (call $reply)))`)
	if err != nil {
		t.Fatal(err)
	}
	s := newSim(t, x, "bound", wasm)
	slots := 2 * runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for i := 0; i < slots; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spins until its 4 G instructions run out: a second or more.
			in := s.input(sysapi.CtxNonReplicatedQuery, "canister_query spin", empty)
			in.Limits.Instructions = 4_000_000_000
			out, err := x.Execute(context.Background(), s.id, &Request{Module: s.m, RunStart: true, Input: in})
			if err != nil || !out.Trapped {
				t.Errorf("spin: %v %+v", err, out)
			}
		}()
	}
	// Wait until the spins hold every slot.
	for deadline := time.Now().Add(10 * time.Second); len(x.running) < slots; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d slots taken", len(x.running), slots)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req := &Request{Module: s.m, RunStart: true, Input: s.input(sysapi.CtxNonReplicatedQuery, "canister_query quick", empty)}
	if _, err := x.Execute(ctx, s.id, req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("an execution beyond %d ran or failed otherwise: %v", slots, err)
	}
	wg.Wait()
	if out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query quick", empty); out.Trapped {
		t.Fatal(out.TrapMessage)
	}
}
