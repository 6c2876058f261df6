package sandbox

import (
	"fmt"
	"os"
	"testing"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// TestMain doubles as the sandbox worker: Start re-executes this test binary
// with the sandbox marker, and the child runs one scenario (Spec.Args[0])
// from scenarios_test.go against its confinement.
func TestMain(m *testing.M) {
	if confine.IsSandbox() {
		os.Exit(sandboxMain())
	}
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(helperMain(h))
	}
	listenForAttacks()
	os.Exit(m.Run())
}

func sandboxMain() int {
	// A liar reports ready itself (Spec.Args follow the marker and the
	// configuration).
	if len(os.Args) > 3 && os.Args[3] == lyingReady {
		return lieReady(os.Args[4:])
	}
	conn, files, args, err := confine.Enter()
	if err != nil {
		fmt.Fprintln(os.Stderr, "enter:", err)
		return 3
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "no scenario")
		return 4
	}
	sc, ok := scenarios[args[0]]
	if !ok {
		fmt.Fprintln(os.Stderr, "unknown scenario", args[0])
		return 4
	}
	return sc(&child{conn: conn, files: files, args: args[1:]})
}
