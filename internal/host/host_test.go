package host

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Minimal hand-written Candid for host tests (pkg/candid is tested on its own).
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

func natArg(n uint64) []byte   { return append([]byte("DIDL\x00\x01\x7d"), leb(n)...) }
func natReply(n uint64) []byte { return natArg(n) }
func textArg(s string) []byte {
	return append(append([]byte("DIDL\x00\x01\x71"), leb(uint64(len(s)))...), s...)
}
func twoTextArg(a, b string) []byte {
	out := []byte("DIDL\x00\x02\x71\x71")
	out = append(append(out, leb(uint64(len(a)))...), a...)
	return append(append(out, leb(uint64(len(b)))...), b...)
}
func natPairArg(a, b uint64) []byte {
	out := []byte("DIDL\x00\x02\x7d\x7d")
	return append(append(out, leb(a)...), leb(b)...)
}

func module(t testing.TB, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name+".wasm"))
	if err != nil {
		t.Fatalf("module %s: %v", name, err)
	}
	return b
}

var (
	corpusDir   = filepath.Join("..", "..", "..", "shared", "canisters")
	examplesDir = filepath.Join("..", "..", "examples")
	user        = principal.Anonymous()
)

type fixture struct {
	t    *testing.T
	home string
	cfg  Config
	log  *slog.Logger // the node's log, kept across restarts (nil: discarded)
	node *Node
}

func newFixture(t *testing.T) *fixture {
	cfg := testConfig(t, "")
	cfg.UpdateInstructions = 2_000_000_000 // keep `spin` short
	return openFixture(t, cfg)
}

// testConfig is the default configuration on a new home, in the given
// isolation mode ("" keeps the default).
func testConfig(t testing.TB, isolation string) Config {
	cfg := DefaultConfig()
	cfg.Home = t.TempDir()
	if isolation != "" {
		cfg.Isolation = isolation
	}
	return cfg
}

// openFixture opens a node of cfg, closed when the test ends.
func openFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	return openLoggedFixture(t, cfg, nil)
}

// openLoggedFixture is openFixture with the node logging to log.
func openLoggedFixture(t *testing.T, cfg Config, log *slog.Logger) *fixture {
	t.Helper()
	f := &fixture{t: t, home: cfg.Home, cfg: cfg, log: log}
	f.open()
	t.Cleanup(func() { f.node.Close() })
	return f
}

func (f *fixture) open() {
	n, err := Open(f.cfg, f.log)
	if err != nil {
		f.t.Fatal(err)
	}
	f.node = n
}

// restart closes the node and opens the store again, as a new process would.
func (f *fixture) restart() {
	if err := f.node.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.open()
}

func (f *fixture) install(wasm []byte, arg []byte) principal.Principal {
	f.t.Helper()
	id, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeInstall, Wasm: wasm, Arg: arg, Caller: user}); err != nil {
		f.t.Fatalf("install: %v", err)
	}
	return id
}

// upgrade upgrades id as the CLI does: the heap kept when the installed
// module uses enhanced orthogonal persistence.
func (f *fixture) upgrade(id principal.Principal, wasm []byte) {
	f.t.Helper()
	if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user, KeepEOPByDefault: true}); err != nil {
		f.t.Fatalf("upgrade: %v", err)
	}
}

func (f *fixture) update(id principal.Principal, method string, arg []byte) []byte {
	f.t.Helper()
	r, err := f.node.Update(context.Background(), Message{Canister: id, Method: method, Arg: arg, Caller: user})
	if err != nil {
		f.t.Fatalf("update %s: %v", method, err)
	}
	return r.Data
}

func (f *fixture) query(id principal.Principal, method string, arg []byte) []byte {
	f.t.Helper()
	r, err := f.node.Query(context.Background(), Message{Canister: id, Method: method, Arg: arg, Caller: user})
	if err != nil {
		f.t.Fatalf("query %s: %v", method, err)
	}
	return r.Data
}

func (f *fixture) reject(err error) *Reject {
	f.t.Helper()
	var r *Reject
	if !errors.As(err, &r) {
		f.t.Fatalf("want a reject, got %v", err)
	}
	return r
}

// memoryHash hashes what a message can change in memory: heap, stable, globals.
func (f *fixture) memoryHash(id principal.Principal) [32]byte {
	c, err := f.node.get(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	h := state.NewHasher()
	h.Memory("heap", c.heap)
	h.Memory("stable", c.stable)
	h.Globals(c.globals)
	return h.Sum()
}

func eq(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %q want %q", what, got, want)
	}
}

// Each Test that calls it runs in parallel (t.Parallel).
func testCounter(t *testing.T, dir, name string) {
	t.Parallel()
	f := newFixture(t)
	wasm := module(t, dir, name)
	id := f.install(wasm, noArgs)
	eq(t, "inc", f.update(id, "inc", noArgs), natReply(1))
	eq(t, "inc", f.update(id, "inc", noArgs), natReply(2))
	eq(t, "add", f.update(id, "add", natArg(5)), natReply(7))
	eq(t, "get", f.query(id, "get", noArgs), natReply(7))
	eq(t, "greet", f.query(id, "greet", textArg("Bob")), textArg("Hello, Bob!"))

	before, _ := f.node.Status(context.Background(), id)
	f.restart()
	after, _ := f.node.Status(context.Background(), id)
	if before.StateHash != after.StateHash {
		t.Fatalf("state hash changed across restart: %s vs %s", before.StateHash, after.StateHash)
	}
	eq(t, "get after restart", f.query(id, "get", noArgs), natReply(7))
	f.upgrade(id, wasm)
	eq(t, "get after upgrade", f.query(id, "get", noArgs), natReply(7))
	eq(t, "inc after upgrade", f.update(id, "inc", noArgs), natReply(8))
	f.restart()
	eq(t, "get after upgrade+restart", f.query(id, "get", noArgs), natReply(8))

	if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeReinstall, Wasm: wasm, Arg: noArgs, Caller: user}); err != nil {
		t.Fatal(err)
	}
	eq(t, "get after reinstall", f.query(id, "get", noArgs), natReply(0))
}

func TestCounter(t *testing.T)   { testCounter(t, corpusDir, "counter") }
func TestCounter64(t *testing.T) { testCounter(t, examplesDir, "counter64") }

func TestBadRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(module(t, corpusDir, "counter"), noArgs)
	ctx := context.Background()
	_, err := f.node.Update(ctx, Message{Canister: id, Method: "nope", Arg: noArgs, Caller: user})
	if r := f.reject(err); r.Code != DestinationInvalid || !strings.Contains(r.Message, "no update method 'nope'") {
		t.Fatalf("unknown method: %v", r)
	}
	_, err = f.node.Query(ctx, Message{Canister: id, Method: "inc", Arg: noArgs, Caller: user})
	if r := f.reject(err); r.Code != DestinationInvalid || !strings.Contains(r.Message, "no query method 'inc'") {
		t.Fatalf("query to update method: %v", r)
	}
	hash := f.memoryHash(id)
	_, err = f.node.Update(ctx, Message{Canister: id, Method: "add", Arg: []byte("garbage"), Caller: user})
	if r := f.reject(err); r.Code != CanisterError {
		t.Fatalf("malformed argument: %v", r)
	}
	if f.memoryHash(id) != hash {
		t.Fatal("malformed argument changed state")
	}
	missing := principal.CanisterID(4242)
	_, err = f.node.Update(ctx, Message{Canister: missing, Method: "inc", Arg: noArgs, Caller: user})
	if r := f.reject(err); r.Code != DestinationInvalid || !strings.Contains(r.Message, "not found") {
		t.Fatalf("missing canister: %v", r)
	}
	// Bad modules are refused at install with a clear error, changing nothing.
	wasm := module(t, corpusDir, "counter")
	for name, bad := range map[string][]byte{
		"truncated":         wasm[:len(wasm)/2],
		"not wasm":          []byte("hello world"),
		"empty":             nil,
		"foreign import":    mustWat(t, `(module (import "env" "f" (func)) (memory 1))`),
		"reserved export":   mustWat(t, `(module (func $f) (export "canister_bogus" (func $f)) (memory 1))`),
		"bad entry type":    mustWat(t, `(module (func $f (param i32)) (export "canister_update x" (func $f)) (memory 1))`),
		"bad ic0 signature": mustWat(t, `(module (import "ic0" "msg_reply" (func (param i32))) (memory 1))`),
	} {
		_, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: bad, Arg: noArgs, Caller: user})
		if err == nil {
			t.Fatalf("%s: installed", name)
		}
		t.Logf("%s: %v", name, err)
	}
	eq(t, "state kept", f.query(id, "get", noArgs), natReply(0))
	if f.memoryHash(id) != hash {
		t.Fatal("refused install changed state")
	}
	// Only controllers may install.
	other := principal.CanisterID(99)
	_, err = f.node.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: other})
	if r := f.reject(err); !strings.Contains(r.Message, "Only controllers") {
		t.Fatalf("non-controller install: %v", r)
	}
}

func TestGzipAndSizeLimits(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wasm := module(t, corpusDir, "counter")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(wasm)
	zw.Close()
	id := f.install(gz.Bytes(), noArgs)
	eq(t, "inc via .wasm.gz", f.update(id, "inc", noArgs), natReply(1))

	f.cfg.ModuleLimits.MaxBytes = len(wasm) - 1
	f.restart()
	_, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user})
	if err == nil || !strings.Contains(err.Error(), "the limit is") {
		t.Fatalf("oversized module: %v", err)
	}
	// A gzip bomb stops at the limit too.
	var bomb bytes.Buffer
	zw = gzip.NewWriter(&bomb)
	zw.Write(make([]byte, len(wasm)*4))
	zw.Close()
	_, err = f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: bomb.Bytes(), Arg: noArgs, Caller: user})
	if err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("gzip bomb: %v", err)
	}
	f.cfg.ModuleLimits = DefaultConfig().ModuleLimits
	f.restart()
	eq(t, "state kept", f.query(id, "get", noArgs), natReply(1))
}

// The default isolation of cordon: the same lifecycle with every execution in
// a confined sandbox, strict about confinement layers.
func TestCounterSandboxed(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "sandbox")
	cfg.Sandbox.Strict = true
	f := openFixture(t, cfg)
	wasm := module(t, corpusDir, "counter")
	id := f.install(wasm, noArgs)
	eq(t, "inc", f.update(id, "inc", noArgs), natReply(1))
	eq(t, "get", f.query(id, "get", noArgs), natReply(1))
	f.upgrade(id, wasm)
	f.restart()
	eq(t, "get after upgrade and restart", f.query(id, "get", noArgs), natReply(1))
	// Bad modules are refused by the compiler sandbox with the same clear error.
	_, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm[:100], Arg: noArgs, Caller: user})
	if err == nil || !strings.Contains(err.Error(), "invalid canister module") {
		t.Fatalf("truncated module in sandbox mode: %v", err)
	}
}

// A canister can run in the other isolation mode than the node's, and move
// between them on upgrade, with identical results.
func TestPerCanisterIsolation(t *testing.T) {
	t.Parallel()
	f := newFixture(t) // node default: in-process
	wasm := module(t, corpusDir, "counter")
	ctx := context.Background()
	id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: wasm, Arg: noArgs, Caller: user, Isolation: "sandbox"}); err != nil {
		t.Fatal(err)
	}
	eq(t, "inc in sandbox", f.update(id, "inc", noArgs), natReply(1))
	f.restart()
	eq(t, "get in sandbox after restart", f.query(id, "get", noArgs), natReply(1))
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user, Isolation: "inprocess"}); err != nil {
		t.Fatal(err)
	}
	eq(t, "inc back in process", f.update(id, "inc", noArgs), natReply(2))
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user, Isolation: "vm"}); err == nil {
		t.Fatal("unknown isolation mode accepted")
	}
}
