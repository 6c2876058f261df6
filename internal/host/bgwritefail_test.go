package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/store"
)

// bgWriteFailChild opens the node with a shorter log than the printer's
// stored one, so that loading the printer trims it in a write of its own,
// whose last sync fails; then prunes request statuses and tries an update,
// and says what each got. The node's log goes to stdout.
func bgWriteFailChild(t *testing.T, home string) {
	ids := childIDs(t, "CORDON_BGFAIL_IDS")
	counter, printer := ids[0], ids[1]
	cfg := storeFailCfg(home)
	cfg.LogLines = 2
	n, err := Open(cfg, slog.New(slog.NewTextHandler(os.Stdout, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := n.Query(ctx, Message{Canister: counter, Method: "get", Arg: noArgs, Caller: user}); err != nil {
		t.Fatal(err) // loaded: nothing to commit on the way
	}
	arm := faultinject.SyncFaults(t)
	arm(2) // the trim's meta page's sync
	if _, err := n.get(ctx, printer); err != nil {
		fmt.Printf("LOAD %v\n", err)
	}
	select {
	case <-n.WritesStopped():
		fmt.Println("STOPPED")
	default:
		fmt.Println("NOT STOPPED")
	}
	err = n.PutIngressStatuses([]store.IngressRecord{{Key: []byte("pruned")}})
	fmt.Printf("PRUNE stopped=%v error=%v\n", errors.Is(err, ErrWritesStopped), err)
	_, err = n.Update(ctx, Message{Canister: counter, Method: "inc", Arg: noArgs, Caller: user})
	fmt.Printf("UPDATE %s\n", rejectLine(err))
	_ = n.Close()
	os.Exit(0)
}

// The node's own writes, which no caller waits for (trimming a stored
// log, pruning the IC interface's request statuses, burning a refund
// nobody takes, releasing replaced modules), follow the rule of commits:
// one whose last sync fails stops the node taking writes, said in its
// log as a storage failure with what it was; later ones are refused as
// the node's, not the store's raw error. They logged the store's error
// as it came, a warning for the trim, and handed the interface the
// store's own error.
func TestBackgroundWriteFailureStopsWrites(t *testing.T) {
	if home := os.Getenv("CORDON_BGFAIL_HOME"); home != "" {
		bgWriteFailChild(t, home)
		return
	}
	f := storeFailFixture(t)
	counter := f.install(module(t, corpusDir, "counter"), noArgs)
	printer := f.install(mustWat(t, logSpamWat), nil)
	for range 4 {
		f.update(printer, "print", nil)
	}
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	out, lines := runFaultChild(t, "TestBackgroundWriteFailureStopsWrites", "UPDATE",
		"CORDON_BGFAIL_HOME="+f.home, "CORDON_BGFAIL_IDS="+counter.String()+","+printer.String())
	if !strings.Contains(out, "\nSTOPPED\n") {
		t.Fatal("the failed trim did not stop the node taking writes: the fault was not injected where expected")
	}
	if !strings.Contains(out, `level=ERROR msg="storage failure: trimming a canister's stored log: its last sync failed and its outcome is unknown; the node accepts no more writes until it is restarted`) ||
		!strings.Contains(out, "canister="+printer.String()) || !strings.Contains(out, "error_id=") {
		t.Fatal("the node's log does not say that the trim's failure was a storage failure that stopped its writes, of which canister, under an error id")
	}
	if p := lines["PRUNE"]; !strings.HasPrefix(p, "stopped=true ") {
		t.Fatalf("pruning after the failure: %s, want the node's ErrWritesStopped", p)
	}
	if !strings.Contains(out, `level=WARN msg="pruning the IC interface's request statuses: not stored: the node stopped accepting writes after a storage failure"`) {
		t.Fatal("the node's log does not say why the pruning was not stored")
	}
	if got := lines["UPDATE"]; !strings.HasPrefix(got, "code=SYS_TRANSIENT unknown=false stopped=true ") || !strings.Contains(got, "this call was not run") {
		t.Fatalf("an update after the failure got %s, want SYS_TRANSIENT saying the node stopped accepting writes", got)
	}
	// The next start reads what the disk holds, and takes writes.
	f.open()
	f.update(counter, "inc", noArgs)
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
}
