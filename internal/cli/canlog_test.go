package cli

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// A trap's record is in the canister's log: `cordon logs` shows it with its
// sequence number, and fetch_canister_logs (a query to aaaaa-aa, typed by
// the management interface) returns it with the same idx.
func TestTrapRecordThroughCLI(t *testing.T) {
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", filepath.Join(corpus, "traps.wasm")))
	if r := cordon(t, home, "call", id, "setThenTrap", "(5)"); r.code != ExitRejected {
		t.Fatalf("setThenTrap: %+v", r)
	}
	logs := must(t, cordon(t, home, "logs", id))
	if !strings.HasSuffix(logs, " [0] [TRAP]: trapped after write") {
		t.Fatalf("cordon logs: %q", logs)
	}
	out := must(t, cordon(t, home, "query", "aaaaa-aa", "fetch_canister_logs", fmt.Sprintf(`(record { canister_id = principal %q })`, id)))
	for _, want := range []string{"canister_log_records = vec {", "idx = 0 : nat64", `content = blob "[TRAP]: trapped after write"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("fetch_canister_logs: %s\nwant %s", out, want)
		}
	}
	// As an update call it is refused, as on the IC.
	r := cordon(t, home, "call", "aaaaa-aa", "fetch_canister_logs", fmt.Sprintf(`(record { canister_id = principal %q })`, id))
	if r.code != ExitRejected || !strings.Contains(r.stderr, "only accessible in non-replicated mode") {
		t.Fatalf("fetch_canister_logs as an update: %+v", r)
	}
}
