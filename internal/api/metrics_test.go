package api

import (
	"context"
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape GETs /metrics and parses the text exposition format.
func scrape(t testing.TB, base, token string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value returns the value of the series of family name with exactly the
// given labels (counters, gauges, untyped; for histograms the count).
func value(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if v, ok := labels[l.GetName()]; !ok || v != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func histogramSum(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		if m.Histogram != nil {
			return m.GetHistogram().GetSampleSum()
		}
	}
	return 0
}

type lv = map[string]string

// TestMetricsMove: each kind of event moves its counters by exactly what
// happened.
func TestMetricsMove(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	counter, err := s.client.Install(ctx, InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	traps, err := s.client.Install(ctx, InstallRequest{Wasm: corpusWasm(t, "traps.wasm"), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	relay, err := s.client.Install(ctx, InstallRequest{Wasm: corpusWasm(t, "relay.wasm"), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	before := scrape(t, s.base, s.token)

	call := func(id, method string, arg []byte, query bool) error {
		_, err := s.client.Call(ctx, CallRequest{ID: id, Method: method, Arg: arg, Query: query})
		return err
	}
	if err := call(counter.ID, "inc", noArgs, false); err != nil {
		t.Fatal(err)
	}
	if err := call(counter.ID, "get", noArgs, true); err != nil {
		t.Fatal(err)
	}
	if err := call(traps.ID, "assertFalse", noArgs, false); err == nil {
		t.Fatal("assertFalse did not trap")
	}
	if err := call(counter.ID, "nope", noArgs, false); err == nil {
		t.Fatal("unknown method answered")
	}
	// relay.add calls counter.add: one inter-canister request.
	if err := call(relay.ID, "add", candidArgs(t, `(principal "`+counter.ID+`", 5 : nat)`), false); err != nil {
		t.Fatal(err)
	}
	after := scrape(t, s.base, s.token)

	delta := func(name string, labels lv) float64 {
		a, _ := value(after, name, labels)
		b, _ := value(before, name, labels)
		return a - b
	}
	for _, c := range []struct {
		name   string
		labels lv
		want   float64
	}{
		{"cordon_messages_total", lv{"kind": "update", "outcome": "replied"}, 2}, // inc, relay.add
		{"cordon_messages_total", lv{"kind": "update", "outcome": "canister_error"}, 1},
		{"cordon_messages_total", lv{"kind": "update", "outcome": "destination_invalid"}, 1},
		{"cordon_messages_total", lv{"kind": "query", "outcome": "replied"}, 1},
		{"cordon_messages_total", lv{"kind": "inter_canister", "outcome": "replied"}, 1},
		{"cordon_message_duration_seconds", lv{"kind": "update"}, 4},
		{"cordon_message_duration_seconds", lv{"kind": "query"}, 1},
		{"cordon_executions_total", lv{"context": "update", "outcome": "ok"}, 3}, // inc, relay.add, counter.add
		{"cordon_executions_total", lv{"context": "update", "outcome": "trapped"}, 1},
		{"cordon_executions_total", lv{"context": "reply_callback", "outcome": "ok"}, 1},
		{"cordon_executions_total", lv{"context": "non_replicated_query", "outcome": "ok"}, 1},
		{"cordon_execution_duration_seconds", lv{"context": "update"}, 4},
		{"cordon_http_requests_total", lv{"route": "/api/v1/call", "method": "POST", "code": "200"}, 3},
		{"cordon_http_requests_total", lv{"route": "/api/v1/call", "method": "POST", "code": "422"}, 1},
	} {
		if got := delta(c.name, c.labels); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if d := delta("cordon_instructions_total", lv{"context": "update"}); d <= 0 {
		t.Errorf("instructions did not move: %v", d)
	}
	// Every update commits (the trap commits its fee).
	if d := delta("cordon_store_commit_duration_seconds", nil); d < 4 {
		t.Errorf("commits: %v", d)
	}
	if d := histogramSum(after, "cordon_store_commit_bytes", nil) - histogramSum(before, "cordon_store_commit_bytes", nil); d <= 0 {
		t.Errorf("commit bytes did not move: %v", d)
	}
	// Group commit: every commit was made durable by some sync, and no
	// sync is counted without a commit.
	if commits, syncs := histogramSum(after, "cordon_store_commits_per_sync", nil)-histogramSum(before, "cordon_store_commits_per_sync", nil),
		delta("cordon_store_commits_per_sync", nil); commits < 4 || syncs < 1 || syncs > commits {
		t.Errorf("commits per sync: %v commits in %v syncs", commits, syncs)
	}
	if v, _ := value(after, "cordon_canisters_live", nil); v != 3 {
		t.Errorf("live canisters %v", v)
	}
	if v, _ := value(after, "cordon_store_size_bytes", nil); v <= 0 {
		t.Errorf("store size %v", v)
	}
	// Sandbox metrics exist, at zero, in-process.
	for _, c := range []struct {
		name   string
		labels lv
	}{
		{"cordon_sandbox_spawns_total", lv{"kind": "canister"}},
		{"cordon_sandbox_watchdog_kills_total", nil},
		{"cordon_sandboxes_live", lv{"kind": "canister"}},
		{"cordon_sandboxes_rss_bytes", nil},
	} {
		if v, ok := value(after, c.name, c.labels); !ok || v != 0 {
			t.Errorf("%s%v = %v (present %v), want 0", c.name, c.labels, v, ok)
		}
	}
	for _, name := range []string{"process_open_fds", "go_goroutines", "cordon_build_info"} {
		if _, ok := after[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
}
