package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// storeFailCfg is the in-process node of the storage failure tests: no
// storage fee, so no commit but the test's own syncs.
func storeFailCfg(home string) Config {
	cfg := DefaultConfig()
	cfg.Home = home
	cfg.Isolation = "inprocess"
	cfg.Fees.GiBStoragePerSecond = 0
	// These tests are of what a failed or full store does, the last
	// line of defence behind the disk margin (diskmargin_test.go).
	cfg.NoDiskMargin = true
	return cfg
}

// storeFailFixture is the open node of a storage failure test, run in
// parallel; it skips but on x86-64, whose syscall numbers the fault filter
// checks.
func storeFailFixture(t *testing.T) *fixture {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter checks the x86-64 syscall numbers")
	}
	t.Parallel()
	cfg := storeFailCfg(t.TempDir())
	f := &fixture{t: t, home: cfg.Home, cfg: cfg}
	f.open()
	return f
}

// rejectLine says what a caller learns from err, on one line.
func rejectLine(err error) string {
	var rej *Reject
	if !errors.As(err, &rej) {
		return fmt.Sprintf("error %q", fmt.Sprint(err))
	}
	return fmt.Sprintf("code=%s unknown=%v stopped=%v full=%v message=%q", rej.Code,
		errors.Is(err, ErrOutcomeUnknown), errors.Is(err, ErrWritesStopped), errors.Is(err, ErrStorageFull), rej.Message)
}

// runFaultChild runs test again in a child with env, and returns what it
// printed and its lines by their first word; it skips where the child
// skipped, and fails unless the child ran and printed last.
func runFaultChild(t *testing.T, test, last string, env ...string) (string, map[string]string) {
	t.Helper()
	out, err := faultinject.Child(test, env...).Output()
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), last) {
		t.Fatalf("child: %v; output:\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
	lines := map[string]string{}
	for line := range strings.SplitSeq(string(out), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			lines[k] = v
		}
	}
	return string(out), lines
}

// storeFailChild increments the counter, the commit's last sync failing,
// then tries an update, an upgrade and a query, and says what each got.
func storeFailChild(t *testing.T, home string) {
	counter, err := principal.FromText(os.Getenv("CORDON_STOREFAIL_ID"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(storeFailCfg(home), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	inc := Message{Canister: counter, Method: "inc", Arg: noArgs, Caller: user}
	if _, err := n.Query(ctx, Message{Canister: counter, Method: "get", Arg: noArgs, Caller: user}); err != nil {
		t.Fatal(err) // loaded: nothing to commit on the way
	}
	arm := faultinject.SyncFaults(t)
	arm(2) // the increment's commit: its meta page's sync
	_, err = n.Update(ctx, inc)
	fmt.Printf("FIRST %s\n", rejectLine(err))
	select {
	case <-n.WritesStopped():
		fmt.Println("STOPPED")
	default:
		fmt.Println("NOT STOPPED")
	}
	_, err = n.Update(ctx, inc)
	fmt.Printf("SECOND %s\n", rejectLine(err))
	_, err = n.Install(ctx, counter, InstallOptions{Mode: ModeUpgrade, Wasm: module(t, corpusDir, "counter"), Arg: noArgs, Caller: user})
	fmt.Printf("INSTALL %s\n", rejectLine(err))
	r, err := n.Query(ctx, Message{Canister: counter, Method: "get", Arg: noArgs, Caller: user})
	if err != nil {
		fmt.Printf("QUERY %s\n", rejectLine(err))
	} else {
		fmt.Printf("QUERY %x\n", r.Data)
	}
	_ = n.Close()
	os.Exit(0)
}

// After a commit whose last sync failed, the store refuses writes until
// it is opened again (store.ErrFailed). The caller of that commit got an
// internal error (CANISTER_ERROR, an error id), though its change may be
// durable; the next callers the same. Now the first learns its outcome is
// unknown, the next ones that the node stopped accepting writes and their
// call did not run, all SYS_TRANSIENT and distinct (ErrOutcomeUnknown,
// ErrWritesStopped); the node says so on WritesStopped, and its queries
// go on from memory.
func TestFailedSyncStopsWrites(t *testing.T) {
	if home := os.Getenv("CORDON_STOREFAIL_HOME"); home != "" {
		storeFailChild(t, home)
		return
	}
	f := storeFailFixture(t)
	counter := f.install(module(t, corpusDir, "counter"), noArgs)
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	out, lines := runFaultChild(t, "TestFailedSyncStopsWrites", "QUERY", "CORDON_STOREFAIL_HOME="+f.home, "CORDON_STOREFAIL_ID="+counter.String())
	if strings.Contains(out, f.home) {
		t.Fatal("a caller reads the home's path")
	}
	if first := lines["FIRST"]; !strings.HasPrefix(first, "code=SYS_TRANSIENT unknown=true stopped=true ") ||
		!strings.Contains(first, "the outcome of this call is unknown") {
		t.Fatalf("the call whose commit failed the store got %s, want SYS_TRANSIENT saying its outcome is unknown", first)
	}
	if !strings.Contains(out, "\nSTOPPED\n") {
		t.Fatal("the node does not say it stopped accepting writes (WritesStopped)")
	}
	for _, k := range []string{"SECOND", "INSTALL"} {
		if got := lines[k]; !strings.HasPrefix(got, "code=SYS_TRANSIENT unknown=false stopped=true ") || !strings.Contains(got, "this call was not run") {
			t.Fatalf("%s after the failure got %s, want SYS_TRANSIENT saying the node stopped accepting writes", k, got)
		}
	}
	if q := lines["QUERY"]; q != fmt.Sprintf("%x", natReply(0)) {
		t.Fatalf("a query after the failure answered %s, want the counter's committed 0 (from memory)", q)
	}
	// The next start reads what the disk holds, and takes writes.
	f.open()
	if got := f.query(counter, "get", noArgs); string(got) != string(natReply(0)) && string(got) != string(natReply(1)) {
		t.Fatalf("after a restart the counter holds %x, neither before nor after the increment", got)
	}
	f.update(counter, "inc", noArgs)
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
}
