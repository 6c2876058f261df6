package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/internal/homedir"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/ichttp"
	"github.com/cordon-dev/cordon/internal/metrics"
)

// ServeOptions configure Serve. Zero values take the defaults.
type ServeOptions struct {
	Listen  string // host:port; port 0 picks a free port
	Home    string // where serve.json and the token are kept
	Logger  *slog.Logger
	Metrics *metrics.Metrics // served on /metrics; nil: /metrics answers 404

	// TLS: both files (PEM) or neither.
	TLSCert, TLSKey string
	// AllowNoToken serves a loopback address without the bearer token
	// (server.require_token = false). By default every listener requires
	// it, and any other address always does: on loopback, every local
	// user and every web page the browser shows can reach the port.
	AllowNoToken bool
	// AllowedHosts are the host names, besides IP addresses, localhost and
	// the TLS certificate's names, that a request's Host may carry
	// (server.allowed_hosts): any other name is refused, so that a web
	// page cannot reach the API through DNS rebinding.
	AllowedHosts []string
	// TokenOut is where a newly generated token is printed, once (nil:
	// os.Stderr).
	TokenOut io.Writer

	RequestTimeout  time.Duration // longest an API request may run (DefaultRequestTimeout)
	ShutdownTimeout time.Duration // how long shutdown waits for requests in flight (DefaultShutdownTimeout)
	MaxRequests     int           // API requests handled at once; more get 503 (DefaultMaxRequests)
	MaxInstalls     int           // installs handled at once; more get 503 (DefaultMaxInstalls)

	// A slow client holds a connection and a request slot: the headers
	// must arrive within ReadHeaderTimeout, a body (of the JSON API and of
	// the IC HTTP interface alike) within BodyTimeout plus its size at
	// MinBodyRate bytes a second, and at most MaxConns connections are
	// open at once (see limitConns for what happens at the limit).
	ReadHeaderTimeout time.Duration // DefaultReadHeaderTimeout
	BodyTimeout       time.Duration // DefaultBodyTimeout
	MinBodyRate       int64         // DefaultMinBodyRate
	MaxConns          int           // DefaultMaxConns

	// testLimiter, set by tests, is given the connection limiter.
	testLimiter func(*connLimiter)

	// IC serves the IC HTTP interface (/api/v2/..., internal/ichttp)
	// behind the same checks as the rest of the API. Serve makes one with
	// the root key in Home when it is nil.
	IC http.Handler
}

func (o *ServeOptions) defaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.TokenOut == nil {
		o.TokenOut = os.Stderr
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.MaxRequests <= 0 {
		o.MaxRequests = DefaultMaxRequests
	}
	if o.MaxInstalls <= 0 {
		o.MaxInstalls = DefaultMaxInstalls
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if o.BodyTimeout <= 0 {
		o.BodyTimeout = DefaultBodyTimeout
	}
	if o.MinBodyRate <= 0 {
		o.MinBodyRate = DefaultMinBodyRate
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
}

// serveInfo is the content of <home>/serve.json: how a command on the
// same home reaches the server.
type serveInfo struct {
	Addr       string `json:"addr"`
	PID        int    `json:"pid"`
	TLS        bool   `json:"tls,omitempty"`
	CertSHA256 string `json:"cert_sha256,omitempty"` // the server's certificate, pinned by Dial
	Token      bool   `json:"token,omitempty"`       // requests need <home>/token
}

const (
	serveFile = "serve.json"
	tokenFile = "token"
)

// TokenPath is where the API token of a home is kept.
func TokenPath(home string) string { return filepath.Join(home, tokenFile) }

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
	b, err := homedir.ReadFile(path, homedir.File)
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

// RemoveStaleServeFile removes <home>/serve.json for a caller that holds
// the home's store: no server runs on the home then (a server holds the
// store while it runs), so the file was left by one that was killed, and
// names a port any local user may bind since.
func RemoveStaleServeFile(home string) error {
	if err := os.Remove(filepath.Join(home, serveFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", serveFile, err)
	}
	return nil
}

// loadOrCreateToken reads <home>/token, or creates it (32 random bytes,
// base64url, mode 0600; durably, complete or not at all:
// homedir.ReadOrCreateSecret) when it does not exist. A token file that
// others can read is refused.
func loadOrCreateToken(home string) (token string, created bool, err error) {
	path := TokenPath(home)
	b, created, err := homedir.ReadOrCreateSecret(home, tokenFile, func() ([]byte, error) {
		var raw [32]byte
		if _, err := rand.Read(raw[:]); err != nil {
			return nil, fmt.Errorf("generate API token: %w", err)
		}
		return []byte(base64.RawURLEncoding.EncodeToString(raw[:]) + "\n"), nil
	})
	if err != nil {
		return "", false, fmt.Errorf("API token: %w", err)
	}
	token, err = parseToken(path, b)
	return token, created, err
}

// readToken reads a token file, refusing one that is not the user's own
// or that group or others may read (homedir.ReadFile).
func readToken(path string) (string, error) {
	b, err := homedir.ReadFile(path, homedir.Secret)
	if err != nil {
		return "", err
	}
	return parseToken(path, b)
}

// parseToken is the token a token file at path holds.
func parseToken(path string, b []byte) (string, error) {
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("API token %s is malformed: delete it and restart cordon serve to generate a new one", path)
	}
	return tok, nil
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

// Serve runs node's API until ctx is done.
//
// Every request but /healthz and /readyz needs `Authorization: Bearer
// TOKEN`; the token is read from <home>/token, or generated there (mode
// 0600) and printed once to TokenOut. Only on a loopback address
// (127.0.0.0/8, ::1), and only with AllowNoToken, is it not needed. Every
// request, the probes too, is refused (403) when it comes from a web page
// (it has an Origin header, or Sec-Fetch-Site other than "none") or names a
// host that is not this server's (see AllowedHosts). With TLSCert and
// TLSKey the server speaks HTTPS.
//
// The address actually bound is written, with the process id, whether TLS
// and a token are in use, and the certificate's SHA-256, to
// <home>/serve.json (mode 0600), which is how Dial finds the server.
//
// When ctx is done, the server shuts down gracefully: /readyz turns 503,
// serve.json is removed, new requests are refused with 503 (and new
// connections not accepted), log streams end, and requests in flight
// finish, within ShutdownTimeout. The server shuts down the same way when
// the node's store fails (host.Node.WritesStopped), and Serve then returns
// an error wrapping host.ErrWritesStopped. Serve returns nil after a clean
// shutdown;
// then no handler uses node any more, so the caller may Quiesce and close
// it. If requests outlast the timeout, their contexts are cancelled, their
// connections closed, and Serve returns an error after waiting up to 5 s
// more for them.
func Serve(ctx context.Context, node *host.Node, opts ServeOptions) error {
	opts.defaults()
	logger := opts.Logger
	if node == nil {
		return errors.New("serve: no node")
	}
	lhost, _, err := net.SplitHostPort(opts.Listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w (want host:port, e.g. 127.0.0.1:4943)", opts.Listen, err)
	}
	// An IPv4 address binds IPv4 only (Go's "tcp" would make 0.0.0.0 a
	// dual-stack socket, exposing IPv6 too).
	network := "tcp"
	if ip := net.ParseIP(lhost); ip != nil && ip.To4() != nil {
		network = "tcp4"
	} else if ip != nil {
		network = "tcp6"
	}
	if (opts.TLSCert == "") != (opts.TLSKey == "") {
		return errors.New("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
	}
	var tlsConfig *tls.Config
	var certSum string
	if opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			return fmt.Errorf("load TLS certificate: %w", err)
		}
		sum := sha256.Sum256(cert.Certificate[0])
		certSum = hex.EncodeToString(sum[:])
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		// The names the certificate is for are this server's names.
		if leaf, err := x509.ParseCertificate(cert.Certificate[0]); err == nil {
			opts.AllowedHosts = append(slices.Clone(opts.AllowedHosts), leaf.DNSNames...)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, network, opts.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", opts.Listen, err)
	}
	// What was bound decides, not what was asked ("localhost" could
	// resolve to anything).
	ta, ok := ln.Addr().(*net.TCPAddr)
	loopback := ok && ta.IP.IsLoopback()
	token := ""
	if !opts.AllowNoToken || !loopback {
		tok, created, err := loadOrCreateToken(opts.Home)
		if err != nil {
			ln.Close()
			return err
		}
		token = tok
		if created {
			fmt.Fprintf(opts.TokenOut, "cordon serve: generated an API token; clients send it as 'Authorization: Bearer TOKEN'.\n"+
				"It is stored in %s (mode 0600) and printed only this once:\n\n    %s\n\n", TokenPath(opts.Home), tok)
		}
		if !loopback {
			logger.Warn("listening on a non-loopback address: every request needs the API token", "addr", ln.Addr().String(),
				"tls", tlsConfig != nil)
			if tlsConfig == nil {
				logger.Warn("without TLS the token and all traffic cross the network in clear text; use --tls-cert and --tls-key")
			}
		}
	} else {
		logger.Warn("serving without a token (server.require_token = false): every local user and process can install and call canisters", "addr", ln.Addr().String())
	}
	limiter := limitConns(ln, opts.MaxConns, token == "")
	ln = limiter
	if opts.testLimiter != nil {
		opts.testLimiter(limiter)
	}
	info := serveInfo{Addr: ln.Addr().String(), PID: os.Getpid(), TLS: tlsConfig != nil, CertSHA256: certSum, Token: token != ""}

	if opts.IC == nil {
		key, err := ichttp.LoadOrCreateRootKey(opts.Home)
		if err != nil {
			ln.Close()
			return fmt.Errorf("IC HTTP interface: %w", err)
		}
		nodeKey, err := ichttp.LoadOrCreateNodeKey(opts.Home)
		if err != nil {
			ln.Close()
			return fmt.Errorf("IC HTTP interface: %w", err)
		}
		opts.IC = ichttp.New(node, key, nodeKey, logger)
	}
	s := newServer(node, opts, token)
	s.addr = info.Addr
	// Handlers get a context that stays alive through a graceful shutdown
	// and is cancelled only if the shutdown runs out of time.
	baseCtx, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	var running inflight
	srv := &http.Server{
		Handler:           running.wrap(s.handler()),
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      opts.RequestTimeout + time.Minute,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		TLSConfig:         tlsConfig,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ConnContext:       limiter.connContext,
		ConnState:         limiter.connState,
	}

	if err := writeServeFile(opts.Home, info); err != nil {
		ln.Close()
		return err
	}
	defer func() {
		if err := removeServeFile(opts.Home, info); err != nil {
			logger.Warn("could not remove serve.json", "error", err)
		}
	}()

	serveErr := make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			serveErr <- srv.ServeTLS(ln, "", "")
		} else {
			serveErr <- srv.Serve(ln)
		}
	}()
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
	}
	logger.Info("serving", "addr", scheme+"://"+info.Addr, "pid", info.PID, "home", opts.Home, "token", info.Token)

	var stopErr error
	select {
	case err := <-serveErr:
		// Serve only returns before Shutdown on a listener failure.
		return fmt.Errorf("serve on %s: %w", info.Addr, err)
	case <-ctx.Done():
	case <-node.WritesStopped():
		// The store failed a commit whose outcome it cannot know and
		// takes no more writes: a node that only answers queries from
		// what it holds in memory helps nobody for long. Stop, so that a
		// supervisor (deploy/cordon.service: Restart=on-failure) starts
		// the node again, which reads what the disk holds.
		stopErr = fmt.Errorf("%w; stopped so that a restart reads what the disk holds", host.ErrWritesStopped)
		logger.Error("storage failure: a commit's last sync failed, its outcome is unknown, and the node stopped accepting writes; shutting down (exit status 1) so that a restart reads what the disk holds", "addr", info.Addr)
	}
	logger.Info("shutting down: finishing requests in flight", "addr", info.Addr, "timeout", opts.ShutdownTimeout)
	s.beginShutdown()
	// Remove serve.json first, so no new command picks this server up.
	if err := removeServeFile(opts.Home, info); err != nil {
		logger.Warn("could not remove serve.json", "error", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), opts.ShutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-serveErr // http.ErrServerClosed
	if err == nil {
		logger.Info("HTTP server stopped")
		return stopErr
	}
	// Out of time: cancel the stragglers' contexts, drop their connections,
	// and give them a moment to notice before the caller closes the node.
	cancelBase()
	_ = srv.Close()
	if !running.wait(5 * time.Second) {
		logger.Error("requests still running after shutdown")
	}
	return errors.Join(stopErr, fmt.Errorf("shutdown: in-flight requests did not finish within %s: %w", opts.ShutdownTimeout, err))
}

// limitConns bounds the connections open at once to max, so that clients
// holding connections cannot make the process run out of descriptors.
// Those within the limit are bounded in time by the server's header, body
// and idle timeouts; one that has carried no authenticated request is
// closed after untrustedIdleTimeout idle. At the limit, a new connection
// takes the place of one that is idle (between requests, or accepted and
// still silent): one that never carried an authenticated request first,
// the longest idle first. A connection with a request in flight is never
// closed for another; only when every one has, the new one is closed.
// trustAll (a server without a token) counts every connection as
// authenticated.
func limitConns(ln net.Listener, max int, trustAll bool) *connLimiter {
	return &connLimiter{Listener: ln, max: max, trustAll: trustAll, untrustedIdle: untrustedIdleTimeout,
		conns: make(map[*limitedConn]struct{}, max)}
}

// untrustedIdleTimeout is how long a connection that has carried no
// authenticated request is kept idle (a var for tests).
var untrustedIdleTimeout = 5 * time.Second

type connLimiter struct {
	net.Listener
	max           int
	trustAll      bool
	untrustedIdle time.Duration

	mu    sync.Mutex
	conns map[*limitedConn]struct{} // open connections
}

// limitedConn is a connection the limiter counts. Its fields but Conn and
// l are guarded by l.mu.
type limitedConn struct {
	net.Conn
	l *connLimiter

	state   http.ConnState
	since   time.Time // when it last became idle, or was accepted
	trusted bool      // it has carried an authenticated request
	gone    bool      // no longer counted (closed, or given up for another)
	idle    *time.Timer
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		lc := &limitedConn{Conn: c, l: l, state: http.StateNew, since: time.Now(), trusted: l.trustAll}
		l.mu.Lock()
		var victim *limitedConn
		if len(l.conns) >= l.max {
			if victim = l.evictableLocked(); victim != nil {
				l.dropLocked(victim)
			}
		}
		admit := len(l.conns) < l.max
		if admit {
			l.conns[lc] = struct{}{}
		}
		l.mu.Unlock()
		if victim != nil {
			// The server's goroutine for it fails its read and ends it.
			_ = victim.Conn.Close()
		}
		if admit {
			return lc, nil
		}
		_ = c.Close()
	}
}

// evictableLocked is the connection a new one may replace: an idle or
// silent one, untrusted before trusted, the longest idle first; nil if
// every connection has a request in flight. l.mu held.
func (l *connLimiter) evictableLocked() *limitedConn {
	var best *limitedConn
	for c := range l.conns {
		if c.state != http.StateIdle && c.state != http.StateNew {
			continue
		}
		if best == nil || (!c.trusted && best.trusted) ||
			(c.trusted == best.trusted && c.since.Before(best.since)) {
			best = c
		}
	}
	return best
}

// dropLocked stops counting c. l.mu held.
func (l *connLimiter) dropLocked(c *limitedConn) {
	if c.gone {
		return
	}
	c.gone = true
	if c.idle != nil {
		c.idle.Stop()
		c.idle = nil
	}
	delete(l.conns, c)
}

// connState is the server's ConnState hook: it follows which connections
// have a request in flight, and closes an untrusted connection idle for
// untrustedIdle.
func (l *connLimiter) connState(nc net.Conn, st http.ConnState) {
	c := asLimited(nc)
	if c == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.gone {
		return
	}
	c.state = st
	if c.idle != nil {
		c.idle.Stop()
		c.idle = nil
	}
	switch st {
	case http.StateIdle:
		c.since = time.Now()
		if !c.trusted && l.untrustedIdle > 0 {
			c.idle = time.AfterFunc(l.untrustedIdle, func() {
				l.mu.Lock()
				expired := !c.gone && c.state == http.StateIdle && !c.trusted
				l.mu.Unlock()
				if expired {
					_ = c.Close()
				}
			})
		}
	case http.StateClosed:
		l.dropLocked(c)
	}
}

// connContext is the server's ConnContext hook: a request's context
// carries its connection, which an authenticated request marks trusted.
func (l *connLimiter) connContext(ctx context.Context, nc net.Conn) context.Context {
	if c := asLimited(nc); c != nil {
		return context.WithValue(ctx, connKey{}, c)
	}
	return ctx
}

type connKey struct{}

// markAuthenticated records that the connection of a request's context
// carried an authenticated request: it keeps the server's idle timeout and
// is replaced last at the connection limit.
func markAuthenticated(ctx context.Context) {
	c, ok := ctx.Value(connKey{}).(*limitedConn)
	if !ok {
		return
	}
	c.l.mu.Lock()
	c.trusted = true
	c.l.mu.Unlock()
}

// asLimited finds the limiter's connection under a TLS one.
func asLimited(nc net.Conn) *limitedConn {
	for {
		switch c := nc.(type) {
		case *limitedConn:
			return c
		case interface{ NetConn() net.Conn }:
			nc = c.NetConn()
		default:
			return nil
		}
	}
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.l.mu.Lock()
	c.l.dropLocked(c)
	c.l.mu.Unlock()
	return err
}
