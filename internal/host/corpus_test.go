package host

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
)

func optText(s string) []byte {
	return append(append([]byte("DIDL\x01\x6e\x71\x01\x00\x01"), leb(uint64(len(s)))...), s...)
}

func blobArg(b []byte) []byte {
	return append(append([]byte("DIDL\x01\x6d\x7b\x01\x00"), leb(uint64(len(b)))...), b...)
}

func nat64Reply(v uint64) []byte {
	return binary.LittleEndian.AppendUint64([]byte("DIDL\x00\x01\x78"), v)
}

func readArg(off uint64, size uint64) []byte {
	return append(binary.LittleEndian.AppendUint64([]byte("DIDL\x00\x02\x78\x7d"), off), leb(size)...)
}

// Each Test that calls it runs in parallel (t.Parallel).
func testKV(t *testing.T, dir, name string) {
	t.Parallel()
	f := newFixture(t)
	wasm := module(t, dir, name)
	id := f.install(wasm, noArgs)
	empty := []byte("DIDL\x00\x00")
	eq(t, "put", f.update(id, "put", twoTextArg("a", "1")), empty)
	eq(t, "put", f.update(id, "put", twoTextArg("b", "2")), empty)
	eq(t, "get a", f.query(id, "get", textArg("a")), optText("1"))
	eq(t, "get missing", f.query(id, "get", textArg("zz")), []byte("DIDL\x01\x6e\x71\x01\x00\x00"))
	eq(t, "size", f.query(id, "size", noArgs), natReply(2))
	eq(t, "delete b", f.update(id, "delete", textArg("b")), optText("2"))
	eq(t, "size after delete", f.query(id, "size", noArgs), natReply(1))
	who := append(append([]byte("DIDL\x00\x01\x68\x01"), leb(uint64(len(user.Bytes())))...), user.Bytes()...)
	eq(t, "whoami", f.query(id, "whoami", noArgs), who)

	st, err := f.node.Status(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if st.CertifiedData != hex.EncodeToString([]byte("b=2")) {
		t.Fatalf("certified data %q, want hex of b=2", st.CertifiedData)
	}
	logs, _ := f.node.Logs(context.Background(), id)
	if len(logs) != 2 || logs[0].Text != "put a" || logs[1].Text != "put b" {
		t.Fatalf("logs: %+v", logs)
	}
	f.upgrade(id, wasm)
	eq(t, "get after upgrade", f.query(id, "get", textArg("a")), optText("1"))
	eq(t, "size after upgrade", f.query(id, "size", noArgs), natReply(1))
	f.restart()
	eq(t, "get after restart", f.query(id, "get", textArg("a")), optText("1"))
	logs, _ = f.node.Logs(context.Background(), id)
	if len(logs) != 2 {
		t.Fatalf("logs after restart: %+v", logs)
	}
}

func TestKV(t *testing.T)   { testKV(t, corpusDir, "kv") }
func TestKV64(t *testing.T) { testKV(t, examplesDir, "kv64") }

// Each Test that calls it runs in parallel (t.Parallel).
func testCompute(t *testing.T, dir, name string) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(module(t, dir, name), noArgs)
	eq(t, "primes(1000)", f.query(id, "primes", natArg(1000)), natReply(168))
	eq(t, "fib(20)", f.query(id, "fib", natArg(20)), natReply(6765))
	before := f.memoryHash(id)
	st0, _ := f.node.Status(context.Background(), id)
	_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "spin", Arg: noArgs, Caller: user})
	r := f.reject(err)
	if r.Code != CanisterError || !strings.Contains(r.Message, "limit of instructions") {
		t.Fatalf("spin: %v", r)
	}
	if f.memoryHash(id) != before {
		t.Fatal("spin changed the canister's memory")
	}
	st1, _ := f.node.Status(context.Background(), id)
	if got := st1.Instructions - st0.Instructions; got != f.cfg.UpdateInstructions {
		t.Fatalf("spin used %d instructions, want the limit %d", got, f.cfg.UpdateInstructions)
	}
	if st1.Balance.Cmp(st0.Balance) >= 0 {
		t.Fatal("spin was not charged")
	}
}

func TestCompute(t *testing.T)   { testCompute(t, corpusDir, "compute") }
func TestCompute64(t *testing.T) { testCompute(t, examplesDir, "compute64") }

func TestComputeHashDeterministic(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	id := f.install(module(t, corpusDir, "compute"), noArgs)
	a, err := f.node.Query(context.Background(), Message{Canister: id, Method: "hash", Arg: natArg(1000), Caller: user})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := f.node.Query(context.Background(), Message{Canister: id, Method: "hash", Arg: natArg(1000), Caller: user})
	if !bytes.Equal(a.Data, b.Data) || a.Instructions != b.Instructions {
		t.Fatalf("hash(1000) differs: %x/%d vs %x/%d", a.Data, a.Instructions, b.Data, b.Instructions)
	}
	// FNV-1a-style chain computed here independently.
	h := uint32(2166136261)
	for r := 0; r < 1000; r++ {
		h = (h ^ uint32(r%256)) * 16777619
	}
	want := binary.LittleEndian.AppendUint32([]byte("DIDL\x00\x01\x79"), h)
	eq(t, "hash(1000)", a.Data, want)
}

func TestMemory(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.cfg.UpdateInstructions = DefaultConfig().UpdateInstructions
	f.restart()
	id := f.install(module(t, corpusDir, "memory"), noArgs)
	eq(t, "grow 64", f.update(id, "grow", natArg(64)), natReply(64))
	eq(t, "chunkCount", f.query(id, "chunkCount", noArgs), natReply(64))
	eq(t, "touch", f.update(id, "touch", natPairArg(0, 16)), []byte("DIDL\x00\x00"))
	// 16 touched pages hold (p+7) % 256, the other 240 of the 1 MiB chunk hold 1.
	eq(t, "checksum 0", f.query(id, "checksum", natArg(0)), natReply(472))
	eq(t, "checksum 1", f.query(id, "checksum", natArg(1)), natReply(256))
	st, _ := f.node.Status(context.Background(), id)
	if st.HeapBytes < 64<<20 {
		t.Fatalf("heap is %d bytes after growing 64 MiB", st.HeapBytes)
	}
	f.restart()
	eq(t, "checksum after restart", f.query(id, "checksum", natArg(0)), natReply(472))
}

// Each Test that calls it runs in parallel (t.Parallel).
func testStable(t *testing.T, dir, name string) {
	t.Parallel()
	f := newFixture(t)
	wasm := module(t, dir, name)
	id := f.install(wasm, noArgs)
	data := bytes.Repeat([]byte("cordon"), 20000) // 120 000 bytes: spans two 64 KiB pages
	eq(t, "append", f.update(id, "append", blobArg(data)), nat64Reply(0))
	eq(t, "append 2", f.update(id, "append", blobArg([]byte("tail"))), nat64Reply(uint64(len(data))))
	eq(t, "usedBytes", f.query(id, "usedBytes", noArgs), nat64Reply(uint64(len(data)+4)))
	eq(t, "read", f.query(id, "read", readArg(6, 12)), blobArg([]byte("cordoncordon")))
	f.upgrade(id, wasm)
	eq(t, "read after upgrade", f.query(id, "read", readArg(uint64(len(data)), 4)), blobArg([]byte("tail")))
	f.restart()
	eq(t, "usedBytes after restart", f.query(id, "usedBytes", noArgs), nat64Reply(uint64(len(data)+4)))
	st, _ := f.node.Status(context.Background(), id)
	if st.StableBytes == 0 {
		t.Fatal("no stable memory recorded")
	}
}

func TestStable(t *testing.T)   { testStable(t, corpusDir, "stable") }
func TestStable64(t *testing.T) { testStable(t, examplesDir, "stable64") }

func testTraps(t *testing.T, dir, name string, calls map[string][]byte) {
	f := newFixture(t)
	f.cfg.HeapBytes32 = 256 << 20
	f.restart()
	id := f.install(module(t, dir, name), noArgs)
	before := f.memoryHash(id)
	for method, arg := range calls {
		_, err := f.node.Update(context.Background(), Message{Canister: id, Method: method, Arg: arg, Caller: user})
		r := f.reject(err)
		if r.Code != CanisterError {
			t.Fatalf("%s: %v", method, r)
		}
		t.Logf("%s: %s", method, r.Message)
		eq(t, "get after "+method, f.query(id, "get", noArgs), natReply(1))
		if f.memoryHash(id) != before {
			t.Fatalf("%s changed the canister's memory", method)
		}
	}
}

func TestTraps(t *testing.T) {
	t.Parallel()
	testTraps(t, corpusDir, "traps", map[string][]byte{
		"setThenTrap": natArg(5), "assertFalse": noArgs, "outOfBounds": natArg(10), "divZero": natArg(0),
		"deepRecursion": natArg(100_000_000), "exhaustMemory": noArgs,
	})
}

func TestTraps64(t *testing.T) {
	t.Parallel()
	testTraps(t, examplesDir, "traps64", map[string][]byte{
		"setThenTrap": natArg(5), "assertFalse": noArgs, "outOfBounds": natArg(10), "divZero": natArg(0),
	})
}

// The canisters that need inter-canister messaging still install and answer queries.
func TestMessagingCanistersInstall(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, name := range []string{"relay", "wallet", "timer", "random", "inspect"} {
		id := f.install(module(t, corpusDir, name), noArgs)
		switch name {
		case "relay":
			self := append(append([]byte("DIDL\x00\x01\x68\x01"), leb(uint64(len(id.Bytes())))...), id.Bytes()...)
			eq(t, "relay.self", f.query(id, "self", noArgs), self)
		case "wallet":
			eq(t, "wallet.total", f.query(id, "total", noArgs), natReply(0))
			bal := f.query(id, "balance", noArgs)
			if !bytes.HasPrefix(bal, []byte("DIDL\x00\x01\x7d")) {
				t.Fatalf("wallet.balance: %x", bal)
			}
		case "timer":
			eq(t, "timer.count", f.query(id, "count", noArgs), natReply(0))
		case "inspect":
			eq(t, "inspect.open", f.update(id, "open", noArgs), natReply(1))
			_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "closed", Arg: noArgs, Caller: user})
			if r := f.reject(err); r.Code != CanisterReject {
				t.Fatalf("closed: %v", r)
			}
			eq(t, "inspect.count", f.query(id, "count", noArgs), natReply(1))
		}
	}
}
