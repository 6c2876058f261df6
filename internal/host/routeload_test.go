package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/cordon-dev/cordon/internal/exec"
)

// heldPrepare holds the preparation of one module until its context ends,
// as a compilation that does not end does; a context that cannot end is
// reported on noEnd (and the preparation fails at once, so that a test
// without the fix ends).
type heldPrepare struct {
	exec.Executor
	module  [32]byte
	entered chan struct{}
	ended   chan error
	noEnd   chan struct{}
}

func (x *heldPrepare) Prepare(ctx context.Context, wasm []byte) (*exec.Module, error) {
	if sha256.Sum256(wasm) != x.module {
		return x.Executor.Prepare(ctx, wasm)
	}
	if ctx.Done() == nil {
		close(x.noEnd)
		return nil, errors.New("held preparation: its context cannot end")
	}
	close(x.entered)
	<-ctx.Done()
	x.ended <- ctx.Err()
	return nil, ctx.Err()
}

// A call to a canister that is not loaded loads it on the caller's way
// (route): its compilation must end when the node gives its executions
// up (Close, after the drain), not hold the caller's goroutine forever.
// It used context.Background().
func TestRouteLoadEndsWithTheNode(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "inprocess")
	f := openFixture(t, cfg)
	counterWasm := module(t, corpusDir, "counter")
	relay := f.install(module(t, corpusDir, "relay"), noArgs)
	counter := f.install(counterWasm, noArgs)
	f.restart()
	relaySelf := append(append([]byte("DIDL\x00\x01\x68\x01"), leb(uint64(len(relay.Bytes())))...), relay.Bytes()...)
	if got := f.query(relay, "self", noArgs); !bytes.Equal(got, relaySelf) { // loaded; counter is not
		t.Fatalf("relay.self: %x", got)
	}
	held := &heldPrepare{Executor: f.node.exec, module: sha256.Sum256(counterWasm),
		entered: make(chan struct{}), ended: make(chan error, 1), noEnd: make(chan struct{})}
	f.node.exec = held

	arg := append(append([]byte("DIDL\x00\x01\x68\x01"), leb(uint64(len(counter.Bytes())))...), counter.Bytes()...)
	done := make(chan error, 1)
	go func() {
		_, err := f.node.Update(context.Background(), Message{Canister: relay, Method: "tryGet", Arg: arg, Caller: user})
		done <- err
	}()
	select {
	case <-held.noEnd:
		t.Fatal("the callee's load was given a context that cannot end: nothing can stop its compilation")
	case <-held.entered:
	}
	f.node.giveUp() // what Close does after the drain timeout
	if err := <-held.ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("the held load ended with %v", err)
	}
	err := <-done
	t.Logf("the call: %v", err)
	var rej *Reject
	if err != nil && !errors.As(err, &rej) {
		t.Fatalf("the call ended with %v, not a reject", err)
	}
}
