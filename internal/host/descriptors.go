package host

import (
	"context"
	"fmt"
	"log/slog"
	"math"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/exec"
)

// File descriptors. Everything a node keeps open is bounded by a setting:
// its sandboxes, compilers and sealed artifacts (exec.SandboxConfig's
// HostDescriptors), two per canister that keeps its memory images
// (images.go), what the embedder reserves (Config.ReservedDescriptors: a
// server's connections) and a few of its own (descriptorBase). Open checks
// that together they fit RLIMIT_NOFILE, so that a node whose settings
// exceed it does not fail later, at some spawn, install or connection,
// with EMFILE. It lowers the bounds that only cost speed (live sandboxes,
// memory images, sealed artifacts) to fit, and says so; it refuses to open
// when even their least does not fit.

// descriptorBase is the node's own: the store, its lock, the root key,
// log files, the timer loop's, the executors' engines.
const descriptorBase = 64

// The least each bound may be lowered to.
const (
	minMemoryImages    = 16
	minSealedArtifacts = 16
)

// descriptorPlan is what fitDescriptors decided.
type descriptorPlan struct {
	limit     uint64 // RLIMIT_NOFILE
	need      int    // descriptors the bounds allow, as fitted
	lowered   bool
	images    int // Config.MemoryImages
	sandboxes int // Sandbox.MaxSandboxes
	sealed    int // Sandbox.SealedArtifacts
}

// fitDescriptors fits cfg's bounds to limit (RLIMIT_NOFILE): it returns the
// plan whose bounds fit, lowered in proportion if they had to be, or an
// error if even the least bounds need more than limit.
func fitDescriptors(cfg Config, limit uint64) (descriptorPlan, error) {
	p := descriptorPlan{limit: limit, images: cfg.MemoryImages, sandboxes: cfg.Sandbox.MaxSandboxes, sealed: cfg.Sandbox.SealedArtifacts}
	if p.images <= 0 {
		p.images = defaultMemoryImages
	}
	if p.sandboxes <= 0 {
		p.sandboxes = exec.DefaultMaxSandboxes
	}
	if p.sealed <= 0 {
		p.sealed = exec.DefaultSealedArtifacts
	}
	// A blank or primed sandbox holds a slot: at least one slot must be
	// left for a canister.
	minSandboxes := cfg.Sandbox.WarmPool + cfg.Sandbox.PreloadPool + 1
	fixed := descriptorBase + max(cfg.ReservedDescriptors, 0)
	need := func() int {
		// A node in process may still get sandboxed canisters (install
		// --canister-isolation sandbox): count its sandboxes either way.
		sc := exec.SandboxConfig{MaxSandboxes: p.sandboxes, SealedArtifacts: p.sealed, MaxCompiles: cfg.Sandbox.MaxCompiles}
		return fixed + 2*p.images + sc.HostDescriptors()
	}
	if limit >= math.MaxInt32 {
		p.need = need()
		return p, nil
	}
	for range 8 {
		p.need = need()
		if uint64(p.need) <= limit {
			return p, nil
		}
		// Scale the three by what is left over what they need, rounding
		// down, never under their least.
		scalable := 2*p.images + exec.HostDescriptorsPerSandbox*p.sandboxes + p.sealed
		over := p.need - int(limit)
		if over >= scalable {
			break
		}
		f := float64(scalable-over) / float64(scalable)
		images := max(int(float64(p.images)*f), minMemoryImages)
		sandboxes := max(int(float64(p.sandboxes)*f), minSandboxes)
		sealed := max(int(float64(p.sealed)*f), minSealedArtifacts)
		if images == p.images && sandboxes == p.sandboxes && sealed == p.sealed {
			break
		}
		p.images, p.sandboxes, p.sealed, p.lowered = images, sandboxes, sealed, true
	}
	p.images, p.sandboxes, p.sealed = minMemoryImages, minSandboxes, minSealedArtifacts
	if least := need(); uint64(least) > limit {
		return p, fmt.Errorf("host: the open file limit (RLIMIT_NOFILE) is %d; a node needs at least %d descriptors here (raise it: ulimit -n, or LimitNOFILE= for a systemd service)", limit, least)
	}
	// The least fit: lower bounds than needed, but a node that runs.
	p.need, p.lowered = need(), true
	return p, nil
}

// applyDescriptors fits cfg's bounds to this process's RLIMIT_NOFILE (the
// Go runtime raised its soft limit to the hard one at start) and logs what
// it lowered.
func applyDescriptors(cfg *Config, logger *slog.Logger) error {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("host: open file limit: %w", err)
	}
	p, err := fitDescriptors(*cfg, rl.Cur)
	if err != nil {
		return err
	}
	if p.lowered {
		// A server's operator needs to know; a one-shot command, which
		// runs a canister or two, loses nothing it would use.
		level := slog.LevelInfo
		if cfg.ReservedDescriptors > 0 {
			level = slog.LevelWarn
		}
		logger.Log(context.Background(), level, "the open file limit (RLIMIT_NOFILE) is below what the node's bounds need; they are lowered to fit (raise the limit to keep them: ulimit -n, or LimitNOFILE= for a systemd service)",
			"limit", p.limit, "sandbox.max_sandboxes", p.sandboxes, "memory_images", p.images, "sealed_artifacts", p.sealed)
	}
	cfg.MemoryImages, cfg.Sandbox.MaxSandboxes, cfg.Sandbox.SealedArtifacts = p.images, p.sandboxes, p.sealed
	return nil
}
