package exec_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Differential test: the same messages on an in-process node and on a
// sandboxed node give identical replies, rejects, instruction counts and
// canister status (state hash included) after every step.

func leb(n uint64) []byte {
	var b []byte
	for {
		c := byte(n & 0x7f)
		n >>= 7
		if n != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

var noArgs = []byte("DIDL\x00\x00")

func natArg(n uint64) []byte { return append([]byte("DIDL\x00\x01\x7d"), leb(n)...) }
func textArg(s string) []byte {
	return append(append([]byte("DIDL\x00\x01\x71"), leb(uint64(len(s)))...), s...)
}
func twoTextArg(a, b string) []byte {
	out := []byte("DIDL\x00\x02\x71\x71")
	out = append(append(out, leb(uint64(len(a)))...), a...)
	return append(append(out, leb(uint64(len(b)))...), b...)
}
func blobArg(b []byte) []byte {
	return append(append([]byte("DIDL\x01\x6d\x7b\x01\x00"), leb(uint64(len(b)))...), b...)
}
func readArg(off, size uint64) []byte {
	return append(binary.LittleEndian.AppendUint64([]byte("DIDL\x00\x02\x78\x7d"), off), leb(size)...)
}

// step is one operation: an update, a query, or an upgrade (method "").
type step struct {
	query  bool
	method string
	arg    []byte
}

func upd(m string, a []byte) step { return step{method: m, arg: a} }
func qry(m string, a []byte) step { return step{query: true, method: m, arg: a} }

var upgrade = step{}

type node struct {
	name string
	n    *host.Node
	id   principal.Principal
}

func openNode(t *testing.T, isolation string) *node {
	cfg := host.DefaultConfig()
	cfg.Home = t.TempDir()
	cfg.Isolation = isolation
	// The storage fee depends on the wall-clock time between messages,
	// which differs between the two nodes; it is the host's arithmetic,
	// the same in both modes (internal/host tests it with a fake clock).
	cfg.Fees.GiBStoragePerSecond = 0
	cfg.UpdateInstructions = 2_000_000_000
	cfg.HeapBytes32 = 256 << 20
	n, err := host.Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &node{name: isolation, n: n}
}

// outcome is what a step produced, comparable across nodes.
type outcome struct {
	Reply        []byte
	Instructions uint64
	Reject       string
	Status       string // the canister's status as JSON, state hash included
}

func (nd *node) do(t *testing.T, s step, wasm []byte) outcome {
	ctx := context.Background()
	user := principal.Anonymous()
	var o outcome
	var err error
	switch {
	case s.method == "":
		_, err = nd.n.Install(ctx, nd.id, host.InstallOptions{Mode: host.ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user, KeepEOPByDefault: true})
	case s.query:
		var r *host.Reply
		if r, err = nd.n.Query(ctx, host.Message{Canister: nd.id, Method: s.method, Arg: s.arg, Caller: user}); err == nil {
			o.Reply, o.Instructions = r.Data, r.Instructions
		}
	default:
		var r *host.Reply
		if r, err = nd.n.Update(ctx, host.Message{Canister: nd.id, Method: s.method, Arg: s.arg, Caller: user}); err == nil {
			o.Reply, o.Instructions = r.Data, r.Instructions
		}
	}
	var rej *host.Reject
	switch {
	case errors.As(err, &rej):
		o.Reject = fmt.Sprintf("%d %s", rej.Code, rej.Message)
	case err != nil:
		t.Fatalf("%s: %s: %v", nd.name, s.method, err)
	}
	o.Status = statusJSON(t, nd.n, nd.id)
	return o
}

// statusJSON is a canister's status as the two modes must agree on it:
// all of it but the isolation mode it runs in.
func statusJSON(t testing.TB, n *host.Node, id principal.Principal) string {
	t.Helper()
	st, err := n.Status(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	st.Isolation = ""
	b, _ := json.Marshal(st)
	return string(b)
}

func differential(t *testing.T, dir, name string, steps []step) {
	wasm, err := os.ReadFile(filepath.Join(dir, name+".wasm"))
	if err != nil {
		t.Fatal(err)
	}
	nodes := []*node{openNode(t, "inprocess"), openNode(t, "sandbox")}
	var installs []string
	for _, nd := range nodes {
		ctx := context.Background()
		id, err := nd.n.Create(ctx, host.CreateOptions{Controllers: []principal.Principal{principal.Anonymous()}})
		if err != nil {
			t.Fatal(err)
		}
		nd.id = id
		res, err := nd.n.Install(ctx, id, host.InstallOptions{Mode: host.ModeInstall, Wasm: wasm, Arg: noArgs, Caller: principal.Anonymous()})
		if err != nil {
			t.Fatalf("%s: install: %v", nd.name, err)
		}
		installs = append(installs, fmt.Sprintf("%d %s", res.Instructions, statusJSON(t, nd.n, id)))
	}
	if installs[0] != installs[1] {
		t.Fatalf("install differs:\n%s\n%s", installs[0], installs[1])
	}
	for i, s := range steps {
		a, b := nodes[0].do(t, s, wasm), nodes[1].do(t, s, wasm)
		if !bytes.Equal(a.Reply, b.Reply) || a.Instructions != b.Instructions || a.Reject != b.Reject || a.Status != b.Status {
			t.Fatalf("step %d %q differs:\nin-process: %+v\nsandboxed:  %+v", i, s.method, a, b)
		}
		what := s.method
		if what == "" {
			what = "upgrade"
		}
		if a.Reject != "" {
			t.Logf("%s: reject %s", what, a.Reject)
		} else {
			t.Logf("%s: %d instructions, reply %x", what, a.Instructions, a.Reply)
		}
	}
}

func counterSteps() []step {
	return []step{upd("inc", noArgs), upd("inc", noArgs), upd("add", natArg(5)), qry("get", noArgs),
		qry("greet", textArg("Bob")), upd("nope", noArgs), upgrade, qry("get", noArgs), upd("inc", noArgs)}
}

func kvSteps() []step {
	return []step{upd("put", twoTextArg("a", "1")), upd("put", twoTextArg("b", "2")), qry("get", textArg("a")),
		qry("get", textArg("zz")), qry("size", noArgs), upd("delete", textArg("b")), qry("size", noArgs),
		qry("whoami", noArgs), qry("keys", noArgs), upd("put", []byte("garbage")), upgrade, qry("get", textArg("a"))}
}

func stableSteps() []step {
	data := bytes.Repeat([]byte("cordon"), 20000)
	return []step{upd("append", blobArg(data)), upd("append", blobArg([]byte("tail"))), qry("usedBytes", noArgs),
		qry("read", readArg(6, 12)), qry("pages", noArgs), upgrade, qry("read", readArg(uint64(len(data)), 4))}
}

func TestDifferentialCounter(t *testing.T)   { differential(t, corpus, "counter", counterSteps()) }
func TestDifferentialCounter64(t *testing.T) { differential(t, examples, "counter64", counterSteps()) }
func TestDifferentialKV(t *testing.T)        { differential(t, corpus, "kv", kvSteps()) }
func TestDifferentialKV64(t *testing.T)      { differential(t, examples, "kv64", kvSteps()) }
func TestDifferentialStable(t *testing.T)    { differential(t, corpus, "stable", stableSteps()) }
func TestDifferentialStable64(t *testing.T)  { differential(t, examples, "stable64", stableSteps()) }

func TestDifferentialCompute(t *testing.T) {
	differential(t, corpus, "compute", []step{qry("primes", natArg(1000)), qry("fib", natArg(20)),
		qry("hash", natArg(1000)), upd("spin", noArgs), qry("fib", natArg(15))})
}

func TestDifferentialCompute64(t *testing.T) {
	differential(t, examples, "compute64", []step{qry("primes", natArg(1000)), qry("fib", natArg(20)),
		upd("spin", noArgs), qry("fib", natArg(15))})
}

func TestDifferentialTraps(t *testing.T) {
	differential(t, corpus, "traps", []step{qry("get", noArgs), upd("setThenTrap", natArg(5)), qry("get", noArgs),
		upd("assertFalse", noArgs), upd("outOfBounds", natArg(10)), upd("divZero", natArg(0)),
		upd("deepRecursion", natArg(100_000_000)), upd("exhaustMemory", noArgs), qry("get", noArgs)})
}

func TestDifferentialTraps64(t *testing.T) {
	differential(t, examples, "traps64", []step{qry("get", noArgs), upd("setThenTrap", natArg(5)),
		upd("assertFalse", noArgs), upd("outOfBounds", natArg(10)), upd("divZero", natArg(0)), qry("get", noArgs)})
}

var (
	corpus   = filepath.Join("..", "..", "..", "shared", "canisters")
	examples = filepath.Join("..", "..", "examples")
)

// Multi-canister scenarios (inter-canister calls, composite queries, the
// management canister): the same script on both nodes, every outcome and
// the final status of every canister compared.

func candidArg(t *testing.T, text string) []byte {
	t.Helper()
	a, err := candid.ParseArgs(text)
	if err != nil {
		t.Fatal(err)
	}
	b, err := candid.EncodeArgs(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func replyText(b []byte) string {
	a, err := candid.Decode(b)
	if err != nil {
		return fmt.Sprintf("%x", b)
	}
	return a.String()
}

// script records outcomes on one node.
type script struct {
	t   *testing.T
	n   *host.Node
	out []string
}

func (s *script) record(what string, r *host.Reply, err error) string {
	var rej *host.Reject
	switch {
	case errors.As(err, &rej):
		s.out = append(s.out, fmt.Sprintf("%s: reject %d %s", what, rej.Code, rej.Message))
		return ""
	case err != nil:
		s.t.Fatalf("%s: %v", what, err)
	}
	s.out = append(s.out, fmt.Sprintf("%s: %s (%d instructions)", what, replyText(r.Data), r.Instructions))
	return replyText(r.Data)
}

func (s *script) install(wasm []byte) principal.Principal {
	ctx := context.Background()
	id, err := s.n.Create(ctx, host.CreateOptions{Controllers: []principal.Principal{principal.Anonymous()}})
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.n.Install(ctx, id, host.InstallOptions{Mode: host.ModeInstall, Wasm: wasm, Arg: noArgs, Caller: principal.Anonymous()}); err != nil {
		s.t.Fatal(err)
	}
	return id
}

func (s *script) update(id principal.Principal, method, arg string) string {
	r, err := s.n.Update(context.Background(), host.Message{Canister: id, Method: method, Arg: candidArg(s.t, arg), Caller: principal.Anonymous()})
	return s.record(method, r, err)
}

func (s *script) query(id principal.Principal, method, arg string) string {
	r, err := s.n.Query(context.Background(), host.Message{Canister: id, Method: method, Arg: candidArg(s.t, arg), Caller: principal.Anonymous()})
	return s.record(method, r, err)
}

func (s *script) statuses() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.n.Quiesce(ctx); err != nil {
		s.t.Fatal(err)
	}
	ids, err := s.n.List()
	if err != nil {
		s.t.Fatal(err)
	}
	for _, id := range ids {
		s.out = append(s.out, statusJSON(s.t, s.n, id))
	}
}

func scenario(t *testing.T, run func(s *script)) {
	var results [][]string
	for _, iso := range []string{"inprocess", "sandbox"} {
		s := &script{t: t, n: openNode(t, iso).n}
		run(s)
		s.statuses()
		results = append(results, s.out)
	}
	a, b := results[0], results[1]
	for i := range max(len(a), len(b)) {
		if i >= len(a) || i >= len(b) || a[i] != b[i] {
			t.Fatalf("outcome %d differs:\nin-process: %v\nsandboxed:  %v", i, a[min(i, len(a)-1)], b[min(i, len(b)-1)])
		}
		t.Log(a[i])
	}
}

func TestDifferentialCompositeQuery(t *testing.T) {
	comp, err := os.ReadFile(filepath.Join(examples, "composite64.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	counter, _ := os.ReadFile(filepath.Join(corpus, "counter.wasm"))
	scenario(t, func(s *script) {
		a, b, c := s.install(comp), s.install(comp), s.install(counter)
		s.update(c, "add", "(5 : nat)")
		s.query(a, "sumOf", fmt.Sprintf("(vec { principal %q; principal %q; principal %q })", a, b, c))
		s.query(a, "sumOf", fmt.Sprintf("(vec { principal %q })", principal.CanisterID(999)))
		s.update(a, "sumOf", fmt.Sprintf("(vec { principal %q })", b))
		s.query(b, "get", "()")
	})
}

func TestDifferentialActorClass(t *testing.T) {
	factory, err := os.ReadFile(filepath.Join(examples, "factory64.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	scenario(t, func(s *script) {
		f := s.install(factory)
		child := s.update(f, "spawn", "(41 : nat)")
		s.update(f, "incChild", "(0 : nat)")
		if id, ok := strings.CutPrefix(strings.TrimSuffix(child, "\")"), "(principal \""); ok {
			if p, err := principal.FromText(id); err == nil {
				s.query(p, "get", "()")
			}
		}
		s.update(f, "spawn", "(0 : nat)")
		s.query(f, "count", "()")
		if _, err := s.n.Install(context.Background(), f, host.InstallOptions{Mode: host.ModeUpgrade, Wasm: factory, Arg: noArgs, Caller: principal.Anonymous(), KeepEOPByDefault: true}); err != nil {
			t.Fatal(err)
		}
		s.query(f, "count", "()")
		s.update(f, "incChild", "(0 : nat)")
		s.update(f, "incChild", "(9 : nat)")
	})
}
