package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// dialTimeout bounds the health check Dial makes.
const dialTimeout = 2 * time.Second

// Dial returns a client for the server running on home, or (nil, nil) when none runs
// (no serve.json, or its address does not answer GET /healthz within 2 s).
//
// serve.json says how to reach the server: its address (a server listening
// on all interfaces is reached on loopback), whether it speaks TLS (its
// certificate is then pinned by the SHA-256 serve.json records) and
// whether it needs the token, which Dial reads from <home>/token.
//
// A serve.json that cannot be parsed is treated as stale: the store's own
// lock still keeps a second process from opening it. An error means
// serve.json exists but cannot be read, names an address that is not this
// machine's, the token cannot be read, or ctx ended.
func Dial(ctx context.Context, home string) (*Client, error) {
	path := filepath.Join(home, serveFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var info serveInfo
	if err := json.Unmarshal(b, &info); err != nil || info.Addr == "" {
		return nil, nil
	}
	addr, err := localAddr(info.Addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var opts ClientOptions
	scheme := "http://"
	if info.TLS {
		if info.CertSHA256 == "" {
			return nil, fmt.Errorf("%s: TLS without the certificate's sha256", path)
		}
		scheme, opts.CertSHA256 = "https://", info.CertSHA256
	}
	c := NewClientWith(scheme+addr, opts)
	ok, err := c.healthy(ctx)
	if err != nil {
		return nil, err
	}
	if !ok {
		c.Close()
		return nil, nil
	}
	if info.Token {
		tok, err := readToken(TokenPath(home))
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("the server on %s requires the API token: %w", home, err)
		}
		c.token = tok
	}
	return c, nil
}

// ServeInfo is what <home>/serve.json says of the server running there.
type ServeInfo struct {
	Addr string // the address it listens on
	PID  int    // its process
}

// ReadServeInfo reads <home>/serve.json: nil, nil when there is none or it
// cannot be parsed (a stale file is no server; see Dial). The server may
// have died since it wrote the file: the caller checks its process.
func ReadServeInfo(home string) (*ServeInfo, error) {
	path := filepath.Join(home, serveFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var info serveInfo
	if err := json.Unmarshal(b, &info); err != nil || info.Addr == "" {
		return nil, nil
	}
	return &ServeInfo{Addr: info.Addr, PID: info.PID}, nil
}

// localAddr turns the address a server bound into one to connect to:
// loopback stays, an unspecified address (0.0.0.0, ::) becomes loopback, an
// address of one of this machine's interfaces stays; anything else is an
// error (cordon only talks to a local server through serve.json).
func localAddr(addr string) (string, error) {
	h, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", addr, err)
	}
	if strings.EqualFold(h, "localhost") {
		return addr, nil
	}
	ip := net.ParseIP(h)
	switch {
	case ip == nil:
		return "", fmt.Errorf("address %q is not an IP address", addr)
	case ip.IsLoopback():
		return addr, nil
	case ip.IsUnspecified():
		if ip.To4() != nil {
			return net.JoinHostPort("127.0.0.1", port), nil
		}
		return net.JoinHostPort("::1", port), nil
	}
	ifs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range ifs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return addr, nil
			}
		}
	}
	return "", fmt.Errorf("%s is not an address of this machine; cordon only talks to a local server", addr)
}

// healthy reports whether the server answers GET /healthz with "ok" within
// dialTimeout. It returns an error only when ctx itself ended.
func (c *Client) healthy(ctx context.Context) (bool, error) {
	hctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(hctx, http.MethodGet, c.base+"/healthz", nil)
	if err != nil {
		return false, nil
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64))
	if err != nil {
		return false, nil
	}
	return resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "ok", nil
}
