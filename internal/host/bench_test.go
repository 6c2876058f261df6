package host

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// Benchmarks for the foundation: figures go to BENCHMARKS.md.
//   go test ./internal/host -run '^$' -bench . -benchtime 2s

func benchNode(b *testing.B) *Node {
	return openBenchNode(b, testConfig(b, ""))
}

// openBenchNode opens a node of cfg, closed when the benchmark run ends.
func openBenchNode(b *testing.B, cfg Config) *Node {
	b.Helper()
	n, err := Open(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	return n
}

func benchInstall(b *testing.B, n *Node, wasm []byte) principal.Principal {
	ctx := context.Background()
	id, err := n.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := n.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: wasm, Arg: noArgs, Caller: user}); err != nil {
		b.Fatal(err)
	}
	return id
}

// BenchmarkInstall measures create + install of the counter (module cached
// after the first compile, as on a running node).
func BenchmarkInstall(b *testing.B) {
	n := benchNode(b)
	wasm := module(b, corpusDir, "counter")
	for b.Loop() {
		benchInstall(b, n, wasm)
	}
}

// BenchmarkUpdateCounter measures one committed update (inc), fsync included.
func BenchmarkUpdateCounter(b *testing.B) {
	n := benchNode(b)
	id := benchInstall(b, n, module(b, corpusDir, "counter"))
	ctx := context.Background()
	for b.Loop() {
		if _, err := n.Update(ctx, Message{Canister: id, Method: "inc", Arg: noArgs, Caller: user}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkQueryCounter measures one query (get).
func BenchmarkQueryCounter(b *testing.B) {
	n := benchNode(b)
	id := benchInstall(b, n, module(b, corpusDir, "counter"))
	ctx := context.Background()
	for b.Loop() {
		if _, err := n.Query(ctx, Message{Canister: id, Method: "get", Arg: noArgs, Caller: user}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkComputeFib reports metered instructions per second on fib(25).
func BenchmarkComputeFib(b *testing.B) {
	n := benchNode(b)
	id := benchInstall(b, n, module(b, corpusDir, "compute"))
	ctx := context.Background()
	var instr uint64
	start := time.Now()
	for b.Loop() {
		r, err := n.Query(ctx, Message{Canister: id, Method: "fib", Arg: natArg(25), Caller: user})
		if err != nil {
			b.Fatal(err)
		}
		instr += r.Instructions
	}
	b.ReportMetric(float64(instr)/time.Since(start).Seconds()/1e6, "Minstr/s")
	b.ReportMetric(float64(instr)/float64(b.N), "instr/op")
}

// BenchmarkQueryParallel measures concurrent queries (get) of one canister
// in both isolation modes, closed loop, 4 clients per CPU: throughput is
// 1/(ns/op), and p50-µs the median latency of one query. Compare the
// sub-benchmarks' figures (the sandboxed/in-process ratio is what the
// sandbox costs); sandbox-serial is a sandbox that runs one query at a time
// (sandbox.query_threads = 1, as before queries ran concurrently),
// sandbox-2cores one with a CPU quota of two cores (four query threads) and
// sandbox-8threads one that runs eight queries at once (the default with a
// CPU quota of four cores), as many as there are clients.
// host-cpu-µs/op is the CPU the test process (the host) used per query,
// sandbox-cpu-µs/op what its sandbox processes used (10 ms resolution:
// run a few thousand queries).
//
//	go test ./internal/host -run '^$' -bench QueryParallel -benchtime 2000x
func BenchmarkQueryParallel(b *testing.B) {
	for _, mode := range []string{"inprocess", "sandbox", "sandbox-serial", "sandbox-2cores", "sandbox-8threads"} {
		b.Run(mode, func(b *testing.B) {
			n, msg := queryBenchNode(b, mode)
			ctx := context.Background()
			var mu sync.Mutex
			var lats []time.Duration
			b.SetParallelism(4) // 4 clients per CPU
			cpu := startCPU(b)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					t0 := time.Now()
					if _, err := n.Query(ctx, msg); err != nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lats = append(lats, mine...)
				mu.Unlock()
			})
			b.StopTimer()
			cpu.report(b, mode != "inprocess")
			reportLatencies(b, lats)
		})
	}
}

// BenchmarkQueryOneClient measures queries (get) of one canister sent by
// one client, one after another, in both isolation modes: p50-µs is the
// latency of a query on an otherwise idle node, and the CPU figures are
// BenchmarkQueryParallel's.
//
//	go test ./internal/host -run '^$' -bench QueryOneClient -benchtime 2000x
func BenchmarkQueryOneClient(b *testing.B) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		b.Run(mode, func(b *testing.B) {
			n, msg := queryBenchNode(b, mode)
			ctx := context.Background()
			lats := make([]time.Duration, 0, b.N)
			cpu := startCPU(b)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if _, err := n.Query(ctx, msg); err != nil {
					b.Fatal(err)
				}
				lats = append(lats, time.Since(t0))
			}
			b.StopTimer()
			cpu.report(b, mode != "inprocess")
			reportLatencies(b, lats)
		})
	}
}

// queryBenchNode opens a node in a BenchmarkQueryParallel mode with the
// counter installed and queried once (a sandbox is live).
func queryBenchNode(b *testing.B, mode string) (*Node, Message) {
	cfg := testConfig(b, "inprocess")
	if mode != "inprocess" {
		cfg.Isolation = "sandbox"
	}
	switch mode {
	case "sandbox-serial":
		cfg.Sandbox.QueryThreads = 1
	case "sandbox-2cores":
		cfg.Sandbox.CPUPercent = 200
	case "sandbox-8threads":
		cfg.Sandbox.QueryThreads = 8
	}
	n := openBenchNode(b, cfg)
	id := benchInstall(b, n, module(b, corpusDir, "counter"))
	msg := Message{Canister: id, Method: "get", Arg: noArgs, Caller: user}
	if _, err := n.Query(context.Background(), msg); err != nil {
		b.Fatal(err)
	}
	return n, msg
}

func reportLatencies(b *testing.B, lats []time.Duration) {
	if len(lats) == 0 {
		return
	}
	slices.Sort(lats)
	b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-µs")
}

// cpuMark is the CPU time used so far by this process (the host) and by
// its descendants (sandboxes, and whatever spawns them).
type cpuMark struct{ host, sandboxes time.Duration }

func startCPU(b *testing.B) cpuMark {
	return cpuMark{host: selfCPU(b), sandboxes: descendantsCPU(os.Getpid())}
}

// report adds the CPU used per operation since the mark.
func (m cpuMark) report(b *testing.B, sandboxed bool) {
	if b.N == 0 {
		return
	}
	host := selfCPU(b) - m.host
	b.ReportMetric(float64(host.Microseconds())/float64(b.N), "host-cpu-µs/op")
	if sandboxed {
		sb := descendantsCPU(os.Getpid()) - m.sandboxes
		b.ReportMetric(float64(sb.Microseconds())/float64(b.N), "sandbox-cpu-µs/op")
	}
}

func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// descendantsCPU sums the CPU time (user + system, in /proc's 10 ms ticks)
// of the live descendants of pid. A process that exited is not counted.
func descendantsCPU(pid int) time.Duration {
	var total time.Duration
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(kids)) {
			kid, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			total += procCPU(kid) + descendantsCPU(kid)
		}
	}
	return total
}

// procCPU is a process's utime + stime from /proc/<pid>/stat (0 if gone).
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return 0
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

// BenchmarkMemoryHeavyUpdate is `cordon bench`'s memory-heavy update in
// both modes: memory.wasm's touch(c, 256) writes one byte in each of 256
// pages (every fourth page of a 4 MiB chunk c), a chunk no earlier
// iteration touched, and the commit stores what changed.
//
//	go test ./internal/host -run '^$' -bench MemoryHeavyUpdate -benchtime 20x
func BenchmarkMemoryHeavyUpdate(b *testing.B) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		b.Run(mode, func(b *testing.B) {
			cfg := testConfig(b, mode)
			n := openBenchNode(b, cfg)
			ctx := context.Background()
			id := benchInstall(b, n, module(b, corpusDir, "memory"))
			if _, err := n.Update(ctx, Message{Canister: id, Method: "grow", Arg: natArg(uint64(b.N) + 1), Caller: user}); err != nil {
				b.Fatal(err)
			}
			// The warm-up touches chunk 0.
			if _, err := n.Update(ctx, Message{Canister: id, Method: "touch", Arg: natPairArg(0, 256), Caller: user}); err != nil {
				b.Fatal(err)
			}
			cpu := startCPU(b)
			var instr uint64
			b.ResetTimer()
			for i := range b.N {
				r, err := n.Update(ctx, Message{Canister: id, Method: "touch", Arg: natPairArg(uint64(i)+1, 256), Caller: user})
				if err != nil {
					b.Fatal(err)
				}
				instr += r.Instructions
			}
			b.StopTimer()
			cpu.report(b, mode != "inprocess")
			// Instructions include the charge for each changed page
			// (sysapi.HeapDirtyPageCost): a garbage collection shows here.
			b.ReportMetric(float64(instr)/float64(b.N), "instr/op")
		})
	}
}
