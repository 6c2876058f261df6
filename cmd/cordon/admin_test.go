package main

import (
	"encoding/base64"
	"io"
	"net/http"
	"os"
	osexec "os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/api"
)

// The real binary with its defaults: a web page's install (cross-origin,
// text/plain, no token), a DNS-rebound page's request and a local process
// without the token are all refused; the token the first start generated
// (0600) is what cordon's own commands use, and they work.
func TestServeAdminDefaults(t *testing.T) {
	bin := cordonBinary(t)
	home := t.TempDir()
	s := startServe(t, bin, home)
	fi, err := os.Stat(api.TokenPath(home))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	wasm := counterWasm(t)
	body := `{"wasm":"` + base64.StdEncoding.EncodeToString(wasm) + `","arg":"RElETAAA"}`
	post := func(h map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+s.addr+"/api/v1/install", strings.NewReader(body))
		for k, v := range h {
			if k == "Host" {
				req.Host = v
			} else {
				req.Header.Set(k, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, b := post(map[string]string{"Origin": "https://evil.example", "Content-Type": "text/plain"}); code != 403 {
		t.Errorf("a page's form post: %d %s", code, b)
	}
	if code, b := post(map[string]string{"Host": "evil.example", "Content-Type": "application/json"}); code != 403 {
		t.Errorf("a rebound page's request: %d %s", code, b)
	}
	if code, b := post(map[string]string{"Content-Type": "application/json"}); code != 401 {
		t.Errorf("no token: %d %s", code, b)
	}
	tok, _ := os.ReadFile(api.TokenPath(home))
	if code, b := post(map[string]string{"Content-Type": "text/plain", "Authorization": "Bearer " + strings.TrimSpace(string(tok))}); code != 415 {
		t.Errorf("text/plain with the token: %d %s", code, b)
	}
	out, err := runCordon(bin, "--home", home, "status", "--output", "json")
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("status after the refused installs: %q %v", out, err)
	}
	if out, err := runCordon(bin, "--home", home, "install", counterPath); err != nil {
		t.Fatalf("cordon install through the server: %v %s", err, out)
	}
	// The server logs a request after answering it: wait for the line.
	through := func() bool {
		return strings.Contains(s.stderr.String(), `"path":"/api/v1/install"`) || strings.Contains(s.stderr.String(), "path=/api/v1/install status=200")
	}
	for deadline := time.Now().Add(30 * time.Second); !through(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the install did not go through the server:\n%s", s.stderr)
		}
	}
}

func runCordon(bin string, args ...string) (string, error) {
	out, err := osexec.Command(bin, args...).CombinedOutput()
	return string(out), err
}
