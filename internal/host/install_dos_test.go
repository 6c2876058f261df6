package host

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// gzipBomberWat sends install_code to aaaaa-aa K times from its update
// bomb, whose argument is K (u32, little-endian) and install_code's Candid
// argument; it replies with how many calls it made.
const gzipBomberWat = `
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $data (param i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (memory (export "memory") 40)
  (table (export "table") 2 funcref)
  (elem (i32.const 0) $cb $cb)
  (data (i32.const 0) "install_code")
  (func $cb (param i32))
  (func (export "canister_update bomb")
    (local $n i32) (local $k i32) (local $i i32) (local $ok i32)
    (local.set $n (call $arg_size))
    (call $arg_copy (i32.const 65536) (i32.const 0) (local.get $n))
    (local.set $k (i32.load (i32.const 65536)))
    (loop $l
      (call $call_new (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 12)
        (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
      (call $data (i32.const 65540) (i32.sub (local.get $n) (i32.const 4)))
      (if (i32.eqz (call $perform)) (then (local.set $ok (i32.add (local.get $ok) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (local.get $k))))
    (i32.store (i32.const 100) (local.get $ok))
    (call $append (i32.const 100) (i32.const 4))
    (call $reply))
)`

// gzipZeros is a gzip'd module of size zero bytes (about size/1000 bytes).
// It is made once per size (a second for 100 MiB): callers only read it.
func gzipZeros(t testing.TB, size int) []byte {
	t.Helper()
	if b, ok := gzippedZeros.Load(size); ok {
		return b.([]byte)
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 1<<20)
	for left := size; left > 0; left -= len(zero) {
		if _, err := zw.Write(zero[:min(left, len(zero))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := gzippedZeros.LoadOrStore(size, gz.Bytes())
	return b.([]byte)
}

// gzippedZeros holds gzipZeros' results by size.
var gzippedZeros sync.Map

// installCodeArg is install_code's Candid argument.
func installCodeArg(t testing.TB, mode InstallMode, id principal.Principal, wasm []byte) []byte {
	t.Helper()
	b, err := candid.EncodeArgs(candid.Args{Types: mustArgTypes(t, "install_code"), Values: []candid.Value{sortRecord(candid.Record{
		{ID: candid.Hash("mode"), Value: candid.Variant{ID: candid.Hash(string(mode)), Value: candid.Null{}}},
		{ID: candid.Hash("canister_id"), Value: candid.Principal{Principal: id}},
		{ID: candid.Hash("wasm_module"), Value: candid.Blob(wasm)},
		{ID: candid.Hash("arg"), Value: candid.Blob(nil)},
		{ID: candid.Hash("sender_canister_version"), Value: candid.Opt{}},
	})}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// heapPeak samples the Go heap in use every 50 ms until stopped and
// returns the most it saw above what was in use when it started.
func heapPeak() (stop func() uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	done, finished := make(chan struct{}), make(chan struct{})
	sample := func() {
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
	}
	go func() {
		defer close(finished)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				sample()
				return
			case <-tick.C:
				sample()
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-finished
		return peak - min(peak, base)
	}
}

// waitingInstalls waits until k goroutines wait for a canister's lock in
// an install.
func waitingInstalls(t *testing.T, k int) {
	t.Helper()
	buf := make([]byte, 16<<20)
	for {
		n := runtime.Stack(buf, true)
		waiting := 0
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if strings.Contains(g, "(*Node).lockCanister") && strings.Contains(strings.ToLower(g), "(*node).install") {
				waiting++
			}
		}
		if waiting >= k {
			return
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
}

// bombsSettled waits until each of the k calls bomber made to aaaaa-aa
// waits for a canister's lock in an install, waits in bomber's queue to
// aaaaa-aa behind one, or has been answered.
func bombsSettled(t *testing.T, n *Node, bomber principal.Principal, k int) {
	t.Helper()
	c, err := n.get(context.Background(), bomber)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16<<20)
	for {
		st := runtime.Stack(buf, true)
		waiting := 0
		for _, g := range strings.Split(string(buf[:st]), "\n\n") {
			if strings.Contains(g, "(*Node).lockCanister") && strings.Contains(strings.ToLower(g), "(*node).install") {
				waiting++
			}
		}
		n.mgmtQueue.mu.Lock()
		queued := len(n.mgmtQueue.per[bomber])
		n.mgmtQueue.mu.Unlock()
		c.mu.RLock()
		outstanding := c.calls.per[string(principal.Management().Bytes())]
		c.mu.RUnlock()
		if waiting+queued+(k-outstanding) >= k {
			return
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
}

// A canister sends many install_code calls, each a small gzip of a 100 MiB
// module, naming a busy canister it does not control. Each is refused
// before it waits for the target's lock (its controllers are known), or
// waits holding only its argument: none is inflated before its caller is
// found not to be a controller, and all are refused.
func TestGzipBombsWaitForAuthorizationInflated(t *testing.T) {
	// Not t.Parallel: it measures the process's heap (heapPeak).
	f := newFixture(t)
	ctx := context.Background()
	bomber := f.install(mustWat(t, gzipBomberWat), nil)
	victim, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	const k = 16
	bomb := gzipZeros(t, f.cfg.ModuleLimits.MaxBytes)
	arg := binary.LittleEndian.AppendUint32(nil, k)
	arg = append(arg, installCodeArg(t, ModeInstall, victim, bomb)...)

	// The victim is busy: its lock is held (as by a long execution) until
	// every install_code waits for it.
	c, err := f.node.lockCanister(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	peak := heapPeak()
	if got := f.update(bomber, "bomb", arg); binary.LittleEndian.Uint32(got) != k {
		t.Fatalf("%d of %d calls made", binary.LittleEndian.Uint32(got), k)
	}
	bombsSettled(t, f.node, bomber, k)
	waitingGrowth := peak()
	n := f.node
	n.unlock(c)
	if err := n.Quiesce(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := n.Status(ctx, victim); err != nil || st.ModuleHash != "" {
		t.Fatalf("victim after the bombs: %+v %v", st, err)
	}
	t.Logf("%d install_code calls of a %d-byte gzip (%d MiB inflated) waiting: the heap grew %d MiB", k, len(bomb), f.cfg.ModuleLimits.MaxBytes>>20, waitingGrowth>>20)
	if limit := uint64(f.cfg.ModuleLimits.MaxBytes); waitingGrowth > limit {
		t.Fatalf("the heap grew %d MiB while %d unauthorized installs waited: modules were inflated before authorization", waitingGrowth>>20, k)
	}
	f.checkConservation()
}

// A controller of many canisters sends each, at once, a small gzip of a
// 100 MiB module: the modules being decoded and compiled together stay
// within limits.preparing_module_bytes, each waiting its turn, and every
// target pays for what was decoded.
func TestPreparingBudgetBoundsConcurrentInstalls(t *testing.T) {
	// Not t.Parallel: it measures the process's heap (heapPeak).
	f := newFixture(t)
	ctx := context.Background()
	const k = 16
	bomb := gzipZeros(t, f.cfg.ModuleLimits.MaxBytes)
	ids := make([]principal.Principal, k)
	locked := make([]*canister, k)
	for i := range ids {
		id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
		if err != nil {
			t.Fatal(err)
		}
		// Busy until all installs are under way.
		if locked[i], err = f.node.lockCanister(ctx, id); err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	peak := heapPeak()
	var wg sync.WaitGroup
	errs := make([]error, k)
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: bomb, Caller: user})
		}()
	}
	waitingInstalls(t, k)
	for _, c := range locked {
		f.node.unlock(c)
	}
	wg.Wait()
	growth := peak()
	budget := preparingBytes(f.cfg)
	for i, err := range errs {
		if !errors.Is(err, engine.ErrInvalidModule) {
			t.Fatalf("install %d of zeros: %v", i, err)
		}
	}
	fee := f.node.compileFee(uint64(f.cfg.ModuleLimits.MaxBytes))
	for _, id := range ids {
		st, err := f.node.Status(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if st.CyclesBurned.Cmp(fee) < 0 {
			t.Fatalf("%s burned %s for decoding a %d-byte module, want at least %s", id, st.CyclesBurned, f.cfg.ModuleLimits.MaxBytes, fee)
		}
	}
	held := f.node.preparing.peakBytes()
	t.Logf("%d installs of %d MiB modules: at most %d MiB reserved (budget %d MiB), the heap grew %d MiB at most", k, f.cfg.ModuleLimits.MaxBytes>>20, held>>20, budget>>20, growth>>20)
	if held > budget {
		t.Fatalf("%d bytes reserved at once, beyond the budget of %d", held, budget)
	}
	// Generously: decoding holds the module, garbage waits for the
	// collector; k modules at once would be k × 100 MiB.
	if growth > 4*budget {
		t.Fatalf("the heap grew %d MiB with a preparing budget of %d MiB", growth>>20, budget>>20)
	}
	f.checkConservation()
}

// An install waiting for a busy canister gives up when its context ends,
// and the lock it queued for is released again.
func TestInstallGivesUpWaitingForBusyCanister(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := f.node.lockCanister(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = f.node.Install(cctx, id, InstallOptions{Mode: ModeInstall, Wasm: module(t, corpusDir, "counter"), Caller: user})
	if r := f.reject(err); r.Code != SysTransient || !strings.Contains(r.Message, "is busy") {
		t.Fatalf("install on a busy canister after its context ended: %v", r)
	}
	f.node.unlock(c)
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: module(t, corpusDir, "counter"), Caller: user}); err != nil {
		t.Fatalf("install once the canister is free: %v", err)
	}
}

// A proxy canister controls a child with no cycles and asks the management
// canister to install a different module in it again and again: each is
// refused for lack of cycles before any compilation. A child that can pay
// is charged for compiling its module, also when the module does not
// compile.
func TestInstallPaysForCompilationFirst(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "sandbox")
	// The storage fee depends on the time that passes between messages
	// (a cycle per ~0.1 s here); the checks below are exact.
	cfg.Fees.GiBStoragePerSecond = 0
	f := openFixture(t, cfg)
	ctx := context.Background()
	proxy := f.install(mustWat(t, mgmtProxyWat), nil)
	zero := cycles.Amount{}
	child, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{proxy}, Cycles: &zero})
	if err != nil {
		t.Fatal(err)
	}
	compiles := func() uint64 { return f.node.exec.(*exec.Sandboxed).Stats().Compiles }
	distinct := func(i int) []byte {
		return mustWat(t, fmt.Sprintf(`(module (memory 1) (func (export "canister_init")) (data (i32.const 0) "module %d"))`, i))
	}
	before := compiles()
	for i := range 4 {
		got := f.viaCanister(proxy, "install_code", installCodeArg(t, ModeInstall, child, distinct(i)))
		if !bytes.HasPrefix(got, []byte("rejected:2")) || !bytes.Contains(got, []byte("out of cycles")) {
			t.Fatalf("install_code %d into a child with no cycles: %q", i, got)
		}
	}
	if n := compiles() - before; n != 0 {
		t.Fatalf("%d modules compiled for a canister that cannot pay", n)
	}

	// A child that can pay: charged the execution and the compilation.
	some := cycles.New(10_000_000_000_000)
	paying, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{proxy}, Cycles: &some, Minted: true})
	if err != nil {
		t.Fatal(err)
	}
	wasm := distinct(100)
	if got := f.viaCanister(proxy, "install_code", installCodeArg(t, ModeInstall, paying, wasm)); bytes.HasPrefix(got, []byte("rejected:")) {
		t.Fatalf("install_code into a paying child: %q", got)
	}
	st, err := f.node.Status(ctx, paying)
	if err != nil {
		t.Fatal(err)
	}
	want := f.node.executionFee(st.Instructions).SaturatingAdd(f.node.compileFee(uint64(len(wasm))))
	if f.node.compileFee(uint64(len(wasm))).IsZero() || st.CyclesBurned != want {
		t.Fatalf("install burned %s, want %s (execution of %d instructions and compiling %d bytes)", st.CyclesBurned, want, st.Instructions, len(wasm))
	}
	// A module the compiler refuses is paid too: it was compiled.
	bad := append(distinct(101), 0x0b, 0xff) // a truncated section after the module
	burned := st.CyclesBurned
	before = compiles()
	got := f.viaCanister(proxy, "install_code", installCodeArg(t, ModeReinstall, paying, bad))
	if !bytes.HasPrefix(got, []byte("rejected:5")) || !bytes.Contains(got, []byte("invalid canister module")) {
		t.Fatalf("install_code of an invalid module: %q", got)
	}
	if compiles() != before+1 {
		t.Fatalf("%d compilations of the invalid module, want 1", compiles()-before)
	}
	if st, err = f.node.Status(ctx, paying); err != nil {
		t.Fatal(err)
	}
	if fee := f.node.compileFee(uint64(len(bad))); st.CyclesBurned != burned.SaturatingAdd(fee) {
		t.Fatalf("failed compilation burned %s, want %s", st.CyclesBurned.SaturatingSub(burned), fee)
	}
	f.checkConservation()
}
