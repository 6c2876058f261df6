package main

import (
	"context"
	"flag"
	"math/rand/v2"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/api"
)

var crashRounds = flag.Int("crash.rounds", 20, "how many times TestCrashSafety kills the server")

// leb128 decodes the nat of a counter reply (DIDL 00 01 7d <leb>).
func counterValue(t *testing.T, reply []byte) uint64 {
	t.Helper()
	if len(reply) < 8 || string(reply[:7]) != "DIDL\x00\x01\x7d" {
		t.Fatalf("not a nat reply: %x", reply)
	}
	var v uint64
	for i, b := range reply[7:] {
		v |= uint64(b&0x7f) << (7 * i)
		if b&0x80 == 0 {
			break
		}
	}
	return v
}

// TestCrashSafety SIGKILLs a `cordon serve` under a stream of update calls at
// random instants. After each restart the store opens, and the counter is
// the state after some prefix of the calls sent: at least every call that
// was acknowledged, at most every call that was sent. A second server that
// is never killed replays that prefix, and the two state hashes (memories,
// globals, balance, metadata) must be equal.
func TestCrashSafety(t *testing.T) {
	// The storage fee depends on wall-clock time, which the crashed server
	// and the replay do not share; every other fee is deterministic.
	t.Setenv("CORDON_FEES_GIB_STORAGE_PER_SECOND", "0")
	bin := cordonBinary(t)
	home := t.TempDir()
	wasm := counterWasm(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))

	s, c, inst := serveInstalled(t, bin, home, wasm)
	replayHome := t.TempDir()
	replay := startServe(t, bin, replayHome)
	rc, err := api.Dial(ctx, replayHome)
	if err != nil || rc == nil {
		t.Fatalf("Dial replay: %v %v", rc, err)
	}
	defer rc.Close()
	if ri, err := rc.Install(ctx, api.InstallRequest{Wasm: wasm, Arg: noArgs}); err != nil || ri.ID != inst.ID {
		t.Fatalf("replay install: %v %v", ri, err)
	}
	var replayed uint64
	var acked, sent uint64
	for round := 0; round < *crashRounds; round++ {
		// Stream updates from a goroutine; kill the server at a random instant.
		stop := make(chan struct{})
		type result struct{ acked, sent uint64 }
		res := make(chan result, 1)
		go func(acked, sent uint64) {
			for {
				select {
				case <-stop:
					res <- result{acked, sent}
					return
				default:
				}
				sent++
				r, err := c.Call(ctx, api.CallRequest{ID: inst.ID, Method: "inc", Arg: noArgs})
				if err != nil {
					res <- result{acked, sent}
					return
				}
				acked = counterValue(t, r.Reply)
			}
		}(acked, sent)
		time.Sleep(time.Duration(20+rng.IntN(200)) * time.Millisecond)
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.wait(t)
		close(stop)
		r := <-res
		acked, sent = r.acked, r.sent
		c.Close()

		s = startServe(t, bin, home)
		c, err = api.Dial(ctx, home)
		if err != nil || c == nil {
			t.Fatalf("round %d: Dial after restart: %v %v", round, c, err)
		}
		q, err := c.Call(ctx, api.CallRequest{ID: inst.ID, Method: "get", Arg: noArgs, Query: true})
		if err != nil {
			t.Fatalf("round %d: get after restart: %v\n%s", round, err, s.stderr)
		}
		got := counterValue(t, q.Reply)
		if got < acked || got > sent {
			t.Fatalf("round %d: counter %d after the crash; acknowledged %d, sent %d", round, got, acked, sent)
		}
		for ; replayed < got; replayed++ {
			if _, err := rc.Call(ctx, api.CallRequest{ID: inst.ID, Method: "inc", Arg: noArgs}); err != nil {
				t.Fatalf("round %d: replay: %v", round, err)
			}
		}
		st, err := c.Status(ctx, inst.ID)
		if err != nil {
			t.Fatal(err)
		}
		rst, err := rc.Status(ctx, inst.ID)
		if err != nil {
			t.Fatal(err)
		}
		if st.StateHash != rst.StateHash {
			t.Fatalf("round %d: state hash %s after the crash, %s replaying %d calls\n%+v\n%+v", round, st.StateHash, rst.StateHash, got, st, rst)
		}
		t.Logf("round %d: acknowledged %d, sent %d, recovered %s, state hash matches the replay", round, acked, sent, strconv.FormatUint(got, 10))
		// Continue from what survived: an unacknowledged call may or may not have landed.
		acked, sent = got, got
	}
	c.Close()
	s.cmd.Process.Signal(syscall.SIGTERM)
	if code := s.wait(t); code != 0 {
		t.Fatalf("final shutdown: exit %d", code)
	}
	replay.cmd.Process.Signal(syscall.SIGTERM)
	if code := replay.wait(t); code != 0 {
		t.Fatalf("replay shutdown: exit %d", code)
	}
}
