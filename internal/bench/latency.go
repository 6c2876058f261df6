package bench

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/pkg/principal"
)

func touchArg(chunk, pages uint64) []byte {
	b := []byte("DIDL\x00\x02\x7d\x7d")
	return append(append(b, leb(chunk)...), leb(pages)...)
}

// latency: one message at a time, counter inc/get and a memory-heavy
// update, in both modes.
func (e *env) latency() error {
	ctx := e.ctx
	const sec = "latency"
	n := e.runs(20, 100)
	heavyRuns := e.runs(5, 15)
	// memory.wasm's touch(c, 256) writes one byte in each of 256 pages of
	// chunk c; writing a chunk again writes the same values (no change),
	// so every run touches a chunk of its own.
	chunks := uint64(heavyRuns + 2)
	nodes, closeAll, err := e.bothNodes(nil)
	if err != nil {
		return err
	}
	defer closeAll()
	counter, mem := map[string]principal.Principal{}, map[string]principal.Principal{}
	var heapMiB float64
	for _, iso := range modes {
		nd := nodes[iso]
		if counter[iso], err = nd.install(ctx, e.counter); err != nil {
			return fmt.Errorf("%s: %w", iso, err)
		}
		if mem[iso], err = nd.install(ctx, e.memory); err != nil {
			return fmt.Errorf("%s: %w", iso, err)
		}
		if _, err := nd.update(ctx, mem[iso], "grow", natArg(chunks)); err != nil {
			return fmt.Errorf("%s: %w", iso, err)
		}
		st, err := nd.Status(ctx, mem[iso])
		if err != nil {
			return err
		}
		heapMiB = float64(st.HeapBytes) / (1 << 20)
	}
	inc, err := interleave(ctx, 5, n, func(iso string, _ int) error {
		_, err := nodes[iso].update(ctx, counter[iso], "inc", noArgs)
		return err
	})
	if err != nil {
		return err
	}
	get, err := interleave(ctx, 5, n, func(iso string, _ int) error {
		_, err := nodes[iso].query(ctx, counter[iso], "get", noArgs)
		return err
	})
	if err != nil {
		return err
	}
	heavySamples, err := interleave(ctx, 1, heavyRuns, func(iso string, i int) error {
		c := uint64(i + 1) // the warm-up (i = -1) touches chunk 0
		_, err := nodes[iso].update(ctx, mem[iso], "touch", touchArg(c, 256))
		return err
	})
	if err != nil {
		return err
	}
	heavy := fmt.Sprintf("memory-heavy update: touch 256 pages of a %.0f MiB heap (memory.wasm)", heapMiB)
	for _, q := range []struct {
		name    string
		samples map[string][]float64
	}{
		{"update `inc` (counter)", inc},
		{"query `get` (counter)", get},
		{heavy, heavySamples},
	} {
		base := q.name + ", in-process"
		e.rep.Add(&Figure{Section: sec, Name: base, Samples: q.samples["inprocess"]})
		e.rep.Add(&Figure{Section: sec, Name: q.name + ", sandboxed", Samples: q.samples["sandbox"], Baseline: base})
	}
	e.rep.Note(sec, "The memory-heavy update runs on memory.wasm grown by %d chunks (`grow(%d)`; a chunk is a "+
		"1 Mi-element `[var Nat8]`, 4 MiB, and Motoko's copying GC doubles the heap); each run touches a chunk "+
		"no earlier run touched. In both modes every execution maps the committed heap's image copy-on-write "+
		"into a fresh instance and asks the kernel which pages it wrote; a sandbox receives the images as "+
		"descriptors. The two nodes run side by side, one message in each mode in turn.", chunks, chunks)
	return nil
}

// ---- throughput ------------------------------------------------------------

var canisterCounts = []int{1, 10, 100}

// clients is the number of concurrent closed-loop clients.
func clients() int { return 8 }

type loadResult struct {
	rate     float64 // messages per second
	p50, p99 float64 // latency, seconds
}

// percentile returns the p-th percentile (0..100) of xs, nearest rank.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// load runs clients closed-loop over ids for d and returns the rate and the
// median latency.
func load(ctx context.Context, nd *node, ids []principal.Principal, kind string, d time.Duration) (loadResult, error) {
	c := clients()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		lats []float64
		ferr error
	)
	start := time.Now()
	deadline := start.Add(d)
	for k := 0; k < c; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			var mine []float64
			for j := 0; time.Now().Before(deadline) && ctx.Err() == nil; j++ {
				id := ids[(k+j*c)%len(ids)]
				t0 := time.Now()
				var err error
				if kind == "update" {
					_, err = nd.update(ctx, id, "inc", noArgs)
				} else {
					_, err = nd.query(ctx, id, "get", noArgs)
				}
				if err != nil {
					mu.Lock()
					if ferr == nil {
						ferr = err
					}
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0).Seconds())
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}(k)
	}
	wg.Wait()
	if ferr != nil {
		return loadResult{}, ferr
	}
	if err := ctx.Err(); err != nil {
		return loadResult{}, err
	}
	el := time.Since(start).Seconds()
	return loadResult{rate: float64(len(lats)) / el, p50: Median(lats), p99: percentile(lats, 99)}, nil
}

func (e *env) throughput() error {
	ctx := e.ctx
	const sec = "throughput"
	runs := e.runs(2, 3)
	d := time.Duration(e.runs(500, 3000)) * time.Millisecond
	maxN := canisterCounts[len(canisterCounts)-1]
	// rates[iso][kind][k], lats[iso][kind][k]: samples over runs.
	type key struct {
		iso, kind string
		k         int
	}
	rates, p50, p99 := map[key][]float64{}, map[key][]float64{}, map[key][]float64{}
	nodes, closeAll, err := e.bothNodes(nil)
	if err != nil {
		return err
	}
	defer closeAll()
	ids := map[string][]principal.Principal{}
	for _, iso := range modes {
		for i := 0; i < maxN; i++ {
			id, err := nodes[iso].install(ctx, e.counter)
			if err != nil {
				return fmt.Errorf("%s: %w", iso, err)
			}
			ids[iso] = append(ids[iso], id)
		}
	}
	for _, kind := range []string{"update", "query"} {
		for _, k := range canisterCounts {
			// Warm: every canister answers once (its sandbox is live).
			for _, iso := range modes {
				for _, id := range ids[iso][:k] {
					if _, err := nodes[iso].query(ctx, id, "get", noArgs); err != nil {
						return fmt.Errorf("%s: %w", iso, err)
					}
				}
			}
			for r := 0; r < runs; r++ {
				for _, iso := range modes { // in turn: see interleave
					res, err := load(ctx, nodes[iso], ids[iso][:k], kind, d)
					if err != nil {
						return fmt.Errorf("%s: %w", iso, err)
					}
					kk := key{iso, kind, k}
					rates[kk] = append(rates[kk], res.rate)
					p50[kk] = append(p50[kk], res.p50)
					p99[kk] = append(p99[kk], res.p99)
				}
			}
		}
	}
	plural := func(k int) string {
		if k == 1 {
			return "1 canister"
		}
		return fmt.Sprintf("%d canisters", k)
	}
	kinds := map[string]string{"update": "updates", "query": "queries"}
	add := func(what string, unit Unit, label string, m map[key][]float64) {
		for _, kind := range []string{"update", "query"} {
			for _, k := range canisterCounts {
				name := func(iso string) string {
					return fmt.Sprintf(what, kinds[kind], kind) + fmt.Sprintf(", %s, %s", plural(k), modeName(iso))
				}
				e.rep.Add(&Figure{Section: sec, Name: name("inprocess"), Unit: unit, Label: label, Samples: m[key{"inprocess", kind, k}]})
				e.rep.Add(&Figure{Section: sec, Name: name("sandbox"), Unit: unit, Label: label, Samples: m[key{"sandbox", kind, k}],
					Baseline: name("inprocess")})
			}
		}
	}
	add("%[1]s/s", Rate, "msg/s", rates)
	add("%[2]s latency p50", Seconds, "", p50)
	add("%[2]s latency p99", Seconds, "", p99)
	e.rep.Note(sec, "%d concurrent clients, %s per run, %d runs per figure, the two modes' runs in turn; the "+
		"latency figures are each run's 50th and 99th percentile of the messages' latencies, and their median "+
		"over the runs.", clients(), d, runs)
	e.rep.Note(sec, "The queries of one canister run concurrently in both modes: in-process up to twice the CPUs "+
		"Go may use, in its sandbox up to `sandbox.query_threads` (default: twice the cores of its CPU quota, here "+
		"%d); a canister's updates run one at a time.", defaultQueryThreads())
	var series []Series
	for i, line := range []struct{ kind, iso string }{
		{"update", "sandbox"}, {"update", "inprocess"}, {"query", "sandbox"}, {"query", "inprocess"},
	} {
		for _, pc := range []struct {
			name string
			m    map[key][]float64
		}{{"p50", p50}, {"p99", p99}} {
			s := Series{Name: fmt.Sprintf("%s %s, %s", line.kind, pc.name, modeName(line.iso)),
				Color: palette[i], Dashed: pc.name == "p99"}
			for _, k := range canisterCounts {
				s.X = append(s.X, float64(k))
				s.Y = append(s.Y, Median(pc.m[key{line.iso, line.kind, k}])*1e3)
			}
			series = append(series, s)
		}
	}
	e.rep.Plots = append(e.rep.Plots, Plot{Section: sec, File: "latency-vs-canisters.svg",
		Title: "Message latency vs number of canisters",
		Chart: Chart{Title: fmt.Sprintf("Message latency under load (%d clients) vs number of canisters", clients()),
			XLabel: "canisters", YLabel: "latency (ms)", LogX: true, LogY: logScale(series),
			FormatX: func(v float64) string { return fmt.Sprintf("%g", v) }, FormatY: fmtTick, Series: series}})
	return nil
}

// logScale says whether a chart's values span enough to need a log axis.
func logScale(series []Series) bool {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range series {
		for _, y := range s.Y {
			if y > 0 && !math.IsNaN(y) {
				lo, hi = math.Min(lo, y), math.Max(hi, y)
			}
		}
	}
	return hi/lo > 30
}

func fmtTick(v float64) string {
	if v >= 1 || v == 0 {
		return fmt.Sprintf("%g", v)
	}
	return fmt.Sprintf("%.2g", v)
}

// defaultQueryThreads is how many queries of one canister a benchmark
// node's sandbox runs at once (the default of sandbox.query_threads).
func defaultQueryThreads() int {
	cfg := host.DefaultConfig()
	if cfg.Sandbox.QueryThreads > 0 {
		return cfg.Sandbox.QueryThreads
	}
	return exec.DefaultQueryThreads(cfg.Sandbox.CPUPercent)
}
