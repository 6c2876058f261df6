package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/metrics"
)

var (
	noArgs   = []byte("DIDL\x00\x00")
	natOne   = []byte("DIDL\x00\x01\x7d\x01")
	wasmPath = filepath.Join("..", "..", "..", "shared", "canisters", "counter.wasm")
)

func counterWasm(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(wasmPath)
	if err != nil {
		t.Fatalf("counter module: %v", err)
	}
	return b
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// openNode opens a node on a new home, recording into its own metrics.
func openNode(t testing.TB) (*host.Node, string) {
	t.Helper()
	home := t.TempDir()
	return openNodeAt(t, home, true), home
}

// openNodeAt opens a node on home; with cleanup, it is closed at the end of
// the test.
func openNodeAt(t testing.TB, home string, cleanup bool) *host.Node {
	t.Helper()
	cfg := host.DefaultConfig()
	cfg.Home = home
	m := metrics.New("test", cfg.Isolation)
	cfg.Metrics = m
	n, err := host.Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.SetSources(metrics.Sources{LiveCanisters: n.LiveCanisters, StoreBytes: n.StoreBytes, Sandboxes: n.Sandboxes})
	if cleanup {
		t.Cleanup(func() { n.Close() })
	}
	return n
}

// testMetrics returns the metrics a node records into.
func testMetrics(n *host.Node) *metrics.Metrics {
	m, _ := n.Config().Metrics.(*metrics.Metrics)
	return m
}

// served is a node behind a real server on 127.0.0.1, found through Dial.
type served struct {
	node   *host.Node
	home   string
	client *Client
	base   string
	token  string // the API token Dial read ("" when the server needs none)
	cancel context.CancelFunc
	done   chan error
}

func serve(t *testing.T) *served { return serveWith(t, nil) }

// serveWith starts a server with options adjusted by opt (nil: defaults on
// 127.0.0.1:0, with metrics).
func serveWith(t testing.TB, opt func(*ServeOptions)) *served {
	t.Helper()
	node, home := openNode(t)
	return serveNode(t, node, home, opt)
}

func serveNode(t testing.TB, node *host.Node, home string, opt func(*ServeOptions)) *served {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{node: node, home: home, cancel: cancel, done: make(chan error, 1)}
	opts := ServeOptions{Listen: "127.0.0.1:0", Home: home, Logger: testLogger(t), Metrics: testMetrics(node), TokenOut: io.Discard}
	if opt != nil {
		opt(&opts)
	}
	go func() { s.done <- Serve(ctx, node, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(35 * time.Second):
			t.Error("Serve did not return")
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := Dial(context.Background(), home)
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		if c != nil {
			s.client, s.base, s.token = c, c.base, c.token
			return s
		}
		select {
		case err := <-s.done:
			t.Fatalf("Serve returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not come up")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop cancels Serve and returns its result.
func (s *served) stop(t *testing.T) error {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		return err
	case <-time.After(35 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func asReject(t *testing.T, what string, err error) *host.Reject {
	t.Helper()
	var r *host.Reject
	if !errors.As(err, &r) {
		t.Fatalf("%s: want a *host.Reject, got %T: %v", what, err, err)
	}
	return r
}

func TestClientLifecycle(t *testing.T) {
	s := serve(t)
	c := s.client
	ctx := context.Background()
	local := &Local{Node: s.node}

	inst, err := c.Install(ctx, InstallRequest{Mode: "install", Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	if !inst.Created || inst.ID == "" || inst.ModuleHash == "" {
		t.Fatalf("install response: %+v", inst)
	}
	id := inst.ID

	r, err := c.Call(ctx, CallRequest{ID: id, Method: "inc", Arg: noArgs})
	if err != nil {
		t.Fatalf("inc: %v", err)
	}
	if !bytes.Equal(r.Reply, natOne) {
		t.Fatalf("inc reply %q, want %q", r.Reply, natOne)
	}
	if r.Instructions == 0 {
		t.Error("inc: no instructions reported")
	}
	r, err = c.Call(ctx, CallRequest{ID: id, Method: "get", Arg: noArgs, Query: true})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if !bytes.Equal(r.Reply, natOne) {
		t.Fatalf("get reply %q, want %q", r.Reply, natOne)
	}

	// Status and List over HTTP are what Local reports, Candid service included.
	st, err := c.Status(ctx, id)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	want, err := local.Status(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("status over HTTP\n%+v\nlocal\n%+v", st, want)
	}
	if st.Status != "running" || st.ModuleHash != inst.ModuleHash || !slices.Contains(st.Updates, "inc") || !slices.Contains(st.Queries, "get") {
		t.Fatalf("status: %+v", st)
	}
	list, err := c.List(ctx)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(list) != 1 || !reflect.DeepEqual(list[0], want) {
		t.Fatalf("list: %+v", list)
	}
	logs, err := c.Logs(ctx, id)
	if err != nil {
		t.Fatalf("logs: %v", err)
	}
	wantLogs, _ := local.Logs(ctx, id)
	if len(logs) != len(wantLogs) {
		t.Fatalf("logs: %d entries over HTTP, %d locally", len(logs), len(wantLogs))
	}

	// Rejects keep their code across the wire.
	_, err = c.Call(ctx, CallRequest{ID: id, Method: "nope", Arg: noArgs})
	if rej := asReject(t, "unknown method", err); rej.Code != host.DestinationInvalid || !strings.Contains(rej.Message, "nope") {
		t.Fatalf("unknown method: %v", rej)
	}
	_, lerr := local.Call(ctx, CallRequest{ID: id, Method: "nope", Arg: noArgs})
	if err.Error() != lerr.Error() {
		t.Fatalf("unknown method: %q over HTTP, %q locally", err, lerr)
	}

	if err := c.SetStatus(ctx, id, "", "stopped"); err != nil {
		t.Fatalf("stop: %v", err)
	}
	_, err = c.Call(ctx, CallRequest{ID: id, Method: "inc", Arg: noArgs})
	if rej := asReject(t, "update while stopped", err); rej.Code != host.CanisterError {
		t.Fatalf("update while stopped: %v", rej)
	}
	if err := c.SetStatus(ctx, id, "", "running"); err != nil {
		t.Fatalf("start: %v", err)
	}
	if err := c.Delete(ctx, id, ""); err != nil { // stops, then deletes
		t.Fatalf("delete: %v", err)
	}
	_, err = c.Status(ctx, id)
	if rej := asReject(t, "status after delete", err); rej.Code != host.DestinationInvalid || !strings.Contains(rej.Message, "not found") {
		t.Fatalf("status after delete: %v", rej)
	}
	_, lerr = local.Status(ctx, id)
	if err.Error() != lerr.Error() {
		t.Fatalf("status after delete: %q over HTTP, %q locally", err, lerr)
	}
	req, _ := http.NewRequest("GET", s.base+"/api/v1/canisters/"+id, nil)
	authJSON(req, s.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readError(t, resp)
	if resp.StatusCode != http.StatusNotFound || body.RejectCode != 3 {
		t.Fatalf("GET deleted canister: %d %+v", resp.StatusCode, body)
	}
	if list, err := c.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("list after delete: %v %v", list, err)
	}

	// Client-side checks match Local's.
	if _, err := c.Status(ctx, ""); err == nil || err.Error() != "a canister id is required" {
		t.Fatalf("empty id: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestInstallErrors(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	// Invalid module: a clear error, and no canister left behind.
	_, err := s.client.Install(ctx, InstallRequest{Mode: "install", Wasm: []byte("hello world"), Arg: noArgs})
	if err == nil || !strings.Contains(err.Error(), "invalid canister module") {
		t.Fatalf("bad module: %v", err)
	}
	if list, _ := s.client.List(ctx); len(list) != 0 {
		t.Fatalf("bad module left %d canisters", len(list))
	}
	// Upgrading a canister that does not exist: Local's message.
	_, err = s.client.Install(ctx, InstallRequest{ID: "rrkah-fqaaa-aaaaa-aaaaq-cai", Mode: "upgrade", Wasm: counterWasm(t)})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("upgrade missing canister: %v", err)
	}
	_, err = s.client.Install(ctx, InstallRequest{Mode: "sideways", Wasm: counterWasm(t)})
	if err == nil || !strings.Contains(err.Error(), "unknown install mode") {
		t.Fatalf("bad mode: %v", err)
	}
}

func TestConcurrentCalls(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	inst, err := s.client.Install(ctx, InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			if _, err := s.client.Call(ctx, CallRequest{ID: inst.ID, Method: "inc", Arg: noArgs}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r, err := s.client.Call(ctx, CallRequest{ID: inst.ID, Method: "get", Arg: noArgs, Query: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte("DIDL\x00\x01\x7d\x10"); !bytes.Equal(r.Reply, want) {
		t.Fatalf("get after %d incs: %q, want %q", n, r.Reply, want)
	}
}

func readError(t *testing.T, resp *http.Response) errorBody {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error content type %q: %s", ct, b)
	}
	var e errorBody
	if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
		t.Fatalf("error body %q: %v", b, err)
	}
	return e
}

func TestHTTPErrors(t *testing.T) {
	s := serve(t)
	inst, err := s.client.Install(context.Background(), InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	do := func(method, path, body string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		authJSON(req, s.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		contains                 string
	}{
		{"malformed JSON", "POST", "/api/v1/call", `{"id": `, 400, "malformed JSON"},
		{"not JSON", "POST", "/api/v1/call", `hello`, 400, "malformed JSON"},
		{"unknown field", "POST", "/api/v1/call", `{"id":"` + inst.ID + `","method":"get","bogus":1}`, 400, "bogus"},
		{"wrong type", "POST", "/api/v1/call", `{"id":"` + inst.ID + `","method":7}`, 400, "method"},
		{"trailing data", "POST", "/api/v1/call", `{"id":"` + inst.ID + `","method":"get"} {}`, 400, "after the JSON value"},
		{"empty body", "POST", "/api/v1/call", ``, 400, "empty"},
		{"bad id in body", "POST", "/api/v1/call", `{"id":"not a principal","method":"get"}`, 400, "canister id"},
		{"missing id", "POST", "/api/v1/call", `{"method":"get"}`, 400, "canister id is required"},
		{"bad caller", "POST", "/api/v1/call", `{"id":"` + inst.ID + `","method":"get","caller":"x"}`, 400, "caller"},
		{"bad id in path", "GET", "/api/v1/canisters/not-a-principal", ``, 400, "canister id"},
		{"bad id in logs path", "GET", "/api/v1/canisters/zzz/logs", ``, 400, "canister id"},
		{"bad id in delete", "DELETE", "/api/v1/canisters/zzz", ``, 400, "canister id"},
		{"bad status", "POST", "/api/v1/canisters/" + inst.ID + "/status", `{"status":"paused"}`, 400, "unknown status"},
		{"bad mode", "POST", "/api/v1/install", `{"mode":"sideways","wasm":""}`, 400, "unknown install mode"},
		{"bad base64", "POST", "/api/v1/install", `{"mode":"install","wasm":"!!!"}`, 400, "JSON"},
		{"invalid module", "POST", "/api/v1/install", `{"mode":"install","wasm":"aGVsbG8="}`, 400, "invalid canister module"},
		{"unknown canister", "GET", "/api/v1/canisters/rrkah-fqaaa-aaaaa-aaaaq-cai", ``, 404, "not found"},
		{"unknown method", "POST", "/api/v1/call", `{"id":"` + inst.ID + `","method":"nope","arg":"RElETAAA"}`, 400, "nope"},
		{"GET install", "GET", "/api/v1/install", ``, 405, "not allowed"},
		{"PUT canister", "PUT", "/api/v1/canisters/" + inst.ID, ``, 405, "not allowed"},
		{"POST healthz", "POST", "/healthz", ``, 405, "not allowed"},
		{"unknown endpoint", "GET", "/api/v2/nothing", ``, 404, "no such endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(tc.method, tc.path, tc.body)
			e := readError(t, resp)
			if resp.StatusCode != tc.status || !strings.Contains(e.Error, tc.contains) {
				t.Fatalf("%s %s: %d %q, want %d containing %q", tc.method, tc.path, resp.StatusCode, e.Error, tc.status, tc.contains)
			}
			if resp.StatusCode == 405 && resp.Header.Get("Allow") == "" {
				t.Fatal("405 without Allow")
			}
		})
	}

	// The reject status mapping.
	resp := do("POST", "/api/v1/canisters/"+inst.ID+"/status", `{"status":"stopped"}`)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("stop: %d", resp.StatusCode)
	}
	resp = do("POST", "/api/v1/call", `{"id":"`+inst.ID+`","method":"inc","arg":"RElETAAA"}`)
	if e := readError(t, resp); resp.StatusCode != 422 || e.RejectCode != 5 {
		t.Fatalf("update while stopped: %d %+v", resp.StatusCode, e)
	}

	for _, path := range []string{"/healthz", "/readyz"} {
		resp := do("GET", path, "")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
		if path == "/healthz" && string(b) != "ok" {
			t.Fatalf("healthz body %q", b)
		}
	}
}

func TestBodyLimits(t *testing.T) {
	s := serve(t)
	big := `{"id":"rrkah-fqaaa-aaaaa-aaaaq-cai","method":"get","arg":"` + strings.Repeat("A", maxBody) + `"}`
	post := func(body io.Reader, contentLength int64) *http.Response {
		t.Helper()
		req, err := http.NewRequest("POST", s.base+"/api/v1/call", body)
		if err != nil {
			t.Fatal(err)
		}
		authJSON(req, s.token)
		req.ContentLength = contentLength
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// With a Content-Length: refused before reading.
	resp := post(strings.NewReader(big), int64(len(big)))
	if e := readError(t, resp); resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(e.Error, "too large") {
		t.Fatalf("oversized body: %d %q", resp.StatusCode, e.Error)
	}
	// Chunked: refused once the limit is read.
	resp = post(io.MultiReader(strings.NewReader(big)), -1)
	if e := readError(t, resp); resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(e.Error, "too large") {
		t.Fatalf("oversized chunked body: %d %q", resp.StatusCode, e.Error)
	}
	// The client refuses before sending.
	_, err := s.client.Call(context.Background(), CallRequest{ID: "rrkah-fqaaa-aaaaa-aaaaq-cai", Method: "get", Arg: make([]byte, maxBody)})
	if err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("client oversized call: %v", err)
	}
	// A body just under the limit is read (and answered on its merits).
	ok := `{"id":"rrkah-fqaaa-aaaaa-aaaaq-cai","method":"get","arg":"` + strings.Repeat("A", maxBody-100) + `"}`
	resp = post(strings.NewReader(ok), int64(len(ok)))
	if e := readError(t, resp); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("body under the limit: %d %q", resp.StatusCode, e.Error)
	}
}

func TestServeBadAddresses(t *testing.T) {
	node, home := openNode(t)
	for _, addr := range []string{"127.0.0.1", "192.0.2.1:8080", "nonsense"} {
		if err := Serve(context.Background(), node, ServeOptions{Listen: addr, Home: home}); err == nil {
			t.Errorf("Serve(%q): no error", addr)
		}
	}
	if err := Serve(context.Background(), node, ServeOptions{Listen: "127.0.0.1:0", Home: home, TLSCert: "x.pem"}); err == nil ||
		!strings.Contains(err.Error(), "both") {
		t.Errorf("TLS cert without key: %v", err)
	}
	if _, err := os.Stat(filepath.Join(home, "serve.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("serve.json written by a refused Serve: %v", err)
	}
	if _, err := os.Stat(filepath.Join(home, "token")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("token written by a refused Serve: %v", err)
	}
}

func TestServeDiscovery(t *testing.T) {
	s := serve(t)
	path := filepath.Join(s.home, "serve.json")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("serve.json mode %v, want 0600", fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Addr string `json:"addr"`
		PID  int    `json:"pid"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(info.Addr, "127.0.0.1:") || strings.HasSuffix(info.Addr, ":0") || info.PID != os.Getpid() {
		t.Fatalf("serve.json %s", b)
	}
	if s.base != "http://"+info.Addr {
		t.Fatalf("client base %s, serve.json %s", s.base, info.Addr)
	}
	if _, err := s.client.List(context.Background()); err != nil {
		t.Fatal(err)
	}

	if err := s.stop(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("serve.json after shutdown: %v", err)
	}
	c, err := Dial(context.Background(), s.home)
	if c != nil || err != nil {
		t.Fatalf("Dial after shutdown: %v %v", c, err)
	}
	if _, err := s.client.List(context.Background()); err == nil {
		t.Fatal("client still answered after shutdown")
	}
}

func TestGracefulShutdown(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	inst, err := s.client.Install(ctx, InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	// A request whose body is still arriving when shutdown starts finishes.
	pr, pw := io.Pipe()
	req, err := http.NewRequest("POST", s.base+"/api/v1/call", pr)
	if err != nil {
		t.Fatal(err)
	}
	authJSON(req, s.token)
	type result struct {
		resp *http.Response
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		res <- result{resp, err}
	}()
	if _, err := io.WriteString(pw, `{"id":"`+inst.ID+`",`); err != nil {
		t.Fatal(err)
	}
	// Let the server accept the connection and start reading the body.
	time.Sleep(300 * time.Millisecond)
	s.cancel()
	// Shutdown has begun once serve.json is gone.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(s.home, "serve.json")); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("serve.json not removed")
		}
	}
	select {
	case err := <-s.done:
		s.done <- err
		t.Fatalf("Serve returned with a request in flight: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := io.WriteString(pw, `"method":"inc","arg":"RElETAAA"}`); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	r := <-res
	if r.err != nil {
		t.Fatalf("in-flight request: %v", r.err)
	}
	var cr CallResponse
	err = json.NewDecoder(r.resp.Body).Decode(&cr)
	r.resp.Body.Close()
	if r.resp.StatusCode != 200 || err != nil || !bytes.Equal(cr.Reply, natOne) {
		t.Fatalf("in-flight request: %d %q %v", r.resp.StatusCode, cr.Reply, err)
	}
	select {
	case err := <-s.done:
		s.done <- err
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
}

func TestDialNoServer(t *testing.T) {
	ctx := context.Background()
	home := t.TempDir()
	if c, err := Dial(ctx, home); c != nil || err != nil {
		t.Fatalf("no serve.json: %v %v", c, err)
	}

	// A stale serve.json: nothing listens on its address.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(home, "serve.json"), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"addr":"` + addr + `","pid":1}`)
	if c, err := Dial(ctx, home); c != nil || err != nil {
		t.Fatalf("stale serve.json: %v %v", c, err)
	}

	// Something listens but never answers: Dial gives up after 2 s.
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	write(`{"addr":"` + ln.Addr().String() + `","pid":1}`)
	start := time.Now()
	if c, err := Dial(ctx, home); c != nil || err != nil {
		t.Fatalf("silent listener: %v %v", c, err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("Dial took %v", d)
	}

	// Something that is not cordon.
	other := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello") })}
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go other.Serve(ln2)
	defer other.Close()
	write(`{"addr":"` + ln2.Addr().String() + `","pid":1}`)
	if c, err := Dial(ctx, home); c != nil || err != nil {
		t.Fatalf("foreign server: %v %v", c, err)
	}

	write(`not json`)
	if c, err := Dial(ctx, home); c != nil || err != nil {
		t.Fatalf("malformed serve.json: %v %v", c, err)
	}
	write(`{"addr":"192.0.2.1:8080","pid":1}`)
	if c, err := Dial(ctx, home); c != nil || err == nil {
		t.Fatalf("non-loopback serve.json: %v %v", c, err)
	}
}

func TestRejectStatus(t *testing.T) {
	for _, tc := range []struct {
		code   host.RejectCode
		msg    string
		status int
	}{
		{host.SysFatal, "x", 503},
		{host.SysTransient, "out of cycles", 503},
		{host.DestinationInvalid, "Canister x not found", 404},
		{host.DestinationInvalid, "Canister x has no update method 'y'", 400},
		{host.CanisterReject, "no", 422},
		{host.CanisterError, "trapped", 422},
		{host.RejectCode(9), "?", 500},
	} {
		if got := rejectStatus(&host.Reject{Code: tc.code, Message: tc.msg}); got != tc.status {
			t.Errorf("reject %d %q: HTTP %d, want %d", tc.code, tc.msg, got, tc.status)
		}
	}
}

// The client decodes errors from anything answering, including a proxy or
// a server that does not speak this API.
func TestClientErrors(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/canisters/{id}", func(w http.ResponseWriter, r *http.Request) {
		switch r.PathValue("id") {
		case "rrkah-fqaaa-aaaaa-aaaaq-cai":
			writeJSON(w, 422, errorBody{Error: "trapped", RejectCode: 5})
		case "ryjl3-tyaaa-aaaaa-aaaba-cai":
			writeJSON(w, 500, errorBody{Error: "disk on fire"})
		default:
			http.Error(w, "bad gateway", http.StatusBadGateway)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()
	c := NewClient("http://" + ln.Addr().String() + "/")
	ctx := context.Background()

	_, err = c.Status(ctx, "rrkah-fqaaa-aaaaa-aaaaq-cai")
	if rej := asReject(t, "reject", err); rej.Code != 5 || rej.Message != "trapped" {
		t.Fatalf("reject: %v", rej)
	}
	_, err = c.Status(ctx, "ryjl3-tyaaa-aaaaa-aaaba-cai")
	var rej *host.Reject
	if err == nil || errors.As(err, &rej) || err.Error() != "disk on fire" {
		t.Fatalf("plain error: %v", err)
	}
	_, err = c.Status(ctx, "aaaaa-aa")
	if err == nil || !strings.Contains(err.Error(), "502") || !strings.Contains(err.Error(), "bad gateway") {
		t.Fatalf("non-JSON error: %v", err)
	}

	// Nothing listening: an error naming the server.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln2.Addr().String()
	ln2.Close()
	_, err = NewClient("http://" + addr).List(ctx)
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("no server: %v", err)
	}
}
