package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/api"
)

// The real binary: `cordon serve` exits 0 after a graceful shutdown on
// SIGTERM, and a second SIGTERM while requests are still in flight forces
// the exit with 143. State answered before either survives.

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

func cordonBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cordon-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "cordon")
		out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return binary
}

// counterPath is the counter canister of the shared corpus.
var counterPath = filepath.Join("..", "..", "..", "shared", "canisters", "counter.wasm")

// noArgs is Candid's empty argument list.
var noArgs = []byte("DIDL\x00\x00")

// counterWasm is the counter canister's module.
func counterWasm(t *testing.T) []byte {
	t.Helper()
	wasm, err := os.ReadFile(counterPath)
	if err != nil {
		t.Fatal(err)
	}
	return wasm
}

// serveInstalled starts `cordon serve` on home and installs wasm (no
// arguments) through a client of it, which it returns open.
func serveInstalled(t *testing.T, bin, home string, wasm []byte) (*server, *api.Client, *api.InstallResponse) {
	t.Helper()
	ctx := context.Background()
	s := startServe(t, bin, home)
	c, err := api.Dial(ctx, home)
	if err != nil || c == nil {
		t.Fatalf("Dial: %v %v", c, err)
	}
	inst, err := c.Install(ctx, api.InstallRequest{Wasm: wasm, Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	return s, c, inst
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type server struct {
	cmd    *exec.Cmd
	stderr *syncBuf
	done   chan error
	addr   string
}

func startServe(t *testing.T, bin, home string) *server {
	t.Helper()
	os.Remove(filepath.Join(home, "serve.json"))
	s := &server{stderr: &syncBuf{}, done: make(chan error, 1)}
	s.cmd = exec.Command(bin, "--home", home, "serve", "--listen", "127.0.0.1:0")
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() { s.cmd.Process.Kill() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(home, "serve.json"))
		if err == nil {
			var info struct{ Addr string }
			if json.Unmarshal(b, &info) == nil && info.Addr != "" {
				s.addr = info.Addr
				return s
			}
		}
		select {
		case err := <-s.done:
			t.Fatalf("serve exited: %v\n%s", err, s.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", s.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *server) wait(t *testing.T) int {
	t.Helper()
	select {
	case err := <-s.done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(60 * time.Second):
		t.Fatalf("serve did not exit:\n%s", s.stderr)
		return -1
	}
}

func TestServeSignals(t *testing.T) {
	bin := cordonBinary(t)
	home := t.TempDir()
	ctx := context.Background()
	s, c, inst := serveInstalled(t, bin, home, counterWasm(t))
	for range 3 {
		if _, err := c.Call(ctx, api.CallRequest{ID: inst.ID, Method: "inc", Arg: noArgs}); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	s.cmd.Process.Signal(syscall.SIGTERM)
	if code := s.wait(t); code != 0 {
		t.Fatalf("SIGTERM: exit %d\n%s", code, s.stderr)
	}
	if _, err := os.Stat(filepath.Join(home, "serve.json")); !os.IsNotExist(err) {
		t.Fatalf("serve.json after exit: %v", err)
	}
	if !strings.Contains(s.stderr.String(), "stopped cleanly") {
		t.Fatalf("no clean stop in the log:\n%s", s.stderr)
	}

	// A request whose body never finishes keeps the graceful shutdown
	// waiting; the second SIGTERM does not.
	s = startServe(t, bin, home)
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tok, err := os.ReadFile(api.TokenPath(home))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /api/v1/call HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"id\":",
		s.addr, strings.TrimSpace(string(tok)))
	time.Sleep(200 * time.Millisecond)
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		t.Fatalf("exited with a request in flight: %v\n%s", err, s.stderr)
	case <-time.After(500 * time.Millisecond):
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	if code := s.wait(t); code != 143 {
		t.Fatalf("second SIGTERM: exit %d\n%s", code, s.stderr)
	}
	if !strings.Contains(s.stderr.String(), "second signal") {
		t.Fatalf("no message about the forced exit:\n%s", s.stderr)
	}

	// What was answered is there.
	s = startServe(t, bin, home)
	c, err = api.Dial(ctx, home)
	if err != nil || c == nil {
		t.Fatalf("Dial: %v %v", c, err)
	}
	defer c.Close()
	r, err := c.Call(ctx, api.CallRequest{ID: inst.ID, Method: "get", Arg: noArgs, Query: true})
	if err != nil || !bytes.Equal(r.Reply, []byte("DIDL\x00\x01\x7d\x03")) {
		t.Fatalf("get after restarts: %x %v", r.Reply, err)
	}
	s.cmd.Process.Signal(syscall.SIGINT)
	if code := s.wait(t); code != 0 {
		t.Fatalf("SIGINT: exit %d\n%s", code, s.stderr)
	}
}
