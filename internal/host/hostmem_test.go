package host

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Host memory of committed pages: how much of this machine's memory the
// node holds, counting what RSS does not show. RSS leaves out the pages of
// memory images (memfds) no process maps, yet they are shmem, host memory
// as much as anything; and it leaves out the sandboxes, which are other
// processes.

// hostMem is the node's memory on the host.
type hostMem struct {
	anon, file uint64 // this process's resident anonymous and file pages
	images     uint64 // every memfd this process or a sandbox holds, whole (distinct files)
	sandboxes  uint64 // the anonymous and file pages of descendant processes
}

// total is all of it. Shared memory mapped by a process (RssShmem) is not
// added: those are pages of the images, counted once in images.
func (h hostMem) total() uint64 { return h.anon + h.file + h.images + h.sandboxes }

func (h hostMem) String() string {
	return strconv.FormatUint(h.total()>>20, 10) + " MiB (anon " + strconv.FormatUint(h.anon>>20, 10) +
		", file " + strconv.FormatUint(h.file>>20, 10) + ", images " + strconv.FormatUint(h.images>>20, 10) +
		", sandboxes " + strconv.FormatUint(h.sandboxes>>20, 10) + ")"
}

// measureHostMemory measures the node's memory on the host.
func measureHostMemory(t testing.TB) hostMem {
	t.Helper()
	self := procStatus(t, "RssAnon", "RssFile")
	h := hostMem{anon: self["RssAnon"], file: self["RssFile"]}
	seen := map[uint64]bool{}
	h.images += memfdBytes(t, "self", seen)
	for _, pid := range descendants(os.Getpid()) {
		st, err := readStatus(pid, "RssAnon", "RssFile")
		if err != nil {
			continue // gone meanwhile
		}
		h.sandboxes += st["RssAnon"] + st["RssFile"]
		// A sandbox's descriptors may be out of reach (not dumpable):
		// the images it maps are the host's, counted above.
		h.images += memfdBytes(t, strconv.Itoa(pid), seen)
	}
	return h
}

// memfdBytes sums the allocated bytes of the memfds process pid holds that
// are not in seen yet.
func memfdBytes(t testing.TB, pid string, seen map[uint64]bool) uint64 {
	dir := filepath.Join("/proc", pid, "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n uint64
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(link, "/memfd:") {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || seen[st.Ino] {
			continue
		}
		seen[st.Ino] = true
		n += uint64(st.Blocks) * 512
	}
	return n
}

// descendants lists the processes below pid (the sandboxes and their
// helpers), from /proc/<pid>/task/*/children.
func descendants(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "children"))
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, s := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(s); err == nil {
				out = append(out, c)
				out = append(out, descendants(c)...)
			}
		}
	}
	return out
}

// readStatus reads fields (kB) of /proc/<pid>/status.
func readStatus(pid int, fields ...string) (map[string]uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for _, want := range fields {
			if k == want {
				if n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64); err == nil {
					out[k] = n << 10
				}
			}
		}
	}
	return out, nil
}

// oneCopyOverhead is the fixed overhead TestHostMemoryHoldsOneCopy allows
// beyond 1.2 times the committed pages added: 64 MiB, for what a message
// and a commit of 256 MiB leave behind that is not pages (bbolt's mapping
// of the pages it read, allocator slack, a sandbox's runtime and the
// transient maps of the execution), about a quarter of the memory grown.
// Two copies (a page map beside its image) would exceed it by 200 MiB.
const oneCopyOverhead = 64 << 20

// TestHostMemoryHoldsOneCopy grows a heap by 256 MiB in one message, then
// upgrades the canister keeping the heap, in both isolation modes, and
// checks after each that the host's memory (RSS, memory images, sandboxes:
// measureHostMemory) grew by at most 1.2 times the committed pages added
// plus oneCopyOverhead: each committed page is held once, in the memory's
// image.
func TestHostMemoryHoldsOneCopy(t *testing.T) {
	// Not t.Parallel: it measures the process's RSS.
	if raceEnabled {
		t.Skip("the race detector's shadow memory is several times what it shadows: RSS measures it, not the node")
	}
	const grow = 256 << 20
	for _, isolation := range []string{"inprocess", "sandbox"} {
		t.Run(isolation, func(t *testing.T) {
			cfg := largeHeapConfig(t, isolation)
			f := openFixture(t, cfg)
			wasm := eopWat(t, largeHeapWat(1<<20, grow, false))
			id := f.install(wasm, noArgs)
			f.query(id, "check", noArgs) // the sandbox is up, the image made
			runtime.GC()
			debug.FreeOSMemory()
			before := measureHostMemory(t)
			f.update(id, "grow", noArgs)
			stored := storedBytes(t, f.node, id)
			if stored < grow {
				t.Fatalf("%d bytes stored after growing by %d", stored, grow)
			}
			check := func(when string) {
				t.Helper()
				after := measureHostMemory(t)
				limit := before.total() + grow*12/10 + oneCopyOverhead
				t.Logf("%s: host memory %v → %v (limit %d MiB)", when, before, after, limit>>20)
				if after.total() > limit {
					t.Fatalf("%s: host memory %d MiB → %d MiB, limit %d MiB (1.2 × %d MiB committed + %d MiB)",
						when, before.total()>>20, after.total()>>20, limit>>20, grow>>20, oneCopyOverhead>>20)
				}
			}
			check("after growing the heap")
			sum := decodeHeapCheck(t, f.query(id, "check", noArgs))
			keep := true
			if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user, KeepHeap: &keep}); err != nil {
				t.Fatal(err)
			}
			check("after an upgrade keeping the heap")
			got := decodeHeapCheck(t, f.query(id, "check", noArgs))
			if got.sum != sum.sum || got.post != 1 {
				t.Fatalf("after the upgrade the canister sees %+v, before %+v", got, sum)
			}
		})
	}
}

// storedBytes is the size of a canister's stored heap pages.
func storedBytes(t testing.TB, n *Node, id principal.Principal) uint64 {
	t.Helper()
	c, err := n.get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return uint64(c.heap.NumStored()) * state.PageSize
}

// peakSampler samples measureHostMemory until stopped and keeps the
// largest total: the peak of an operation, as far as sampling every few
// milliseconds sees it (a benchmark's figure, never a test's).
type peakSampler struct {
	stop chan struct{}
	done chan uint64
}

func samplePeak(t testing.TB) *peakSampler {
	s := &peakSampler{stop: make(chan struct{}), done: make(chan uint64, 1)}
	go func() {
		var peak uint64
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, measureHostMemory(t).total())
			select {
			case <-s.stop:
				s.done <- max(peak, measureHostMemory(t).total())
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *peakSampler) peak() uint64 {
	close(s.stop)
	return <-s.done
}

// BenchmarkHostMemoryPerCommitted installs a 64-bit canister whose init
// fills a 256 MiB heap, grows it by 64 MiB and upgrades it keeping the
// heap, in both isolation modes, and reports the node's memory on the host
// (measureHostMemory: RSS, memory images, sandboxes) above what it held
// before the install, per committed byte, held after each step and at its
// sampled peak:
//
//	go test ./internal/host -run '^$' -bench HostMemoryPerCommitted -benchtime 1x
func BenchmarkHostMemoryPerCommitted(b *testing.B) {
	const size, grow = 256 << 20, 64 << 20
	for _, isolation := range []string{"inprocess", "sandbox"} {
		b.Run(isolation, func(b *testing.B) {
			cfg := largeHeapConfig(b, isolation)
			n := openBenchNode(b, cfg)
			ctx := context.Background()
			wasm := eopWat(b, largeHeapWat(size, grow, false))
			settle := func() hostMem {
				runtime.GC()
				debug.FreeOSMemory()
				return measureHostMemory(b)
			}
			base := settle()
			s := samplePeak(b)
			id := benchInstall(b, n, wasm)
			installPeak := s.peak()
			committed := storedBytes(b, n, id)
			installHeld := settle()
			s = samplePeak(b)
			if _, err := n.Update(ctx, Message{Canister: id, Method: "grow", Arg: noArgs, Caller: user}); err != nil {
				b.Fatal(err)
			}
			growPeak := s.peak()
			growHeld := measureHostMemory(b) // at once, no collection forced
			grown := storedBytes(b, n, id) - committed
			committed += grown
			keep := true
			heldBefore := settle()
			s = samplePeak(b)
			for b.Loop() {
				if _, err := n.Install(ctx, id, InstallOptions{Mode: ModeUpgrade, Wasm: wasm, Arg: noArgs, Caller: user, KeepHeap: &keep}); err != nil {
					b.Fatal(err)
				}
			}
			upgradePeak := s.peak()
			held := measureHostMemory(b)
			per := func(v, from, bytes uint64) float64 { return (float64(v) - float64(from)) / float64(bytes) }
			b.ReportMetric(per(installPeak, base.total(), size), "installPeak/heap")
			b.ReportMetric(per(installHeld.total(), base.total(), size), "installHeld/heap")
			b.ReportMetric(per(growPeak, installHeld.total(), grown), "growPeak/grown")
			b.ReportMetric(per(growHeld.total(), installHeld.total(), grown), "growHeld/grown")
			b.ReportMetric(per(upgradePeak, base.total(), committed), "upgradePeak/committed")
			b.ReportMetric(per(held.total(), base.total(), committed), "held/committed")
			b.Logf("%s: %d MiB committed; base %v; after install %v; after grow %v; before the upgrades %v, after %v",
				isolation, committed>>20, base, installHeld, growHeld, heldBefore, held)
		})
	}
}
