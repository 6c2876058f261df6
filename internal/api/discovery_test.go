package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestDialStaleServeFileKeepsToken: a serve.json left by a server killed
// with SIGKILL names a port another local user may bind since. A server
// there that answers "ok" to /healthz, or even relays the real server's
// answer to the challenge, never receives the token; the real server,
// found through its own serve.json, still does.
func TestDialStaleServeFileKeepsToken(t *testing.T) {
	real := serve(t)
	if real.token == "" {
		t.Fatal("the real server needs no token: nothing to protect")
	}
	ctx := context.Background()
	realInfo, err := os.ReadFile(filepath.Join(real.home, serveFile))
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var seen []string // every Authorization header the impostors received
	impostor := func(relay bool) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			if a := r.Header.Get("Authorization"); a != "" {
				seen = append(seen, a)
			}
			mu.Unlock()
			if r.URL.Path != "/healthz" {
				io.WriteString(w, `[]`)
				return
			}
			if relay {
				// Ask the real server to answer the challenge.
				req, _ := http.NewRequest(http.MethodGet, real.base+"/healthz", nil)
				req.Header = r.Header.Clone()
				if resp, err := http.DefaultClient.Do(req); err == nil {
					for k, v := range resp.Header {
						w.Header()[k] = v
					}
					resp.Body.Close()
				}
			}
			io.WriteString(w, "ok")
		}))
	}
	for _, relay := range []bool{false, true} {
		fake := impostor(relay)
		b, _ := json.Marshal(serveInfo{Addr: strings.TrimPrefix(fake.URL, "http://"), PID: os.Getpid(), Token: true})
		if err := os.WriteFile(filepath.Join(real.home, serveFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Dial(ctx, real.home)
		if c != nil {
			// What a command would do next with the client it got.
			_, _ = c.List(ctx)
			c.Close()
		}
		fake.Close()
		if c != nil || err != nil {
			t.Errorf("relay=%v: Dial accepted an impostor on the stale serve.json's port: %v %v", relay, c, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) > 0 {
		t.Fatalf("the impostors received the token: %q", seen)
	}

	// The real server proves itself.
	if err := os.WriteFile(filepath.Join(real.home, serveFile), realInfo, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Dial(ctx, real.home)
	if err != nil || c == nil {
		t.Fatalf("Dial of the real server: %v %v", c, err)
	}
	defer c.Close()
	if _, err := c.List(ctx); err != nil {
		t.Fatalf("List through the real server: %v", err)
	}
}

// TestHealthzProofNeedsChallenge: the server answers a challenge only in
// the form Dial sends, and only with the token's proof (never the token).
func TestHealthzProofNeedsChallenge(t *testing.T) {
	s := serve(t)
	for _, ch := range []string{"", "short", strings.Repeat("zz", 32)} {
		req, _ := http.NewRequest(http.MethodGet, s.base+"/healthz", nil)
		if ch != "" {
			req.Header.Set(challengeHeader, ch)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if p := resp.Header.Get(proofHeader); p != "" {
			t.Fatalf("challenge %q answered: %q", ch, p)
		}
	}
}
