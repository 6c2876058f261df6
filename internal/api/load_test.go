package api

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/state"
)

// The load test: clients make update (inc) and query (get) calls to random
// canisters over HTTP for a while. In `go test` it runs 10 s (3 s with
// -short); the run in BENCHMARKS.md is
//
//	go test ./internal/api -run TestLoad -v -load.duration 60s
var (
	loadDuration  = flag.Duration("load.duration", 10*time.Second, "how long TestLoad runs")
	loadClients   = flag.Int("load.clients", 64, "concurrent clients in TestLoad")
	loadCanisters = flag.Int("load.canisters", 100, "canisters in TestLoad")
	loadQueries   = flag.Float64("load.queries", 0.25, "fraction of TestLoad's calls that are queries")
)

// openFDs counts this process's open file descriptors, without those of
// the canisters' memory images: one memfd per memory lives as long as its
// canister (state.ImageDescriptors counts them exactly), so anything more
// is a leak.
func openFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents) - int(state.ImageDescriptors())
}

type loadSample struct {
	fds, goroutines int
	heap            uint64
}

func sampleProcess(t testing.TB) loadSample {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return loadSample{fds: openFDs(t), goroutines: runtime.NumGoroutine(), heap: ms.HeapAlloc}
}

func TestLoad(t *testing.T) {
	duration := *loadDuration
	if testing.Short() && duration > 3*time.Second {
		duration = 3 * time.Second
	}
	s := serveWith(t, func(o *ServeOptions) { o.Logger = nil }) // no per-request log lines
	ctx := context.Background()
	wasm := counterWasm(t)
	ids := make([]string, *loadCanisters)
	start := time.Now()
	for i := range ids {
		r, err := s.client.Install(ctx, InstallRequest{Wasm: wasm, Arg: noArgs})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = r.ID
	}
	t.Logf("installed %d canisters in %v", len(ids), time.Since(start).Round(time.Millisecond))

	type result struct {
		update, query []time.Duration
		incs          []int64 // per canister
		errs          []error
	}
	idle := sampleProcess(t)
	results := make([]*result, *loadClients)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var phase atomic.Int32 // 0 warm-up, 1 measured
	for c := range results {
		r := &result{incs: make([]int64, len(ids))}
		results[c] = r
		wg.Go(func() {
			cl := NewClientWith(s.base, ClientOptions{Token: s.token})
			defer cl.Close()
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			for !stop.Load() {
				i := rng.IntN(len(ids))
				query := rng.Float64() < *loadQueries
				method := "inc"
				if query {
					method = "get"
				}
				t0 := time.Now()
				_, err := cl.Call(ctx, CallRequest{ID: ids[i], Method: method, Arg: noArgs, Query: query})
				d := time.Since(t0)
				if err != nil {
					r.errs = append(r.errs, err)
					continue
				}
				if !query {
					r.incs[i]++
				}
				if phase.Load() == 1 {
					if query {
						r.query = append(r.query, d)
					} else {
						r.update = append(r.update, d)
					}
				}
			}
		})
	}
	time.Sleep(time.Second) // warm-up: connections open, caches full
	before := sampleProcess(t)
	phase.Store(1)
	measured := time.Now()
	mid := make([]loadSample, 0, 16)
	for time.Since(measured) < duration {
		time.Sleep(min(time.Second, duration-time.Since(measured)))
		mid = append(mid, sampleProcess(t))
	}
	phase.Store(0)
	elapsed := time.Since(measured)
	stop.Store(true)
	wg.Wait()
	after := sampleProcess(t)
	// The clients have closed their connections; the server closes its
	// side when it reads the EOF.
	var final loadSample
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		final = sampleProcess(t)
		if final.fds <= idle.fds+2 || time.Now().After(deadline) {
			break
		}
	}

	var updates, queries []time.Duration
	var errs []error
	incs := make([]int64, len(ids))
	for _, r := range results {
		updates = append(updates, r.update...)
		queries = append(queries, r.query...)
		errs = append(errs, r.errs...)
		for i, n := range r.incs {
			incs[i] += n
		}
	}
	for i, err := range errs {
		if i < 5 {
			t.Errorf("call failed: %v", err)
		}
	}
	if len(errs) > 0 {
		t.Fatalf("%d calls failed", len(errs))
	}
	// Every answered increment is in its counter.
	for i, id := range ids {
		r, err := s.client.Call(ctx, CallRequest{ID: id, Method: "get", Arg: noArgs, Query: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := natReply(t, r.Reply); int64(got) != incs[i] {
			t.Fatalf("canister %s: counter %d, %d increments answered", id, got, incs[i])
		}
	}

	fams := scrape(t, s.base, s.token)
	commits, _ := value(fams, "cordon_store_commit_duration_seconds", nil)
	commitMean := time.Duration(histogramSum(fams, "cordon_store_commit_duration_seconds", nil) / commits * float64(time.Second))
	execs, _ := value(fams, "cordon_execution_duration_seconds", lv{"context": "update"})
	execMean := time.Duration(histogramSum(fams, "cordon_execution_duration_seconds", lv{"context": "update"}) / execs * float64(time.Second))

	all := append(slices.Clone(updates), queries...)
	report := fmt.Sprintf("%d clients, %d canisters, %.0f%% queries, %v: %d calls, %.0f calls/s (updates %.0f/s, queries %.0f/s)\n"+
		"  all     p50 %v  p99 %v\n  update  p50 %v  p99 %v\n  query   p50 %v  p99 %v\n"+
		"  under load: fds %d -> %d (max %d), goroutines %d -> %d, heap %.1f -> %.1f MiB (max %.1f)\n"+
		"  idle: fds %d before, %d after; goroutines %d before, %d after\n"+
		"  server side (whole run): store commit mean %v over %.0f commits; update execution mean %v",
		*loadClients, len(ids), *loadQueries*100, elapsed.Round(time.Millisecond), len(all),
		float64(len(all))/elapsed.Seconds(), float64(len(updates))/elapsed.Seconds(), float64(len(queries))/elapsed.Seconds(),
		pct(all, 50), pct(all, 99), pct(updates, 50), pct(updates, 99), pct(queries, 50), pct(queries, 99),
		before.fds, after.fds, maxOf(mid, func(s loadSample) int { return s.fds }),
		before.goroutines, after.goroutines,
		mib(before.heap), mib(after.heap), mib(uint64(maxOf(mid, func(s loadSample) int { return int(s.heap) }))),
		idle.fds, final.fds, idle.goroutines, final.goroutines,
		commitMean.Round(10*time.Microsecond), commits, execMean.Round(10*time.Microsecond))
	t.Log(report)
	if path := os.Getenv("CORDON_LOAD_REPORT"); path != "" {
		_ = os.WriteFile(path, []byte(report+"\n"), 0o644)
	}

	// Stable: under load, descriptors stay at one connection per client,
	// and when the clients are gone, nothing is left behind.
	if m := maxOf(mid, func(s loadSample) int { return s.fds }); m > before.fds+8 {
		t.Errorf("open fds grew under load: %d at the start, %d at most", before.fds, m)
	}
	if final.fds > idle.fds+2 {
		t.Errorf("open fds: %d before the load, %d after", idle.fds, final.fds)
	}
	if final.goroutines > idle.goroutines+4 {
		t.Errorf("goroutines: %d before the load, %d after", idle.goroutines, final.goroutines)
	}
	if m := uint64(maxOf(mid, func(s loadSample) int { return int(s.heap) })); m > 2*before.heap+64<<20 {
		t.Errorf("heap grew under load from %.1f to %.1f MiB", mib(before.heap), mib(m))
	}
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)].Round(10 * time.Microsecond)
}

func maxOf(ss []loadSample, f func(loadSample) int) int {
	m := 0
	for _, s := range ss {
		m = max(m, f(s))
	}
	return m
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
