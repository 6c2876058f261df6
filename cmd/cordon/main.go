// Command cordon runs untrusted WebAssembly canisters. See `cordon --help`.
package main

import (
	"os"

	"github.com/cordon-dev/cordon/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
