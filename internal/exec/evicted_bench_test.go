package exec

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// BenchmarkEvictedVsLive times a query to the counter in three states, one
// executor each, b.N samples of each: live (its sandbox idle between
// messages), evicted with the plain warm pool (take a blank sandbox, load
// the module, restore the state, run), and evicted with a primed sandbox
// (the module already loaded by Warm: restore the state, run; the node's
// defaults, a warm pool of 1 and a preload pool of 1). Eviction and the
// pools' refill happen outside the timing, and every sample starts after
// the same pause: 50 ms, before a sandbox's idle trim, and 1.2 s, after it
// (a primed sandbox has trimmed while it waited; a live one whose trims
// are undone that soon waits longer before its next: nextTrimAfter in
// internal/worker). It reports
// the medians (µs) and the ratios of the evicted medians to the live one:
// the target is primed ≤ 2× live. Run it with -benchtime=30x.
func BenchmarkEvictedVsLive(b *testing.B) {
	for _, pause := range []time.Duration{50 * time.Millisecond, 1200 * time.Millisecond} {
		b.Run(fmt.Sprintf("pause=%v", pause), func(b *testing.B) { benchEvictedVsLive(b, pause) })
	}
}

func benchEvictedVsLive(b *testing.B, pause time.Duration) {
	wasm := wasmFile(b, corpusDir, "counter")
	medians := map[string]float64{}
	for _, c := range []struct {
		name          string
		warm, preload int
		evict         bool
	}{{"live", 0, 0, false}, {"evicted-blank", 1, 0, true}, {"evicted-primed", 1, 1, true}} {
		x, err := NewSandboxed(SandboxConfig{Dir: b.TempDir(), WarmPool: c.warm, PreloadPool: c.preload})
		if err != nil {
			b.Fatal(err)
		}
		s := newSim(b, x, "a", wasm)
		s.must(sysapi.CtxInit, "canister_init", empty)
		st0 := x.Stats()
		samples := make([]float64, 0, b.N)
		for i := 0; i < b.N; i++ {
			if c.evict {
				// An idle check may hold the sandbox for a moment.
				for deadline := time.Now().Add(time.Minute); !x.evictColdest(nil, "pool"); time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						b.Fatalf("%s: nothing evicted (sandbox %d): %+v", c.name, sandboxPid(x, "a"), x.Stats())
					}
				}
				for deadline := time.Now().Add(time.Minute); len(kindPids(x, "blank")) < c.warm || len(kindPids(x, "primed")) < c.preload; time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						b.Fatalf("%s: the pools were not refilled: %+v", c.name, x.Stats())
					}
				}
			}
			time.Sleep(pause)
			t0 := time.Now()
			s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty)
			samples = append(samples, float64(time.Since(t0).Microseconds()))
		}
		st := x.Stats()
		x.Close()
		if c.preload > 0 && st.PrimedTakes-st0.PrimedTakes != uint64(b.N) || c.preload == 0 && c.warm > 0 && st.PoolTakes-st0.PoolTakes != uint64(b.N) {
			b.Fatalf("%s: stats %+v: not every message took its pool's sandbox", c.name, st)
		}
		slices.Sort(samples)
		medians[c.name] = samples[len(samples)/2]
		b.ReportMetric(medians[c.name], c.name+"-µs")
	}
	b.ReportMetric(medians["evicted-blank"]/medians["live"], "blank/live")
	b.ReportMetric(medians["evicted-primed"]/medians["live"], "primed/live")
}
