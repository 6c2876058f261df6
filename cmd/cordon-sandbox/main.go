// Command cordon-sandbox is the sandbox side of cordon alone: the confined
// worker (internal/worker) without the host, its CLI, HTTP server, metrics
// and their packages' initialisation, so it starts faster than cordon
// (BENCHMARKS.md, "cold sandbox spawn"). Built next to cordon (`go build -o
// bin/ ./cmd/...`), it is what cordon's sandboxes execute, as a sealed
// in-memory copy, once cordon has checked that it is of its own build
// (internal/sandbox/worker.go); sandbox.binary names it elsewhere. Without
// it, cordon re-executes itself.
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
