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
// A serve.json that cannot be parsed is treated as stale: the store's own
// lock still keeps a second process from opening it. An error means
// serve.json exists but cannot be read, names a non-loopback address, or
// ctx ended.
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
	host, _, err := net.SplitHostPort(info.Addr)
	if err != nil {
		return nil, nil
	}
	if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && !strings.EqualFold(host, "localhost") {
		return nil, fmt.Errorf("%s names %s, which is not a loopback address; cordon only talks to a local server", path, info.Addr)
	}
	c := NewClient("http://" + info.Addr)
	ok, err := c.healthy(ctx)
	if err != nil {
		return nil, err
	}
	if !ok {
		c.Close()
		return nil, nil
	}
	return c, nil
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
