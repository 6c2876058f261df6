package api

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
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

	"github.com/cordon-dev/cordon/internal/homedir"
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
// The token is sent only to a server that has proved it knows it: Dial's
// GET /healthz carries a random challenge, and the server answers with an
// HMAC of it, keyed by the token's SHA-256 and bound to the address
// serve.json names (healthProof). A serve.json left by a server that died
// names a port any local user may bind since; a server there that cannot
// prove it is no server (nil, nil), and the token stays here.
//
// A serve.json that cannot be parsed is treated as stale: the store's own
// lock still keeps a second process from opening it. An error means
// serve.json exists but cannot be read, names an address that is not this
// machine's, the token cannot be read, or ctx ended.
func Dial(ctx context.Context, home string) (*Client, error) {
	path := filepath.Join(home, serveFile)
	b, err := homedir.ReadFile(path, homedir.File)
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
	var tok string
	if info.Token {
		if tok, err = readToken(TokenPath(home)); err != nil {
			return nil, fmt.Errorf("the server on %s requires the API token: %w", home, err)
		}
	}
	c := NewClientWith(scheme+addr, opts)
	var challenge, want string
	if tok != "" {
		var nonce [32]byte
		if _, err := rand.Read(nonce[:]); err != nil {
			c.Close()
			return nil, fmt.Errorf("health check challenge: %w", err)
		}
		key := sha256.Sum256([]byte(tok))
		challenge = hex.EncodeToString(nonce[:])
		want = healthProof(key[:], info.Addr, challenge)
	}
	ok, err := c.healthy(ctx, challenge, want)
	if err != nil {
		c.Close()
		return nil, err
	}
	if !ok {
		c.Close()
		return nil, nil
	}
	c.token = tok
	return c, nil
}

// The /healthz challenge and its answer (Dial).
const (
	challengeHeader = "Cordon-Challenge"
	proofHeader     = "Cordon-Proof"
)

// validNonce reports whether a challenge is what Dial sends: 32 bytes, in
// hex.
func validNonce(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32
}

// healthProof is the answer to a /healthz challenge: HMAC-SHA256 keyed by
// the token's SHA-256, over the address the server listens on (as
// serve.json names it) and the challenge. Binding the address keeps a
// server on another port from relaying the real server's answer.
func healthProof(tokenSum []byte, addr, nonce string) string {
	m := hmac.New(sha256.New, tokenSum)
	m.Write([]byte("cordon healthz v1\x00" + addr + "\x00" + nonce))
	return hex.EncodeToString(m.Sum(nil))
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
	b, err := homedir.ReadFile(path, homedir.File)
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
// dialTimeout and, when challenge is not "", the Cordon-Proof want. It
// returns an error only when ctx itself ended.
func (c *Client) healthy(ctx context.Context, challenge, want string) (bool, error) {
	hctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(hctx, http.MethodGet, c.base+"/healthz", nil)
	if err != nil {
		return false, nil
	}
	if challenge != "" {
		req.Header.Set(challengeHeader, challenge)
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
	if challenge != "" && !hmac.Equal([]byte(resp.Header.Get(proofHeader)), []byte(want)) {
		return false, nil
	}
	return resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "ok", nil
}
