package host_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/internal/api"
	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/ichttp"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// The servers in front of a node whose store failed a commit (its last
// sync; store.ErrFailed), each in a child process whose fdatasyncs the
// test fails (faultinject.SyncFaults):
//
//   - the JSON API answers the call whose commit failed 503, saying its
//     outcome is unknown, without Retry-After (a retry could apply it
//     twice), and Serve stops by itself with an error (cordon serve exits
//     1: a supervisor starts it again, reading what the disk holds);
//   - the IC interface answers it 503 with the same words, and certifies
//     no status for it (a "rejected" status could contradict what the
//     disk holds): a replay finds it still processing (202).
func TestStorageFailureAtTheServers(t *testing.T) {
	if home := os.Getenv("CORDON_SERVEFAIL_HOME"); home != "" {
		serveFailChild(t, home, os.Getenv("CORDON_SERVEFAIL_SCENARIO"), os.Getenv("CORDON_SERVEFAIL_ID"))
		return
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter checks the x86-64 syscall numbers")
	}
	counterWasm, err := os.ReadFile(filepath.Join("..", "..", "..", "shared", "canisters", "counter.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	for _, scenario := range []string{"json", "ic"} {
		t.Run(scenario, func(t *testing.T) {
			home := t.TempDir()
			n, err := host.Open(serveFailCfg(home), nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			id, err := n.Create(ctx, host.CreateOptions{Controllers: []principal.Principal{principal.Anonymous()}})
			if err == nil {
				_, err = n.Install(ctx, id, host.InstallOptions{Mode: host.ModeInstall, Wasm: counterWasm, Arg: []byte("DIDL\x00\x00"), Caller: principal.Anonymous()})
			}
			if cerr := n.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			out, err := faultinject.Child("TestStorageFailureAtTheServers",
				"CORDON_SERVEFAIL_HOME="+home, "CORDON_SERVEFAIL_SCENARIO="+scenario, "CORDON_SERVEFAIL_ID="+id.String()).Output()
			if strings.Contains(string(out), "--- SKIP") {
				t.Skipf("child skipped:\n%s", out)
			}
			t.Logf("child:\n%s", out)
			if err != nil {
				t.Fatalf("child: %v", err)
			}
			if !strings.Contains(string(out), "\nPASSED\n") {
				t.Fatal("the child's checks failed")
			}
		})
	}
}

func serveFailCfg(home string) host.Config {
	cfg := host.DefaultConfig()
	cfg.Home = home
	cfg.Isolation = "inprocess"
	cfg.Fees.GiBStoragePerSecond = 0 // no commit but the test's
	return cfg
}

// serveFailChild runs scenario on the counter id, printing what it sees,
// and PASSED if it is what it should be.
func serveFailChild(t *testing.T, home, scenario, idText string) {
	id, err := principal.FromText(idText)
	if err != nil {
		t.Fatal(err)
	}
	n, err := host.Open(serveFailCfg(home), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Query(context.Background(), host.Message{Canister: id, Method: "get", Arg: []byte("DIDL\x00\x00"), Caller: principal.Anonymous()}); err != nil {
		t.Fatal(err) // loaded: nothing to commit on the way
	}
	ok := false
	switch scenario {
	case "json":
		ok = serveFailJSON(t, n, home, id)
	case "ic":
		ok = serveFailIC(t, n, home, id)
	}
	if ok {
		fmt.Println("PASSED")
	}
	os.Exit(0)
}

func serveFailJSON(t *testing.T, n *host.Node, home string, id principal.Principal) bool {
	done := make(chan error, 1)
	go func() {
		done <- api.Serve(context.Background(), n, api.ServeOptions{Listen: "127.0.0.1:0", Home: home, AllowNoToken: true,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)), TokenOut: io.Discard})
	}()
	var client *api.Client
	for client == nil { // until serve.json names the server (as the API's own tests wait)
		c, err := api.Dial(context.Background(), home)
		if err != nil {
			t.Fatal(err)
		}
		client = c
		if client == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	arm := faultinject.SyncFaults(t)
	arm(2) // the increment's commit: its meta page's sync
	body := fmt.Sprintf(`{"id": %q, "method": "inc", "arg": "RElETAAA"}`, id)
	resp, err := http.Post(client.BaseURL()+"/api/v1/call", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("CALL %d retry-after=%q %s\n", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	var serveErr error
	select {
	case serveErr = <-done:
	case <-time.After(2 * time.Minute): // a deadline for failing, not a timing
		fmt.Println("FAIL: Serve did not stop after the storage failure")
		return false
	}
	fmt.Printf("SERVE %v\n", serveErr)
	switch {
	case resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "the outcome of this call is unknown"):
		fmt.Println("FAIL: the call whose commit failed was not answered 503, outcome unknown")
	case resp.Header.Get("Retry-After") != "":
		fmt.Println("FAIL: its 503 invites a retry")
	case serveErr == nil || !strings.Contains(serveErr.Error(), host.ErrWritesStopped.Error()):
		fmt.Println("FAIL: Serve did not stop with the storage failure")
	default:
		return true
	}
	return false
}

func serveFailIC(t *testing.T, n *host.Node, home string, id principal.Principal) bool {
	key, err := ichttp.LoadOrCreateRootKey(home)
	if err != nil {
		t.Fatal(err)
	}
	nodeKey, err := ichttp.LoadOrCreateNodeKey(home)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ichttp.New(n, key, nodeKey, slog.New(slog.NewTextHandler(os.Stderr, nil))))
	defer srv.Close()
	env, err := cbor.Marshal(map[string]any{"content": map[string]any{"request_type": "call", "sender": principal.Anonymous().Bytes(),
		"canister_id": id.Bytes(), "method_name": "inc", "arg": []byte("DIDL\x00\x00"), "nonce": binary.BigEndian.AppendUint64(nil, 1),
		"ingress_expiry": uint64(time.Now().Add(2 * time.Minute).UnixNano())}})
	if err != nil {
		t.Fatal(err)
	}
	call := func() (int, string) {
		resp, err := http.Post(srv.URL+"/api/v3/canister/"+id.String()+"/call", "application/cbor", bytes.NewReader(env))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	arm := faultinject.SyncFaults(t)
	arm(2) // the increment's commit (with its status): its meta page's sync
	status, body := call()
	fmt.Printf("CALL %d %q\n", status, body)
	again, againBody := call()
	fmt.Printf("REPLAY %d %q\n", again, againBody)
	switch {
	case status != http.StatusServiceUnavailable || !strings.Contains(body, "the outcome of this call is unknown"):
		fmt.Println("FAIL: the call whose commit failed was not answered 503, outcome unknown")
	case again != http.StatusAccepted:
		fmt.Println("FAIL: a replay of the call did not find it processing: a status was certified for it")
	default:
		return true
	}
	return false
}
