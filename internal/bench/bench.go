// Package bench is `cordon bench`: the benchmark suite behind BENCHMARKS.md.
// Every figure is measured side by side with its baseline in the same run
// (bubblewrap for spawning, in-process isolation for the sandbox, a raw
// write+fdatasync for commits, V8 for compute, and so on) and reported as a
// median with its range over N runs and its ratio to that baseline.
//
// The suite drives a real node (internal/host) in temporary directories,
// with the same binary as sandbox: sandboxes are spawned from
// /proc/self/exe, so it must run from the cordon binary (`cordon bench`),
// not from a test binary.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// Options configure a run.
type Options struct {
	Quick bool
	// Corpus is the directory of the corpus canisters (counter.wasm,
	// memory.wasm, compute.wasm).
	Corpus string
	// RepoRoot is the cordon checkout (for the git commit); "" if none.
	RepoRoot string
	// Outputs are the files the run will write, relative to RepoRoot:
	// their uncommitted changes do not count as changes to what is measured.
	Outputs []string
	// Only runs these sections (keys of Sections); nil runs all.
	Only []string
	// ScaleCounts replaces the scale section's canister counts (nil: 100,
	// 1,000, 10,000; with Quick 10, 30, 100).
	ScaleCounts []int
	// InstallDeps lets the suite install bubblewrap with apt-get when it
	// is missing (root only).
	InstallDeps bool
	// Out receives the figures as they are measured; Log progress lines.
	Out, Log io.Writer
}

// selects says whether the run includes the section key: the sections in
// Only, or without Only every section but the opt-in ones.
func (o Options) selects(key string) bool {
	if o.Only != nil {
		return slices.Contains(o.Only, key)
	}
	return !slices.Contains(OptIn, key)
}

// Sections of the suite, in order.
var Sections = []Section{
	{Key: "spawn", Title: "Spawn to ready", About: "A confined canister sandbox from nothing to ready, against " +
		"`bwrap --unshare-all --die-with-parent --clearenv` running a static no-op binary (spawn to exit). " +
		"*Cold* is `sandbox.Start` (every confinement layer, checked from outside) plus the worker's Ready " +
		"message; *cold message* is a query to a canister whose sandbox was evicted (spawn, load the cached " +
		"compiled module, execute); *from the pool* is a query to a canister whose sandbox is live; *warm pool* " +
		"is the cold message when a blank sandbox is ready (take it, load, execute)."},
	{Key: "latency", Title: "Per-message latency, sandboxed vs in-process", About: "One message at a time " +
		"through the node (`host.Node.Update`/`Query`), end to end: scheduling, execution, and for updates the " +
		"durable (fsync'd) commit. The baseline is the same message on an in-process node."},
	{Key: "ichttp", Title: "Latency through the IC HTTP interface vs the JSON API", About: "A query and an update of " +
		"the counter sent to `cordon serve` over loopback HTTP, through the IC HTTP interface (CBOR envelopes, " +
		"`/api/v3` query and call, as IC agents send them) and through the JSON API, in turn on the same server. " +
		"The baseline is the JSON API."},
	{Key: "throughput", Title: "Throughput over 1, 10 and 100 canisters", About: "Closed loop: " +
		"a fixed number of concurrent clients, each sending its next message as soon as the previous one is " +
		"answered, spread round-robin over the canisters (counter), on all cores. Updates are durable commits; " +
		"the store commits one transaction at a time, so update throughput is bounded by fsync. Latency is " +
		"per message under that load. The baseline is the in-process node with the same canisters."},
	{Key: "commit", Title: "Commit cost vs heap size and dirty pages", About: "An update that changes exactly " +
		"D pages (4 KiB) of a heap of S bytes, every page of which holds data, run by a minimal hand-written " +
		"canister (WAT in `internal/bench/commit.go`: `grow` fills the heap, `touch` changes D pages). " +
		"*Store commit* is the durable transaction alone (the node's commit observer); *update* is the message " +
		"end to end. The baseline is writing the same D pages to a file and `fdatasync`, the floor for durability."},
	{Key: "compute", Title: "Compute: the corpus `compute` canister vs V8", About: "`fib(n)` (a recursive " +
		"Motoko query) from `compute.wasm`, run by cordon's engine (wasmtime) with and without fuel metering, " +
		"through a node in both isolation modes, and by V8 (`node`, with the minimal ic0 shim in " +
		"`internal/bench/v8/run.js`). Each call runs on a freshly instantiated module: V8 instantiates and runs " +
		"`canister_init` untimed; cordon's figures include instantiation and restoring the canister's 2 MiB heap."},
	{Key: "memory", Title: "Idle sandboxes: memory and how many fit", About: "Idle canister sandboxes " +
		"(counter installed, one query answered) kept live in the pool. RSS counts shared pages (the " +
		"binary's text) in every process; PSS divides them among the processes that share them; the cgroup " +
		"charge is what the kernel accounts to the sandbox's own memory cgroup. The baseline is an idle " +
		"bubblewrap-confined static process (the no-op waiting in `pause()`) with its two bwrap processes."},
	{Key: "soak", Title: "Neighbours under attack", About: "Latency of 100 canisters' messages under load on a " +
		"sandboxed node while attacker canisters, each driven by clients of its own, spin, hog memory, flood " +
		"their logs, trap or fan out calls to themselves, one kind at a time and then all at once. The baseline is the same node and load " +
		"with no attacker."},
	{Key: "scale", Title: "Scale: thousands of canisters, a pool of live sandboxes", About: "Opt-in (`cordon bench " +
		"--scale`, minutes): canisters installed on one sandboxed node by the thousand, far more than its pool of " +
		"live sandboxes holds, under random traffic spread uniformly over all of them, so most messages at the " +
		"largest count find their canister's sandbox evicted. Latency, throughput, live sandboxes and memory as " +
		"the number of installed canisters grows; the ratio is to the smallest count."},
}

// OptIn are the sections that run only when named (Options.Only).
var OptIn = []string{"scale"}

// memoryFloor is the free memory the memory section leaves the machine.
const memoryFloor = 2 << 30

type env struct {
	ctx  context.Context
	opt  Options
	rep  *Report
	tmp  string
	log  func(format string, args ...any)
	runs func(quick, full int) int

	counter, memory, compute []byte

	noop     string // static no-op binary ("" if it could not be built)
	noopWhy  string
	bwrap    string // bwrap path ("" if unavailable)
	bwrapWhy string
}

// Run runs the suite and returns its report.
func Run(ctx context.Context, opt Options) (*Report, error) {
	if opt.Out == nil {
		opt.Out = io.Discard
	}
	if opt.Log == nil {
		opt.Log = io.Discard
	}
	start := time.Now()
	rep := &Report{Quick: opt.Quick, Date: start, Sections: Sections, Machine: machine()}
	rep.Commit, rep.Modified = gitHead(opt.RepoRoot, opt.Outputs)
	rep.Print = func(r *Report, f *Figure) { fmt.Fprintln(opt.Out, r.Line(f)) }
	e := &env{ctx: ctx, opt: opt, rep: rep,
		log: func(format string, args ...any) { fmt.Fprintf(opt.Log, "bench: "+format+"\n", args...) },
		runs: func(quick, full int) int {
			if opt.Quick {
				return quick
			}
			return full
		}}
	var err error
	for name, dst := range map[string]*[]byte{"counter": &e.counter, "memory": &e.memory, "compute": &e.compute} {
		if *dst, err = os.ReadFile(filepath.Join(opt.Corpus, name+".wasm")); err != nil {
			return nil, fmt.Errorf("corpus: %w (pass --corpus DIR)", err)
		}
	}
	if e.tmp, err = os.MkdirTemp("", "cordon-bench-"); err != nil {
		return nil, err
	}
	defer os.RemoveAll(e.tmp)
	rep.PrintHeader(opt.Out)

	steps := []struct {
		key string
		run func() error
	}{
		// The short, CPU-bound sections first; the report keeps the order
		// of Sections whatever the order they ran in.
		{"spawn", e.spawn}, {"latency", e.latency}, {"ichttp", e.ichttp}, {"compute", e.computeSection},
		{"throughput", e.throughput}, {"soak", e.soak}, {"commit", e.commit}, {"memory", e.memorySection},
		{"scale", e.scale},
	}
	for _, s := range steps {
		if !opt.selects(s.key) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		title := s.key
		for _, sec := range Sections {
			if sec.Key == s.key {
				title = sec.Title
			}
		}
		fmt.Fprintf(opt.Out, "\n== %s\n", title)
		t0 := time.Now()
		if err := s.run(); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%s: %w", s.key, err)
		}
		e.log("%s done in %s", s.key, time.Since(t0).Round(100*time.Millisecond))
	}
	rep.Elapsed = time.Since(start)
	rep.Machine.LoadEnd = loadavg()
	fmt.Fprintf(opt.Out, "\ncordon bench: %d figures in %s\n", len(rep.Figures), rep.Elapsed.Round(time.Second))
	return rep, nil
}

// ---- the machine -----------------------------------------------------------

func machine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), CPU: "unknown CPU"}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.Join(strings.Fields(v), " ")
				break
			}
		}
	}
	m.Memory = meminfo("MemTotal")
	m.LoadStart = loadavg()
	d := sandbox.Doctor()
	who := "root"
	if d.Rootless {
		who = "rootless"
	}
	if missing := d.Missing(); len(missing) > 0 {
		var names []string
		for _, l := range missing {
			names = append(names, string(l))
		}
		m.Isolation = fmt.Sprintf("%s; layers missing on this host: %s (sandboxes run without them)", who, strings.Join(names, ", "))
	} else {
		m.Isolation = who + ", every confinement layer available (`cordon doctor`)"
	}
	// A cold spawn's cgroup attach waits for an RCU grace period, a normal
	// one unless the kernel expedites them (sandbox.CgroupEntry).
	if d.CgroupEntry.Expedited {
		m.Isolation += "; RCU grace periods expedited (/sys/kernel/rcu_expedited = 1)"
	} else {
		m.Isolation += "; RCU grace periods not expedited"
	}
	return m
}

// loadavg returns the 1, 5 and 15 minute load averages.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}

// meminfo reads a /proc/meminfo field in bytes (0 if unknown).
func meminfo(field string) uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			return 0
		}
		n, _ := strconv.ParseUint(fs[0], 10, 64)
		if len(fs) > 1 && fs[1] == "kB" {
			n *= 1024
		}
		return n
	}
	return 0
}

// gitHead returns HEAD of the checkout at root and the tracked files with
// uncommitted changes, except those under ignore (paths relative to root:
// the files this command writes). It only reads (no optional locks).
func gitHead(root string, ignore []string) (string, []string) {
	if root == "" {
		return "", nil
	}
	git := func(args ...string) (string, error) {
		cmd := exec.Command("git", append([]string{"-C", root}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_OPTIONAL_LOCKS=0")
		out, err := cmd.Output()
		return string(out), err
	}
	head, err := git("rev-parse", "HEAD")
	if err != nil {
		return "", nil
	}
	status, err := git("status", "--porcelain", "--untracked-files=no")
	if err != nil {
		return strings.TrimSpace(head), []string{"(git status failed)"}
	}
	return strings.TrimSpace(head), changedPaths(status, ignore)
}

// changedPaths lists the paths of `git status --porcelain` output, without
// those equal to or under an ignored path.
func changedPaths(status string, ignore []string) []string {
	var out []string
	for _, line := range strings.Split(status, "\n") {
		if len(line) < 4 {
			continue
		}
		path := line[3:]
		if _, to, ok := strings.Cut(path, " -> "); ok {
			path = to
		}
		path = strings.Trim(path, `"`)
		skip := false
		for _, ig := range ignore {
			ig = strings.TrimSuffix(filepath.ToSlash(ig), "/")
			if ig != "" && (path == ig || strings.HasPrefix(path, ig+"/")) {
				skip = true
			}
		}
		if !skip {
			out = append(out, path)
		}
	}
	return out
}

// FindRepoRoot walks up from dir to the checkout of cordon (the directory
// whose go.mod declares its module); "" if there is none.
func FindRepoRoot(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			bytes.Contains(b, []byte("module github.com/cordon-dev/cordon\n")) {
			return d
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

// ---- nodes -------------------------------------------------------------------

var (
	user   = principal.Anonymous()
	noArgs = []byte("DIDL\x00\x00")
)

func natArg(n uint64) []byte { return append([]byte("DIDL\x00\x01\x7d"), leb(n)...) }

func leb(n uint64) []byte {
	var b []byte
	for {
		c := byte(n & 0x7f)
		n >>= 7
		if n == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// commitLog records the node's store commits (metrics.Node.Commit).
type commitLog struct {
	metrics.Nop
	ch chan commitEvent
}

type commitEvent struct {
	d     time.Duration
	bytes int64
}

func (c *commitLog) Commit(d time.Duration, bytes int64, err error) {
	if err != nil {
		return
	}
	select {
	case c.ch <- commitEvent{d, bytes}:
	default: // nobody is collecting: drop
	}
}

// drain empties the log.
func (c *commitLog) drain() {
	for {
		select {
		case <-c.ch:
		default:
			return
		}
	}
}

// last returns the most recent commit recorded since the last drain.
func (c *commitLog) last() (commitEvent, bool) {
	var ev commitEvent
	ok := false
	for {
		select {
		case ev = <-c.ch:
			ok = true
		default:
			return ev, ok
		}
	}
}

type node struct {
	*host.Node
	commits *commitLog
	iso     string
	home    string
	once    sync.Once
}

// openNode opens a node in a fresh home under the run's temp dir.
func (e *env) openNode(isolation string, tweak func(*host.Config)) (*node, error) {
	home, err := os.MkdirTemp(e.tmp, isolation+"-")
	if err != nil {
		return nil, err
	}
	cfg := host.DefaultConfig()
	cfg.Home = home
	cfg.Isolation = isolation
	cl := &commitLog{ch: make(chan commitEvent, 1024)}
	cfg.Metrics = cl
	if tweak != nil {
		tweak(&cfg)
	}
	n, err := host.Open(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	return &node{Node: n, commits: cl, iso: isolation, home: home}, nil
}

// close closes the node (once: deferred and early closes may both run).
func (n *node) close() {
	n.once.Do(func() { _ = n.Close() })
}

// install creates a canister and installs wasm.
func (n *node) install(ctx context.Context, wasm []byte) (principal.Principal, error) {
	id, err := n.Create(ctx, host.CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		return id, err
	}
	_, err = n.Install(ctx, id, host.InstallOptions{Mode: host.ModeInstall, Wasm: wasm, Arg: noArgs, Caller: user})
	return id, err
}

func (n *node) update(ctx context.Context, id principal.Principal, method string, arg []byte) (*host.Reply, error) {
	return n.Update(ctx, host.Message{Canister: id, Method: method, Arg: arg, Caller: user})
}

func (n *node) query(ctx context.Context, id principal.Principal, method string, arg []byte) (*host.Reply, error) {
	return n.Query(ctx, host.Message{Canister: id, Method: method, Arg: arg, Caller: user})
}

// liveSandboxes counts the node's live canister sandboxes.
func (n *node) liveSandboxes() []metrics.SandboxInfo {
	var out []metrics.SandboxInfo
	for _, s := range n.Sandboxes() {
		if s.Kind == "canister" {
			out = append(out, s)
		}
	}
	return out
}

// blankSandboxes counts the node's warm pool.
func (n *node) blankSandboxes() int {
	k := 0
	for _, s := range n.Sandboxes() {
		if s.Kind == "blank" {
			k++
		}
	}
	return k
}

// sandboxesOf counts the node's sandboxes of a kind ("blank", "primed").
func (n *node) sandboxesOf(kind string) int {
	k := 0
	for _, s := range n.Sandboxes() {
		if s.Kind == kind {
			k++
		}
	}
	return k
}

// pidOf is the pid of one of the node's sandboxes of kind, or 0.
func (n *node) pidOf(kind string) int {
	for _, s := range n.Sandboxes() {
		if s.Kind == kind {
			return s.PID
		}
	}
	return 0
}

// timeN runs f n times after warm untimed runs and returns the durations
// in seconds.
func timeN(ctx context.Context, warm, n int, f func(i int) error) ([]float64, error) {
	for i := 0; i < warm; i++ {
		if err := f(-1 - i); err != nil {
			return nil, err
		}
	}
	out := make([]float64, 0, n)
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t0 := time.Now()
		if err := f(i); err != nil {
			return nil, err
		}
		out = append(out, time.Since(t0).Seconds())
	}
	return out, nil
}

// modes are the two isolation modes, baseline first.
var modes = []string{"inprocess", "sandbox"}

// bothNodes opens a node in each mode; close closes both.
func (e *env) bothNodes(tweak func(*host.Config)) (nodes map[string]*node, close func(), err error) {
	nodes = map[string]*node{}
	close = func() {
		for _, n := range nodes {
			n.close()
		}
	}
	for _, iso := range modes {
		n, err := e.openNode(iso, tweak)
		if err != nil {
			close()
			return nil, nil, err
		}
		nodes[iso] = n
	}
	return nodes, close, nil
}

// interleave times f in each mode in turn, warm untimed rounds then n
// timed ones (i = -warm .. -1, then 0 .. n-1), and returns the durations
// in seconds by mode. Alternating the modes spreads whatever else the
// machine does over both, rather than onto whichever ran at the time.
func interleave(ctx context.Context, warm, n int, f func(iso string, i int) error) (map[string][]float64, error) {
	out := map[string][]float64{}
	for i := -warm; i < n; i++ {
		for _, iso := range modes {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			t0 := time.Now()
			if err := f(iso, i); err != nil {
				return nil, fmt.Errorf("%s: %w", iso, err)
			}
			if i >= 0 {
				out[iso] = append(out[iso], time.Since(t0).Seconds())
			}
		}
	}
	return out, nil
}

func modeName(iso string) string {
	if iso == "sandbox" {
		return "sandboxed"
	}
	return "in-process"
}
