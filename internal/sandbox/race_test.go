//go:build race

package sandbox

// The race detector's runtime replaces the allocator and logs on its own,
// which changes what a sandbox does; tests that measure it exactly relax.
const raceEnabled = true
