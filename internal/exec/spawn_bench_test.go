package exec

import (
	"context"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// BenchmarkColdSpawnPhases breaks a cold canister sandbox down into its
// phases, each reported as ms/op: cgroup creation (host; ~0 with the
// spawner, which clones while the host makes the cgroup), clone + uid/gid
// maps + exec of the worker (until the spawner answers), the cgroup's
// completion and the attach by pid (the child's C constructor meanwhile
// applies what needs no cgroup), the child's
// confinement up to its ready packet (C constructor, Go runtime start,
// seccomp), the host's verification of every thread, the worker's engine
// start and Ready message, the host's check of the cached artifact against
// its recorded hash (the first iteration only since artifacts are sealed
// memfds checked once: later ones duplicate the descriptor), and the first
// module load (the counter's artifact,
// deserialized by the worker). Run it with -benchtime=20x; it is the breakdown
// RATIONALE.md quotes.
func BenchmarkColdSpawnPhases(b *testing.B) {
	x, err := NewSandboxed(SandboxConfig{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	mod, err := x.Prepare(context.Background(), wasmFile(b, corpusDir, "counter"))
	if err != nil {
		b.Fatal(err)
	}
	h := mod.handle.(*sbModule).hash
	phases := []string{"start", "cgroup", "spawned", "attached", "ready", "verified", "worker-ready", "artifact-checked", "loaded"}
	sum := make([]time.Duration, len(phases))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var at []time.Time
		mark := func(string) { at = append(at, time.Now()) }
		spec := x.spec("bench", boundary.ModeCanister, 0)
		spec.Trace = mark
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		mark("start")
		p, err := sandbox.Start(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		conn := boundary.NewConn(p.Conn())
		if err := conn.AwaitReady(boundary.ModeCanister, nil); err != nil {
			b.Fatal(err)
		}
		mark("worker-ready")
		f, err := x.openArtifact(h)
		if err != nil {
			b.Fatal(err)
		}
		mark("artifact-checked")
		if err := conn.Send(&boundary.Msg{Kind: boundary.KindLoad, ID: 1, Body: boundary.EncodeHash(h), Files: []*os.File{f}}); err != nil {
			b.Fatal(err)
		}
		f.Close()
		if err := conn.AwaitLoaded(1, h, nil); err != nil {
			b.Fatal(err)
		}
		mark("loaded")
		cancel()
		b.StopTimer()
		_ = p.Kill()
		p.Wait()
		p.Conn().Close()
		if len(at) != len(phases) {
			b.Fatalf("%d phases traced, want %d", len(at), len(phases))
		}
		for j := 1; j < len(at); j++ {
			sum[j] += at[j].Sub(at[j-1])
		}
		sum[0] += at[len(at)-1].Sub(at[0])
		b.StartTimer()
	}
	b.StopTimer()
	for j, name := range phases {
		if j == 0 {
			name = "total"
		}
		b.ReportMetric(float64(sum[j].Microseconds())/1000/float64(b.N), name+"-ms/op")
	}
}

// BenchmarkEvictedMessage times a query to the counter in three states of
// its sandbox: live (pooled), evicted with no warm pool (a cold start, the
// load and the run), and evicted with a warm pool (take a blank sandbox,
// load, run). Eviction and the pool's refill happen outside the timing.
func BenchmarkEvictedMessage(b *testing.B) {
	wasm := wasmFile(b, corpusDir, "counter")
	for _, c := range []struct {
		name  string
		pool  int
		evict bool
	}{{"live", 0, false}, {"cold", 0, true}, {"warm-pool", 1, true}} {
		b.Run(c.name, func(b *testing.B) {
			x, err := NewSandboxed(SandboxConfig{Dir: b.TempDir(), WarmPool: c.pool})
			if err != nil {
				b.Fatal(err)
			}
			defer x.Close()
			s := newSim(b, x, "a", wasm)
			s.must(sysapi.CtxInit, "canister_init", empty)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if c.evict {
					b.StopTimer()
					if !x.evictColdest(nil, "pool") {
						b.Fatal("nothing evicted")
					}
					for deadline := time.Now().Add(time.Minute); c.pool > 0 && len(blankPids(x)) < c.pool; time.Sleep(time.Millisecond) {
						if time.Now().After(deadline) {
							b.Fatal("the warm pool was not refilled")
						}
					}
					b.StartTimer()
				}
				s.must(sysapi.CtxNonReplicatedQuery, "canister_query get", empty)
			}
		})
	}
}

// BenchmarkWarmPoolTake times what a canister's acquisition costs when the
// warm pool has a blank sandbox: taking it (its idle watch stopped and
// awaited, its liveness checked). The refill is outside the timing.
func BenchmarkWarmPoolTake(b *testing.B) {
	x, err := NewSandboxed(SandboxConfig{Dir: b.TempDir(), WarmPool: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for deadline := time.Now().Add(time.Minute); len(blankPids(x)) == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatal("the warm pool was not refilled")
			}
		}
		b.StartTimer()
		sb := x.takeBlank("bench")
		b.StopTimer()
		if sb == nil {
			b.Fatal("no blank sandbox taken")
		}
		x.stopBlank(sb)
		x.kickFill()
		b.StartTimer()
	}
}

// BenchmarkSandboxBinary times a cold Start + the worker's Ready with the
// sandbox executing, in turns, the whole cordon binary (what a node runs
// without a worker-only binary next to it) and cmd/cordon-sandbox (the
// worker alone: the default next to cordon, or sandbox.binary), both built
// here with `go build` and run as sealed copies. Each is reported as ms/op
// of its own, with its phases (as BenchmarkColdSpawnPhases names them).
func BenchmarkSandboxBinary(b *testing.B) {
	// Executed after the sandbox's switch to its own uid: the directory
	// must be searchable by it (b.TempDir's parent is not).
	dir, err := os.MkdirTemp("", "cordon-bench-bin")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	bins := []struct{ name, pkg string }{{"cordon", "../../cmd/cordon"}, {"cordon-sandbox", "../../cmd/cordon-sandbox"}}
	for _, c := range bins {
		out, err := osexec.Command("go", "build", "-o", filepath.Join(dir, c.name), c.pkg).CombinedOutput()
		if err != nil {
			b.Fatalf("go build %s: %v: %s", c.pkg, err, out)
		}
		st, err := os.Stat(filepath.Join(dir, c.name))
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("%s: %d bytes", c.name, st.Size())
	}
	x, err := NewSandboxed(SandboxConfig{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	for _, c := range bins { // sealed once, outside the timing, as a node does at start
		e, err := sandbox.CheckExecutable(filepath.Join(dir, c.name))
		b.Logf("%s: %v %v", c.name, e, err) // cordon itself is not a worker-only binary
		spec := x.spec("bench", boundary.ModeCanister, 0)
		spec.Binary = filepath.Join(dir, c.name)
		p, err := sandbox.Start(context.Background(), spec)
		if err != nil {
			b.Fatal(err)
		}
		_ = p.Kill()
		p.Wait()
		p.Conn().Close()
	}
	phases := []string{"spawned", "attached", "ready", "verified", "worker-ready"}
	sum := make([]time.Duration, len(bins))
	phaseSum := make([][]time.Duration, len(bins))
	faults := make([]uint64, len(bins))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j, c := range bins { // in turns: load from elsewhere hits both
			spec := x.spec("bench", boundary.ModeCanister, 0)
			spec.Binary = filepath.Join(dir, c.name)
			at := map[string]time.Time{}
			spec.Trace = func(phase string) { at[phase] = time.Now() }
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			t0 := time.Now()
			p, err := sandbox.Start(ctx, spec)
			if err != nil {
				b.Fatal(err)
			}
			if err := boundary.NewConn(p.Conn()).AwaitReady(boundary.ModeCanister, nil); err != nil {
				b.Fatal(err)
			}
			at["worker-ready"] = time.Now()
			sum[j] += time.Since(t0)
			faults[j] += minorFaults(b, p.Pid())
			if phaseSum[j] == nil {
				phaseSum[j] = make([]time.Duration, len(phases))
			}
			prev := at["cgroup"]
			for k, ph := range phases {
				phaseSum[j][k] += at[ph].Sub(prev)
				prev = at[ph]
			}
			cancel()
			_ = p.Kill()
			p.Wait()
			p.Conn().Close()
		}
	}
	b.StopTimer()
	for j, c := range bins {
		b.ReportMetric(float64(sum[j].Microseconds())/1000/float64(b.N), c.name+"-ms/op")
		for k, ph := range phases {
			b.ReportMetric(float64(phaseSum[j][k].Microseconds())/1000/float64(b.N), c.name+"-"+ph+"-ms/op")
		}
		b.ReportMetric(float64(faults[j])/float64(b.N), c.name+"-minflt/op")
	}
}

// minorFaults is a process's minor page faults so far (/proc/PID/stat
// field 10): at Ready, what the exec, the runtime's start and the package
// initialisation touched.
func minorFaults(b *testing.B, pid int) uint64 {
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	s := string(st)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // f[0] is field 3
	n, err := strconv.ParseUint(f[7], 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	return n
}
