package host

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/faultinject"
)

// A failure wasmtime reports as an error (here, growing the memory to a
// kept heap beyond the new module's maximum) gives the same reject text in
// both modes. wasmtime appends a backtrace to its errors' text when
// RUST_BACKTRACE is set, as it may be in the host's environment, never in
// a sandbox's: the test runs in a child with it set.
func TestTrapTextSameInBothModes(t *testing.T) {
	if os.Getenv("CORDON_TEST_TRAP_TEXT_CHILD") == "" {
		t.Parallel()
		cmd := faultinject.Child("TestTrapTextSameInBothModes", "CORDON_TEST_TRAP_TEXT_CHILD=1", "RUST_BACKTRACE=1")
		cmd.Args = append(cmd.Args, "-test.v") // its log: each mode's reject
		out, err := cmd.Output()
		t.Logf("child:\n%s", out)
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		return
	}
	reject := func(mode string) string {
		f := newFeelessFixture(t, mode)
		id := f.install(eopWat(t, `(module (memory i64 1) (func (export "canister_init") (drop (memory.grow (i64.const 2)))))`), nil)
		keep := true
		_, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Caller: user, KeepHeap: &keep,
			Wasm: eopWat(t, `(module (memory i64 1 2) (func (export "canister_post_upgrade")))`)})
		r := f.reject(err)
		t.Logf("%s: %v", mode, r)
		if r.Code != CanisterError {
			t.Fatalf("%s: %v", mode, r)
		}
		return r.Message
	}
	in, sb := reject("inprocess"), reject("sandbox")
	if in != sb || strings.Contains(in, "backtrace") || strings.Contains(in, "\n") {
		t.Fatalf("the modes give different texts:\n inprocess: %q\n sandbox:   %q", in, sb)
	}
}
