package host

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// selfFanoutWat: the composite query "cq" calls itself three times; each
// callback replies. Only the composite query's instruction budget ends it.
const selfFanoutWat = `
(module
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (table 1 funcref)
  (elem (i32.const 0) $answer)
  (data (i32.const 100) "cq")
  (func $answer (param i32) (call $reply))
  (func (export "canister_composite_query cq")
    (local $n i32) (local $i i32)
    (local.set $n (call $self_size))
    (call $self_copy (i32.const 0) (i32.const 0) (local.get $n))
    (loop $l
      (call $call_new (i32.const 0) (local.get $n) (i32.const 100) (i32.const 2)
        (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
      (drop (call $call_perform))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const 3))))))`

// lyingSandbox is a real, confined sandbox whose answers pass through a
// relay that may rewrite them (relayExecutor): with zeroInstructions, a
// compromised sandbox reporting that its executions cost nothing.
type lyingSandbox struct {
	*sandbox.Process
	host *net.UnixConn
}

func (p *lyingSandbox) Conn() *net.UnixConn { return p.host }

// relay copies packets (and their descriptors) from src to dst until
// either end closes, passing each through edit.
func relay(src, dst *net.UnixConn, edit func([]byte)) {
	relayUntil(src, dst, func(pkt []byte) bool { edit(pkt); return true })
}

// relayUntil is relay whose act sees each packet before it goes (it may
// edit it, or block: a sandbox that sends slowly) and may end the stream
// instead of sending it (false: a sandbox that dies there).
func relayUntil(src, dst *net.UnixConn, act func([]byte) bool) {
	defer dst.Close()
	buf := make([]byte, boundary.MaxPacket)
	oob := make([]byte, unix.CmsgSpace(4*(boundary.MaxFDs+1)))
	for {
		n, oobn, _, _, err := src.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return
		}
		if !act(buf[:n]) {
			closeRights(oob[:oobn])
			return
		}
		_, _, werr := dst.WriteMsgUnix(buf[:n], oob[:oobn], nil)
		closeRights(oob[:oobn]) // dst has its own copies
		if werr != nil {
			return
		}
	}
}

// closeRights closes the descriptors a packet's control message brought.
func closeRights(oob []byte) {
	if msgs, err := unix.ParseSocketControlMessage(oob); err == nil {
		for _, m := range msgs {
			fds, _ := unix.ParseUnixRights(&m)
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
}

// zeroInstructions is a relay edit that, while lie is set, rewrites the
// instruction count of every Output to 0 (its first field).
func zeroInstructions(lie *atomic.Bool) func(pkt []byte) {
	return func(pkt []byte) {
		if lie.Load() && len(pkt) >= boundary.HeaderSize+8 && boundary.Kind(pkt[0]) == boundary.KindOutput {
			clear(pkt[boundary.HeaderSize : boundary.HeaderSize+8])
		}
	}
}

// countQueries counts the query executions that returned an output.
type countQueries struct {
	exec.Executor
	execs atomic.Int64
}

func (c *countQueries) Execute(ctx context.Context, id string, req *exec.Request) (*sysapi.Output, error) {
	out, err := c.Executor.Execute(ctx, id, req)
	if err == nil && req.Input.Context.IsQuery() {
		c.execs.Add(1)
	}
	return out, err
}

// Audit: a composite query's instruction budget shrinks by what each of its
// executions reports. A sandbox reporting 0 instructions made one query of
// a canister calling itself fan out to thousands of executions (with a
// budget of 100 000 instructions: 37 honest, 2185 lying). Its first output
// with calls now proves more than 0 instructions: the sandbox is killed and
// the query answered with an error after that one execution; the host
// stays fine and the next honest sandbox serves the same query.
func TestAuditCompositeQueryLyingInstructions(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "sandbox")
	// Room for dozens of executions with calls: each call costs the graph
	// queryCallInstructions (50 M, the IC's) and each ic0 call
	// sysapi.CallOverhead.
	cfg.QueryInstructions = 40 * queryCallInstructions
	f := openFixture(t, cfg)

	var lie atomic.Bool
	x, ok := relayExecutor(t, cfg, zeroInstructions(&lie)).(*exec.Sandboxed)
	if !ok {
		t.Fatal("relayExecutor is not an *exec.Sandboxed: its Stats are needed")
	}
	f.node.exec.Close()
	counted := &countQueries{Executor: x}
	f.node.exec = counted

	id := f.install(mustWat(t, selfFanoutWat), nil)
	query := func() (int64, error) {
		counted.execs.Store(0)
		_, err := f.node.Query(context.Background(), Message{Canister: id, Method: "cq", Caller: user})
		return counted.execs.Load(), err
	}
	honest, herr := query()
	t.Logf("honest sandbox: %d query executions (%v)", honest, herr)
	if honest < 10 {
		t.Fatalf("%d honest query executions: the budget does not let the graph fan out", honest)
	}

	lie.Store(true)
	lying, err := query()
	t.Logf("lying sandbox: %d query executions: %v", lying, err)
	var r *Reject
	if !errors.As(err, &r) || r.Code != CanisterError || !strings.Contains(r.Message, "instructions") {
		t.Fatalf("want a canister error naming the instruction count, got %v", err)
	}
	if lying != 0 {
		t.Fatalf("%d query executions accepted from a sandbox reporting 0 instructions (honest: %d)", lying, honest)
	}
	if v := x.Stats().Violations[boundary.VInstructions.String()]; v == 0 {
		t.Fatalf("no instruction violation counted: %v", x.Stats().Violations)
	}

	lie.Store(false)
	again, err := query()
	if again != honest || (err == nil) != (herr == nil) {
		t.Fatalf("after the lying sandbox: %d executions (%v), before %d (%v)", again, err, honest, herr)
	}
}
