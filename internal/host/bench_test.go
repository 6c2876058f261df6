package host

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// Benchmarks for the foundation: figures go to BENCHMARKS.md.
//   go test ./internal/host -run '^$' -bench . -benchtime 2s

func benchNode(b *testing.B) *Node {
	cfg := DefaultConfig()
	cfg.Home = b.TempDir()
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
// (sandbox.query_threads = 1, as before queries ran concurrently) and
// sandbox-2cores one with a CPU quota of two cores (four query threads).
//
//	go test ./internal/host -run '^$' -bench QueryParallel -benchtime 2000x
func BenchmarkQueryParallel(b *testing.B) {
	for _, mode := range []string{"inprocess", "sandbox", "sandbox-serial", "sandbox-2cores"} {
		b.Run(mode, func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.Home = b.TempDir()
			cfg.Isolation = "inprocess"
			if mode != "inprocess" {
				cfg.Isolation = "sandbox"
			}
			switch mode {
			case "sandbox-serial":
				cfg.Sandbox.QueryThreads = 1
			case "sandbox-2cores":
				cfg.Sandbox.CPUPercent = 200
			}
			n, err := Open(cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { n.Close() })
			id := benchInstall(b, n, module(b, corpusDir, "counter"))
			ctx := context.Background()
			msg := Message{Canister: id, Method: "get", Arg: noArgs, Caller: user}
			if _, err := n.Query(ctx, msg); err != nil { // the sandbox is live
				b.Fatal(err)
			}
			var mu sync.Mutex
			var lats []time.Duration
			b.SetParallelism(4) // 4 clients per CPU
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
			if len(lats) > 0 {
				slices.Sort(lats)
				b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}
