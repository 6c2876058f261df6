package api

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/ichttp"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// icp-cli, the IC's command line (npm @icp-sdk/icp-cli-linux-x64: a Rust
// binary on ic-agent), is pinned: the test is about this client.
const icpCLIVersion = "1.5.0"

// icpCLI runs icp with a home of its own, telemetry and the update check
// off (they would reach beyond this machine), against url.
type icpCLI struct {
	t        *testing.T
	bin, url string
	env      []string
}

func (c *icpCLI) run(ctx context.Context, args ...string) (stdout string, err error) {
	c.t.Helper()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = c.env
	cmd.Dir = c.t.TempDir()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), errors.New(errOut.String())
	}
	return out.String(), nil
}

// call runs `icp canister call` and returns the reply as Candid text.
func (c *icpCLI) call(ctx context.Context, rootKey string, args ...string) (string, error) {
	c.t.Helper()
	out, err := c.run(ctx, append(append([]string{"canister", "call"}, args...), "-n", c.url, "-k", rootKey, "--json")...)
	if err != nil {
		return "", err
	}
	var r struct {
		ResponseCandid string `json:"response_candid"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		c.t.Fatalf("icp canister call %v: output %q: %v", args, out, err)
	}
	return r.ResponseCandid, nil
}

// TestICPCLI: `icp canister call` against cordon serve, with the root key
// fetched (-k fetch) and the node's query signatures verified, anonymous
// and with an imported Ed25519 identity: queries, a reject, updates, and a
// root key that is not the node's refused.
func TestICPCLI(t *testing.T) {
	_, npm := nodeTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := npmInstall(ctx, t, npm, "@icp-sdk/icp-cli-linux-x64@"+icpCLIVersion)
	bin := filepath.Join(dir, "node_modules", "@icp-sdk", "icp-cli-linux-x64", "bin", "icp")
	// icp-cli cannot send the bearer token: a loopback server without it.
	s := serveWith(t, func(o *ServeOptions) { o.AllowNoToken = true })
	home := t.TempDir()
	env := append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "XDG_DATA_HOME="+filepath.Join(home, ".local", "share"),
		"DO_NOT_TRACK=1", "ICP_TELEMETRY_DISABLED=1")
	icp := &icpCLI{t: t, bin: bin, url: s.base, env: env}
	for _, set := range [][]string{{"telemetry", "false"}, {"update-check", "false"}} {
		if _, err := icp.run(ctx, append([]string{"settings"}, set...)...); err != nil {
			t.Fatalf("icp settings %v: %v", set, err)
		}
	}
	if out, err := icp.run(ctx, "--version"); err != nil || !strings.Contains(out, icpCLIVersion) {
		t.Fatalf("icp --version: %q %v", out, err)
	}
	// An Ed25519 identity made here, imported as a PEM: icp must derive
	// the principal cordon derives.
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pemFile := filepath.Join(t.TempDir(), "ed.pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := icp.run(ctx, "identity", "import", "ed", "--from-pem", pemFile, "--storage", "plaintext"); err != nil {
		t.Fatalf("icp identity import: %v", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	edPrincipal := principal.SelfAuthenticating(spki)
	if out, err := icp.run(ctx, "identity", "principal", "--identity", "ed"); err != nil || strings.TrimSpace(out) != edPrincipal.String() {
		t.Fatalf("icp identity principal: %q %v, cordon derives %s", out, err, edPrincipal)
	}

	inst, err := s.client.Install(ctx, InstallRequest{Wasm: counterWasm(t), Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	did, err := filepath.Abs(filepath.Join(filepath.Dir(wasmPath), "counter.did"))
	if err != nil {
		t.Fatal(err)
	}
	get := func(identity string) string {
		t.Helper()
		args := []string{inst.ID, "get", "()", "--query", "--candid", did}
		if identity != "" {
			args = append(args, "--identity", identity)
		}
		out, err := icp.call(ctx, "fetch", args...)
		if err != nil {
			t.Fatalf("icp query get (identity %q): %v", identity, err)
		}
		return out
	}
	if got := get(""); got != "(0 : nat)" {
		t.Fatalf("anonymous query get: %q", got)
	}
	if _, err := icp.call(ctx, "fetch", inst.ID, "nope", "()", "--query"); err == nil || !strings.Contains(err.Error(), "has no query method 'nope'") {
		t.Fatalf("a query of a missing method: %v", err)
	}
	// A root key other than the node's: icp must refuse what cordon
	// signed (the node key's delegation is certified by the root key).
	other, err := ichttp.LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if out, err := icp.call(ctx, hex.EncodeToString(other.DER()), inst.ID, "get", "()", "--query", "--candid", did); err == nil {
		t.Fatalf("icp with another root key accepted cordon's query response: %q", out)
	} else {
		t.Logf("icp with another root key: %s", firstLine(err.Error()))
	}

	// Updates: icp-cli 1.5.0 (ic-agent) sends them to /api/v4/.../call
	// only, and must work end to end, anonymously and signed.
	for i, identity := range []string{"", "ed"} {
		args := []string{inst.ID, "inc", "()", "--candid", did}
		if identity != "" {
			args = append(args, "--identity", identity)
		}
		out, err := icp.call(ctx, "fetch", args...)
		if want := []string{"(1 : nat)", "(2 : nat)"}[i]; err != nil || out != want {
			t.Fatalf("icp update inc (identity %q): %q %v, want %s", identity, out, err, want)
		}
	}
	if got := get("ed"); got != "(2 : nat)" {
		t.Fatalf("Ed25519 query get after two updates: %q", got)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}
