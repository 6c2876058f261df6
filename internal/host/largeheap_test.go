package host

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Large heaps across upgrades (64-bit, heap kept as with Motoko's enhanced
// orthogonal persistence): every byte must survive, and the cost is
// measured by BenchmarkUpgradeLargeHeap.
//   go test ./internal/host -run '^$' -bench UpgradeLargeHeap -benchtime 3x

var largeHeapMiB = flag.Int("large-heap-mib", 256, "heap size of TestUpgradeKeepsLargeHeap in MiB")

// largeHeapWat is a 64-bit canister (built with eopWat: its heap is kept
// on upgrade as with enhanced orthogonal persistence) whose init grows the heap by initBytes
// and fills every byte with a pattern; page 0 holds counters, page 1 a
// marker written by pre_upgrade, page 2 is zeroed by pre_upgrade (a page
// that becomes zero must disappear from the store too). "grow" adds
// growBytes more, filled. The query "check" replies with five i64: an
// FNV-style checksum of pages 3.. to the end, the pre_upgrade and
// post_upgrade counts, the number of non-zero bytes of page 2 and page 1's
// first word. With trapPost, post_upgrade traps after writing.
func largeHeapWat(initBytes, growBytes uint64, trapPost bool) string {
	trap := ""
	if trapPost {
		trap = "(memory.fill (i64.const 12288) (i32.const 0) (i64.const 65536)) (unreachable)"
	}
	return fmt.Sprintf(`(module
  (import "ic0" "msg_reply_data_append" (func $append (param i64 i64)))
  (import "ic0" "msg_reply" (func $reply))
  (memory i64 1)
  (func $fill (param $from i64) (param $to i64)
    (local $a i64)
    (local.set $a (local.get $from))
    (block $done (loop $l
      (br_if $done (i64.ge_u (local.get $a) (local.get $to)))
      (i64.store (local.get $a) (i64.add (i64.mul (local.get $a) (i64.const 0x9E3779B97F4A7C15)) (i64.const 12345)))
      (local.set $a (i64.add (local.get $a) (i64.const 8)))
      (br $l))))
  (func $grow (param $bytes i64)
    (local $old i64)
    (local.set $old (i64.mul (memory.size) (i64.const 65536)))
    (if (i64.lt_s (memory.grow (i64.div_u (local.get $bytes) (i64.const 65536))) (i64.const 0)) (then unreachable))
    (call $fill (local.get $old) (i64.add (local.get $old) (local.get $bytes))))
  (func (export "canister_init")
    (call $fill (i64.const 4096) (i64.const 65536))
    (call $grow (i64.const %d)))
  (func (export "canister_update grow")
    (call $grow (i64.const %d))
    (call $reply))
  (func (export "canister_pre_upgrade")
    (i64.store (i64.const 8) (i64.add (i64.load (i64.const 8)) (i64.const 1)))
    (i64.store (i64.const 4096) (i64.const 0x5eed))
    (memory.fill (i64.const 8192) (i32.const 0) (i64.const 4096)))
  (func (export "canister_post_upgrade")
    (i64.store (i64.const 16) (i64.add (i64.load (i64.const 16)) (i64.const 1))) %s)
  (func (export "canister_query check")
    (local $a i64) (local $end i64) (local $h i64) (local $nz i64)
    (local.set $end (i64.mul (memory.size) (i64.const 65536)))
    (local.set $h (i64.const 0xcbf29ce484222325))
    (local.set $a (i64.const 12288))
    (block $done (loop $l
      (br_if $done (i64.ge_u (local.get $a) (local.get $end)))
      (local.set $h (i64.mul (i64.xor (local.get $h) (i64.load (local.get $a))) (i64.const 0x100000001b3)))
      (local.set $a (i64.add (local.get $a) (i64.const 8)))
      (br $l)))
    (local.set $a (i64.const 8192))
    (block $done2 (loop $l2
      (br_if $done2 (i64.ge_u (local.get $a) (i64.const 12288)))
      (if (i64.ne (i64.load8_u (local.get $a)) (i64.const 0)) (then (local.set $nz (i64.add (local.get $nz) (i64.const 1)))))
      (local.set $a (i64.add (local.get $a) (i64.const 1)))
      (br $l2)))
    (i64.store (i64.const 1024) (local.get $h))
    (i64.store (i64.const 1032) (i64.load (i64.const 8)))
    (i64.store (i64.const 1040) (i64.load (i64.const 16)))
    (i64.store (i64.const 1048) (local.get $nz))
    (i64.store (i64.const 1056) (i64.load (i64.const 4096)))
    (call $append (i64.const 1024) (i64.const 40))
    (call $reply)))`, initBytes, growBytes, trap)
}

// heapCheck is the "check" query's answer.
type heapCheck struct{ sum, pre, post, page2NonZero, marker uint64 }

func decodeHeapCheck(t testing.TB, b []byte) heapCheck {
	t.Helper()
	if len(b) != 40 {
		t.Fatalf("check replied %d bytes", len(b))
	}
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	return heapCheck{u(0), u(1), u(2), u(3), u(4)}
}

// heapDigest hashes the host's committed heap from page 3 on (the pages
// neither pre_upgrade nor post_upgrade touch), and its size.
func heapDigest(t testing.TB, n *Node, id principal.Principal) ([32]byte, uint64) {
	t.Helper()
	c, err := n.get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	size := c.heap.Size()
	for off := uint64(3 * state.PageSize); off < size; {
		chunk := min(uint64(len(buf)), size-off)
		if err := c.heap.ReadAt(buf[:chunk], off); err != nil {
			t.Fatal(err)
		}
		h.Write(buf[:chunk])
		off += chunk
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, size
}

func largeHeapConfig(t testing.TB, isolation string) Config {
	cfg := testConfig(t, isolation)
	cfg.Sandbox.Strict = isolation == "sandbox"
	return cfg
}

// TestUpgradeKeepsLargeHeap fills a large 64-bit heap, upgrades it keeping
// the heap (pre_upgrade and post_upgrade both write to it), and checks that
// every byte is what it was, as the canister sees it and as the host holds
// it, then again after a restart (from the store alone), in both isolation
// modes; a second upgrade after the restart checks the reloaded state can
// be upgraded again.
func TestUpgradeKeepsLargeHeap(t *testing.T) {
	// Not t.Parallel: the longest tests. Their two halves run together
	// before the parallel tests start, rather than trailing them.
	size := uint64(*largeHeapMiB) << 20
	for _, isolation := range []string{"inprocess", "sandbox"} {
		t.Run(isolation, func(t *testing.T) {
			t.Parallel()
			cfg := largeHeapConfig(t, isolation)
			f := openFixture(t, cfg)
			wasm := eopWat(t, largeHeapWat(size, 1<<20, false))
			id := f.install(wasm, noArgs)
			before := decodeHeapCheck(t, f.query(id, "check", noArgs))
			if before.pre != 0 || before.post != 0 || before.page2NonZero == 0 {
				t.Fatalf("after install: %+v", before)
			}
			digest, heapSize := heapDigest(t, f.node, id)
			if heapSize != size+state.WasmPageSize {
				t.Fatalf("heap of %d bytes after install, want %d", heapSize, size+state.WasmPageSize)
			}

			keep := true
			upgrade := func() {
				t.Helper()
				if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user, KeepHeap: &keep}); err != nil {
					t.Fatalf("upgrade: %v", err)
				}
			}
			// An upgrade whose post_upgrade trap after writing (and after
			// pre_upgrade wrote) changes nothing.
			trapping := eopWat(t, largeHeapWat(size, 1<<20, true))
			failedUpgrade := func() {
				t.Helper()
				_, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: trapping, Arg: noArgs, Caller: user, KeepHeap: &keep})
				if r := f.reject(err); !strings.Contains(r.Message, "post_upgrade trapped") {
					t.Fatalf("trapping upgrade: %v", err)
				}
			}
			verify := func(when string, upgrades uint64) {
				t.Helper()
				got := decodeHeapCheck(t, f.query(id, "check", noArgs))
				want := heapCheck{sum: before.sum, pre: upgrades, post: upgrades, page2NonZero: 0, marker: 0x5eed}
				if got != want {
					t.Fatalf("%s: canister sees %+v, want %+v", when, got, want)
				}
				d, s := heapDigest(t, f.node, id)
				if d != digest || s != heapSize {
					t.Fatalf("%s: host heap of %d bytes differs from before the upgrade (%d bytes)", when, s, heapSize)
				}
			}
			failedUpgrade()
			got := decodeHeapCheck(t, f.query(id, "check", noArgs))
			if d, s := heapDigest(t, f.node, id); got != before || d != digest || s != heapSize {
				t.Fatalf("after a failed upgrade: canister sees %+v, want %+v; host heap same: %v", got, before, d == digest && s == heapSize)
			}
			upgrade()
			verify("after the upgrade", 1)
			f.restart()
			verify("after the upgrade and a restart", 1)
			failedUpgrade()
			verify("after a failed upgrade", 1)
			upgrade()
			verify("after a second upgrade", 2)
			f.restart()
			verify("after a second upgrade and a restart", 2)
		})
	}
}

// procStatus reads fields (in kB) of /proc/self/status.
func procStatus(b testing.TB, fields ...string) map[string]uint64 {
	b.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		for _, want := range fields {
			if k == want {
				n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err != nil {
					b.Fatalf("%s: %v", k, err)
				}
				out[k] = n << 10
			}
		}
	}
	return out
}

// resetPeakRSS sets VmHWM back to the current RSS (clear_refs 5), after
// returning what the garbage collector can, so that the peak that follows
// belongs to what is measured.
func resetPeakRSS(b testing.TB) {
	b.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Skipf("cannot reset the peak RSS: %v", err)
	}
}

// BenchmarkUpgradeLargeHeap upgrades a 64-bit canister whose heap of the
// given size is kept, and reports the upgrade's throughput (heap bytes per
// second of upgrade) and the host process's peak RSS during the upgrades
// (VmHWM, reset before them) as a multiple of the heap, besides the RSS
// after install and after growing the heap by a quarter.
func BenchmarkUpgradeLargeHeap(b *testing.B) {
	for _, isolation := range []string{"inprocess", "sandbox"} {
		for _, mib := range []uint64{256, 1024} {
			b.Run(fmt.Sprintf("%s/%dMiB", isolation, mib), func(b *testing.B) {
				size := mib << 20
				cfg := largeHeapConfig(b, isolation)
				n := openBenchNode(b, cfg)
				ctx := context.Background()
				wasm := eopWat(b, largeHeapWat(size, size/4, false))
				resetPeakRSS(b)
				base := procStatus(b, "VmRSS")["VmRSS"]
				start := time.Now()
				id := benchInstall(b, n, wasm)
				installTime := time.Since(start)
				installPeak := procStatus(b, "VmHWM")["VmHWM"]
				keep := true
				resetPeakRSS(b)
				heldBefore := procStatus(b, "VmRSS")["VmRSS"]
				var total time.Duration
				for b.Loop() {
					start := time.Now()
					if _, err := n.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user, KeepHeap: &keep}); err != nil {
						b.Fatal(err)
					}
					total += time.Since(start)
				}
				st := procStatus(b, "VmHWM", "VmRSS")
				runtime.GC()
				debug.FreeOSMemory()
				heldSt := procStatus(b, "VmRSS", "RssAnon", "RssFile", "RssShmem")
				held := heldSt["VmRSS"]
				b.Logf("after the upgrades: anonymous %d MiB, file %d MiB, shmem %d MiB",
					heldSt["RssAnon"]>>20, heldSt["RssFile"]>>20, heldSt["RssShmem"]>>20)
				// Growing by a quarter of the heap: the peak, what is resident
				// right after it, and what stays after a collection.
				resetPeakRSS(b)
				if _, err := n.Update(ctx, Message{Canister: id, Method: "grow", Arg: noArgs, Caller: user}); err != nil {
					b.Fatal(err)
				}
				growSt := procStatus(b, "VmHWM", "VmRSS")
				runtime.GC()
				debug.FreeOSMemory()
				grown := procStatus(b, "VmRSS")["VmRSS"]
				b.ReportMetric(float64(int64(growSt["VmHWM"])-int64(held))/float64(size/4), "growPeak/grown")
				b.ReportMetric(float64(int64(growSt["VmRSS"])-int64(held))/float64(size/4), "growRSSnoGC/grown")
				perUpgrade := total / time.Duration(b.N)
				b.ReportMetric(float64(size)/1e6/perUpgrade.Seconds(), "MB/s")
				b.ReportMetric(float64(st["VmHWM"])/float64(size), "peakRSS/heap")
				b.ReportMetric(float64(st["VmHWM"]-heldBefore)/float64(size), "peakRSS-held/heap")
				b.ReportMetric(float64(installPeak-base)/float64(size), "installPeak/heap")
				b.ReportMetric(float64(held-base)/float64(size), "heldRSS/heap")
				b.ReportMetric(float64(int64(grown)-int64(held))/float64(size/4), "growRSS/grown")
				b.Logf("%s %d MiB: install %v (peak RSS +%d MiB), upgrade %v, peak RSS %d MiB (held before %d MiB, after %d MiB, base %d MiB); +%d MiB heap → RSS %+d MiB",
					isolation, mib, installTime.Round(time.Millisecond), (installPeak-base)>>20, perUpgrade.Round(time.Millisecond),
					st["VmHWM"]>>20, heldBefore>>20, held>>20, base>>20, mib/4, (int64(grown)-int64(held))>>20)
			})
		}
	}
}

// TestGrowingHeapHoldsOneCopy grows a heap by 256 MiB in one message and
// checks, as soon as the reply is back and without forcing a collection,
// that the host process holds about one copy of the new pages: RSS grows
// by at most 1.2 times them plus 48 MiB (before, the commit's buffers kept
// it 2.7 times larger until the next collection). In-process, so the
// execution's linear memory is in this process too, and must be gone.
func TestGrowingHeapHoldsOneCopy(t *testing.T) {
	// Not t.Parallel: it measures the process's RSS.
	if raceEnabled {
		// As TestHostMemoryHoldsOneCopy: the race detector's shadow memory
		// is several times what it shadows (alone here, 58 → 1389 MiB for
		// 256 MiB), so RSS measures it, not the node; the plain
		// `go test ./...` runs this test. It passed the race step only
		// while earlier tests had already made that shadow resident.
		t.Skip("the race detector's shadow memory is several times what it shadows: RSS measures it, not the node")
	}
	const grow = 256 << 20
	cfg := largeHeapConfig(t, "inprocess")
	f := openFixture(t, cfg)
	id := f.install(eopWat(t, largeHeapWat(1<<20, grow, false)), noArgs)
	f.query(id, "check", noArgs) // builds the heap's image first
	runtime.GC()
	debug.FreeOSMemory()
	before := procStatus(t, "VmRSS")["VmRSS"]
	f.update(id, "grow", noArgs)
	after := procStatus(t, "VmRSS")["VmRSS"]
	if limit := before + grow*12/10 + 48<<20; after > limit {
		t.Fatalf("RSS %d MiB → %d MiB after growing the heap by %d MiB (limit %d MiB)", before>>20, after>>20, grow>>20, limit>>20)
	}
	t.Logf("RSS %d MiB → %d MiB after growing the heap by %d MiB", before>>20, after>>20, grow>>20)
	if got := decodeHeapCheck(t, f.query(id, "check", noArgs)); got.page2NonZero == 0 {
		t.Fatalf("check after grow: %+v", got)
	}
}

// TestMotokoLargeHeapUpgrade upgrades the Motoko example heap64 (64-bit,
// enhanced orthogonal persistence: the heap is kept by default) holding
// 32 MiB of chunks (Motoko's heap is then 1 GiB large, sparsely written)
// in both isolation modes, and checks that what the
// actor holds is unchanged as it sees it, after the upgrade and after a
// restart.
func TestMotokoLargeHeapUpgrade(t *testing.T) {
	// Not t.Parallel: the longest tests. Their two halves run together
	// before the parallel tests start, rather than trailing them.
	wasm := module(t, examplesDir, "heap64")
	for _, isolation := range []string{"inprocess", "sandbox"} {
		t.Run(isolation, func(t *testing.T) {
			t.Parallel()
			cfg := largeHeapConfig(t, isolation)
			f := openFixture(t, cfg)
			id := f.install(wasm, noArgs)
			for _, want := range []uint64{16, 32} {
				eq(t, "grow", f.update(id, "grow", natArg(16)), natReply(want))
			}
			sum := f.query(id, "checksum", noArgs)
			if !strings.HasPrefix(string(sum), "DIDL\x00\x01\x79") || len(sum) != 11 {
				t.Fatalf("checksum reply %x", sum)
			}
			st, err := f.node.Status(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if st.HeapBytes < 32<<20 {
				t.Fatalf("heap of %d bytes holds 32 MiB of chunks?", st.HeapBytes)
			}
			f.upgrade(id, wasm)
			eq(t, "upgrades", f.query(id, "upgrades", noArgs), natReply(1))
			eq(t, "size after the upgrade", f.query(id, "size", noArgs), natReply(32))
			eq(t, "checksum after the upgrade", f.query(id, "checksum", noArgs), sum)
			f.restart()
			eq(t, "checksum after the upgrade and a restart", f.query(id, "checksum", noArgs), sum)
			f.upgrade(id, wasm)
			eq(t, "upgrades", f.query(id, "upgrades", noArgs), natReply(2))
			eq(t, "checksum after a second upgrade", f.query(id, "checksum", noArgs), sum)
			eq(t, "grow after the upgrades", f.update(id, "grow", natArg(1)), natReply(33))
			f.restart()
			eq(t, "size after a restart", f.query(id, "size", noArgs), natReply(33))
		})
	}
}

// BenchmarkUpgradeMotokoHeap upgrades the Motoko example heap64 holding
// 128 MiB of chunks (enhanced orthogonal persistence keeps the heap), and
// reports the upgrade's time, the heap bytes stored per second of upgrade
// and the host's peak RSS during the upgrades over those bytes.
func BenchmarkUpgradeMotokoHeap(b *testing.B) {
	const mib = 128
	wasm := module(b, examplesDir, "heap64")
	for _, isolation := range []string{"inprocess", "sandbox"} {
		b.Run(isolation, func(b *testing.B) {
			cfg := largeHeapConfig(b, isolation)
			n := openBenchNode(b, cfg)
			ctx := context.Background()
			id := benchInstall(b, n, wasm)
			for range mib / 32 {
				if _, err := n.Update(ctx, Message{Canister: id, Method: "grow", Arg: natArg(32), Caller: user}); err != nil {
					b.Fatal(err)
				}
			}
			c, err := n.get(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			c.mu.RLock()
			stored := uint64(len(c.heap.StoredPages())) * state.PageSize
			size := c.heap.Size()
			c.mu.RUnlock()
			resetPeakRSS(b)
			heldSt := procStatus(b, "VmRSS", "RssAnon", "RssFile", "RssShmem")
			held := heldSt["VmRSS"]
			b.Logf("before the upgrades: anonymous %d MiB, file %d MiB, shmem %d MiB",
				heldSt["RssAnon"]>>20, heldSt["RssFile"]>>20, heldSt["RssShmem"]>>20)
			var total time.Duration
			keep := true
			for b.Loop() {
				start := time.Now()
				if _, err := n.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user, KeepHeap: &keep}); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
			}
			peak := procStatus(b, "VmHWM")["VmHWM"]
			per := total / time.Duration(b.N)
			b.ReportMetric(float64(stored)/1e6/per.Seconds(), "MB/s")
			b.ReportMetric(float64(peak)/float64(stored), "peakRSS/stored")
			b.Logf("%s: heap of %d MiB, %d MiB stored: upgrade %v, peak RSS %d MiB (held before %d MiB)",
				isolation, size>>20, stored>>20, per.Round(time.Millisecond), peak>>20, held>>20)
		})
	}
}
