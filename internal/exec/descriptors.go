package exec

import "runtime"

// Bounds on what a sandboxed executor holds on the host. Each is a setting
// with a default here, so that a node can check before it starts that they
// fit its RLIMIT_NOFILE (HostDescriptors; host.Open) instead of failing at
// some later spawn with EMFILE.
const (
	// DefaultMaxSandboxes is SandboxConfig.MaxSandboxes' default.
	DefaultMaxSandboxes = 256
	// DefaultSealedArtifacts is SandboxConfig.SealedArtifacts' default.
	DefaultSealedArtifacts = 1024
	// HostDescriptorsPerSandbox is what the host holds for each sandbox,
	// of a canister, blank, primed or a compiler: its IPC socket, the read
	// end of its stderr pipe, its seccomp listener, its pidfd and its
	// oom_score_adj, written while it executes (sandbox/oomsteer.go), and
	// its cgroup's memory charge file, kept open because it is read after
	// every exchange (TestHostDescriptorsPerSandbox).
	HostDescriptorsPerSandbox = 6
	// hostDescriptorsFixed covers the rest: the spawner's socket and
	// pidfd, the artifact being copied into its sealed memfd, the
	// descriptors in flight while a sandbox starts.
	hostDescriptorsFixed = 16
)

// DefaultMaxCompiles is SandboxConfig.MaxCompiles' default: one compiler
// per CPU, at least two (a compiler sandbox uses one core).
func DefaultMaxCompiles() int { return max(2, runtime.NumCPU()) }

// HostDescriptors is the most file descriptors an executor with this
// configuration holds on the host (its defaults applied): its sandboxes,
// compilers and sealed artifacts.
func (c SandboxConfig) HostDescriptors() int {
	c.defaults()
	return HostDescriptorsPerSandbox*(c.MaxSandboxes+c.MaxCompiles) + c.SealedArtifacts + hostDescriptorsFixed
}
