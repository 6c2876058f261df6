package host

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cordon-dev/cordon/internal/exec"
)

// newExecutor builds the executor for the node's isolation mode.
func newExecutor(cfg Config, logger *slog.Logger) (exec.Executor, error) {
	switch cfg.Isolation {
	case "inprocess":
		return exec.NewInProcess(cfg.ModuleLimits)
	case "sandbox":
		return exec.NewSandboxed(exec.SandboxConfig{
			Dir:          filepath.Join(cfg.Home, "artifacts"),
			ModuleLimits: cfg.ModuleLimits,
			Binary:       os.Getenv("CORDON_SANDBOX_BINARY"),
			Logger:       logger,
		})
	}
	return nil, fmt.Errorf("isolation mode %q is not available: use --isolation sandbox or inprocess", cfg.Isolation)
}
