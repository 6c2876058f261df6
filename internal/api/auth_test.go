package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the server's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestAuthOffOnLoopback: only when asked (server.require_token = false),
// a loopback listener needs no token and creates none.
func TestAuthOffOnLoopback(t *testing.T) {
	s := serveWith(t, func(o *ServeOptions) { o.AllowNoToken = true })
	code, _, b := rawRequest(t, nil, "GET", s.base+"/api/v1/canisters", nil, "")
	if code != 200 {
		t.Fatalf("no token on loopback: %d %s", code, b)
	}
	if _, err := os.Stat(TokenPath(s.home)); !os.IsNotExist(err) {
		t.Fatalf("token file created on loopback: %v", err)
	}
}

// TestAuthNonLoopback: listening on all interfaces generates a token
// (0600, printed once), every endpoint but the probes needs it, Dial reads
// it, and a restart reuses it without printing it again.
func TestAuthNonLoopback(t *testing.T) {
	out := &syncBuffer{}
	node, home := openNode(t)
	s := serveNode(t, node, home, func(o *ServeOptions) { o.Listen = "0.0.0.0:0"; o.TokenOut = out })
	if !strings.HasPrefix(s.base, "http://127.0.0.1:") {
		t.Fatalf("Dial reached %s, want loopback", s.base)
	}
	fi, err := os.Stat(TokenPath(home))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	tokBytes, _ := os.ReadFile(TokenPath(home))
	tok := strings.TrimSpace(string(tokBytes))
	if len(tok) < 40 || strings.Count(out.String(), tok) != 1 {
		t.Fatalf("token %q not printed exactly once:\n%s", tok, out)
	}
	var info serveInfo
	b, _ := os.ReadFile(filepath.Join(home, serveFile))
	if err := json.Unmarshal(b, &info); err != nil || !info.Token || !strings.HasPrefix(info.Addr, "0.0.0.0:") {
		t.Fatalf("serve.json %s", b)
	}

	// Every route but the probes refuses a missing or wrong token.
	for _, rt := range newServer(nil, ServeOptions{}, "").routes() {
		path := strings.ReplaceAll(rt.pattern, "{id}", "rwlgt-iiaaa-aaaaa-aaaaa-cai")
		for m := range rt.methods {
			for _, bad := range []string{"", "wrong-token-wrong-token-wrong-token"} {
				code, h, body := rawRequest(t, nil, m, s.base+path, nil, bad)
				if rt.open {
					if code != 200 {
						t.Errorf("%s %s without token: %d", m, path, code)
					}
					continue
				}
				if code != 401 || h.Get("WWW-Authenticate") == "" || !strings.Contains(string(body), "token") {
					t.Errorf("%s %s with token %q: %d %s", m, path, bad, code, body)
				}
			}
		}
	}
	// The right token works, on the API and on /metrics.
	if code, _, b := rawRequest(t, nil, "GET", s.base+"/api/v1/canisters", nil, tok); code != 200 {
		t.Fatalf("with token: %d %s", code, b)
	}
	scrape(t, s.base, tok)
	// So does the client Dial made.
	inst, err := s.client.Install(context.Background(), InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatalf("install through Dial's client: %v", err)
	}
	if _, err := s.client.Call(context.Background(), CallRequest{ID: inst.ID, Method: "inc", Arg: noArgs}); err != nil {
		t.Fatal(err)
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}

	// A restart reuses the token and does not print it.
	out2 := &syncBuffer{}
	s2 := serveNode(t, node, home, func(o *ServeOptions) { o.Listen = "0.0.0.0:0"; o.TokenOut = out2 })
	if out2.String() != "" {
		t.Fatalf("token printed again: %s", out2)
	}
	if code, _, _ := rawRequest(t, nil, "GET", s2.base+"/api/v1/canisters", nil, tok); code != 200 {
		t.Fatalf("old token after restart: %d", code)
	}
	if err := s2.stop(t); err != nil {
		t.Fatal(err)
	}

	// A token file others can read is refused.
	if err := os.Chmod(TokenPath(home), 0o644); err != nil {
		t.Fatal(err)
	}
	err = Serve(context.Background(), node, ServeOptions{Listen: "0.0.0.0:0", Home: home})
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Serve with a 0644 token: %v", err)
	}
	// And Dial refuses to use it.
	os.Chmod(TokenPath(home), 0o600)
}

// TestRequireTokenOnLoopback: by default the token is required on loopback
// too, generated at the first start (0600) and found by Dial.
func TestRequireTokenOnLoopback(t *testing.T) {
	out := &syncBuffer{}
	s := serveWith(t, func(o *ServeOptions) { o.TokenOut = out })
	if fi, err := os.Stat(TokenPath(s.home)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	if s.token == "" || !strings.Contains(out.String(), s.token) {
		t.Fatalf("Dial read token %q; printed:\n%s", s.token, out)
	}
	if code, _, _ := rawRequest(t, nil, "GET", s.base+"/api/v1/canisters", nil, ""); code != 401 {
		t.Fatalf("without token: %d", code)
	}
	if _, err := s.client.List(context.Background()); err != nil {
		t.Fatalf("Dial's client: %v", err)
	}
	if code, _, _ := rawRequest(t, nil, "GET", s.base+"/readyz", nil, ""); code != 200 {
		t.Fatalf("readyz: %d", code)
	}
}

// selfSigned writes a self-signed certificate for "cordon.test" (no IP
// SANs: the client pins it by hash, not by name).
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cordon.test"},
		DNSNames: []string{"cordon.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestTLS: with a certificate the server speaks HTTPS only; Dial pins the
// certificate serve.json names, and refuses another.
func TestTLS(t *testing.T) {
	certFile, keyFile := selfSigned(t, t.TempDir())
	s := serveWith(t, func(o *ServeOptions) { o.TLSCert, o.TLSKey = certFile, keyFile })
	if !strings.HasPrefix(s.base, "https://127.0.0.1:") {
		t.Fatalf("base %s", s.base)
	}
	inst, err := s.client.Install(context.Background(), InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatalf("install over TLS: %v", err)
	}
	if _, err := s.client.Call(context.Background(), CallRequest{ID: inst.ID, Method: "inc", Arg: noArgs}); err != nil {
		t.Fatal(err)
	}
	// Plain HTTP to the TLS port is refused.
	plain := "http://" + strings.TrimPrefix(s.base, "https://")
	resp, err := http.Get(plain + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP answered on the TLS port")
		}
	}
	// A client verifying against the system roots refuses the self-signed
	// certificate.
	if _, err := NewClient(s.base).List(context.Background()); err == nil {
		t.Fatal("unpinned client accepted a self-signed certificate")
	}
	// A different pinned hash is refused.
	bad := NewClientWith(s.base, ClientOptions{CertSHA256: strings.Repeat("00", 32)})
	if _, err := bad.List(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("wrong pin: %v", err)
	}
	// TLS 1.2 at least.
	conn, err := tls.Dial("tcp", strings.TrimPrefix(s.base, "https://"), &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11})
	if err == nil {
		conn.Close()
		t.Fatal("TLS 1.1 accepted")
	}
}

func TestLocalAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:80": "127.0.0.1:80", "[::1]:80": "[::1]:80", "localhost:80": "localhost:80",
		"0.0.0.0:80": "127.0.0.1:80", "[::]:80": "[::1]:80",
	} {
		if got, err := localAddr(in); err != nil || got != want {
			t.Errorf("localAddr(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"192.0.2.1:80", "example.com:80", "nonsense"} {
		if _, err := localAddr(in); err == nil {
			t.Errorf("localAddr(%s): no error", in)
		}
	}
	// An address of this machine's interfaces is accepted.
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
				in := net.JoinHostPort(n.IP.String(), "80")
				if got, err := localAddr(in); err != nil || got != in {
					t.Errorf("localAddr(%s) = %s, %v", in, got, err)
				}
				break
			}
		}
	}
}
