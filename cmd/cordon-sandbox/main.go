// Command cordon-sandbox is the sandbox side of cordon alone: the confined
// worker (internal/worker) without the host, its CLI, HTTP server, metrics
// and their packages' initialisation. A node runs it instead of re-executing
// cordon when sandbox.binary (or $CORDON_SANDBOX_BINARY) names it; it must
// come from the same source as the cordon that runs it. It starts a little
// faster than cordon (BENCHMARKS.md, "cold sandbox spawn"); by default cordon
// re-executes itself, which needs no second file.
//
// Run by anything else than a cordon sandbox, it refuses.
package main

import (
	"fmt"
	"os"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
	"github.com/cordon-dev/cordon/internal/worker"
)

func main() {
	if !confine.IsSandbox() {
		fmt.Fprintln(os.Stderr, "cordon-sandbox: only cordon's sandboxes run this (set sandbox.binary to its path)")
		os.Exit(worker.ExitUsage)
	}
	os.Exit(worker.Main())
}
