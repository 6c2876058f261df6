package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestLabels(t *testing.T) {
	for in, want := range map[string]string{"non-replicated query": "non_replicated_query", "update": "update",
		"reply callback": "reply_callback", "inspect_message": "inspect_message"} {
		if got := ContextLabel(in); got != want {
			t.Errorf("ContextLabel(%q) = %q", in, got)
		}
	}
	if RejectOutcome("CANISTER_ERROR") != "canister_error" {
		t.Fatal(RejectOutcome("CANISTER_ERROR"))
	}
	for code, want := range map[int]string{200: "200", 404: "404", 503: "503", 0: "other", 999: "other"} {
		if got := codeLabel(code); got != want {
			t.Errorf("codeLabel(%d) = %s", code, got)
		}
	}
}

func TestRecording(t *testing.T) {
	m := New("v", "inprocess")
	var r Recorder = m
	r.Execution("update", OutcomeOK, 1000, time.Millisecond)
	r.Execution("update", OutcomeTrapped, 10, time.Millisecond)
	r.Message(KindUpdate, OutcomeReplied, 2*time.Millisecond)
	r.Message(KindInterCanister, "canister_reject", 0)
	r.Commit(time.Millisecond, 4096, nil)
	r.Commit(time.Millisecond, 0, errTest{})
	r.SeccompKill("socket")
	if v := testutil.ToFloat64(m.instructions.WithLabelValues("update")); v != 1010 {
		t.Errorf("instructions %v", v)
	}
	if v := testutil.ToFloat64(m.messages.WithLabelValues(KindUpdate, OutcomeReplied)); v != 1 {
		t.Errorf("messages %v", v)
	}
	if v := testutil.ToFloat64(m.commitErrors); v != 1 {
		t.Errorf("commit errors %v", v)
	}
	if n := testutil.CollectAndCount(m.msgSeconds); n != 1 {
		t.Errorf("message latency series %d (inter-canister has no latency)", n)
	}
	// State read at scrape time; one RSS series per sandbox identity.
	m.SetSources(Sources{LiveCanisters: func() int { return 7 }, StoreBytes: func() int64 { return 1 << 20 },
		Sandboxes: func() []SandboxInfo {
			return []SandboxInfo{{Canister: "a", Kind: "canister", RSSBytes: 10}, {Kind: "compiler", RSSBytes: 5}, {Kind: "compiler", RSSBytes: 6}}
		}})
	want := `
# HELP cordon_canisters_live Canisters loaded in the node.
# TYPE cordon_canisters_live gauge
cordon_canisters_live 7
# HELP cordon_sandboxes_live Live sandbox processes, by kind.
# TYPE cordon_sandboxes_live gauge
cordon_sandboxes_live{kind="blank"} 0
cordon_sandboxes_live{kind="canister"} 1
cordon_sandboxes_live{kind="compiler"} 2
cordon_sandboxes_live{kind="primed"} 0
# HELP cordon_sandboxes_rss_bytes Resident memory of all live sandbox processes.
# TYPE cordon_sandboxes_rss_bytes gauge
cordon_sandboxes_rss_bytes 21
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "cordon_canisters_live", "cordon_sandboxes_live",
		"cordon_sandboxes_rss_bytes"); err != nil {
		t.Fatal(err)
	}
	lint, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range lint {
		if strings.HasPrefix(p.Metric, "cordon_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

type errTest struct{}

func (errTest) Error() string { return "test" }

func TestNop(t *testing.T) {
	var r Recorder = Nop{}
	r.Execution("", "", 0, 0)
	r.Message("", "", 0)
	r.Commit(0, 0, nil)
	r.SandboxSpawned("")
	r.SandboxEvicted("")
	r.SandboxCrashed("")
	r.WatchdogKill()
	r.ProtocolViolation("")
	r.SeccompKill("")
}
