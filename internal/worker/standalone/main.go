// Command cordon-worker is the sandbox side of cordon alone (measurement).
package main

import (
	"os"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
	"github.com/cordon-dev/cordon/internal/worker"
)

func main() {
	if !confine.IsSandbox() {
		os.Stderr.WriteString("cordon-worker: run by cordon's sandboxes only\n")
		os.Exit(2)
	}
	os.Exit(worker.Main())
}
