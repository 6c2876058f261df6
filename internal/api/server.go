package api

// The HTTP side of the API: a JSON/HTTP handler over a node, and Serve,
// which runs it for `cordon serve`. The routes are in routes() and described
// by api/openapi.json at the root of the repository (a test checks that the
// two agree, status codes included).
//
// Every handler delegates to Local, so a command gets the same answers
// whether it opens the store itself or talks to a running server. Errors are
// JSON objects {"error": "...", "reject_code": N}; reject_code is present
// exactly when the error is a *host.Reject, and then "error" is the reject's
// message, so a Client can rebuild the *host.Reject.

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	apidoc "github.com/cordon-dev/cordon/api"
	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/store"
)

// Request body limits. An install carries the module base64-encoded in
// JSON, which inflates it by a third: 256 MiB leaves room for a 100 MiB
// module (the IC's limit is far lower).
const (
	maxInstallBody = 256 << 20
	maxBody        = 8 << 20
)

// http.Server limits used by Serve.
const (
	readTimeout    = 5 * time.Minute // the whole request, body included
	idleTimeout    = 2 * time.Minute
	maxHeaderBytes = 64 << 10
	// A log stream is written with a deadline per write: a client that
	// stops reading for this long is dropped.
	streamWriteTimeout = 30 * time.Second
	// streamKeepalive is how often an idle log stream sends an empty line
	// (and checks the canister still exists).
	streamKeepalive = 15 * time.Second
	// maxFollowers bounds concurrent log streams.
	maxFollowers = 64
)

// streamRecheck is how often a log stream checks that its canister still
// exists.
var streamRecheck = 2 * time.Second

// Defaults of ServeOptions.
const (
	DefaultRequestTimeout  = 5 * time.Minute
	DefaultShutdownTimeout = 30 * time.Second
	DefaultMaxRequests     = 256
	DefaultMaxInstalls     = 4
	// A request's headers must arrive within DefaultReadHeaderTimeout; its
	// body within DefaultBodyTimeout plus its size at DefaultMinBodyRate
	// (an 8 MiB call in 18 s, a 256 MiB install in 4.4 min).
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultBodyTimeout       = 10 * time.Second
	DefaultMinBodyRate       = 1 << 20 // bytes a second
	DefaultMaxConns          = 1024
)

// errorBody is the JSON body of every error response.
type errorBody struct {
	Error      string `json:"error"`
	RejectCode uint32 `json:"reject_code,omitempty"`
}

// statusBody is host.Status on the wire. host.Status leaves the canister's
// Candid service out of its JSON; the CLI needs it to encode and decode
// arguments, so it travels next to the other fields.
type statusBody struct {
	*host.Status
	CandidService string `json:"candid_service,omitempty"`
}

func toStatusBody(s *host.Status) statusBody {
	return statusBody{Status: s, CandidService: s.CandidService}
}

// setStatusBody is the body of POST /api/v1/canisters/{id}/status.
type setStatusBody struct {
	Caller string `json:"caller,omitempty"`
	Status string `json:"status"`
}

// httpError is an error with the HTTP status it is answered with.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(err error) error { return &httpError{status: http.StatusBadRequest, msg: err.Error()} }

// server answers API requests on one node.
type server struct {
	local   *Local
	log     *slog.Logger
	opts    ServeOptions
	token   []byte // sha256 of the bearer token; nil: no authentication
	addr    string // the address serve.json names, which /healthz's proof covers
	metrics *metrics.Metrics

	requests  chan struct{} // semaphore: API requests in progress
	installs  chan struct{} // semaphore: installs in progress
	followers chan struct{} // semaphore: log streams
	stopping  chan struct{} // closed when shutdown begins
	shutting  atomic.Bool

	// observe, when set (tests), sees the route, method and status of
	// every request.
	observe func(route, method string, status int)
}

// testObserve, set by tests, sees every request's route, method and status
// (the OpenAPI test checks each status is documented).
var testObserve func(route, method string, status int)

// route is one path pattern and its handlers by method.
type route struct {
	pattern string
	methods map[string]http.HandlerFunc
	// open routes need no token; a stream route asked to stream
	// (?follow=1) is not bounded by RequestTimeout and MaxRequests (it has
	// its own limits).
	open, stream bool
}

func (s *server) routes() []route {
	h := func(m ...any) map[string]http.HandlerFunc {
		out := map[string]http.HandlerFunc{}
		for i := 0; i < len(m); i += 2 {
			out[m[i].(string)] = m[i+1].(func(http.ResponseWriter, *http.Request))
		}
		return out
	}
	rts := []route{
		{pattern: "/api/v1/install", methods: h(http.MethodPost, s.install)},
		{pattern: "/api/v1/call", methods: h(http.MethodPost, s.call)},
		{pattern: "/api/v1/query", methods: h(http.MethodPost, s.query)},
		{pattern: "/api/v1/canisters", methods: h(http.MethodGet, s.list)},
		{pattern: "/api/v1/canisters/{id}", methods: h(http.MethodGet, s.status, http.MethodDelete, s.delete)},
		{pattern: "/api/v1/canisters/{id}/logs", methods: h(http.MethodGet, s.logs), stream: true},
		{pattern: "/api/v1/canisters/{id}/status", methods: h(http.MethodPost, s.setStatus)},
		{pattern: "/api/v1/sandboxes", methods: h(http.MethodGet, s.sandboxes)},
		{pattern: "/api/v1/openapi.json", methods: h(http.MethodGet, s.openapi)},
		{pattern: "/metrics", methods: h(http.MethodGet, s.metricsHandler)},
		{pattern: "/healthz", methods: h(http.MethodGet, s.healthz), open: true},
		{pattern: "/readyz", methods: h(http.MethodGet, s.readyz), open: true},
	}
	// The IC HTTP interface (internal/ichttp) answers these on its own
	// (CBOR, the spec's statuses); the checks in front are the API's.
	ic := s.icHandler
	rts = append(rts,
		route{pattern: "/api/v2/status", methods: h(http.MethodGet, ic)},
		route{pattern: "/api/v2/canister/{ecid}/query", methods: h(http.MethodPost, ic)},
		route{pattern: "/api/v2/canister/{ecid}/call", methods: h(http.MethodPost, ic)},
		route{pattern: "/api/v2/canister/{ecid}/read_state", methods: h(http.MethodPost, ic)},
		route{pattern: "/api/v3/canister/{ecid}/call", methods: h(http.MethodPost, ic)},
		route{pattern: "/api/v3/canister/{ecid}/query", methods: h(http.MethodPost, ic)},
		route{pattern: "/api/v3/canister/{ecid}/read_state", methods: h(http.MethodPost, ic)},
		route{pattern: "/api/v4/canister/{ecid}/call", methods: h(http.MethodPost, ic)},
		route{pattern: "/api/v2/subnet/{sid}/read_state", methods: h(http.MethodPost, ic)},
		route{pattern: "/api/v3/subnet/{sid}/read_state", methods: h(http.MethodPost, ic)})
	return rts
}

// icHandler passes a request to the IC HTTP interface, if it is served,
// with its body paced as the JSON API's are: a client trickling a body
// holds its request slot for BodyTimeout plus the body's size at
// MinBodyRate, not for the whole ReadTimeout.
func (s *server) icHandler(w http.ResponseWriter, r *http.Request) {
	if s.opts.IC == nil {
		writeJSON(w, http.StatusNotFound, errorBody{Error: "the IC HTTP interface is not served here"})
		return
	}
	r.Body = s.paced(w, r)
	s.opts.IC.ServeHTTP(w, r)
}

// NewHandler serves a node over JSON/HTTP with the options' limits and
// authentication (token is the bearer token, "" for none). Serve uses it;
// it is exported for embedding the API in another server.
func NewHandler(node *host.Node, opts ServeOptions, token string) http.Handler {
	return newServer(node, opts, token).handler()
}

func newServer(node *host.Node, opts ServeOptions, token string) *server {
	opts.defaults()
	s := &server{local: &Local{Node: node}, log: opts.Logger, opts: opts, metrics: opts.Metrics,
		requests:  make(chan struct{}, opts.MaxRequests),
		installs:  make(chan struct{}, opts.MaxInstalls),
		followers: make(chan struct{}, maxFollowers),
		stopping:  make(chan struct{})}
	s.observe = testObserve
	if token != "" {
		h := sha256.Sum256([]byte(token))
		s.token = h[:]
	}
	return s
}

func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		mux.Handle(rt.pattern, s.guard(rt, methodHandler(rt.methods)))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, errorBody{Error: fmt.Sprintf("no such endpoint: %s", r.URL.Path)})
	})
	return s.logRequests(mux)
}

// methodHandler dispatches on the request method and answers 405 with an
// Allow header otherwise. GET handlers also answer HEAD.
func methodHandler(methods map[string]http.HandlerFunc) http.Handler {
	allowed := make([]string, 0, len(methods)+1)
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodDelete} {
		if _, ok := methods[m]; ok || (m == http.MethodHead && methods[http.MethodGet] != nil) {
			allowed = append(allowed, m)
		}
	}
	allow := strings.Join(allowed, ", ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := r.Method
		if m == http.MethodHead {
			m = http.MethodGet
		}
		h, ok := methods[m]
		if !ok {
			w.Header().Set("Allow", allow)
			writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: fmt.Sprintf("method %s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, allow)})
			return
		}
		h(w, r)
	})
}

// reqInfo is shared by the middleware layers of one request.
type reqInfo struct{ route string }

type reqInfoKey struct{}

// guard applies, in order: the route's name for logs and metrics, the
// shutdown refusal, authentication, the concurrency limit and the request
// timeout.
func (s *server) guard(rt route, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ri, ok := r.Context().Value(reqInfoKey{}).(*reqInfo); ok {
			ri.route = rt.pattern
		}
		if err := s.checkOrigin(r); err != nil {
			w.Header().Set("Connection", "close")
			writeJSON(w, http.StatusForbidden, errorBody{Error: err.Error()})
			return
		}
		if !rt.open && s.shutting.Load() {
			w.Header().Set("Connection", "close")
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: "the server is shutting down; retry when it is back"})
			return
		}
		if s.token != nil {
			if s.authorized(r) {
				markAuthenticated(r.Context()) // its connection is a token holder's (serve.go)
			} else if !rt.open {
				w.Header().Set("WWW-Authenticate", `Bearer realm="cordon"`)
				writeJSON(w, http.StatusUnauthorized, errorBody{Error: "missing or wrong bearer token: send 'Authorization: Bearer TOKEN' with the token from <home>/token"})
				return
			}
		}
		if rt.open || rt.stream && isFollow(r) {
			next.ServeHTTP(w, r)
			return
		}
		select {
		case s.requests <- struct{}{}:
			defer func() { <-s.requests }()
		default:
			w.Header().Set("Connection", "close") // the body is not read
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: fmt.Sprintf("too many requests in progress (%d); retry", cap(s.requests))})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.opts.RequestTimeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// checkOrigin refuses requests a web browser sends on a page's behalf and
// requests for a host name that is not this server's. A page on any site
// can send requests to 127.0.0.1 (a form posts text/plain without any
// preflight), and through DNS rebinding a name it controls can resolve to
// the server's address; a browser always says which page sent a request
// (Origin, Sec-Fetch-Site) and which name it resolved (Host). cordon's
// clients are not browsers, so no browser origin is allowed.
func (s *server) checkOrigin(r *http.Request) error {
	if o := r.Header.Values("Origin"); len(o) > 0 {
		return fmt.Errorf("requests from web pages are refused (Origin: %q): the API is for cordon's CLI and other non-browser clients", o[0])
	}
	if v := r.Header.Get("Sec-Fetch-Site"); v != "" && v != "none" {
		return fmt.Errorf("requests from web pages are refused (Sec-Fetch-Site: %q)", v)
	}
	if !s.hostAllowed(r.Host) {
		return fmt.Errorf("host %q is not a name of this server (a DNS rebinding attempt?): use its IP address or localhost, or add the name to server.allowed_hosts", r.Host)
	}
	return nil
}

// hostAllowed reports whether a Host header names this server: an IP
// address (a page cannot make a browser send one for its own site),
// localhost, or one of AllowedHosts.
func (s *server) hostAllowed(hostport string) bool {
	if hostport == "" {
		return true // HTTP/1.0: no browser sends that
	}
	h := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), ".")
	if net.ParseIP(h) != nil || strings.EqualFold(h, "localhost") {
		return true
	}
	for _, a := range s.opts.AllowedHosts {
		if strings.EqualFold(h, strings.TrimSuffix(a, ".")) {
			return true
		}
	}
	return false
}

// isFollow reports whether a request asks for a stream (?follow=1).
func isFollow(r *http.Request) bool {
	v := r.URL.Query().Get("follow")
	return v == "1" || v == "true"
}

func (s *server) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	h := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(h[:], s.token) == 1
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logRequests logs every request (health probes and scrapes at debug level),
// counts it in the metrics, and turns a handler panic into a 500 instead of
// a dropped connection.
func (s *server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		ri := &reqInfo{route: "other"}
		r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, ri))
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(p))
				if rec.status == 0 {
					writeJSON(rec, http.StatusInternalServerError, errorBody{Error: fmt.Sprintf("internal error: %v", p)})
				}
			}
			if rec.status == 0 {
				rec.status = http.StatusOK
			}
			d := time.Since(start)
			if s.metrics != nil {
				s.metrics.HTTPRequest(ri.route, r.Method, rec.status, d)
			}
			if s.observe != nil {
				s.observe(ri.route, r.Method, rec.status)
			}
			level := slog.LevelInfo
			if ri.route == "/healthz" || ri.route == "/readyz" || ri.route == "/metrics" {
				level = slog.LevelDebug
			}
			s.log.LogAttrs(r.Context(), level, "http request",
				slog.String("method", r.Method),
				slog.String("path", r.URL.Path),
				slog.Int("status", rec.status),
				slog.Duration("duration", d),
				slog.Int64("bytes", rec.bytes),
				slog.String("remote", r.RemoteAddr))
		}()
		next.ServeHTTP(rec, r)
	})
}

// writeJSON writes v as the response body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorBody{Error: fmt.Sprintf("encode response: %v", err)})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeError answers err with its HTTP status.
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, body := errorResponse(err)
	if status >= 500 {
		s.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "error", err)
	}
	// Not after a storage failure: until the node is restarted a retry
	// is refused, and one of a call whose outcome is unknown could apply
	// it twice.
	if status == http.StatusServiceUnavailable && !errors.Is(err, host.ErrWritesStopped) {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, body)
}

// errorResponse maps an error to an HTTP status and body.
func errorResponse(err error) (int, errorBody) {
	var rej *host.Reject
	if errors.As(err, &rej) {
		return rejectStatus(rej), errorBody{Error: rej.Message, RejectCode: uint32(rej.Code)}
	}
	var he *httpError
	if errors.As(err, &he) {
		return he.status, errorBody{Error: he.msg}
	}
	if errors.Is(err, engine.ErrInvalidModule) {
		return http.StatusBadRequest, errorBody{Error: err.Error()}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return http.StatusServiceUnavailable, errorBody{Error: err.Error()}
	}
	return http.StatusInternalServerError, errorBody{Error: err.Error()}
}

// rejectStatus is the HTTP status of a reject.
func rejectStatus(r *host.Reject) int {
	switch r.Code {
	case host.CanisterReject, host.CanisterError:
		return http.StatusUnprocessableEntity
	case host.DestinationInvalid:
		if strings.Contains(strings.ToLower(r.Message), "not found") {
			return http.StatusNotFound
		}
		return http.StatusBadRequest
	case host.SysFatal, host.SysTransient:
		if r.Code == host.SysFatal && strings.Contains(r.Message, host.IngressTooLarge) {
			return http.StatusRequestEntityTooLarge // retrying will not help
		}
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// decode reads a JSON request body of at most limit bytes into v: exactly
// one JSON value, no unknown fields, sent as application/json (the one
// content type a web page cannot send without a CORS preflight), arriving
// within the server's body deadline.
func (s *server) decode(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		w.Header().Set("Connection", "close") // the body is not read
		return &httpError{status: http.StatusUnsupportedMediaType,
			msg: fmt.Sprintf("Content-Type %q: the request body must be application/json", r.Header.Get("Content-Type"))}
	}
	tooLarge := &httpError{status: http.StatusRequestEntityTooLarge,
		msg: fmt.Sprintf("request body too large: %s accepts at most %d bytes (%d MiB)", r.URL.Path, limit, limit>>20)}
	if r.ContentLength > limit {
		return tooLarge
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, s.paced(w, r), limit))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// Exactly one value: anything but trailing white space is an error.
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("unexpected data after the JSON value")
			if terr != nil && !isSyntaxErr(terr) {
				err = terr
			}
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.As(err, new(*http.MaxBytesError)):
		return tooLarge
	case errors.Is(err, io.EOF):
		return badRequest(errors.New("request body is empty: expected a JSON object"))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest(errors.New("malformed JSON request body: unexpected end of input"))
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		w.Header().Set("Connection", "close")
		return &httpError{status: http.StatusRequestTimeout, msg: "request body not received in time"}
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return badRequest(fmt.Errorf("malformed JSON request body at byte %d: %v", se.Offset, err))
	case errors.As(err, &te):
		return badRequest(fmt.Errorf("invalid JSON request body: field %q: %v", te.Field, err))
	}
	return badRequest(fmt.Errorf("invalid JSON request body: %v", err))
}

// paced is r's body read under the server's body deadline (pacedBody):
// BodyTimeout for the first bytes, then MinBodyRate.
func (s *server) paced(w http.ResponseWriter, r *http.Request) io.ReadCloser {
	return &pacedBody{r: r.Body, rc: http.NewResponseController(w), start: time.Now(),
		grace: s.opts.BodyTimeout, rate: s.opts.MinBodyRate}
}

// pacedBody reads a request body under a read deadline that moves with
// what has arrived: the first byte within grace, each further byte at
// least at rate bytes a second on average. A client trickling its body
// runs into the deadline; the read fails and the connection is closed.
type pacedBody struct {
	r     io.ReadCloser
	rc    *http.ResponseController
	start time.Time
	grace time.Duration
	rate  int64
	n     int64
}

func (b *pacedBody) Read(p []byte) (int, error) {
	chunk := min(int64(len(p)), 64<<10)
	allowed := b.grace + time.Duration(float64(b.n+chunk)/float64(b.rate)*float64(time.Second))
	if err := b.rc.SetReadDeadline(b.start.Add(allowed)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return 0, err
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	return n, err
}

func (b *pacedBody) Close() error { return b.r.Close() }

func isSyntaxErr(err error) bool {
	var se *json.SyntaxError
	return errors.As(err, &se)
}

// The checks below run before delegating to Local, with Local's own
// parsing and messages, so a client mistake is a 400 and not a 500.

func checkID(id string) error {
	if _, err := parseID(id); err != nil {
		return badRequest(err)
	}
	return nil
}

func checkCaller(caller string) error {
	if _, err := parseCaller(caller); err != nil {
		return badRequest(err)
	}
	return nil
}

func (s *server) install(w http.ResponseWriter, r *http.Request) {
	// An install holds its module in memory: few at a time, and the
	// slot is taken before the body is read.
	select {
	case s.installs <- struct{}{}:
		defer func() { <-s.installs }()
	default:
		// The body is not read: without closing, the server would wait
		// to discard the rest of a body still being sent before the
		// client saw this answer.
		w.Header().Set("Connection", "close")
		s.writeError(w, r, &httpError{status: http.StatusServiceUnavailable,
			msg: fmt.Sprintf("too many installs in progress (%d); retry", cap(s.installs))})
		return
	}
	var req InstallRequest
	if err := s.decode(w, r, maxInstallBody, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := checkCaller(req.Caller); err != nil {
		s.writeError(w, r, err)
		return
	}
	switch req.KeepHeap {
	case "", "keep", "replace":
	default:
		s.writeError(w, r, badRequest(fmt.Errorf("wasm_memory_persistence %q: want keep or replace", req.KeepHeap)))
		return
	}
	if req.ID != "" {
		if err := checkID(req.ID); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	switch host.InstallMode(req.Mode) {
	case "", host.ModeInstall, host.ModeReinstall, host.ModeUpgrade:
	default:
		s.writeError(w, r, badRequest(fmt.Errorf("unknown install mode %q (want install, reinstall or upgrade)", req.Mode)))
		return
	}
	if req.SkipPreUpgrade && host.InstallMode(req.Mode) != host.ModeUpgrade {
		s.writeError(w, r, badRequest(errSkipPreUpgradeMode))
		return
	}
	if req.Cycles != "" {
		if _, err := cycles.Parse(req.Cycles); err != nil {
			s.writeError(w, r, badRequest(fmt.Errorf("cycles %q: %w", req.Cycles, err)))
			return
		}
	}
	if len(req.Wasm) == 0 {
		s.writeError(w, r, badRequest(errors.New("wasm is required (the module, base64-encoded)")))
		return
	}
	if req.Env != nil {
		if err := host.CheckEnvVars(req.Env); err != nil {
			s.writeError(w, r, badRequest(err))
			return
		}
	}
	resp, err := s.local.Install(r.Context(), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *server) call(w http.ResponseWriter, r *http.Request)  { s.doCall(w, r, false) }
func (s *server) query(w http.ResponseWriter, r *http.Request) { s.doCall(w, r, true) }

func (s *server) doCall(w http.ResponseWriter, r *http.Request, query bool) {
	var req CallRequest
	if err := s.decode(w, r, maxBody, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if query {
		req.Query = true
	}
	if err := checkID(req.ID); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := checkCaller(req.Caller); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Method == "" {
		s.writeError(w, r, badRequest(errors.New("method is required")))
		return
	}
	resp, err := s.local.Call(r.Context(), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *server) list(w http.ResponseWriter, r *http.Request) {
	ss, err := s.local.List(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]statusBody, len(ss))
	for i, st := range ss {
		out[i] = toStatusBody(st)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) status(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := checkID(id); err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := s.local.Status(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toStatusBody(st))
}

// logs answers the kept lines (from ?since=SEQ on) as a JSON array, or with
// ?follow=1 streams them as JSON lines (application/x-ndjson), then each new
// line as the canister prints it, until the client goes away, the canister
// is deleted (a last line {"error": ..., "reject_code": 3}) or the server
// shuts down. An idle stream carries an empty line every 15 s.
func (s *server) logs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := checkID(id); err != nil {
		s.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	var since uint64
	if v := q.Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.writeError(w, r, badRequest(fmt.Errorf("since=%q: want a log sequence number", v)))
			return
		}
		since = n
	}
	switch v := q.Get("follow"); v {
	case "", "0", "false", "1", "true":
	default:
		s.writeError(w, r, badRequest(fmt.Errorf("follow=%q: want 1 or 0", v)))
		return
	}
	p, _ := parseID(id)
	if !isFollow(r) {
		// guard applied the request limit and timeout.
		es, _, err := s.local.Node.LogsSince(r.Context(), p, since)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if es == nil {
			es = []store.LogEntry{}
		}
		writeJSON(w, http.StatusOK, es)
		return
	}
	select {
	case s.followers <- struct{}{}:
		defer func() { <-s.followers }()
	default:
		s.writeError(w, r, &httpError{status: http.StatusServiceUnavailable,
			msg: fmt.Sprintf("too many log streams (%d); retry", cap(s.followers))})
		return
	}
	ctx := r.Context()
	es, changed, err := s.local.Node.LogsSince(ctx, p, since)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	next := since
	send := func(lines ...[]byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		for _, l := range lines {
			if _, err := w.Write(append(l, '\n')); err != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	sendEntries := func(es []store.LogEntry) bool {
		lines := make([][]byte, 0, len(es))
		for _, e := range es {
			if e.Seq < next {
				continue
			}
			b, _ := json.Marshal(e)
			lines = append(lines, b)
			next = e.Seq + 1
		}
		return send(lines...)
	}
	if !sendEntries(es) {
		return
	}
	keepalive := time.NewTicker(streamKeepalive)
	defer keepalive.Stop()
	recheck := time.NewTicker(streamRecheck) // notices a deleted canister
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stopping:
			return
		case <-changed:
		case <-recheck.C:
		case <-keepalive.C:
			if !send(nil) {
				return
			}
		}
		es, changed, err = s.local.Node.LogsSince(ctx, p, next)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			_, body := errorResponse(err)
			b, _ := json.Marshal(body)
			send(b)
			return
		}
		if !sendEntries(es) {
			return
		}
	}
}

func (s *server) setStatus(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := checkID(id); err != nil {
		s.writeError(w, r, err)
		return
	}
	var req setStatusBody
	if err := s.decode(w, r, maxBody, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := checkCaller(req.Caller); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Status != "running" && req.Status != "stopped" {
		s.writeError(w, r, badRequest(fmt.Errorf("unknown status %q (want running or stopped)", req.Status)))
		return
	}
	if err := s.local.SetStatus(r.Context(), id, req.Caller, req.Status); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (s *server) delete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := checkID(id); err != nil {
		s.writeError(w, r, err)
		return
	}
	caller := r.URL.Query().Get("caller")
	if err := checkCaller(caller); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.local.Delete(r.Context(), id, caller); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

func (s *server) sandboxes(w http.ResponseWriter, r *http.Request) {
	list, err := s.local.Sandboxes(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *server) openapi(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(apidoc.OpenAPI)
}

func (s *server) metricsHandler(w http.ResponseWriter, r *http.Request) {
	if s.metrics == nil {
		writeJSON(w, http.StatusNotFound, errorBody{Error: "metrics are not enabled on this server"})
		return
	}
	s.metrics.Handler().ServeHTTP(w, r)
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	// A client that read serve.json proves this is the server it names
	// before it sends the token (discovery.go).
	if nonce := r.Header.Get(challengeHeader); s.token != nil && validNonce(nonce) {
		w.Header().Set(proofHeader, healthProof(s.token, s.addr, nonce))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok")
}

// readyz answers 200 when the node's store answers and takes writes, and
// the server is not shutting down.
func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.shutting.Load() {
		s.writeError(w, r, &httpError{status: http.StatusServiceUnavailable, msg: "not ready: shutting down"})
		return
	}
	if _, err := s.local.Node.List(); err != nil {
		s.writeError(w, r, &httpError{status: http.StatusServiceUnavailable, msg: "not ready: " + err.Error()})
		return
	}
	select {
	case <-s.local.Node.WritesStopped():
		s.writeError(w, r, &httpError{status: http.StatusServiceUnavailable, msg: "not ready: " + host.ErrWritesStopped.Error()})
		return
	default:
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ready")
}

// beginShutdown makes the server refuse new API requests and ends the log
// streams.
func (s *server) beginShutdown() {
	if s.shutting.CompareAndSwap(false, true) {
		close(s.stopping)
	}
}
