package host

import (
	"fmt"
	"log/slog"

	"github.com/cordon-dev/cordon/internal/exec"
)

// newExecutor builds the executor for the node's isolation mode.
func newExecutor(cfg Config, _ *slog.Logger) (exec.Executor, error) {
	switch cfg.Isolation {
	case "inprocess":
		return exec.NewInProcess(cfg.ModuleLimits)
	}
	return nil, fmt.Errorf("isolation mode %q is not available yet: use --isolation inprocess", cfg.Isolation)
}
