package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/store"
)

// Client is a Backend that talks to a running `cordon serve` over HTTP.
// Errors a server answers with a reject code come back as *host.Reject, so
// errors.As works as it does with Local; other server errors come back as
// plain errors carrying the server's message.
type Client struct {
	base      string
	token     string
	http      *http.Client
	transport *http.Transport
}

var _ Backend = (*Client)(nil)

// ClientOptions configure a Client.
type ClientOptions struct {
	// Token is sent as "Authorization: Bearer TOKEN" ("" = none).
	Token string
	// CertSHA256 pins the server's TLS certificate (hex SHA-256 of its DER
	// encoding): the connection is accepted when the certificate the
	// server presents is exactly that one, whatever names it carries.
	// "" verifies the certificate against the system's roots.
	CertSHA256 string
}

// NewClient returns a client for the server at baseURL (e.g.
// "http://127.0.0.1:8080"). Requests have no timeout of their own: an
// install or a long update is bounded by the caller's context.
func NewClient(baseURL string) *Client { return NewClientWith(baseURL, ClientOptions{}) }

// NewClientWith is NewClient with a token and TLS pinning.
func NewClientWith(baseURL string, o ClientOptions) *Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil // the server is local: never go through a proxy
	t.MaxIdleConnsPerHost = 64
	if o.CertSHA256 != "" {
		want := strings.ToLower(o.CertSHA256)
		t.TLSClientConfig = &tls.Config{
			MinVersion: tls.VersionTLS12,
			// The certificate is checked below, by its hash, instead of
			// by name and chain: serve.json pins it.
			InsecureSkipVerify: true,
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				if len(raw) == 0 {
					return errors.New("the server presented no certificate")
				}
				sum := sha256.Sum256(raw[0])
				if hex.EncodeToString(sum[:]) != want {
					return fmt.Errorf("the server's certificate (sha256 %x) is not the one serve.json names (%s)", sum, want)
				}
				return nil
			},
		}
	}
	return &Client{
		base:      strings.TrimRight(baseURL, "/"),
		token:     o.Token,
		http:      &http.Client{Transport: t},
		transport: t,
	}
}

// BaseURL is the server's address.
func (c *Client) BaseURL() string { return c.base }

// Close implements Backend. It does not stop the server; it only releases
// idle connections, and the client stays usable.
func (c *Client) Close() error {
	c.transport.CloseIdleConnections()
	return nil
}

// do sends a request with an optional JSON body and decodes a JSON answer
// into out (when out is not nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		limit := int64(maxBody)
		if path == "/api/v1/install" {
			limit = maxInstallBody
		}
		if int64(len(b)) > limit {
			return fmt.Errorf("request too large: %d bytes encoded, the server accepts at most %d (%d MiB) on %s",
				len(b), limit, limit>>20, path)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("cordon server request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	c.authorize(req)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return fmt.Errorf("cordon server at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("cordon server at %s: decode response to %s %s: %w", c.base, method, path, err)
	}
	return nil
}

// decodeError turns an error response back into an error: a *host.Reject
// when it has a reject code, otherwise a plain error with the message.
func decodeError(resp *http.Response) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("cordon server: %s (reading the error: %v)", resp.Status, err)
	}
	var eb struct {
		Error      *string `json:"error"`
		RejectCode uint32  `json:"reject_code"`
	}
	if json.Unmarshal(b, &eb) != nil || eb.Error == nil {
		msg := strings.TrimSpace(string(b))
		if msg == "" {
			return fmt.Errorf("cordon server: %s", resp.Status)
		}
		return fmt.Errorf("cordon server: %s: %s", resp.Status, msg)
	}
	if eb.RejectCode != 0 {
		return &host.Reject{Code: host.RejectCode(eb.RejectCode), Message: *eb.Error}
	}
	return errors.New(*eb.Error)
}

func canisterPath(id string, rest ...string) string {
	return "/api/v1/canisters/" + url.PathEscape(id) + strings.Join(rest, "")
}

// Install implements Backend.
func (c *Client) Install(ctx context.Context, req InstallRequest) (*InstallResponse, error) {
	var resp InstallResponse
	if err := c.do(ctx, http.MethodPost, "/api/v1/install", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Call implements Backend.
func (c *Client) Call(ctx context.Context, req CallRequest) (*CallResponse, error) {
	if _, err := parseID(req.ID); err != nil {
		return nil, err
	}
	var resp CallResponse
	if err := c.do(ctx, http.MethodPost, "/api/v1/call", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Status implements Backend.
func (c *Client) Status(ctx context.Context, id string) (*host.Status, error) {
	if _, err := parseID(id); err != nil {
		return nil, err
	}
	var sb statusBody
	if err := c.do(ctx, http.MethodGet, canisterPath(id), nil, &sb); err != nil {
		return nil, err
	}
	return fromStatusBody(sb), nil
}

func fromStatusBody(sb statusBody) *host.Status {
	s := sb.Status
	if s == nil {
		s = &host.Status{}
	}
	s.CandidService = sb.CandidService
	return s
}

// List implements Backend.
func (c *Client) List(ctx context.Context) ([]*host.Status, error) {
	var sbs []statusBody
	if err := c.do(ctx, http.MethodGet, "/api/v1/canisters", nil, &sbs); err != nil {
		return nil, err
	}
	out := make([]*host.Status, len(sbs))
	for i, sb := range sbs {
		out[i] = fromStatusBody(sb)
	}
	return out, nil
}

// Logs implements Backend.
func (c *Client) Logs(ctx context.Context, id string) ([]store.LogEntry, error) {
	if _, err := parseID(id); err != nil {
		return nil, err
	}
	var es []store.LogEntry
	if err := c.do(ctx, http.MethodGet, canisterPath(id, "/logs"), nil, &es); err != nil {
		return nil, err
	}
	return es, nil
}

// SetStatus implements Backend.
func (c *Client) SetStatus(ctx context.Context, id, caller, status string) error {
	if _, err := parseID(id); err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, canisterPath(id, "/status"), setStatusBody{Caller: caller, Status: status}, nil)
}

// Delete implements Backend: the server stops the canister first, as
// Local.Delete does.
func (c *Client) Delete(ctx context.Context, id, caller string) error {
	if _, err := parseID(id); err != nil {
		return err
	}
	path := canisterPath(id)
	if caller != "" {
		path += "?" + url.Values{"caller": {caller}}.Encode()
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

func (c *Client) authorize(req *http.Request) {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
}

// Sandboxes lists the server's live sandbox processes (empty in-process).
func (c *Client) Sandboxes(ctx context.Context) ([]metrics.SandboxInfo, error) {
	var out []metrics.SandboxInfo
	if err := c.do(ctx, http.MethodGet, "/api/v1/sandboxes", nil, &out); err != nil {
		return nil, err
	}
	if out == nil {
		out = []metrics.SandboxInfo{}
	}
	return out, nil
}

// ErrStreamEnded is returned by FollowLogs when the server ended the stream
// (it is shutting down); following again later continues where it stopped.
var ErrStreamEnded = errors.New("the server ended the log stream")

// maxLogLine bounds one line of a log stream (a debug_print line is at most
// 16 KiB, which JSON escaping can grow sixfold).
const maxLogLine = 1 << 20

// FollowLogs streams a canister's debug_print lines with sequence numbers
// from since on: first those kept, then each new one as it is printed.
// fn is called for each; an error from fn stops the stream and is
// returned. FollowLogs returns when ctx ends (ctx.Err()), when the
// canister is deleted (a *host.Reject), or when the server ends the stream
// (ErrStreamEnded).
func (c *Client) FollowLogs(ctx context.Context, id string, since uint64, fn func(store.LogEntry) error) error {
	if _, err := parseID(id); err != nil {
		return err
	}
	path := canisterPath(id, "/logs") + "?" + url.Values{"follow": {"1"}, "since": {strconv.FormatUint(since, 10)}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/x-ndjson")
	c.authorize(req)
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("cordon server at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxLogLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue // keepalive
		}
		var l struct {
			store.LogEntry
			Error      *string `json:"error"`
			RejectCode uint32  `json:"reject_code"`
		}
		if err := json.Unmarshal(line, &l); err != nil {
			return fmt.Errorf("cordon server at %s: malformed log line: %w", c.base, err)
		}
		if l.Error != nil {
			if l.RejectCode != 0 {
				return &host.Reject{Code: host.RejectCode(l.RejectCode), Message: *l.Error}
			}
			return errors.New(*l.Error)
		}
		if err := fn(l.LogEntry); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: %v", ErrStreamEnded, err)
	}
	return ErrStreamEnded
}
