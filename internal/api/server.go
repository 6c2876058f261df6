package api

// The HTTP side of the API: a JSON/HTTP handler over a node, and Serve,
// which runs it on a loopback address for `cordon serve`.
//
// Every handler delegates to Local, so a command gets the same answers
// whether it opens the store itself or talks to a running server. Errors are
// JSON objects {"error": "...", "reject_code": N}; reject_code is present
// exactly when the error is a *host.Reject, and then "error" is the reject's
// message, so a Client can rebuild the *host.Reject.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/host"
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
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 5 * time.Minute
	writeTimeout      = 10 * time.Minute
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
	shutdownTimeout   = 30 * time.Second
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
	local *Local
	log   *slog.Logger
}

// NewHandler serves a node over JSON/HTTP.
func NewHandler(node *host.Node, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &server{local: &Local{Node: node}, log: logger}
	mux := http.NewServeMux()
	route := func(pattern string, methods map[string]http.HandlerFunc) {
		mux.Handle(pattern, methodHandler(methods))
	}
	route("/api/v1/install", map[string]http.HandlerFunc{http.MethodPost: s.install})
	route("/api/v1/call", map[string]http.HandlerFunc{http.MethodPost: s.call})
	route("/api/v1/canisters", map[string]http.HandlerFunc{http.MethodGet: s.list})
	route("/api/v1/canisters/{id}", map[string]http.HandlerFunc{http.MethodGet: s.status, http.MethodDelete: s.delete})
	route("/api/v1/canisters/{id}/logs", map[string]http.HandlerFunc{http.MethodGet: s.logs})
	route("/api/v1/canisters/{id}/status", map[string]http.HandlerFunc{http.MethodPost: s.setStatus})
	route("/healthz", map[string]http.HandlerFunc{http.MethodGet: s.healthz})
	route("/readyz", map[string]http.HandlerFunc{http.MethodGet: s.readyz})
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

// logRequests logs every request (health probes at debug level) and turns a
// handler panic into a 500 instead of a dropped connection.
func (s *server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
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
			level := slog.LevelInfo
			if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
				level = slog.LevelDebug
			}
			s.log.LogAttrs(r.Context(), level, "http request",
				slog.String("method", r.Method),
				slog.String("path", r.URL.Path),
				slog.Int("status", rec.status),
				slog.Duration("duration", time.Since(start)),
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
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// decode reads a JSON request body of at most limit bytes into v: exactly
// one JSON value, no unknown fields.
func decode(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	tooLarge := &httpError{status: http.StatusRequestEntityTooLarge,
		msg: fmt.Sprintf("request body too large: %s accepts at most %d bytes (%d MiB)", r.URL.Path, limit, limit>>20)}
	if r.ContentLength > limit {
		return tooLarge
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
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
	var req InstallRequest
	if err := decode(w, r, maxInstallBody, &req); err != nil {
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
	resp, err := s.local.Install(r.Context(), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *server) call(w http.ResponseWriter, r *http.Request) {
	var req CallRequest
	if err := decode(w, r, maxBody, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := checkID(req.ID); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := checkCaller(req.Caller); err != nil {
		s.writeError(w, r, err)
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

func (s *server) logs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := checkID(id); err != nil {
		s.writeError(w, r, err)
		return
	}
	es, err := s.local.Logs(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if es == nil {
		es = []store.LogEntry{}
	}
	writeJSON(w, http.StatusOK, es)
}

func (s *server) setStatus(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := checkID(id); err != nil {
		s.writeError(w, r, err)
		return
	}
	var req setStatusBody
	if err := decode(w, r, maxBody, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := checkCaller(req.Caller); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Status != "running" && req.Status != "stopped" {
		s.writeError(w, r, badRequest(fmt.Errorf("unknown status %q", req.Status)))
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

func (s *server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok")
}

// readyz answers 200 when the node's store answers.
func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if _, err := s.local.Node.List(); err != nil {
		s.writeError(w, r, &httpError{status: http.StatusServiceUnavailable, msg: "not ready: " + err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ready")
}

// checkLoopback refuses listen addresses that are not loopback.
func checkLoopback(listen string) error {
	h, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w (want host:port, e.g. 127.0.0.1:8080)", listen, err)
	}
	if strings.EqualFold(h, "localhost") {
		return nil
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("refusing to listen on %q: it is not a loopback address, and listening on other addresses "+
		"needs authentication, which is not implemented yet; listen on 127.0.0.1 or [::1] instead", listen)
}

// serveInfo is the content of <home>/serve.json.
type serveInfo struct {
	Addr string `json:"addr"`
	PID  int    `json:"pid"`
}

const serveFile = "serve.json"

// writeServeFile writes info atomically with 0600 permissions.
func writeServeFile(home string, info serveInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(home, ".serve-*.json") // 0600
	if err != nil {
		return fmt.Errorf("write %s: %w", serveFile, err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Chmod(0o600)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(home, serveFile))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", serveFile, err)
	}
	return nil
}

// removeServeFile removes serve.json if it still describes this server.
func removeServeFile(home string, info serveInfo) error {
	path := filepath.Join(home, serveFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var cur serveInfo
	if json.Unmarshal(b, &cur) == nil && cur != info {
		return nil // another server's
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// inflight counts running handlers, so Serve does not return (and its
// caller close the node) while one still uses the node.
type inflight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil while n is 0
}

func (f *inflight) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		if f.n == 0 {
			f.idle = make(chan struct{})
		}
		f.n++
		f.mu.Unlock()
		defer func() {
			f.mu.Lock()
			f.n--
			if f.n == 0 {
				close(f.idle)
				f.idle = nil
			}
			f.mu.Unlock()
		}()
		next.ServeHTTP(w, r)
	})
}

// wait waits until no handler runs or d passes; it reports whether none runs.
func (f *inflight) wait(d time.Duration) bool {
	f.mu.Lock()
	idle := f.idle
	f.mu.Unlock()
	if idle == nil {
		return true
	}
	select {
	case <-idle:
		return true
	case <-time.After(d):
		return false
	}
}

// Serve runs node's API on listen (host:port) until ctx is done.
//
// listen must be a loopback address (127.0.0.0/8, ::1 or localhost): the
// API has no authentication yet, so anything else is refused. Port 0 picks
// a free port; the address actually bound is written, with the process id,
// to <home>/serve.json ({"addr":"127.0.0.1:PORT","pid":N}, mode 0600),
// which is how Dial finds the server. When ctx is done, serve.json is
// removed and the server shuts down gracefully: in-flight requests finish,
// within 30 s. Serve returns nil after a clean shutdown, and then no handler
// uses node any more, so the caller may close it. If requests outlast the
// 30 s, their contexts are cancelled, their connections closed, and Serve
// returns an error after waiting up to 5 s more for them.
func Serve(ctx context.Context, node *host.Node, listen, home string, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if node == nil {
		return errors.New("serve: no node")
	}
	if err := checkLoopback(listen); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	// "localhost" could resolve to anything: check what was bound.
	if ta, ok := ln.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		ln.Close()
		return fmt.Errorf("refusing to serve on %s (from %q): it is not a loopback address, and listening on other "+
			"addresses needs authentication, which is not implemented yet", ln.Addr(), listen)
	}
	info := serveInfo{Addr: ln.Addr().String(), PID: os.Getpid()}

	// Handlers get a context that stays alive through a graceful shutdown
	// and is cancelled only if the shutdown runs out of time.
	baseCtx, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	var running inflight
	srv := &http.Server{
		Handler:           running.wrap(NewHandler(node, logger)),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
	}

	if err := writeServeFile(home, info); err != nil {
		ln.Close()
		return err
	}
	defer func() {
		if err := removeServeFile(home, info); err != nil {
			logger.Warn("could not remove serve.json", "error", err)
		}
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	logger.Info("serving", "addr", "http://"+info.Addr, "pid", info.PID, "home", home)

	select {
	case err := <-serveErr:
		// Serve only returns before Shutdown on a listener failure.
		return fmt.Errorf("serve on %s: %w", info.Addr, err)
	case <-ctx.Done():
	}
	logger.Info("shutting down", "addr", info.Addr)
	// Remove serve.json first, so no new command picks this server up.
	if err := removeServeFile(home, info); err != nil {
		logger.Warn("could not remove serve.json", "error", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-serveErr // http.ErrServerClosed
	if err == nil {
		logger.Info("stopped")
		return nil
	}
	// Out of time: cancel the stragglers' contexts, drop their connections,
	// and give them a moment to notice before the caller closes the node.
	cancelBase()
	_ = srv.Close()
	if !running.wait(5 * time.Second) {
		logger.Error("requests still running after shutdown")
	}
	return fmt.Errorf("shutdown: in-flight requests did not finish within %s: %w", shutdownTimeout, err)
}
