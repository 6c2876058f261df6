package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startServe runs `cordon serve` on home in the background; stop cancels
// it and checks it exited 0.
func startServe(t *testing.T, home string) (logs *lockedBuffer, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs = &lockedBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"--home", home, "serve", "--listen", "127.0.0.1:0", "--log-format", "json"}, strings.NewReader(""), io.Discard, logs)
	}()
	return logs, func() {
		t.Helper()
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Fatalf("serve: exit %d\n%s", code, logs.String())
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("serve did not stop")
		}
	}
}

// A command run while `cordon serve` is starting (it holds the store but
// does not listen yet) waits for it and then goes through it, instead of
// failing with "locked by another process".
func TestCommandWaitsForStartingServer(t *testing.T) {
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", filepath.Join(corpus, "counter.wasm")))

	// Hold the server in its starting window (store open, not listening)
	// until the command has found the store locked.
	held, release := make(chan struct{}), make(chan struct{})
	openStoreHook = func() { close(held); <-release }
	defer func() { openStoreHook = nil }()
	logs, stop := startServe(t, home)
	<-held
	var out, errb lockedBuffer
	cmdDone := make(chan int, 1)
	go func() {
		cmdDone <- Run(context.Background(), []string{"--home", home, "call", id, "inc"}, strings.NewReader(""), &out, &errb)
	}()
	waitUntil(t, "the command to find the store held", func() bool { return strings.Contains(errb.String(), "held by another process") })
	close(release)
	if code := <-cmdDone; code != 0 {
		t.Fatalf("call during the server's start: exit %d: %s", code, errb.String())
	}
	if got := strings.TrimSpace(out.String()); got != "(1 : nat)" {
		t.Fatalf("inc: %q", got)
	}
	// It went through the server.
	if !strings.Contains(logs.String(), `"path":"/api/v1/call"`) {
		t.Fatalf("the call did not reach the server:\n%s", logs.String())
	}
	stop()
	openStoreHook = nil

	// Start the server and at once run a command: whichever gets the store
	// first, the other waits; the command succeeds.
	_, stop = startServe(t, home)
	if got := must(t, cordon(t, home, "call", id, "inc")); got != "(2 : nat)" {
		t.Fatalf("inc right after serve started: %s", got)
	}
	if got := must(t, cordon(t, home, "query", id, "get")); got != "(2 : nat)" {
		t.Fatalf("get: %s", got)
	}
	waitServing(t, home)
	stop()
}

// waitServing waits until the server on home listens (a server stopped
// while it starts exits with an error, which stop would report).
func waitServing(t *testing.T, home string) {
	t.Helper()
	waitUntil(t, "serve.json", func() bool { _, err := os.Stat(filepath.Join(home, "serve.json")); return err == nil })
}

// The wait is bounded: with the store held and no server coming, the
// command gives up with the store's own error, or when its context ends.
func TestCommandStoreWaitBounded(t *testing.T) {
	home := t.TempDir()
	must(t, cordon(t, home, "install", filepath.Join(corpus, "counter.wasm")))
	held, release := make(chan struct{}), make(chan struct{})
	openStoreHook = func() { close(held); <-release }
	defer func() { openStoreHook = nil }()
	_, stop := startServe(t, home)
	defer func() { close(release); waitServing(t, home); stop() }()
	<-held

	defer func(d time.Duration) { storeWait = d }(storeWait)
	storeWait = time.Second
	r := cordon(t, home, "status")
	if r.code != ExitError || !strings.Contains(r.stderr, "locked by another process") || !strings.Contains(r.stderr, "gave up after 1s") {
		t.Fatalf("status with the store held: %+v", r)
	}
	storeWait = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	var errb lockedBuffer
	done := make(chan int, 1)
	go func() { done <- Run(ctx, []string{"--home", home, "status"}, strings.NewReader(""), io.Discard, &errb) }()
	waitUntil(t, "the command to wait", func() bool { return strings.Contains(errb.String(), "held by another process") })
	// It names the holder it found (this test process: serve runs in it)
	// instead of guessing.
	if msg := errb.String(); !strings.Contains(msg, fmt.Sprintf("pid %d", os.Getpid())) || strings.Contains(msg, "starting?") {
		t.Errorf("lock wait message: %s", msg)
	}
	cancel()
	// An interrupt: 130 and what it means, not Go's "context canceled".
	if code := <-done; code != ExitInterrupted || !strings.Contains(errb.String(), "interrupted while waiting for the store") ||
		!strings.Contains(errb.String(), "nothing was done") || strings.Contains(errb.String(), "context canceled") {
		t.Fatalf("cancelled wait: exit %d: %s", code, errb.String())
	}
}

// The operator's provisional path: `install --cycles` gives a new canister
// the balance asked for, counted as minted, directly and through a server;
// a node with fees.provisional = none refuses it (and still installs with
// the initial balance).
func TestInstallWithCyclesProvisional(t *testing.T) {
	home := t.TempDir()
	counter := filepath.Join(corpus, "counter.wasm")
	id := must(t, cordon(t, home, "install", "--cycles", "7_000_000_000_000", counter))
	// The balance is what was asked less what the install was charged;
	// all of it was minted.
	var st map[string]any
	if err := json.Unmarshal([]byte(must(t, cordon(t, home, "status", "--output", "json", id))), &st); err != nil {
		t.Fatal(err)
	}
	bal, _ := new(big.Int).SetString(fmt.Sprint(st["cycles"]), 10)
	burned, _ := new(big.Int).SetString(fmt.Sprint(st["cycles_burned"]), 10)
	if fmt.Sprint(st["cycles_minted"]) != "7000000000000" || bal == nil || burned == nil || new(big.Int).Add(bal, burned).String() != "7000000000000" {
		t.Fatalf("after install --cycles 7T: balance %v, burned %v, minted %v", st["cycles"], st["cycles_burned"], st["cycles_minted"])
	}

	r := cordon(t, home, "--set", "fees.provisional=none", "install", "--cycles", "5", counter)
	if r.code != ExitRejected || !strings.Contains(r.stderr, "fees.provisional = none") {
		t.Fatalf("install --cycles on a node that mints nothing: %+v", r)
	}
	must(t, cordon(t, home, "--set", "fees.provisional=none", "install", counter))
	if r := cordon(t, home, "--set", "fees.provisional=sometimes", "status"); r.code != ExitUsage {
		t.Fatalf("bad fees.provisional: %+v", r)
	}

	_, stop := startServe(t, home)
	waitServing(t, home)
	id2 := must(t, cordon(t, home, "install", "--cycles", "3_000_000_000_000", counter))
	if st := must(t, cordon(t, home, "status", "--output", "json", id2)); !strings.Contains(st, `"cycles_minted": "3000000000000"`) {
		t.Fatalf("status after install --cycles through the server:\n%s", st)
	}
	stop()
}
