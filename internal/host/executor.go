package host

import (
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/sandbox"
	"github.com/cordon-dev/cordon/internal/store"
)

// newExecutor builds the executor for the node's isolation mode. A
// sandboxed executor reads installed modules from st when it must compile
// one again, rather than keeping every loaded canister's module in memory.
func newExecutor(cfg Config, st *store.Store, logger *slog.Logger) (exec.Executor, error) {
	switch cfg.Isolation {
	case "inprocess":
		// Said at every open: nothing else shows that no layer applies.
		logger.Warn("INSECURE: canisters run unconfined in the host process (isolation = inprocess): " +
			"a canister that escapes the Wasm runtime has this user's privileges, files and keys; use --isolation sandbox")
		return exec.NewInProcess(cfg.ModuleLimits)
	case "sandbox":
		allow, err := sandbox.ParseLayers(strings.Join(cfg.Sandbox.AllowMissing, ","))
		if err != nil {
			return nil, fmt.Errorf("--insecure-allow-missing: %w", err)
		}
		if cfg.Sandbox.Strict {
			// Refuse up front, with the whole list, rather than on the first message.
			var missing []string
			for _, l := range sandbox.Doctor().Missing() {
				if !slices.Contains(allow, l) {
					missing = append(missing, string(l))
				}
			}
			if len(missing) > 0 {
				// --set works with every command; serve and doctor also
				// have --insecure-allow-missing.
				return nil, fmt.Errorf("strict mode: confinement layers unavailable here: %s (see `cordon doctor`; "+
					"INSECURE: --set sandbox.allow_missing=%s or CORDON_SANDBOX_ALLOW_MISSING=%s runs without them)",
					strings.Join(missing, ", "), strings.Join(missing, ","), strings.Join(missing, ","))
			}
		}
		for _, l := range allow {
			logger.Warn("INSECURE: sandboxes may run without a confinement layer", "layer", string(l))
		}
		var ids *sandbox.IDPool
		if cfg.Sandbox.HostIDs != "" {
			if ids, err = sandbox.ParseIDRange(cfg.Sandbox.HostIDs); err != nil {
				return nil, fmt.Errorf("sandbox.host_ids: %w", err)
			}
			if os.Geteuid() != 0 {
				logger.Warn("sandbox.host_ids ignored: only a root host can give sandboxes ids of their own", "range", ids.String())
			}
		}
		return exec.NewSandboxed(exec.SandboxConfig{
			Dir:                 filepath.Join(cfg.Home, "artifacts"),
			ModuleLimits:        cfg.ModuleLimits,
			Binary:              cfg.Sandbox.Binary,
			Strict:              cfg.Sandbox.Strict,
			AllowMissing:        allow,
			MemoryBytes:         cfg.Sandbox.MemoryBytes,
			CPUPercent:          cpuQuota(cfg.Sandbox.CPUPercent),
			MaxSandboxes:        cfg.Sandbox.MaxSandboxes,
			MaxTotalRSS:         cfg.Sandbox.MemoryBudget,
			IdleTimeout:         cfg.Sandbox.IdleTimeout,
			WarmPool:            cfg.Sandbox.WarmPool,
			PreloadPool:         cfg.Sandbox.PreloadPool,
			SealedArtifactBytes: cfg.Sandbox.SealedArtifactBytes,
			SealedArtifacts:     cfg.Sandbox.SealedArtifacts,
			MaxCompiles:         cfg.Sandbox.MaxCompiles,
			QueryThreads:        cfg.Sandbox.QueryThreads,
			HostIDs:             ids,
			InstalledModule: func(hash [32]byte) ([]byte, error) {
				return st.Module(hex.EncodeToString(hash[:]))
			},
			Logger:  logger,
			Metrics: metricsOf(cfg),
		})
	}
	return nil, fmt.Errorf("isolation mode %q is not available: use --isolation sandbox or inprocess", cfg.Isolation)
}

// cpuQuota maps the configured quota (0: none) to exec's (negative: none).
func cpuQuota(percent int) int {
	if percent <= 0 {
		return -1
	}
	return percent
}
