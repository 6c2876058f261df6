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
		sc, err := sandboxConfig(cfg, logger)
		if err != nil {
			return nil, err
		}
		for _, l := range sc.AllowMissing {
			logger.Warn("INSECURE: sandboxes may run without a confinement layer", "layer", string(l))
		}
		if sc.HostIDs != nil && os.Geteuid() != 0 {
			logger.Warn("sandbox.host_ids ignored: only a root host can give sandboxes ids of their own", "range", sc.HostIDs.String())
		}
		sc.InstalledModule = func(hash [32]byte) ([]byte, error) {
			return st.Module(hex.EncodeToString(hash[:]))
		}
		return exec.NewSandboxed(sc)
	}
	return nil, fmt.Errorf("isolation mode %q is not available: use --isolation sandbox or inprocess", cfg.Isolation)
}

// sandboxConfig is the sandboxed executor's configuration for cfg, after
// the checks that refuse a node up front: the layers strict mode requires
// (all missing ones at once, rather than on the first message) and the
// settings. CheckSandbox starts its sandboxes with it too.
func sandboxConfig(cfg Config, logger *slog.Logger) (exec.SandboxConfig, error) {
	allow, err := sandbox.ParseLayers(strings.Join(cfg.Sandbox.AllowMissing, ","))
	if err != nil {
		return exec.SandboxConfig{}, fmt.Errorf("--insecure-allow-missing: %w", err)
	}
	if cfg.Sandbox.Strict {
		var missing []string
		for _, l := range sandbox.Doctor().Missing() {
			if !slices.Contains(allow, l) {
				missing = append(missing, string(l))
			}
		}
		if len(missing) > 0 {
			// --set works with every command; serve and doctor also
			// have --insecure-allow-missing.
			return exec.SandboxConfig{}, fmt.Errorf("strict mode: confinement layers unavailable here: %s (see `cordon doctor`; "+
				"INSECURE: --set sandbox.allow_missing=%s or CORDON_SANDBOX_ALLOW_MISSING=%s runs without them)",
				strings.Join(missing, ", "), strings.Join(missing, ","), strings.Join(missing, ","))
		}
	}
	var ids *sandbox.IDPool
	if cfg.Sandbox.HostIDs != "" {
		if ids, err = sandbox.ParseIDRange(cfg.Sandbox.HostIDs); err != nil {
			return exec.SandboxConfig{}, fmt.Errorf("sandbox.host_ids: %w", err)
		}
	}
	return exec.SandboxConfig{
		Dir:                 filepath.Join(cfg.Home, "artifacts"),
		ModuleLimits:        cfg.ModuleLimits,
		Binary:              cfg.Sandbox.Binary,
		Strict:              cfg.Sandbox.Strict,
		AllowMissing:        allow,
		MemoryBytes:         cfg.Sandbox.MemoryBytes,
		CPUPercent:          cpuQuota(cfg.Sandbox.CPUPercent),
		MaxSandboxes:        cfg.Sandbox.MaxSandboxes,
		MaxTotalRSS:         cfg.Sandbox.MemoryBudget,
		NodeMemoryBytes:     cfg.Sandbox.NodeMemoryBytes,
		IdleTimeout:         cfg.Sandbox.IdleTimeout,
		WarmPool:            cfg.Sandbox.WarmPool,
		PreloadPool:         cfg.Sandbox.PreloadPool,
		SealedArtifactBytes: cfg.Sandbox.SealedArtifactBytes,
		ArtifactCacheBytes:  cfg.Sandbox.ArtifactCacheBytes,
		SealedArtifacts:     cfg.Sandbox.SealedArtifacts,
		MaxCompiles:         cfg.Sandbox.MaxCompiles,
		QueryThreads:        cfg.Sandbox.QueryThreads,
		HostIDs:             ids,
		Logger:              logger,
		Metrics:             metricsOf(cfg),
	}, nil
}

// cpuQuota maps the configured quota (0: none) to exec's (negative: none).
func cpuQuota(percent int) int {
	if percent <= 0 {
		return -1
	}
	return percent
}
