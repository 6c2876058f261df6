package host

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Durability (host): a node killed with SIGKILL at seeded points of
// a stream of updates, upgrades, reinstalls with staged heaps and calls
// carrying cycles, to real canisters. After each kill the node opens, no
// acknowledged reply is lost, every canister is at the state its
// acknowledged messages left or one message further, the cycles count
// holds, and the state hashes are those of the store.

// streamByte is byte o of the data the stable canister's appends write.
func streamByte(o uint64) byte { return byte((o * 2654435761) >> 13) }

// appendLen is the length of the append that starts at offset o.
func appendLen(o uint64) uint64 { return 1000 + (o*7919)%60000 }

func streamData(o, n uint64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = streamByte(o + uint64(i))
	}
	return b
}

// The canisters of the stream, in the order of CORDON_CRASH_IDS.
const (
	auCounterA = iota
	auCounterB
	auStable
	auMemory
	auRelay
	auWallet
	auBig
	auUp
	auCount
)

// churnWat is the module of the canisters that come and go.
const churnWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (global $n (mut i64) (i64.const 0))
  (func (export "canister_update inc")
    (i64.store (i32.const 0) (global.get $n))
    (global.set $n (i64.add (global.get $n) (i64.const 1)))
    (call $reply)))`

const durSend = 1_000_000_000 // cycles relay sends to wallet each time (it accepts half)

func sendCyclesArg(to principal.Principal, amount uint64) []byte {
	b := append([]byte("DIDL\x00\x02\x68\x7d\x01"), leb(uint64(len(to.Bytes())))...)
	return append(append(b, to.Bytes()...), leb(amount)...)
}

// replyNat decodes a Candid reply of one nat.
func replyNat(t testing.TB, b []byte) uint64 {
	t.Helper()
	if !bytes.HasPrefix(b, []byte("DIDL\x00\x01\x7d")) {
		t.Fatalf("not a nat: %x", b)
	}
	var v uint64
	for i, c := range b[7:] {
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			break
		}
	}
	return v
}

func nat64Of(t testing.TB, b []byte) uint64 {
	t.Helper()
	if len(b) != 15 || !bytes.HasPrefix(b, []byte("DIDL\x00\x01\x78")) {
		t.Fatalf("not a nat64: %x", b)
	}
	return binary.LittleEndian.Uint64(b[7:])
}

// durHostChild runs the stream until its watcher kills it, printing
// "ACK <name> <value>" after each acknowledged reply.
func durHostChild(t *testing.T, home string) {
	ps := childIDs(t, "CORDON_CRASH_IDS")
	num := func(name string) int {
		v, err := strconv.Atoi(os.Getenv(name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return v
	}
	cfg := crashCfg(home)
	cfg.Isolation = os.Getenv("CORDON_AUDIT_ISOLATION")
	n, err := Open(cfg, nil)
	if err != nil {
		fmt.Println("OPEN FAILED", err)
		os.Exit(3)
	}
	ctx := context.Background()
	var out sync.Mutex
	ack := func(name string, v uint64) {
		out.Lock()
		fmt.Printf("ACK %s %d\n", name, v)
		out.Unlock()
	}
	fail := func(what string, err error) {
		out.Lock()
		fmt.Printf("FAILED %s: %v\n", what, err)
		out.Unlock()
		os.Exit(3)
	}
	update := func(id principal.Principal, method string, arg []byte) []byte {
		r, err := n.Update(ctx, Message{Canister: id, Method: method, Arg: arg, Caller: user})
		if err != nil {
			fail(method, err)
		}
		return r.Data
	}
	query := func(id principal.Principal, method string, arg []byte) []byte {
		r, err := n.Query(ctx, Message{Canister: id, Method: method, Arg: arg, Caller: user})
		if err != nil {
			fail(method, err)
		}
		return r.Data
	}
	install := func(id principal.Principal, mode InstallMode, wasm, arg []byte) {
		if _, err := n.Install(ctx, id, InstallOptions{Mode: mode, Wasm: wasm, Arg: arg, Caller: user, KeepEOPByDefault: true}); err != nil {
			fail("install", err)
		}
	}
	counterWasm, bigWasm, upWasm := module(t, corpusDir, "counter"), mustWat(t, bigInitWat), mustWat(t, stableUpgradeWat)
	churnWasm := mustWat(t, churnWat)
	// Where each canister is: read before the watcher starts.
	used := nat64Of(t, query(ps[auStable], "usedBytes", noArgs))
	chunks := replyNat(t, query(ps[auMemory], "chunkCount", noArgs))
	bigV := query(ps[auBig], "check", nil)[0]
	gen := query(ps[auUp], "check", nil)[0]
	replyNat(t, query(ps[auWallet], "total", noArgs))
	replyNat(t, query(ps[auCounterA], "get", noArgs))
	replyNat(t, query(ps[auCounterB], "get", noArgs))
	fmt.Println("READY")
	faultinject.KillAfterTx(filepath.Join(home, "cordon.db"), num("CORDON_AUDIT_KILL_TX"), num("CORDON_AUDIT_SPIN"))
	workers := []func(){
		func() {
			for {
				ack("counterA", replyNat(t, update(ps[auCounterA], "inc", noArgs)))
			}
		},
		func() {
			for i := 0; ; i++ {
				if i%4 == 3 {
					install(ps[auCounterB], ModeUpgrade, counterWasm, noArgs)
					continue
				}
				ack("counterB", replyNat(t, update(ps[auCounterB], "inc", noArgs)))
			}
		},
		func() {
			for {
				at := nat64Of(t, update(ps[auStable], "append", blobArg(streamData(used, appendLen(used)))))
				if at != used {
					fail("append", fmt.Errorf("at %d, want %d", at, used))
				}
				used += appendLen(used)
				ack("stable", used)
			}
		},
		func() {
			for {
				if chunks < 3 {
					chunks = replyNat(t, update(ps[auMemory], "grow", natArg(1)))
				} else {
					update(ps[auMemory], "touch", natPairArg(chunks-1, 64))
				}
				ack("memory", chunks)
			}
		},
		func() {
			for {
				ack("cycles", replyNat(t, update(ps[auRelay], "sendCycles", sendCyclesArg(ps[auWallet], durSend))))
			}
		},
		func() {
			for {
				bigV = bigV%250 + 1
				install(ps[auBig], ModeReinstall, bigWasm, []byte{bigV})
				ack("big", uint64(bigV))
			}
		},
		func() {
			for {
				install(ps[auUp], ModeUpgrade, upWasm, nil)
				gen++
				ack("up", uint64(gen))
			}
		},
		func() {
			// Canisters come and go: create, install a module no other
			// canister uses, run, stop, delete (its module released).
			for k := uint64(1); ; k++ {
				id, err := n.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
				if err != nil {
					fail("create", err)
				}
				install(id, ModeInstall, churnWasm, nil)
				update(id, "inc", nil)
				if err := n.SetStatus(ctx, id, user, "stopped"); err != nil {
					fail("stop", err)
				}
				if err := n.Delete(ctx, id, user); err != nil {
					fail("delete", err)
				}
				ack("churn", k)
			}
		},
	}
	for _, w := range workers {
		go w()
	}
	time.Sleep(3 * time.Minute) // the watcher kills it long before
	fmt.Println("NOT KILLED")
	os.Exit(4)
}

// durObserved is what the parent reads of the canisters after a
// restart.
type durObserved struct {
	counterA, counterB, stableUsed, chunks, received uint64
	big, gen                                         byte
}

func (f *fixture) observe(ps []principal.Principal) durObserved {
	f.t.Helper()
	return durObserved{
		counterA:   replyNat(f.t, f.query(ps[auCounterA], "get", noArgs)),
		counterB:   replyNat(f.t, f.query(ps[auCounterB], "get", noArgs)),
		stableUsed: nat64Of(f.t, f.query(ps[auStable], "usedBytes", noArgs)),
		chunks:     replyNat(f.t, f.query(ps[auMemory], "chunkCount", noArgs)),
		received:   replyNat(f.t, f.query(ps[auWallet], "total", noArgs)),
		big:        f.query(ps[auBig], "check", nil)[0],
		gen:        f.query(ps[auUp], "check", nil)[0],
	}
}

// storedHash is the state hash of id as the store holds it, computed
// apart from the node's loaded canister: what a load makes of it (the
// reservations of dropped calls back in the balance).
func (f *fixture) storedHash(id principal.Principal) string {
	f.t.Helper()
	sc, err := f.node.store.Load(id.Bytes())
	if err != nil {
		f.t.Fatal(err)
	}
	defer sc.Release()
	meta := sc.Meta
	meta.Balance, _ = meta.Balance.AddCapped(meta.CyclesReserved)
	if meta.Status == "stopping" {
		meta.Status = "stopped"
	}
	c := &canister{id: id, meta: meta, heap: sc.Heap, stable: sc.Stable, globals: sc.Globals}
	return fmt.Sprintf("%x", f.node.stateHash(c))
}

func TestCrashDuringMessageStreamInProcess(t *testing.T) {
	if home := os.Getenv("CORDON_CRASH_HOME"); home != "" {
		durHostChild(t, home)
		return
	}
	durCrashStream(t, "TestCrashDuringMessageStreamInProcess", "inprocess")
}

func TestCrashDuringMessageStreamSandbox(t *testing.T) {
	if home := os.Getenv("CORDON_CRASH_HOME"); home != "" {
		durHostChild(t, home)
		return
	}
	durCrashStream(t, "TestCrashDuringMessageStreamSandbox", "sandbox")
}

func durCrashStream(t *testing.T, name, mode string) {
	seed := faultinject.CrashSeed(t)
	t.Logf("seed %d (CORDON_CRASH_SEED=%d to repeat)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	f := crashFixture(t)
	f.cfg.Isolation = mode
	f.restart()
	ps := make([]principal.Principal, auCount)
	ps[auCounterA] = f.install(module(t, corpusDir, "counter"), noArgs)
	ps[auCounterB] = f.install(module(t, corpusDir, "counter"), noArgs)
	ps[auStable] = f.install(module(t, corpusDir, "stable"), noArgs)
	ps[auMemory] = f.install(module(t, corpusDir, "memory"), noArgs)
	ps[auRelay] = f.install(module(t, corpusDir, "relay"), noArgs)
	ps[auWallet] = f.install(module(t, corpusDir, "wallet"), noArgs)
	ps[auBig] = f.install(mustWat(t, bigInitWat), []byte{1})
	ps[auUp] = f.install(mustWat(t, stableUpgradeWat), nil)
	f.storeConserved()
	was := f.observe(ps)
	var ids []string
	for _, p := range ps {
		ids = append(ids, p.String())
	}
	// In-process nodes compile every module again at each start: fewer
	// rounds keep the test within its time.
	rounds := 3
	if mode == "inprocess" {
		rounds = 2
	}
	if raceEnabled {
		// The race detector slows every restart several times; one round
		// still kills a node under -race and checks what it left.
		rounds = 1
	}
	var sizes []int64
	for round := range rounds {
		if err := f.node.Close(); err != nil {
			t.Fatal(err)
		}
		killTx, spin := 5+rng.IntN(60), rng.IntN(2000)
		acked := runHostChild(t, name, f.home, mode, strings.Join(ids, ","), killTx, spin)
		f.open()
		tot := f.storeConserved()
		now := f.observe(ps)
		t.Logf("round %d: killed after %d transactions (+%d reads): acknowledged %v; found %+v; %s cycles minted", round, killTx, spin, acked, now, tot.Minted)
		// Each canister at its last acknowledged state or one message on.
		check := func(what string, got, last uint64, next uint64) {
			t.Helper()
			if got != last && got != next {
				t.Fatalf("round %d: %s is %d: want the acknowledged %d or the next %d", round, what, got, last, next)
			}
		}
		last := func(name string, base uint64) uint64 {
			if v, ok := acked[name]; ok {
				return v
			}
			return base
		}
		a := last("counterA", was.counterA)
		check("counterA", now.counterA, a, a+1)
		b := last("counterB", was.counterB)
		check("counterB", now.counterB, b, b+1)
		u := last("stable", was.stableUsed)
		check("stable memory used", now.stableUsed, u, u+appendLen(u))
		for off := uint64(0); off < now.stableUsed; off += 1 << 20 {
			n := min(now.stableUsed-off, 1<<20)
			if got, want := f.query(ps[auStable], "read", readArg(off, n)), blobArg(streamData(off, n)); !bytes.Equal(got, want) {
				t.Fatalf("round %d: the stable canister's bytes at %d differ from what was appended", round, off)
			}
		}
		ch := last("memory", was.chunks)
		check("memory chunks", now.chunks, ch, min(ch+1, 3))
		// The replies are what the wallet accepted of each call.
		r := was.received + acked["cycles"]
		check("cycles received", now.received, r, r+durSend/2)
		bv := byte(last("big", uint64(was.big)))
		check("big heap", uint64(now.big), uint64(bv), uint64(bv%250+1))
		g := byte(last("up", uint64(was.gen)))
		check("stable generation", uint64(now.gen), uint64(g), uint64(g+1))
		// The hashes are the store's, and stay across a restart.
		hashes := map[principal.Principal]string{}
		for _, id := range ps {
			hashes[id] = f.stateHash(id)
			if s := f.storedHash(id); s != hashes[id] {
				t.Fatalf("round %d: %s's state hash %s, the store's %s", round, id, hashes[id], s)
			}
		}
		f.checkConservation()
		// No module stays that no canister uses (a kill between a code
		// change or deletion and the module's release: Open collects).
		used := map[string]bool{}
		if err := f.node.store.Metas(func(_ []byte, m store.Meta) error { used[m.ModuleHash] = true; return nil }); err != nil {
			t.Fatal(err)
		}
		keys, err := f.node.store.ModuleKeys()
		if err != nil {
			t.Fatal(err)
		}
		for k := range keys {
			if !used[k] {
				t.Fatalf("round %d: module %s stored, used by no canister", round, k)
			}
		}
		f.restart()
		for _, id := range ps {
			if h := f.stateHash(id); h != hashes[id] {
				t.Fatalf("round %d: %s's state hash %s after another restart, was %s", round, id, h, hashes[id])
			}
		}
		sizes = append(sizes, f.node.store.Size())
		was = now
	}
	t.Logf("store file sizes after each round: %v", sizes)
}

// runHostChild runs the child node on home until its watcher kills it,
// and returns the last value acknowledged under each name (for "cycles",
// the sum of the replies).
func runHostChild(t *testing.T, name, home, mode, ids string, killTx, spin int) map[string]uint64 {
	t.Helper()
	cmd := faultinject.Child(name, "CORDON_CRASH_HOME="+home, "CORDON_CRASH_IDS="+ids, "CORDON_AUDIT_ISOLATION="+mode,
		fmt.Sprintf("CORDON_AUDIT_KILL_TX=%d", killTx), fmt.Sprintf("CORDON_AUDIT_SPIN=%d", spin))
	acked := map[string]uint64{}
	faultinject.RunUntilKilled(t, cmd, 3*time.Minute, func(line string) bool {
		var name string
		var v uint64
		if _, err := fmt.Sscanf(line, "ACK %s %d", &name, &v); err != nil {
			return false
		}
		if name == "cycles" {
			v += acked[name]
		}
		acked[name] = v
		return true
	})
	return acked
}
