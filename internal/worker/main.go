// Package worker is the sandbox side of cordon: the code a sandbox process
// runs after confinement. It speaks the protocol of internal/boundary over
// the IPC socket and nothing else: in compile mode it validates,
// instruments and compiles modules and returns their artifacts; in canister
// mode it loads one canister's artifact (passed as a file descriptor) and
// serves its executions with internal/engine.
//
// The worker trusts the host, but it is written as carefully as the host's
// side: requests are decoded by the same bounded decoders.
package worker

import (
	"fmt"
	"net"
	"os"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// Exit codes of a sandbox process.
const (
	ExitOK       = 0
	ExitProtocol = 1  // the host sent something the worker cannot serve
	ExitUsage    = 2  // bad arguments
	ExitPanic    = 3  // the worker panicked (after reporting it)
	ExitConfine  = 70 // confinement failed
)

// pagemap is the sandbox's own /proc/self/pagemap (no /proc inside the
// empty root: the C constructor opened it). Nil when Serve runs outside a
// sandbox; the engine then opens the process's own.
var pagemap *os.File

// forbidNewCode, set in a sandbox, ends the process's ability to make
// memory executable (confine.ForbidNewCode); a canister worker calls it
// once its module is loaded. Nil when Serve runs outside a sandbox (tests
// in the host's process).
var forbidNewCode func() error

// wxRequired: the host planned the W^X layer (confine.WXPlanned), so a
// forbidNewCode that fails ends the sandbox instead of leaving a canister
// running without the layer the host reports applied.
var wxRequired bool

// trimWhenIdle: canister workers give memory back when idle (trimIdle).
// Only a sandbox process sets it; Serve in a test's goroutine shares the
// test's process.
var trimWhenIdle bool

// Main is the entry point of a sandbox process: cmd/cordon calls it, before
// anything else, when confine.IsSandbox() reports the process was started
// by sandbox.Start. It completes confinement first (before any byte from the
// host is read), then serves requests until the host says stop or goes away.
// Diagnostics go to fd 2, which the host reads and labels.
func Main() int {
	conn, files, args, err := confine.Enter()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cordon sandbox: %v\n", err)
		return ExitConfine
	}
	for _, f := range files { // this version passes artifacts with Load, not at spawn
		f.Close()
	}
	return ServeConfined(conn, args)
}

// ServeConfined is Serve in a confined sandbox process (after
// confine.Enter): the engine uses the pagemap the C constructor opened, and
// a canister worker forbids new executable memory once its module is
// loaded. Main calls it; tests that put a hostile proxy in front of a real
// worker inside a live sandbox call it too.
func ServeConfined(conn *net.UnixConn, args []string) int {
	pagemap = confine.Pagemap()
	forbidNewCode = confine.ForbidNewCode
	wxRequired = confine.WXPlanned()
	trimWhenIdle = true
	return Serve(conn, args)
}
