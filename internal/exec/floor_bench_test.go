package exec

import (
	"context"
	"net"
	"os"
	"os/exec"
	"testing"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// echoEnv makes the test binary a bare echo process (TestMain): it answers
// every Ping on descriptor 3 with a Pong, unconfined, with no engine.
const echoEnv = "CORDON_EXEC_TEST_ECHO"

// echoMain is the bare echo process: the protocol's round trip between two
// Go processes and nothing else.
func echoMain() int {
	f := os.NewFile(3, "ipc")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return 2
	}
	c := boundary.NewConn(nc.(*net.UnixConn))
	for {
		q, err := c.NextRequest()
		if err != nil {
			return 0
		}
		if q.Kind != boundary.KindPing {
			return 2
		}
		if err := c.Send(&boundary.Msg{Kind: boundary.KindPong, ID: q.ID}); err != nil {
			return 2
		}
	}
}

// pingSandbox sends a Ping to the canister's live sandbox and waits for its
// Pong, through the same acquire, idle watch and release an execution
// takes: one exchange that runs nothing.
func (x *Sandboxed) pingSandbox(ctx context.Context, id string, hash [32]byte) error {
	sb, _, err := x.acquire(ctx, id, hash)
	if err != nil {
		return err
	}
	pid := x.nextID.Add(1)
	err = sb.conn.Send(&boundary.Msg{Kind: boundary.KindPing, ID: pid})
	if err == nil {
		err = sb.conn.AwaitPong(pid, func(boundary.LogLine) {})
	}
	x.watch(sb)
	sb.mu.Unlock()
	x.release(sb, false)
	return err
}

// The floor under a sandboxed query, in one run: a counter query in
// process and in its sandbox, an exchange with that live sandbox that runs
// nothing (ping), and the same Ping and Pong between this process and a
// bare child process (no confinement, no engine). What a sandbox adds to a
// query can go no lower than the bare round trip: two wake-ups of a
// process by another, which cost tens of microseconds on a virtual machine.
func BenchmarkQueryFloor(b *testing.B) {
	wasm := wasmFile(b, corpusDir, "counter")
	query := func(b *testing.B, x Executor) {
		s := newSim(b, x, "floor", wasm)
		s.must(sysapi.CtxInit, "canister_init", empty)
		s.must(sysapi.CtxUpdate, "canister_update inc", empty)
		s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty)
		}
	}
	b.Run("query-inprocess", func(b *testing.B) {
		x, err := NewInProcess(engine.DefaultModuleLimits())
		if err != nil {
			b.Fatal(err)
		}
		query(b, x)
	})
	b.Run("query-sandbox", func(b *testing.B) { query(b, newReal(b)) })
	b.Run("ping-sandbox", func(b *testing.B) {
		x := newReal(b)
		s := newSim(b, x, "floor", wasm)
		s.must(sysapi.CtxInit, "canister_init", empty)
		hash := s.m.handle.(*sbModule).hash
		ctx := context.Background()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := x.pingSandbox(ctx, "floor", hash); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ping-bare-process", func(b *testing.B) {
		host, child, err := boundary.Pair()
		if err != nil {
			b.Fatal(err)
		}
		defer host.Close()
		cf, err := child.File()
		child.Close()
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(os.Args[0])
		cmd.Env = []string{echoEnv + "=1", "GOMAXPROCS=1"} // as a sandbox's
		cmd.ExtraFiles = []*os.File{cf}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		cf.Close()
		defer cmd.Wait()
		defer host.Close() // the echo process ends at end of file
		c := boundary.NewConn(host)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			id := uint64(i + 1)
			if err := c.Send(&boundary.Msg{Kind: boundary.KindPing, ID: id}); err != nil {
				b.Fatal(err)
			}
			if err := c.AwaitPong(id, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
