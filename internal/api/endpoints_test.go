package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

func corpusWasm(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "canisters", name))
	if err != nil {
		t.Fatalf("module %s: %v", name, err)
	}
	return b
}

// candidArgs encodes Candid text.
func candidArgs(t testing.TB, text string) []byte {
	t.Helper()
	a, err := candid.ParseArgs(text)
	if err != nil {
		t.Fatalf("candid %s: %v", text, err)
	}
	b, err := candid.EncodeArgs(a)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// authJSON adds the bearer token (when there is one) and the JSON content
// type to a request made by hand.
func authJSON(req *http.Request, token string) {
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if req.Method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
}

// rawRequest sends a request with an optional JSON body and bearer token and
// returns the status and body.
func rawRequest(t testing.TB, hc *http.Client, method, url string, body any, token string) (int, http.Header, []byte) {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, out
}

// TestEveryEndpoint drives each route of the API over HTTP with plain JSON,
// as a client in another language would.
func TestEveryEndpoint(t *testing.T) {
	s := serve(t)
	type res struct {
		code int
		body []byte
	}
	get := func(path string) res {
		code, _, b := rawRequest(t, nil, "GET", s.base+path, nil, s.token)
		return res{code, b}
	}
	post := func(path string, body any) res {
		code, _, b := rawRequest(t, nil, "POST", s.base+path, body, s.token)
		return res{code, b}
	}
	mustOK := func(what string, r res) []byte {
		t.Helper()
		if r.code != 200 {
			t.Fatalf("%s: %d %s", what, r.code, r.body)
		}
		return r.body
	}

	mustOK("healthz", get("/healthz"))
	mustOK("readyz", get("/readyz"))
	var doc map[string]any
	if err := json.Unmarshal(mustOK("openapi", get("/api/v1/openapi.json")), &doc); err != nil {
		t.Fatal(err)
	}

	kv := corpusWasm(t, "kv.wasm")
	var inst InstallResponse
	b := mustOK("install", post("/api/v1/install", map[string]any{"mode": "install", "wasm": kv, "arg": noArgs}))
	if err := json.Unmarshal(b, &inst); err != nil || !inst.Created || inst.ID == "" {
		t.Fatalf("install: %s %v", b, err)
	}
	id := inst.ID

	put := func(k, v string) {
		t.Helper()
		mustOK("put", post("/api/v1/call", map[string]any{"id": id, "method": "put", "arg": candidArgs(t, `("`+k+`", "`+v+`")`)}))
	}
	size := func(path string) string {
		t.Helper()
		var r CallResponse
		b := mustOK("size", post(path, map[string]any{"id": id, "method": "size", "arg": noArgs, "query": true}))
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		a, err := candid.Decode(r.Reply)
		if err != nil || len(a.Values) != 1 {
			t.Fatalf("size reply %x: %v", r.Reply, err)
		}
		return candid.FormatValue(a.Values[0], a.Types[0])
	}
	put("a", "1")
	if got := size("/api/v1/query"); got != "1 : nat" {
		t.Fatalf("size via /query: %s", got)
	}
	if got := size("/api/v1/call"); got != "1 : nat" {
		t.Fatalf("size via /call with query: %s", got)
	}

	// Upgrade and reinstall by mode, on the same id.
	b = mustOK("upgrade", post("/api/v1/install", map[string]any{"id": id, "mode": "upgrade", "wasm": kv, "arg": noArgs}))
	if err := json.Unmarshal(b, &inst); err != nil || inst.Created || inst.ID != id {
		t.Fatalf("upgrade: %s", b)
	}
	mustOK("reinstall", post("/api/v1/install", map[string]any{"id": id, "mode": "reinstall", "wasm": kv, "arg": noArgs}))
	if got := size("/api/v1/query"); got != "0 : nat" {
		t.Fatalf("size after reinstall: %s", got)
	}
	// A reinstall purges the log, as on the IC; the numbering goes on.
	put("b", "2")
	put("c", "3")

	var list []statusBody
	if err := json.Unmarshal(mustOK("list", get("/api/v1/canisters")), &list); err != nil || len(list) != 1 || list[0].ID != id {
		t.Fatalf("list: %+v %v", list, err)
	}
	var st statusBody
	if err := json.Unmarshal(mustOK("status", get("/api/v1/canisters/"+id)), &st); err != nil || st.Status.Status != "running" || st.CandidService == "" {
		t.Fatalf("status: %+v %v", st, err)
	}

	var logs []store.LogEntry
	if err := json.Unmarshal(mustOK("logs", get("/api/v1/canisters/"+id+"/logs")), &logs); err != nil || len(logs) != 2 ||
		logs[0].Text != "put b" || logs[1].Text != "put c" || logs[0].Seq == 0 || logs[1].Seq != logs[0].Seq+1 {
		t.Fatalf("logs (\"put a\" purged by the reinstall, numbering going on): %+v %v", logs, err)
	}
	var since []store.LogEntry
	if err := json.Unmarshal(mustOK("logs since", get("/api/v1/canisters/"+id+"/logs?since="+itoa(logs[1].Seq))), &since); err != nil ||
		len(since) != 1 || since[0].Text != "put c" {
		t.Fatalf("logs since: %+v %v", since, err)
	}

	// ps: in-process isolation has no sandboxes, and says so with [].
	if b := mustOK("sandboxes", get("/api/v1/sandboxes")); strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("sandboxes: %s", b)
	}
	if list, err := s.client.Sandboxes(context.Background()); err != nil || list == nil || len(list) != 0 {
		t.Fatalf("client sandboxes: %v %v", list, err)
	}

	mustOK("stop", post("/api/v1/canisters/"+id+"/status", map[string]string{"status": "stopped"}))
	if r := post("/api/v1/call", map[string]any{"id": id, "method": "put", "arg": candidArgs(t, `("c", "3")`)}); r.code != 422 {
		t.Fatalf("put while stopped: %d %s", r.code, r.body)
	}
	mustOK("start", post("/api/v1/canisters/"+id+"/status", map[string]string{"status": "running"}))

	if b := mustOK("metrics", get("/metrics")); !bytes.Contains(b, []byte("cordon_messages_total")) {
		t.Fatalf("metrics lack cordon_messages_total:\n%.500s", b)
	}

	code, _, b := rawRequest(t, nil, "DELETE", s.base+"/api/v1/canisters/"+id, nil, s.token)
	mustOK("delete", res{code, b})
	if r := get("/api/v1/canisters/" + id); r.code != 404 {
		t.Fatalf("status after delete: %d", r.code)
	}
	if r := get("/api/v1/canisters/" + id + "/logs"); r.code != 404 {
		t.Fatalf("logs after delete: %d", r.code)
	}
	// HEAD is GET without a body.
	code, _, b = rawRequest(t, nil, "HEAD", s.base+"/api/v1/canisters", nil, s.token)
	if code != 200 || len(b) != 0 {
		t.Fatalf("HEAD: %d %q", code, b)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// installKV installs kv.wasm and returns its id.
func installKV(t testing.TB, c *Client) string {
	t.Helper()
	r, err := c.Install(context.Background(), InstallRequest{Wasm: corpusWasm(t, "kv.wasm"), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	return r.ID
}

func kvPut(t testing.TB, c *Client, id, k string) {
	t.Helper()
	if _, err := c.Call(context.Background(), CallRequest{ID: id, Method: "put", Arg: candidArgs(t, `("`+k+`", "v")`)}); err != nil {
		t.Fatalf("put %s: %v", k, err)
	}
}

// TestLogStream follows a canister's logs over HTTP: the kept lines, new
// ones as they are printed, and the end of the stream when it is deleted.
func TestLogStream(t *testing.T) {
	defer setStreamRecheck(100 * time.Millisecond)()
	s := serve(t)
	id := installKV(t, s.client)
	kvPut(t, s.client, id, "a")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lines := make(chan store.LogEntry, 100)
	done := make(chan error, 1)
	go func() {
		done <- s.client.FollowLogs(ctx, id, 0, func(e store.LogEntry) error { lines <- e; return nil })
	}()
	next := func() store.LogEntry {
		t.Helper()
		select {
		case e := <-lines:
			return e
		case err := <-done:
			t.Fatalf("stream ended: %v", err)
		case <-ctx.Done():
			t.Fatal("no log line")
		}
		return store.LogEntry{}
	}
	if e := next(); e.Text != "put a" {
		t.Fatalf("first line %+v", e)
	}
	kvPut(t, s.client, id, "b")
	kvPut(t, s.client, id, "c")
	e1, e2 := next(), next()
	if e1.Text != "put b" || e2.Text != "put c" || e2.Seq != e1.Seq+1 {
		t.Fatalf("new lines %+v %+v", e1, e2)
	}

	// A raw stream is NDJSON.
	req, _ := http.NewRequestWithContext(ctx, "GET", s.base+"/api/v1/canisters/"+id+"/logs?follow=1&since="+itoa(e2.Seq), nil)
	authJSON(req, s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" || resp.StatusCode != 200 {
		t.Fatalf("raw stream: %d %s", resp.StatusCode, ct)
	}
	line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
	resp.Body.Close()
	var e store.LogEntry
	if err != nil || json.Unmarshal(line, &e) != nil || e.Text != "put c" {
		t.Fatalf("raw stream line %q: %v", line, err)
	}

	// Deleting the canister ends the stream with its reject.
	if err := s.client.Delete(context.Background(), id, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var rej *host.Reject
		if !errors.As(err, &rej) || rej.Code != host.DestinationInvalid {
			t.Fatalf("stream after delete: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("stream did not end after delete")
	}

	// Bad parameters.
	id2 := installKV(t, s.client)
	for _, q := range []string{"?since=-1", "?since=x", "?follow=maybe"} {
		code, _, b := rawRequest(t, nil, "GET", s.base+"/api/v1/canisters/"+id2+"/logs"+q, nil, s.token)
		if code != 400 {
			t.Errorf("logs%s: %d %s", q, code, b)
		}
	}
	code, _, _ := rawRequest(t, nil, "GET", s.base+"/api/v1/canisters/"+principal.CanisterID(1000).String()+"/logs?follow=1", nil, s.token)
	if code != 404 {
		t.Errorf("follow a missing canister: %d", code)
	}
}

func setStreamRecheck(d time.Duration) func() {
	old := streamRecheck
	streamRecheck = d
	return func() { streamRecheck = old }
}

// TestFollowLogsAcrossServer follows with FollowLogs while the node moves
// from this process (store polling) to a server and back: every line once,
// in order.
func TestFollowLogsAcrossServer(t *testing.T) {
	home := t.TempDir()
	node := openNodeAt(t, home, false)
	local := &Local{Node: node}
	r, err := local.Install(context.Background(), InstallRequest{Wasm: corpusWasm(t, "kv.wasm"), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	id := r.ID
	putLocal := func(k string) {
		t.Helper()
		if _, err := local.Call(context.Background(), CallRequest{ID: id, Method: "put", Arg: candidArgs(t, `("`+k+`", "v")`)}); err != nil {
			t.Fatal(err)
		}
	}
	putLocal("a")
	node.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var got []store.LogEntry
	done := make(chan error, 1)
	go func() {
		done <- FollowLogs(ctx, home, id, 0, func(e store.LogEntry) error {
			mu.Lock()
			got = append(got, e)
			mu.Unlock()
			return nil
		})
	}()
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			l := len(got)
			mu.Unlock()
			if l >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("got %d lines, want %d", l, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(1) // polled from the store

	// A server starts on the home: the follower switches to its stream.
	node = openNodeAt(t, home, false)
	s := serveNode(t, node, home, nil)
	kvPut(t, s.client, id, "b")
	waitFor(2)
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	node.Close()

	// Back to polling.
	node = openNodeAt(t, home, false)
	local.Node = node
	putLocal("c")
	node.Close()
	waitFor(3)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("FollowLogs: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, want := range []string{"put a", "put b", "put c"} {
		if got[i].Text != want || (i > 0 && got[i].Seq != got[i-1].Seq+1) {
			t.Fatalf("lines %+v", got)
		}
	}
	if len(got) != 3 {
		t.Fatalf("lines %+v", got)
	}
}

// TestBusy: the install and request limits refuse with 503 at once instead
// of queueing, and a slow client holds only its own slot.
func TestBusy(t *testing.T) {
	s := serveWith(t, func(o *ServeOptions) { o.MaxInstalls = 1; o.MaxRequests = 2 })
	// A slow install body holds the only install slot.
	startSlow := func() (*io.PipeWriter, chan int) {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", s.base+"/api/v1/install", pr)
		authJSON(req, s.token)
		first := make(chan int, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				first <- -1
				return
			}
			resp.Body.Close()
			first <- resp.StatusCode
		}()
		io.WriteString(pw, `{"mode":"install",`)
		return pw, first
	}
	pw, first := startSlow()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case code := <-first:
			// On a loaded machine an install below reached the server
			// first and held the slot: the slow one was refused. Again.
			if code != 503 {
				t.Fatalf("the slow install answered %d before its body was complete", code)
			}
			t.Log("the slow install came second and was refused; sent again")
			pw.Close()
			pw, first = startSlow()
		default:
		}
		code, h, b := rawRequest(t, nil, "POST", s.base+"/api/v1/install", map[string]any{"wasm": counterWasm(t)}, s.token)
		if code == 503 {
			if !strings.Contains(string(b), "too many installs") || h.Get("Retry-After") == "" {
				t.Fatalf("busy install: %s %v", b, h)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("second install while one is reading its body: %d %s", code, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The request limit: the slow install and one more slow call fill it.
	pr2, pw2 := io.Pipe()
	req2, _ := http.NewRequest("POST", s.base+"/api/v1/call", pr2)
	authJSON(req2, s.token)
	second := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req2)
		if err != nil {
			second <- -1
			return
		}
		resp.Body.Close()
		second <- resp.StatusCode
	}()
	io.WriteString(pw2, `{`)
	for {
		code, _, b := rawRequest(t, nil, "GET", s.base+"/api/v1/canisters", nil, s.token)
		if code == 503 && strings.Contains(string(b), "too many requests") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("request beyond the limit: %d %s", code, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Probes are not limited.
	if code, _, _ := rawRequest(t, nil, "GET", s.base+"/healthz", nil, s.token); code != 200 {
		t.Fatalf("healthz when busy: %d", code)
	}
	pw.CloseWithError(errors.New("client gave up"))
	pw2.Close()
	<-first
	if code := <-second; code != 400 {
		t.Fatalf("truncated call: %d", code)
	}
	// Free again.
	if _, err := s.client.List(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestMalformedChangesNothing: bad requests are refused with a clear 4xx
// and leave every canister as it was.
func TestMalformedChangesNothing(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	id := installKV(t, s.client)
	kvPut(t, s.client, id, "a")
	before, err := s.client.Status(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	big := base64.StdEncoding.EncodeToString(make([]byte, maxBody))
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/api/v1/call", `{"id":"` + id + `","method":"put","arg":"` + big + `"}`, 413},
		{"POST", "/api/v1/call", `{"id":"` + id + `","method":"put","arg":"!!"}`, 400},
		{"POST", "/api/v1/call", `{"id":"` + id + `","method":"put","arg":"RElETAAA"`, 400},
		{"POST", "/api/v1/call", `{"id":"` + id + `","method":"put","arg":"RElETAAA","extra":true}`, 400},
		{"POST", "/api/v1/call", `{"id":"` + id + `","method":"","arg":"RElETAAA"}`, 400},
		{"POST", "/api/v1/call", `[1,2,3]`, 400},
		{"POST", "/api/v1/install", `{"id":"` + id + `","mode":"reinstall","wasm":"aGVsbG8="}`, 400},
		{"POST", "/api/v1/install", `{"id":"` + id + `","mode":"upgrade","wasm":""}`, 400},
		{"POST", "/api/v1/install", `{"id":"` + id + `","mode":"reinstall","wasm":"aGVsbG8=","cycles":"lots"}`, 400},
		{"POST", "/api/v1/install", `{"id":"` + id + `","mode":"upgrade","wasm":"aGVsbG8=","wasm_memory_persistence":"maybe"}`, 400},
		{"POST", "/api/v1/canisters/" + id + "/status", `{"status":"stopped","caller":"nope"}`, 400},
		{"POST", "/api/v1/canisters/" + id + "/status", `{"status":"paused"}`, 400},
		{"DELETE", "/api/v1/canisters/" + id + "?caller=nope", ``, 400},
		{"PUT", "/api/v1/canisters/" + id, `{}`, 405},
	} {
		code, _, b := rawRequest(t, nil, tc.method, s.base+tc.path, tc.body, s.token)
		var e errorBody
		if code != tc.status || json.Unmarshal(b, &e) != nil || e.Error == "" {
			t.Errorf("%s %s %.80s: %d %.200s, want %d with a JSON error", tc.method, tc.path, tc.body, code, b, tc.status)
		}
	}
	after, err := s.client.Status(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if after.StateHash != before.StateHash || after.Messages != before.Messages || after.Balance != before.Balance ||
		after.Version != before.Version || after.Status != before.Status {
		t.Fatalf("bad requests changed the canister:\n%+v\n%+v", before, after)
	}
	if list, _ := s.client.List(ctx); len(list) != 1 {
		t.Fatalf("bad requests changed the canister list: %d", len(list))
	}
}

// TestSandboxMetricsInterface: what the sandbox manager records appears on
// /metrics (in-process nothing records it; here the test does).
func TestSandboxMetricsInterface(t *testing.T) {
	s := serve(t)
	m := testMetrics(s.node)
	var rec metrics.Sandbox = m
	rec.SandboxSpawned("canister")
	rec.SandboxSpawned("compiler")
	rec.SandboxEvicted("idle")
	rec.SandboxCrashed("seccomp")
	rec.WatchdogKill()
	rec.ProtocolViolation("memory")
	rec.SeccompKill("socket")
	m.DeclareViolationKinds("framing", "cycles")
	m.SetSources(metrics.Sources{Sandboxes: func() []metrics.SandboxInfo {
		return []metrics.SandboxInfo{{Canister: "rrkah-fqaaa-aaaaa-aaaaq-cai", Kind: "canister", PID: 42, RSSBytes: 1 << 20}}
	}})
	fams := scrape(t, s.base, s.token)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"cordon_sandbox_spawns_total", map[string]string{"kind": "canister"}, 1},
		{"cordon_sandbox_spawns_total", map[string]string{"kind": "compiler"}, 1},
		{"cordon_sandbox_evictions_total", map[string]string{"reason": "idle"}, 1},
		{"cordon_sandbox_crashes_total", map[string]string{"reason": "seccomp"}, 1},
		{"cordon_sandbox_watchdog_kills_total", nil, 1},
		{"cordon_sandbox_protocol_violations_total", map[string]string{"kind": "memory"}, 1},
		{"cordon_sandbox_protocol_violations_total", map[string]string{"kind": "framing"}, 0},
		{"cordon_sandbox_seccomp_kills_total", map[string]string{"syscall": "socket"}, 1},
		{"cordon_sandboxes_live", map[string]string{"kind": "canister"}, 1},
		{"cordon_sandboxes_live", map[string]string{"kind": "compiler"}, 0},
		{"cordon_sandbox_rss_bytes", map[string]string{"kind": "canister", "canister": "rrkah-fqaaa-aaaaa-aaaaq-cai"}, 1 << 20},
		{"cordon_sandboxes_rss_bytes", nil, 1 << 20},
	} {
		if got, ok := value(fams, c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
}
