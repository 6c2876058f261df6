// Command cordon runs untrusted WebAssembly canisters. See `cordon --help`.
package main

import (
	"os"

	"github.com/cordon-dev/cordon/internal/cli"
	"github.com/cordon-dev/cordon/internal/sandbox/confine"
	"github.com/cordon-dev/cordon/internal/worker"
)

func main() {
	if confine.IsSandbox() { // started by sandbox.Start: confine, then serve the host
		os.Exit(worker.Main())
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
