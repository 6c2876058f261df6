package host

import (
	"os"
	"testing"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
	"github.com/cordon-dev/cordon/internal/worker"
)

// TestMain lets this test binary serve as the sandbox executable: sandboxed
// nodes re-execute it with the sandbox marker, as they do the cordon binary.
func TestMain(m *testing.M) {
	if confine.IsSandbox() {
		os.Exit(worker.Main())
	}
	os.Exit(m.Run())
}
