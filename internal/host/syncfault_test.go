package host

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/faultinject"
)

// A commit whose last sync fails (after bbolt wrote its meta page) at the
// host: the message is rejected, yet the store reads the transaction as
// committed. See store/syncfault_test.go for the mechanism; here the
// fault is injected the same way (faultinject.SyncFaults), in a child
// node.

// syncFaultNodeChild sends cycles from relay to wallet twice, the first
// commit's last sync failing, and says what each got.
func syncFaultNodeChild(t *testing.T, home string) {
	ids := childIDs(t, "CORDON_CRASH_IDS")
	relay, wallet := ids[0], ids[1]
	n, err := Open(crashCfg(home), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, home: home, node: n}
	f.query(relay, "self", noArgs) // loaded: nothing to commit on the way
	f.query(wallet, "total", noArgs)
	arm := faultinject.SyncFaults(t)
	arm(2) // the relay's commit: its meta page's sync
	for _, which := range []string{"FIRST", "SECOND"} {
		_, err := n.Update(t.Context(), Message{Canister: relay, Method: "sendCycles", Arg: sendCyclesArg(wallet, durSend), Caller: user})
		fmt.Printf("%s %v\n", which, err)
	}
	if err := n.Close(); err != nil {
		fmt.Printf("CLOSE %v\n", err)
	}
	os.Exit(0)
}

// A message whose commit's last sync fails is rejected; whatever the
// node does next, the store it leaves must keep the cycles count: the
// failed commit's cycles in flight must not stay recorded under a balance
// that later commits wrote without them (a restart would return them to
// the caller, making cycles from nothing).
func TestFailedSyncKeepsCyclesConserved(t *testing.T) {
	if home := os.Getenv("CORDON_CRASH_HOME"); home != "" {
		syncFaultNodeChild(t, home)
		return
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter checks the x86-64 syscall numbers")
	}
	f := crashFixture(t)
	relay := f.install(module(t, corpusDir, "relay"), noArgs)
	wallet := f.install(module(t, corpusDir, "wallet"), noArgs)
	f.storeConserved()
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := faultinject.Child("TestFailedSyncKeepsCyclesConserved",
		"CORDON_CRASH_HOME="+f.home, "CORDON_CRASH_IDS="+relay.String()+","+wallet.String()).Output()
	f.open()
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "SECOND") {
		t.Fatalf("child: %v; output:\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
	if strings.Contains(string(out), "FIRST <nil>") {
		t.Fatal("the failed sync did not fail the first message's commit: the fault was not injected")
	}
	f.storeConserved()
	f.checkConservation()
}
