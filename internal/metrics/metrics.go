// Package metrics is what cordon counts and how it is exposed to Prometheus.
//
// The node and the sandbox manager record events through two small
// interfaces, Node and Sandbox; they never see Prometheus types. Nop records
// nothing (the default, and what a one-shot CLI command uses); *Metrics
// records into a Prometheus registry served on /metrics by `cordon serve`.
//
// Values that are state rather than events (live canisters, live sandboxes
// and their memory, the store's size) are read when /metrics is scraped,
// from functions given to SetSources.
//
// Every name, label and bucket is listed in the README's "Metrics" section;
// change them together.
package metrics

import (
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Node is what the host records.
type Node interface {
	// Execution records one Wasm execution: context is the System API
	// context it ran in (see ContextLabel), outcome one of OutcomeOK,
	// OutcomeTrapped or OutcomeError, d its wall time.
	Execution(context, outcome string, instructions uint64, d time.Duration)
	// Message records a message that got its response: kind is KindUpdate
	// or KindQuery (ingress; d is the end-to-end latency, from arrival to
	// answer) or KindInterCanister (d is 0: not measured); outcome is
	// OutcomeReplied, a reject code name (RejectOutcome) or OutcomeError.
	Message(kind, outcome string, d time.Duration)
	// Commit records one store commit: its duration, the bytes of
	// payload it wrote (pages, module, logs), and whether it failed.
	Commit(d time.Duration, bytes int64, err error)
	// StoreSync records one durable transaction of the store's group
	// committer and how many commits it made durable together.
	StoreSync(commits int)
}

// Sandbox is what the sandbox manager records. In-process isolation records
// none of these; the metrics exist (at zero) either way.
type Sandbox interface {
	// SandboxSpawned: a sandbox process started. kind: "canister" (a cold
	// start for a canister), "blank" (for the warm pool), "primed" (a
	// recently evicted canister's module loaded ahead of its next message)
	// or "compiler".
	SandboxSpawned(kind string)
	// SandboxEvicted: the host ended a healthy sandbox. reason: "idle",
	// "memory" (over the pool's memory budget), "pool" (pool full) or
	// "shutdown".
	SandboxEvicted(reason string)
	// SandboxCrashed: a sandbox ended without the host asking. reason:
	// "exit" (exited on its own), "signal", "oom" (its own memory limit),
	// "node_oom" (OOM-killed within its own limit: the node group's was
	// reached by all the sandboxes together), "seccomp", "watchdog",
	// "violation" (killed after a protocol violation), "idle_cpu" (killed
	// for using CPU between messages), "idle_memory" (killed for growing
	// its memory between messages). The seccomp,
	// watchdog and violation cases also have their own counters below.
	SandboxCrashed(reason string)
	// WatchdogKill: a sandbox was killed for exceeding its time budget.
	WatchdogKill()
	// ProtocolViolation: a sandbox broke the IPC protocol; kind is
	// boundary.ViolationKind.String().
	ProtocolViolation(kind string)
	// SeccompKill: a sandbox was killed for a forbidden system call.
	SeccompKill(syscall string)
}

// Recorder is both.
type Recorder interface {
	Node
	Sandbox
}

// SandboxInfo describes a live sandbox (for `cordon ps` and the RSS gauges).
type SandboxInfo struct {
	Canister   string    `json:"canister"` // canister id, or "" for the compiler and blank sandboxes
	Kind       string    `json:"kind"`     // "canister", "blank" (warm pool, no canister yet), "primed" (a recently evicted canister's module loaded, no canister yet) or "compiler"
	PID        int       `json:"pid"`
	RSSBytes   uint64    `json:"rss_bytes"`
	Started    time.Time `json:"started"`
	Executions uint64    `json:"executions"`
}

// Execution outcomes.
const (
	OutcomeOK      = "ok"
	OutcomeTrapped = "trapped"
	OutcomeError   = "error" // the execution could not be carried out
)

// Message kinds and the non-reject outcome.
const (
	KindUpdate        = "update"
	KindQuery         = "query"
	KindInterCanister = "inter_canister"
	OutcomeReplied    = "replied"
)

var labelReplacer = strings.NewReplacer(" ", "_", "-", "_")

// ContextLabel turns a System API context name ("non-replicated query") into
// a label value ("non_replicated_query").
func ContextLabel(name string) string { return labelReplacer.Replace(strings.ToLower(name)) }

// RejectOutcome turns a reject code name ("CANISTER_ERROR") into an outcome
// ("canister_error").
func RejectOutcome(codeName string) string { return strings.ToLower(codeName) }

// Nop records nothing.
type Nop struct{}

var _ Recorder = Nop{}

func (Nop) Execution(string, string, uint64, time.Duration) {}
func (Nop) Message(string, string, time.Duration)           {}
func (Nop) Commit(time.Duration, int64, error)              {}
func (Nop) StoreSync(int)                                   {}
func (Nop) SandboxSpawned(string)                           {}
func (Nop) SandboxEvicted(string)                           {}
func (Nop) SandboxCrashed(string)                           {}
func (Nop) WatchdogKill()                                   {}
func (Nop) ProtocolViolation(string)                        {}
func (Nop) SeccompKill(string)                              {}

// Sources are read at scrape time. Any of them may be nil.
type Sources struct {
	LiveCanisters func() int           // canisters loaded in the node
	StoreBytes    func() int64         // size of the store file
	Sandboxes     func() []SandboxInfo // live sandboxes
}

// Metrics records into a Prometheus registry.
type Metrics struct {
	reg *prometheus.Registry

	executions     *prometheus.CounterVec
	instructions   *prometheus.CounterVec
	execSeconds    *prometheus.HistogramVec
	messages       *prometheus.CounterVec
	msgSeconds     *prometheus.HistogramVec
	commitSecs     prometheus.Histogram
	commitBytes    prometheus.Histogram
	commitErrors   prometheus.Counter
	commitsPerSync prometheus.Histogram

	spawns     *prometheus.CounterVec
	evictions  *prometheus.CounterVec
	crashes    *prometheus.CounterVec
	watchdog   prometheus.Counter
	violations *prometheus.CounterVec
	seccomp    *prometheus.CounterVec

	httpRequests *prometheus.CounterVec
	httpSeconds  *prometheus.HistogramVec

	handlerOnce sync.Once
	handler     http.Handler

	mu  sync.Mutex
	src Sources
}

var _ Recorder = (*Metrics)(nil)

// Latency buckets: 50 µs to about 30 s.
var latencyBuckets = prometheus.ExponentialBucketsRange(50e-6, 30, 18)

// New returns metrics registered in a fresh registry, with the Go runtime
// and process collectors (open fds, RSS, CPU) and cordon_build_info.
func New(version, isolation string) *Metrics {
	const ns = "cordon"
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }

	m.executions = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "executions_total",
		Help: "Wasm executions by System API context and outcome (ok, trapped, error)."}, []string{"context", "outcome"})
	m.instructions = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "instructions_total",
		Help: "Wasm instructions executed, by System API context."}, []string{"context"})
	m.execSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "execution_duration_seconds",
		Help: "Wall time of one Wasm execution, by System API context.", Buckets: latencyBuckets}, []string{"context"})
	m.messages = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "messages_total",
		Help: "Messages answered, by kind (update, query, inter_canister) and outcome (replied, a reject code, error)."},
		[]string{"kind", "outcome"})
	m.msgSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "message_duration_seconds",
		Help:    "End-to-end latency of ingress messages, from arrival at the node to the answer, by kind (update, query).",
		Buckets: latencyBuckets}, []string{"kind"})
	m.commitSecs = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "store_commit_duration_seconds",
		Help: "Duration of one durable store commit (fsync included).", Buckets: latencyBuckets})
	m.commitBytes = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "store_commit_bytes",
		Help: "Payload bytes written by one store commit (pages, module, logs).", Buckets: prometheus.ExponentialBuckets(256, 4, 12)})
	m.commitErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "store_commit_errors_total",
		Help: "Store commits that failed."})
	m.commitsPerSync = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "store_commits_per_sync",
		Help:    "Commits made durable by one store transaction and fsync (group commit); its count is the number of syncs.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 11)})

	m.spawns = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sandbox_spawns_total",
		Help: "Sandbox processes started, by kind (canister: a cold start for a canister; blank: for the warm pool, taken later by a canister; primed: loaded with a recently evicted canister's module, taken by its next message; compiler)."}, []string{"kind"})
	m.evictions = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sandbox_evictions_total",
		Help: "Healthy sandboxes ended by the host, by reason (idle, memory, pool, shutdown)."}, []string{"reason"})
	m.crashes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sandbox_crashes_total",
		Help: "Sandboxes that ended without the host asking, by reason (exit, signal, oom, node_oom, seccomp, watchdog, violation, idle_cpu, idle_memory)."},
		[]string{"reason"})
	m.watchdog = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "sandbox_watchdog_kills_total",
		Help: "Sandboxes killed by the watchdog for exceeding their time budget."})
	m.violations = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sandbox_protocol_violations_total",
		Help: "IPC protocol violations by sandboxes, by kind."}, []string{"kind"})
	m.seccomp = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sandbox_seccomp_kills_total",
		Help: "Sandboxes killed for a forbidden system call, by syscall."}, []string{"syscall"})

	m.httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "http_requests_total",
		Help: "HTTP API requests, by route, method and status code."}, []string{"route", "method", "code"})
	m.httpSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "http_request_duration_seconds",
		Help: "HTTP API request duration, by route.", Buckets: latencyBuckets}, []string{"route"})

	for _, c := range []prometheus.Collector{m.executions, m.instructions, m.execSeconds, m.messages, m.msgSeconds,
		m.commitSecs, m.commitBytes, m.commitErrors, m.commitsPerSync, m.spawns, m.evictions, m.crashes, m.watchdog, m.violations,
		m.seccomp, m.httpRequests, m.httpSeconds, (*stateCollector)(m)} {
		f(c)
	}
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "build_info", Help: "Always 1; labels describe the build.",
		ConstLabels: prometheus.Labels{"version": version, "go_version": runtime.Version(), "isolation": isolation}})
	bi.Set(1)
	f(bi)

	// Series that exist from the start, so rates and alerts work before the
	// first event.
	for _, k := range []string{KindUpdate, KindQuery, KindInterCanister} {
		m.messages.WithLabelValues(k, OutcomeReplied)
	}
	for _, k := range []string{"canister", "blank", "primed", "compiler"} {
		m.spawns.WithLabelValues(k)
	}
	return m
}

// SetSources sets what is read at scrape time.
func (m *Metrics) SetSources(s Sources) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.src = s
}

// DeclareViolationKinds creates the protocol violation series at zero (the
// sandbox manager passes boundary.AllViolationKinds' names).
func (m *Metrics) DeclareViolationKinds(kinds ...string) {
	for _, k := range kinds {
		m.violations.WithLabelValues(k)
	}
}

// Registry is the underlying registry (for tests and extra collectors).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	m.handlerOnce.Do(func() {
		m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{MaxRequestsInFlight: 4, Timeout: 10 * time.Second})
	})
	return m.handler
}

// Execution implements Node.
func (m *Metrics) Execution(context, outcome string, instructions uint64, d time.Duration) {
	m.executions.WithLabelValues(context, outcome).Inc()
	if instructions > 0 {
		m.instructions.WithLabelValues(context).Add(float64(instructions))
	}
	m.execSeconds.WithLabelValues(context).Observe(d.Seconds())
}

// Message implements Node.
func (m *Metrics) Message(kind, outcome string, d time.Duration) {
	m.messages.WithLabelValues(kind, outcome).Inc()
	if d > 0 {
		m.msgSeconds.WithLabelValues(kind).Observe(d.Seconds())
	}
}

// Commit implements Node.
func (m *Metrics) Commit(d time.Duration, bytes int64, err error) {
	if err != nil {
		m.commitErrors.Inc()
		return
	}
	m.commitSecs.Observe(d.Seconds())
	m.commitBytes.Observe(float64(bytes))
}

// StoreSync implements Node.
func (m *Metrics) StoreSync(commits int) { m.commitsPerSync.Observe(float64(commits)) }

// SandboxSpawned implements Sandbox.
func (m *Metrics) SandboxSpawned(kind string) { m.spawns.WithLabelValues(kind).Inc() }

// SandboxEvicted implements Sandbox.
func (m *Metrics) SandboxEvicted(reason string) { m.evictions.WithLabelValues(reason).Inc() }

// SandboxCrashed implements Sandbox.
func (m *Metrics) SandboxCrashed(reason string) { m.crashes.WithLabelValues(reason).Inc() }

// WatchdogKill implements Sandbox.
func (m *Metrics) WatchdogKill() { m.watchdog.Inc() }

// ProtocolViolation implements Sandbox.
func (m *Metrics) ProtocolViolation(kind string) { m.violations.WithLabelValues(kind).Inc() }

// SeccompKill implements Sandbox.
func (m *Metrics) SeccompKill(syscall string) { m.seccomp.WithLabelValues(syscall).Inc() }

// HTTPRequest records one API request; route is the matched pattern.
func (m *Metrics) HTTPRequest(route, method string, code int, d time.Duration) {
	m.httpRequests.WithLabelValues(route, method, codeLabel(code)).Inc()
	m.httpSeconds.WithLabelValues(route).Observe(d.Seconds())
}

func codeLabel(code int) string {
	if code >= 100 && code < 600 {
		return string([]byte{byte('0' + code/100), byte('0' + code/10%10), byte('0' + code%10)})
	}
	return "other"
}

// stateCollector reads the Sources at scrape time.
type stateCollector Metrics

var (
	descLiveCanisters = prometheus.NewDesc("cordon_canisters_live", "Canisters loaded in the node.", nil, nil)
	descStoreBytes    = prometheus.NewDesc("cordon_store_size_bytes", "Size of the store file.", nil, nil)
	descSandboxes     = prometheus.NewDesc("cordon_sandboxes_live", "Live sandbox processes, by kind.", []string{"kind"}, nil)
	descSandboxRSS    = prometheus.NewDesc("cordon_sandbox_rss_bytes", "Resident memory of a live sandbox process.",
		[]string{"kind", "canister"}, nil)
	descSandboxRSSSum = prometheus.NewDesc("cordon_sandboxes_rss_bytes", "Resident memory of all live sandbox processes.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLiveCanisters, descStoreBytes, descSandboxes, descSandboxRSS, descSandboxRSSSum} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	src := c.src
	c.mu.Unlock()
	if src.LiveCanisters != nil {
		ch <- prometheus.MustNewConstMetric(descLiveCanisters, prometheus.GaugeValue, float64(src.LiveCanisters()))
	}
	if src.StoreBytes != nil {
		ch <- prometheus.MustNewConstMetric(descStoreBytes, prometheus.GaugeValue, float64(src.StoreBytes()))
	}
	var list []SandboxInfo
	if src.Sandboxes != nil {
		list = src.Sandboxes()
	}
	byKind := map[string]int{"canister": 0, "blank": 0, "primed": 0, "compiler": 0}
	var total uint64
	seen := map[[2]string]bool{}
	for _, s := range list {
		byKind[s.Kind]++
		total += s.RSSBytes
		key := [2]string{s.Kind, s.Canister}
		if seen[key] {
			continue // one series per sandbox identity
		}
		seen[key] = true
		ch <- prometheus.MustNewConstMetric(descSandboxRSS, prometheus.GaugeValue, float64(s.RSSBytes), s.Kind, s.Canister)
	}
	for k, n := range byKind {
		ch <- prometheus.MustNewConstMetric(descSandboxes, prometheus.GaugeValue, float64(n), k)
	}
	ch <- prometheus.MustNewConstMetric(descSandboxRSSSum, prometheus.GaugeValue, float64(total))
}
