package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// scalePlan is the shape of the scale section: the canister counts it
// measures at (installed cumulatively on one node), the node's pool of live
// sandboxes and their memory budget, and the random traffic per count.
type scalePlan struct {
	counts   []int
	pool     int    // sandbox.max_sandboxes
	budget   uint64 // sandbox.memory_budget: RSS of all canister sandboxes
	warm     int    // untimed messages before each measurement
	messages int    // timed messages per count
	seed     uint64
}

// scaleSampleEvery is the sampler's interval during a measurement.
const scaleSampleEvery = time.Second

// scaleMemoryCapacity is the scale node's limits.memory_capacity.
const scaleMemoryCapacity = 32 << 30

func (e *env) scalePlan() scalePlan {
	p := scalePlan{counts: []int{100, 1000, 10000}, pool: 1000, budget: 8 << 30, warm: 1000, messages: 2000, seed: 1}
	if e.opt.Quick {
		p = scalePlan{counts: []int{10, 30, 100}, pool: 30, budget: 1 << 30, warm: 100, messages: 300, seed: 1}
	}
	if len(e.opt.ScaleCounts) > 0 {
		p.counts = slices.Sorted(slices.Values(e.opt.ScaleCounts))
	}
	return p
}

// scaleRecorder counts the node's sandbox spawns and evictions.
type scaleRecorder struct {
	metrics.Nop
	spawned, evictedPool, evictedMemory, crashed atomic.Int64
}

func (r *scaleRecorder) SandboxSpawned(kind string) {
	if kind == "canister" {
		r.spawned.Add(1)
	}
}

func (r *scaleRecorder) SandboxEvicted(reason string) {
	switch reason {
	case "memory":
		r.evictedMemory.Add(1)
	case "pool":
		r.evictedPool.Add(1)
	}
}

func (r *scaleRecorder) SandboxCrashed(string) { r.crashed.Add(1) }

// scaleSample is what the sampler saw of the node during a measurement.
type scaleSample struct {
	live, sandboxRSS, hostRSS, fds []float64
}

// sample reads the node's live canister sandboxes, their total RSS, the
// host's RSS and descriptors every interval until stop is closed, and once
// more at stop. Each sample reads every live sandbox's /proc (a thousand
// files with a full pool), so the interval is a second: a sampler at 250 ms
// cost the run a measurable share of the host's CPU at scale.
func sample(nd *node, interval time.Duration, stop <-chan struct{}) *scaleSample {
	s := &scaleSample{}
	t := time.NewTicker(interval)
	defer t.Stop()
	buf := make([]byte, 0, 4096)
	for {
		var live int
		var rss uint64
		for _, sb := range nd.Sandboxes() {
			if sb.Kind == "canister" {
				live++
				rss += sb.RSSBytes
			}
		}
		s.live = append(s.live, float64(live))
		s.sandboxRSS = append(s.sandboxRSS, float64(rss))
		// VmRSS only: smaps_rollup (PSS) walks every page of the host,
		// which the sampler would make a cost of the run.
		if b, err := readInto(buf, "/proc/self/status"); err == nil {
			buf = b[:0]
			s.hostRSS = append(s.hostRSS, float64(kbField(string(b), "VmRSS:")))
		}
		s.fds = append(s.fds, float64(openFDs()))
		select {
		case <-stop:
			return s
		case <-t.C:
		}
	}
}

// readInto reads a small file (a /proc status) into buf's storage.
func readInto(buf []byte, path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(cap(buf), 512))
		}
		k, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err == io.EOF || (err == nil && k == 0) {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

type scaleLoad struct {
	update, query []float64 // latencies, seconds
	elapsed       time.Duration
}

// randomTraffic sends n messages from clients() closed-loop clients, each
// to a canister drawn uniformly from ids, an update (inc) or a query (get)
// with equal odds; the draws come from seed, client by client.
func randomTraffic(ctx context.Context, nd *node, ids []principal.Principal, n int, seed uint64) (scaleLoad, error) {
	c := clients()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		res  scaleLoad
		ferr error
		left atomic.Int64
	)
	left.Store(int64(n))
	start := time.Now()
	for k := 0; k < c; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(k)))
			var ups, qs []float64
			for left.Add(-1) >= 0 && ctx.Err() == nil {
				id := ids[rng.IntN(len(ids))]
				upd := rng.IntN(2) == 0
				t0 := time.Now()
				var err error
				if upd {
					_, err = nd.update(ctx, id, "inc", noArgs)
				} else {
					_, err = nd.query(ctx, id, "get", noArgs)
				}
				if err != nil {
					mu.Lock()
					if ferr == nil {
						ferr = fmt.Errorf("%s to %s: %w", map[bool]string{true: "update", false: "query"}[upd], id, err)
					}
					mu.Unlock()
					return
				}
				if d := time.Since(t0).Seconds(); upd {
					ups = append(ups, d)
				} else {
					qs = append(qs, d)
				}
			}
			mu.Lock()
			res.update = append(res.update, ups...)
			res.query = append(res.query, qs...)
			mu.Unlock()
		}(k)
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	if ferr != nil {
		return res, ferr
	}
	return res, ctx.Err()
}

// scale: up to 10,000 installed canisters on one sandboxed node whose pool
// holds at most 1,000 live sandboxes, under uniformly random traffic.
func (e *env) scale() error {
	ctx := e.ctx
	const sec = "scale"
	plan := e.scalePlan()
	rec := &scaleRecorder{}
	nd, err := e.openNode("sandbox", func(c *host.Config) {
		c.Sandbox.MaxSandboxes = plan.pool
		c.Sandbox.MemoryBudget = plan.budget
		c.Sandbox.IdleTimeout = time.Hour // eviction by the pool's limits only
		c.Metrics = rec
		// Heap and stable memory of every canister together: 10,000
		// counters do not fit in the default, half of this machine's RAM
		// (the ledger counts what they may hold, not what they touch).
		c.MemoryCapacity = max(c.MemoryCapacity, scaleMemoryCapacity)
	})
	if err != nil {
		return err
	}
	defer nd.close()

	var ids []principal.Principal
	var points []*scalePoint
	for _, n := range plan.counts {
		if err := e.scaleInterrupted(sec, points, n, nil); err != nil {
			return err
		}
		if len(points) > 0 && ctx.Err() != nil {
			break
		}
		p := &scalePoint{n: n}
		batch := n - len(ids)
		t0 := time.Now()
		more, took, err := e.installMany(ctx, nd, batch, len(ids))
		if err != nil {
			if err := e.scaleInterrupted(sec, points, n, err); err != nil {
				return err
			}
			break
		}
		ids = append(ids, more...)
		p.install = took
		p.installRate = float64(batch) / time.Since(t0).Seconds()
		if _, err := randomTraffic(ctx, nd, ids, plan.warm, plan.seed+uint64(n)); err != nil {
			if err := e.scaleInterrupted(sec, points, n, fmt.Errorf("%d canisters, warm-up: %w", n, err)); err != nil {
				return err
			}
			break
		}
		sp, ep, em, cr := rec.spawned.Load(), rec.evictedPool.Load(), rec.evictedMemory.Load(), rec.crashed.Load()
		stop := make(chan struct{})
		smpc := make(chan *scaleSample, 1)
		go func() { smpc <- sample(nd, scaleSampleEvery, stop) }()
		p.load, err = randomTraffic(ctx, nd, ids, plan.messages, plan.seed+uint64(n)+1<<32)
		close(stop)
		p.smp = <-smpc
		if err != nil {
			if err := e.scaleInterrupted(sec, points, n, fmt.Errorf("%d canisters: %w", n, err)); err != nil {
				return err
			}
			break
		}
		p.spawns, p.evPool, p.evMem, p.crash = rec.spawned.Load()-sp, rec.evictedPool.Load()-ep, rec.evictedMemory.Load()-em, rec.crashed.Load()-cr
		p.storeBytes = dirSize(nd.home)
		e.log("scale: %d canisters: installs %.0f/s; %d messages in %s, update p50/p99 %.1f/%.1f ms, query p50/p99 "+
			"%.1f/%.1f ms, %d spawns, live max %.0f, host RSS max %s, fds max %.0f", n, p.installRate, plan.messages,
			p.load.elapsed.Round(time.Millisecond), Median(p.load.update)*1e3, percentile(p.load.update, 99)*1e3,
			Median(p.load.query)*1e3, percentile(p.load.query, 99)*1e3, p.spawns, maxOf(p.smp.live),
			humanBytes(uint64(maxOf(p.smp.hostRSS))), maxOf(p.smp.fds))
		points = append(points, p)
		e.scaleFigures(sec, plan, plan.counts[0], p) // now: a run cut short keeps what it measured
	}

	e.rep.Note(sec, "One sandboxed node (`sandbox.max_sandboxes = %d`, `sandbox.memory_budget = %s`, idle timeout an "+
		"hour, so only the pool's limits evict). The canisters are installed cumulatively (counter.wasm: one "+
		"compiled module shared by all) by %d concurrent installers. At each count, %d closed-loop clients send messages to canisters drawn "+
		"uniformly at random (fixed seed), updates (`inc`, durable) and queries (`get`) with equal odds. The "+
		"install figure is over the installs of that batch (N = installs); the latency figures are one run each, "+
		"their ratio is to the smallest count. Live sandboxes and RSS are sampled every %s; the node's memory capacity (`limits.memory_capacity`) is %s.",
		plan.pool, humanBytes(plan.budget), clients(), clients(), scaleSampleEvery, humanBytes(scaleMemoryCapacity))

	var series []Series
	for i, kind := range []string{"update", "query"} {
		for _, pc := range []string{"p50", "p99"} {
			s := Series{Name: kind + " " + pc, Color: palette[i], Dashed: pc == "p99"}
			for _, p := range points {
				xs := p.load.update
				if kind == "query" {
					xs = p.load.query
				}
				v := Median(xs)
				if pc == "p99" {
					v = percentile(xs, 99)
				}
				s.X = append(s.X, float64(p.n))
				s.Y = append(s.Y, v*1e3)
			}
			series = append(series, s)
		}
	}
	e.rep.Plots = append(e.rep.Plots, Plot{Section: sec, File: "scale-latency.svg",
		Title: "Latency of random traffic vs installed canisters",
		Chart: Chart{Title: fmt.Sprintf("Random traffic over N canisters, at most %d live sandboxes", plan.pool),
			XLabel: "installed canisters (log)", YLabel: "latency (ms)", LogX: true, LogY: logScale(series),
			FormatX: func(v float64) string { return fmt.Sprintf("%g", v) }, FormatY: fmtTick, Series: series}})
	return nil
}

// scaleInterrupted decides what an error (or, with err nil, a cancelled
// run) at count n means: with some counts measured, an interrupted run
// (Ctrl-C) keeps them and says where it stopped (nil: stop measuring);
// anything else is the section's error.
func (e *env) scaleInterrupted(sec string, points []*scalePoint, n int, err error) error {
	if e.ctx.Err() == nil {
		return err
	}
	if len(points) == 0 {
		return e.ctx.Err()
	}
	e.rep.Note(sec, "The run was interrupted on its way to %d canisters: the larger counts were not measured.", n)
	return nil
}

// installMany installs n counters from clients() concurrent installers,
// as many users of one node would: each install is durable on its own, and
// those that commit at the same moment share the fsync (the store's group
// commit) while others spawn their sandbox. It returns the canisters and
// each install's duration (create + install).
func (e *env) installMany(ctx context.Context, nd *node, n, done int) ([]principal.Principal, []float64, error) {
	var (
		mu   sync.Mutex
		ids  []principal.Principal
		took []float64
		ferr error
		left atomic.Int64
		wg   sync.WaitGroup
	)
	left.Store(int64(n))
	t0 := time.Now()
	for range clients() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 && ctx.Err() == nil {
				t := time.Now()
				id, err := nd.install(ctx, e.counter)
				d := time.Since(t).Seconds()
				mu.Lock()
				if err != nil {
					if ferr == nil {
						ferr = fmt.Errorf("install %d: %w", done+len(ids)+1, err)
					}
					mu.Unlock()
					return
				}
				ids, took = append(ids, id), append(took, d)
				if k := done + len(ids); k%1000 == 0 {
					e.log("scale: %d canisters installed (%.0f per second in this batch)", k,
						float64(len(ids))/time.Since(t0).Seconds())
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ferr == nil {
		ferr = ctx.Err()
	}
	return ids, took, ferr
}

// scalePoint is what the scale section measured at one canister count.
type scalePoint struct {
	n                            int
	install                      []float64 // seconds per install of this batch
	installRate                  float64
	load                         scaleLoad
	smp                          *scaleSample
	spawns, evPool, evMem, crash int64
	storeBytes                   int64
}

// scaleFigures adds the figures of one point; first is the smallest count
// (the baseline of the ratios).
func (e *env) scaleFigures(sec string, plan scalePlan, first int, p *scalePoint) {
	name := func(what string, n int) string { return fmt.Sprintf("%s, %d canisters", what, n) }
	for _, f := range []struct {
		what string
		xs   []float64
	}{{"update latency p50", p.load.update}, {"update latency p99", p.load.update},
		{"query latency p50", p.load.query}, {"query latency p99", p.load.query}} {
		v := Median(f.xs)
		if f.what[len(f.what)-3:] == "p99" {
			v = percentile(f.xs, 99)
		}
		fig := &Figure{Section: sec, Name: name(f.what, p.n), Samples: []float64{v}}
		if p.n != first {
			fig.Baseline = name(f.what, first)
		}
		e.rep.Add(fig)
	}
	e.rep.Add(&Figure{Section: sec, Name: name("messages/s", p.n), Unit: Rate, Label: "msg/s",
		Samples: []float64{float64(len(p.load.update)+len(p.load.query)) / p.load.elapsed.Seconds()}, Alone: true})
	e.rep.Add(&Figure{Section: sec, Name: name("messages that spawned a sandbox", p.n), Unit: Count, Label: "%",
		Samples: []float64{100 * float64(p.spawns) / float64(plan.messages)}, Alone: true})
	e.rep.Add(&Figure{Section: sec, Name: name("live sandboxes (max while measuring)", p.n), Unit: Count, Label: "sandboxes",
		Samples: []float64{maxOf(p.smp.live)}, Alone: true})
	e.rep.Add(&Figure{Section: sec, Name: name("RSS of all canister sandboxes (max while measuring)", p.n), Unit: Bytes,
		Samples: []float64{maxOf(p.smp.sandboxRSS)}, Alone: true})
	e.rep.Add(&Figure{Section: sec, Name: name("host RSS (max while measuring)", p.n), Unit: Bytes,
		Samples: []float64{maxOf(p.smp.hostRSS)}, Alone: true})
	e.rep.Add(&Figure{Section: sec, Name: name("host file descriptors (max while measuring)", p.n), Unit: Count, Label: "fds",
		Samples: []float64{maxOf(p.smp.fds)}, Alone: true})
	e.rep.Add(&Figure{Section: sec, Name: name("install (create + install counter), per canister", p.n),
		Samples: p.install, Alone: true})
	e.rep.Add(&Figure{Section: sec, Name: name("store and artifact cache on disk", p.n), Unit: Bytes,
		Samples: []float64{float64(p.storeBytes)}, Alone: true})
	e.rep.Note(sec, "%d canisters: installed %d more at %.0f per second; %d messages timed in %s after %d untimed; "+
		"%d sandboxes spawned, %d evicted (pool full), %d evicted (memory budget), %d crashed.",
		p.n, len(p.install), p.installRate, plan.messages, p.load.elapsed.Round(time.Millisecond), plan.warm,
		p.spawns, p.evPool, p.evMem, p.crash)
}

func maxOf(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// dirSize sums the sizes of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n += fi.Size()
		}
		return nil
	})
	return n
}
