package cli

import (
	"os"
	"testing"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
	"github.com/cordon-dev/cordon/internal/worker"
)

// TestMain lets this test binary serve as the sandbox executable: the
// default isolation is the sandbox, which re-executes the running binary.
func TestMain(m *testing.M) {
	if confine.IsSandbox() {
		os.Exit(worker.Main())
	}
	os.Exit(m.Run())
}
