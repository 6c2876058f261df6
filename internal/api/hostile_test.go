package api

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/ichttp"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// The attacks on the admin API a web page, a local process or a slow
// client can make, each against a real server: the request is refused and
// nothing changes on the node.

// installBody is a valid install request for the counter canister.
func installBody(t *testing.T) string {
	return `{"mode":"install","wasm":"` + base64.StdEncoding.EncodeToString(counterWasm(t)) + `","arg":"` +
		base64.StdEncoding.EncodeToString(noArgs) + `"}`
}

// send makes a request with exactly the given headers (Host included) and
// returns the status and body.
func send(t *testing.T, s *served, method, path string, headers map[string]string, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (s *served) canisterCount(t *testing.T) int {
	t.Helper()
	ids, err := s.node.List()
	if err != nil {
		t.Fatal(err)
	}
	return len(ids)
}

// A web page can make the browser send requests to 127.0.0.1: a form posts
// text/plain with no preflight, fetch() in no-cors mode sends anything
// "simple". Each carries Origin (or Sec-Fetch-Site); each is refused with
// 403 before the token or the body is looked at, on every route, the
// probes too. Nothing is installed.
func TestBrowserRequestsRefused(t *testing.T) {
	s := serve(t)
	auth := "Bearer " + s.token
	cases := []struct {
		name, method, path string
		headers            map[string]string
		body               string
	}{
		{"form post, no token", "POST", "/api/v1/install",
			map[string]string{"Origin": "http://evil.example", "Content-Type": "text/plain"}, installBody(t)},
		{"cross-origin with a stolen token", "POST", "/api/v1/install",
			map[string]string{"Origin": "http://evil.example", "Content-Type": "application/json", "Authorization": auth}, installBody(t)},
		{"sandboxed iframe (Origin: null)", "POST", "/api/v1/install",
			map[string]string{"Origin": "null", "Content-Type": "application/json", "Authorization": auth}, installBody(t)},
		{"same-origin page on the server's own port", "POST", "/api/v1/install",
			map[string]string{"Origin": s.base, "Content-Type": "application/json", "Authorization": auth}, installBody(t)},
		{"no-cors GET without Origin", "GET", "/api/v1/canisters",
			map[string]string{"Sec-Fetch-Site": "cross-site", "Authorization": auth}, ""},
		{"probe from a page", "GET", "/healthz", map[string]string{"Origin": "http://evil.example"}, ""},
		{"metrics from a page", "GET", "/metrics", map[string]string{"Origin": "http://evil.example", "Authorization": auth}, ""},
	}
	for _, c := range cases {
		code, body := send(t, s, c.method, c.path, c.headers, c.body)
		if code != http.StatusForbidden || !strings.Contains(body, "web pages") {
			t.Errorf("%s: %d %s", c.name, code, body)
		}
	}
	if n := s.canisterCount(t); n != 0 {
		t.Fatalf("%d canisters installed by refused requests", n)
	}
	// What the CLI sends still works; so does a user typing the URL
	// (Sec-Fetch-Site: none).
	if code, body := send(t, s, "GET", "/api/v1/canisters", map[string]string{"Authorization": auth, "Sec-Fetch-Site": "none"}, ""); code != 200 {
		t.Fatalf("typed URL: %d %s", code, body)
	}
	if _, err := s.client.Install(context.Background(), InstallRequest{Wasm: counterWasm(t), Arg: noArgs}); err != nil {
		t.Fatalf("the CLI's install: %v", err)
	}
}

// DNS rebinding: a page on evil.example makes evil.example resolve to
// 127.0.0.1; its requests are then same-origin for the browser (no Origin
// on a GET) but carry "Host: evil.example:PORT". Only IP addresses,
// localhost and configured names are this server's.
func TestWrongHostRefused(t *testing.T) {
	s := serveWith(t, func(o *ServeOptions) { o.AllowedHosts = []string{"cordon.internal"} })
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(s.base, "http://"))
	auth := map[string]string{"Authorization": "Bearer " + s.token}
	with := func(h string) map[string]string {
		m := map[string]string{"Host": h, "Content-Type": "application/json"}
		for k, v := range auth {
			m[k] = v
		}
		return m
	}
	for _, h := range []string{"evil.example:" + port, "evil.example", "localhost.evil.example:" + port, "127.0.0.1.nip.io:" + port} {
		for _, p := range []string{"/api/v1/canisters", "/healthz", "/readyz"} {
			if code, body := send(t, s, "GET", p, with(h), ""); code != http.StatusForbidden || !strings.Contains(body, "DNS rebinding") {
				t.Errorf("GET %s with Host %s: %d %s", p, h, code, body)
			}
		}
		if code, body := send(t, s, "POST", "/api/v1/install", with(h), installBody(t)); code != http.StatusForbidden {
			t.Errorf("install with Host %s: %d %s", h, code, body)
		}
	}
	if n := s.canisterCount(t); n != 0 {
		t.Fatalf("%d canisters installed through a foreign Host", n)
	}
	for _, h := range []string{"127.0.0.1:" + port, "localhost:" + port, "LOCALHOST", "[::1]:" + port, "cordon.internal:" + port, "cordon.internal."} {
		if code, body := send(t, s, "GET", "/api/v1/canisters", with(h), ""); code != 200 {
			t.Errorf("Host %s: %d %s", h, code, body)
		}
	}
}

// Without the token (the default on every listener, loopback included) a
// local process gets 401 on every API route and installs nothing.
func TestNoTokenRefused(t *testing.T) {
	s := serve(t)
	if s.token == "" {
		t.Fatal("the default server needs no token")
	}
	for _, tok := range []string{"", "not-the-token-not-the-token", s.token + "x"} {
		h := map[string]string{"Content-Type": "application/json"}
		if tok != "" {
			h["Authorization"] = "Bearer " + tok
		}
		if code, body := send(t, s, "POST", "/api/v1/install", h, installBody(t)); code != http.StatusUnauthorized {
			t.Errorf("install with token %q: %d %s", tok, code, body)
		}
	}
	if n := s.canisterCount(t); n != 0 {
		t.Fatalf("%d canisters installed without the token", n)
	}
}

// A body that is not declared application/json is refused with 415 before
// it is read, even with the right token: text/plain and form encodings are
// what a page can send without a preflight.
func TestNonJSONBodyRefused(t *testing.T) {
	s := serve(t)
	for _, ct := range []string{"text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "application/jsonx", "application/json; charset"} {
		h := map[string]string{"Authorization": "Bearer " + s.token}
		if ct != "" {
			h["Content-Type"] = ct
		}
		code, body := send(t, s, "POST", "/api/v1/install", h, installBody(t))
		if code != http.StatusUnsupportedMediaType || !strings.Contains(body, "application/json") {
			t.Errorf("install as %q: %d %s", ct, code, body)
		}
		code, body = send(t, s, "POST", "/api/v1/call", h, `{"id":"rwlgt-iiaaa-aaaaa-aaaaa-cai","method":"inc"}`)
		if code != http.StatusUnsupportedMediaType {
			t.Errorf("call as %q: %d %s", ct, code, body)
		}
	}
	if n := s.canisterCount(t); n != 0 {
		t.Fatalf("%d canisters installed by non-JSON requests", n)
	}
	h := map[string]string{"Authorization": "Bearer " + s.token, "Content-Type": "application/json; charset=utf-8"}
	if code, body := send(t, s, "POST", "/api/v1/install", h, installBody(t)); code != 200 {
		t.Fatalf("JSON with a charset: %d %s", code, body)
	}
}

// rawConn opens a TCP connection to the server.
func rawConn(t *testing.T, s *served) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitClosed reads until the server closes the connection and returns what
// it sent. The read deadline only turns a server that never closes into a
// failure instead of a hang; it is not what the test measures.
func waitClosed(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection open; it sent %q", b)
	}
	return string(b)
}

// A client that sends its headers and then trickles its body (or never
// sends it) is cut off: the server answers 408 and closes the connection,
// and the install slot it held is free again. So is one that never
// finishes its headers.
func TestTrickledRequestsCutOff(t *testing.T) {
	s := serveWith(t, func(o *ServeOptions) {
		o.MaxInstalls = 1
		o.BodyTimeout = 300 * time.Millisecond
		o.ReadHeaderTimeout = 300 * time.Millisecond
	})
	host := strings.TrimPrefix(s.base, "http://")

	// The body: declared 10 MB, a few bytes sent, then silence.
	c := rawConn(t, s)
	fmt.Fprintf(c, "POST /api/v1/install HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{\"mode\":", host, s.token)
	got := waitClosed(t, c)
	if !strings.HasPrefix(got, "HTTP/1.1 408 ") || !strings.Contains(got, "not received in time") {
		t.Fatalf("trickled body: the server answered %q", got)
	}
	// The only install slot is free again.
	if _, err := s.client.Install(context.Background(), InstallRequest{Wasm: counterWasm(t), Arg: noArgs}); err != nil {
		t.Fatalf("install after the trickler was cut off: %v", err)
	}

	// A body that keeps coming, a byte at a time, but slower than the
	// minimum rate is cut off too: the deadline moves with what arrived.
	c = rawConn(t, s)
	fmt.Fprintf(c, "POST /api/v1/call HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n", host, s.token)
	closed := make(chan string, 1)
	go func() { closed <- waitClosed(t, c) }()
	dripped := 0
drip:
	for ; dripped < 1000; dripped++ {
		select {
		case got = <-closed:
			break drip
		default:
		}
		if _, err := c.Write([]byte(" ")); err != nil {
			got = <-closed
			break
		}
		time.Sleep(50 * time.Millisecond) // the client's pace, far below 1 MiB/s
	}
	if dripped == 1000 {
		got = <-closed
	}
	if dripped >= 1000 || !strings.HasPrefix(got, "HTTP/1.1 408 ") {
		t.Fatalf("dripping body: %d bytes accepted, the server answered %q", dripped, got)
	}

	// The headers: never finished.
	c = rawConn(t, s)
	fmt.Fprintf(c, "POST /api/v1/install HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n", host, s.token)
	waitClosed(t, c)

	if n := s.canisterCount(t); n != 1 {
		t.Fatalf("%d canisters, want the one install that was complete", n)
	}
}

// Connections beyond MaxConns are closed as they arrive; once one is
// released, requests are served again.
func TestConnectionLimit(t *testing.T) {
	var lim *connLimiter
	s := serveWith(t, func(o *ServeOptions) {
		o.MaxConns = 2
		o.BodyTimeout = 10 * time.Minute // the held bodies are not what is tested
		o.testLimiter = func(l *connLimiter) { lim = l }
	})
	s.client.Close() // Dial's health check left an idle connection
	// Two connections that hold a slot (a request in progress each: the
	// headers are done, the body is not; an idle connection would give
	// its slot to a new one). The server may still hold the slot of
	// Dial's connection for a moment: wait until both are in progress.
	var held []net.Conn
	hostport := strings.TrimPrefix(s.base, "http://")
	holdBy := time.Now().Add(time.Minute)
	for len(held) < 2 {
		if time.Now().After(holdBy) {
			t.Fatalf("only %d connections served", len(held))
		}
		// One held before may have left its slot (seen once, under the
		// race detector in CI): say why, and hold another in its place.
		held = slices.DeleteFunc(held, func(c net.Conn) bool {
			if activeIn(lim, c) {
				return false
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			b, _ := io.ReadAll(io.LimitReader(c, 512))
			t.Logf("a held connection left its slot; the server sent %q", b)
			c.Close()
			return true
		})
		c := rawConn(t, s)
		fmt.Fprintf(c, "POST /api/v1/call HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", hostport, s.token)
		if waitActive(lim, len(held)+1, 10*time.Second) {
			held = append(held, c)
			continue
		}
		c.Close()
	}
	// A third is closed without an answer.
	c := rawConn(t, s)
	fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", hostport)
	if got := waitClosed(t, c); got != "" {
		t.Fatalf("a connection beyond the limit was answered: %q", got)
	}
	held[0].Close()
	// The server notices the close and frees the slot.
	deadline := time.Now().Add(time.Minute)
	for {
		c := rawConn(t, s)
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", hostport)
		if got := waitClosed(t, c); strings.HasPrefix(got, "HTTP/1.1 200") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the freed slot was never reused")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// On a strict sandboxed node an install that asks for in-process isolation
// is refused (nothing is created) unless the node allows it.
func TestInProcessRefusedOnStrictNode(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprint("allow_inprocess=", allow), func(t *testing.T) {
			cfg := host.DefaultConfig()
			cfg.Home = t.TempDir()
			cfg.Isolation = "sandbox"
			cfg.Sandbox.Strict = true
			cfg.Sandbox.AllowInProcess = allow
			node, err := host.Open(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { node.Close() })
			s := serveNode(t, node, cfg.Home, nil)
			h := map[string]string{"Authorization": "Bearer " + s.token, "Content-Type": "application/json"}
			body := strings.Replace(installBody(t), `{"mode":"install"`, `{"mode":"install","isolation":"inprocess"`, 1)
			code, resp := send(t, s, "POST", "/api/v1/install", h, body)
			if !allow {
				if code != http.StatusUnprocessableEntity || !strings.Contains(resp, "strict") || !strings.Contains(resp, `"reject_code":4`) {
					t.Fatalf("in-process install on a strict node: %d %s", code, resp)
				}
				if n := s.canisterCount(t); n != 0 {
					t.Fatalf("%d canisters after a refused install", n)
				}
				return
			}
			if code != 200 {
				t.Fatalf("in-process install with sandbox.allow_inprocess: %d %s", code, resp)
			}
		})
	}
}

// Only users send ingress: the management canister and canister ids are
// refused as callers on every route that takes one (they would pass for a
// canister's controller, or for aaaaa-aa to a canister that trusts it).
func TestSystemCallerRefused(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	inst, err := s.client.Install(ctx, InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	h := map[string]string{"Authorization": "Bearer " + s.token, "Content-Type": "application/json"}
	for _, caller := range []string{"aaaaa-aa", inst.ID, principal.CanisterID(7).String()} {
		for _, c := range []struct{ method, path, body string }{
			{"POST", "/api/v1/call", `{"id":"` + inst.ID + `","method":"inc","arg":"RElETAAA","caller":"` + caller + `"}`},
			{"POST", "/api/v1/query", `{"id":"` + inst.ID + `","method":"get","arg":"RElETAAA","caller":"` + caller + `"}`},
			{"POST", "/api/v1/install", strings.Replace(installBody(t), `{"mode":"install"`, `{"mode":"install","caller":"`+caller+`"`, 1)},
			{"POST", "/api/v1/canisters/" + inst.ID + "/status", `{"status":"stopped","caller":"` + caller + `"}`},
			{"DELETE", "/api/v1/canisters/" + inst.ID + "?caller=" + caller, ""},
		} {
			code, body := send(t, s, c.method, c.path, h, c.body)
			if code != http.StatusBadRequest || !strings.Contains(body, "cannot send ingress") {
				t.Errorf("%s %s as %s: %d %s", c.method, c.path, caller, code, body)
			}
		}
	}
	// Nothing happened: one canister, running, its counter untouched.
	st, err := s.node.Status(ctx, mustPrincipal(t, inst.ID))
	if err != nil || st.Status != "running" || s.canisterCount(t) != 1 {
		t.Fatalf("after the refused calls: %+v %v, %d canisters", st, err, s.canisterCount(t))
	}
	r, err := s.client.Call(ctx, CallRequest{ID: inst.ID, Method: "get", Arg: noArgs, Query: true})
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Reply) != "DIDL\x00\x01\x7d\x00" {
		t.Fatalf("counter after refused calls: %q", r.Reply)
	}
	// A user principal is a caller.
	user := principal.SelfAuthenticating([]byte("a user's public key")).String()
	if _, err := s.client.Call(ctx, CallRequest{ID: inst.ID, Method: "inc", Arg: noArgs, Caller: user}); err != nil {
		t.Fatalf("call as a user: %v", err)
	}
}

func mustPrincipal(t *testing.T, s string) principal.Principal {
	t.Helper()
	p, err := principal.FromText(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The IC HTTP interface reads its bodies under the same deadline as the
// JSON API: a client that sends a call's headers and trickles its body is
// answered 408 and cut off after BodyTimeout, and the request slot it held
// is free again (256 such clients held every slot for the whole
// ReadTimeout: every other request got 503).
func TestTrickledICBodyCutOff(t *testing.T) {
	s := serveWith(t, func(o *ServeOptions) {
		o.MaxRequests = 1
		o.BodyTimeout = 300 * time.Millisecond
	})
	hostport := strings.TrimPrefix(s.base, "http://")
	key, err := ichttp.LoadOrCreateRootKey(s.home)
	if err != nil {
		t.Fatal(err)
	}
	subnet := principal.SelfAuthenticating(key.DER())
	for _, path := range []string{"/api/v2/canister/%s/call", "/api/v3/canister/%s/call", "/api/v2/canister/%s/read_state", "/api/v3/subnet/%s/read_state"} {
		id := principal.CanisterID(1)
		if strings.Contains(path, "subnet") {
			id = subnet
		}
		path = fmt.Sprintf(path, id)
		c := rawConn(t, s)
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/cbor\r\nContent-Length: 3000000\r\n\r\n\xd9", path, hostport, s.token)
		got := waitClosed(t, c)
		if !strings.HasPrefix(got, "HTTP/1.1 408 ") || !strings.Contains(got, "not received in time") {
			t.Fatalf("%s: trickled body: the server answered %q", path, got)
		}
		// The one request slot is free again.
		if _, err := s.client.List(context.Background()); err != nil {
			t.Fatalf("%s: a request after the trickler was cut off: %v", path, err)
		}
	}
}

// waitActive waits until the limiter counts n connections, each with a
// request in flight.
// activeIn reports whether the limiter counts c (a client's end) with a
// request in flight.
func activeIn(l *connLimiter, c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for lc := range l.conns {
		if lc.RemoteAddr().String() == c.LocalAddr().String() {
			return lc.state == http.StateActive
		}
	}
	return false
}

func waitActive(l *connLimiter, n int, within time.Duration) bool {
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		l.mu.Lock()
		active := 0
		for c := range l.conns {
			if c.state == http.StateActive {
				active++
			}
		}
		total := len(l.conns)
		l.mu.Unlock()
		if active == n && total == n {
			return true
		}
	}
	return false
}

// probe sends GET /healthz on c (no token) and reads the answer; false if
// the connection is closed instead.
func probe(c net.Conn, br *bufio.Reader, hostport string) bool {
	if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\n\r\n", hostport); err != nil {
		return false
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	defer c.SetReadDeadline(time.Time{})
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err == nil && resp.StatusCode == http.StatusOK
}

// waitQuiet waits until no connection of the limiter has a request in
// flight (a probe's answer is read a moment before its connection turns
// idle).
func waitQuiet(t *testing.T, l *connLimiter) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(2 * time.Millisecond) {
		l.mu.Lock()
		busy := 0
		for c := range l.conns {
			if c.state == http.StateActive {
				busy++
			}
		}
		l.mu.Unlock()
		if busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still busy", busy)
		}
	}
}

// trustedConns counts the connections that carried an authenticated
// request.
func trustedConns(l *connLimiter) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for c := range l.conns {
		if c.trusted {
			n++
		}
	}
	return n
}

// Without a token, anyone could fill every connection slot with idle
// keep-alive connections (a probe every so often keeps them) and every
// new connection, a token holder's too, was closed as it arrived. At the
// limit a new connection now takes the place of an idle one, one that
// never carried an authenticated request first: the token holder is
// served, and a second flood does not take its connection either.
func TestIdleConnectionsDoNotLockOut(t *testing.T) {
	const max = 8
	var lim *connLimiter
	s := serveWith(t, func(o *ServeOptions) {
		o.MaxConns = max
		o.testLimiter = func(l *connLimiter) { lim = l }
	})
	s.client.Close() // Dial's health check left an idle connection
	hostport := strings.TrimPrefix(s.base, "http://")
	flood := func() int {
		held := 0
		for i := 0; i < max; i++ {
			c := rawConn(t, s)
			if probe(c, bufio.NewReader(c), hostport) {
				held++
			}
			waitQuiet(t, lim)
		}
		return held
	}
	if n := flood(); n < max-1 {
		t.Fatalf("the attacker held only %d of %d connections", n, max)
	}

	// The token holder is served (a few tries: an attacker's connection
	// may still be finishing its probe).
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err = s.client.List(context.Background()); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("a token holder while %d idle connections are held: %v", max, err)
	}
	waitQuiet(t, lim)
	if n := trustedConns(lim); n != 1 {
		t.Fatalf("%d authenticated connections, want the token holder's", n)
	}

	// A second flood replaces the attacker's own connections, not the
	// token holder's idle one.
	flood()
	if n := trustedConns(lim); n != 1 {
		t.Fatalf("after a second flood: %d authenticated connections, want the token holder's", n)
	}
	if _, err := s.client.List(context.Background()); err != nil {
		t.Fatalf("the token holder after a second flood: %v", err)
	}
}

// A connection that carried no authenticated request is not kept idle for
// the server's idle timeout (2 minutes) but for untrustedIdle; one that
// did is.
func TestUntrustedIdleConnectionsClosed(t *testing.T) {
	var lim *connLimiter
	s := serveWith(t, func(o *ServeOptions) {
		o.testLimiter = func(l *connLimiter) { l.untrustedIdle = 100 * time.Millisecond; lim = l }
	})
	hostport := strings.TrimPrefix(s.base, "http://")
	if _, err := s.client.List(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := rawConn(t, s)
	br := bufio.NewReader(c)
	if !probe(c, br, hostport) {
		t.Fatal("probe not answered")
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Minute)) // well below the server's idle timeout
	if b, err := io.ReadAll(br); err != nil {
		t.Fatalf("the probe's idle connection was kept open (%v); it sent %q", err, b)
	}
	if n := trustedConns(lim); n != 1 {
		t.Fatalf("%d authenticated connections kept, want the token holder's", n)
	}
}
