package api

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// BenchmarkLatencyICvsJSON measures, side by side in one run and under the
// same load, what a query (get) and an update (inc) of the counter take
// through the IC HTTP interface (v3 query, node-signed; v3 call, answered
// with its certificate) and through the JSON API (POST /api/v1/query and
// /api/v1/call), on one cordon serve over loopback. Each iteration makes
// the four requests in turn; the metrics are each path's p50 and p99 in
// microseconds and the IC/JSON ratio of the p50s. The IC requests are
// anonymous (unsigned envelopes): the client's signing is not cordon's
// cost, the envelope's parsing and the response's signature are.
//
//	go test ./internal/api -run '^$' -bench LatencyICvsJSON -benchtime 300x
func BenchmarkLatencyICvsJSON(b *testing.B) {
	s := serveWith(b, func(o *ServeOptions) { o.Logger = slog.New(slog.DiscardHandler) })
	ctx := context.Background()
	inst, err := s.client.Install(ctx, InstallRequest{Wasm: counterWasm(b), Arg: noArgs})
	if err != nil {
		b.Fatal(err)
	}
	id := principal.MustFromText(inst.ID)
	hc := &http.Client{Timeout: time.Minute}
	var nonce uint64
	ic := func(kind, method string) {
		nonce++
		typ := map[string]string{"query": "query", "call": "call"}[kind]
		env, err := cbor.Marshal(map[string]any{"content": map[string]any{"request_type": typ, "sender": principal.Anonymous().Bytes(),
			"canister_id": id.Bytes(), "method_name": method, "arg": noArgs, "nonce": binary.BigEndian.AppendUint64(nil, nonce),
			"ingress_expiry": uint64(time.Now().Add(2 * time.Minute).UnixNano())}})
		if err != nil {
			b.Fatal(err)
		}
		req, err := http.NewRequest(http.MethodPost, s.base+"/api/v3/canister/"+inst.ID+"/"+kind, bytes.NewReader(env))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/cbor")
		if s.token != "" {
			req.Header.Set("Authorization", "Bearer "+s.token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var st struct {
			Status string `cbor:"status"`
		}
		if resp.StatusCode != http.StatusOK || cbor.Unmarshal(body, &st) != nil || st.Status != "replied" {
			b.Fatalf("IC %s %s: %d %q", kind, method, resp.StatusCode, body)
		}
	}
	jsonCall := func(method string, query bool) {
		if _, err := s.client.Call(ctx, CallRequest{ID: inst.ID, Method: method, Arg: noArgs, Query: query}); err != nil {
			b.Fatalf("JSON %s: %v", method, err)
		}
	}
	paths := []struct {
		name string
		do   func()
	}{
		{"ic-query", func() { ic("query", "get") }},
		{"json-query", func() { jsonCall("get", true) }},
		{"ic-update", func() { ic("call", "inc") }},
		{"json-update", func() { jsonCall("inc", false) }},
	}
	for range 5 { // connections open, canister loaded
		for _, p := range paths {
			p.do()
		}
	}
	lat := make([][]time.Duration, len(paths))
	b.ResetTimer()
	for range b.N {
		for i, p := range paths {
			start := time.Now()
			p.do()
			lat[i] = append(lat[i], time.Since(start))
		}
	}
	b.StopTimer()
	pct := func(d []time.Duration, q int) float64 {
		d = slices.Clone(d)
		slices.Sort(d)
		return float64(d[min(len(d)-1, len(d)*q/100)].Nanoseconds()) / 1e3
	}
	p50 := map[string]float64{}
	for i, p := range paths {
		p50[p.name] = pct(lat[i], 50)
		b.ReportMetric(p50[p.name], "µs-p50-"+p.name)
		b.ReportMetric(pct(lat[i], 99), "µs-p99-"+p.name)
	}
	b.ReportMetric(p50["ic-query"]/p50["json-query"], "ic/json-p50-query")
	b.ReportMetric(p50["ic-update"]/p50["json-update"], "ic/json-p50-update")
	b.ReportMetric(0, "ns/op") // one op is four requests: the percentiles say more
}
