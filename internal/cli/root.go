// Package cli implements cordon's command line: flags, output formats and
// exit codes. Commands reach a node through api.Backend: a running
// `cordon serve` if there is one, else the store opened in-process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/api"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/store"
)

// Exit codes, documented in the README and in `cordon --help`.
const (
	ExitOK       = 0
	ExitError    = 1 // operational error: bad input, I/O, store
	ExitUsage    = 2 // wrong flags or arguments
	ExitRejected = 3 // the call was rejected (reject code and message on stderr)
)

type globals struct {
	home      string
	isolation string
	logLevel  string
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer
}

type usageError struct{ error }

// Main runs the command line and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var rej *host.Reject
	if errors.As(err, &rej) {
		fmt.Fprintf(stderr, "error: call rejected with code %d (%s): %s\n", rej.Code, rej.Code, rej.Message)
		return ExitRejected
	}
	fmt.Fprintf(stderr, "error: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	return ExitError
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "cordon",
		Short: "Run untrusted WebAssembly canisters, each confined, with durable state",
		Long: `cordon runs Internet Computer canisters (Wasm modules built by Motoko or Rust)
with the ic0 System API, and keeps their state durably in an embedded store.

Commands talk to a running 'cordon serve' on the same home directory if there
is one, and otherwise open the store directly.

Exit codes: 0 success; 1 error; 2 usage error; 3 the call was rejected
(the reject code and message are printed on stderr).`,
		Example: `  cordon install ../shared/canisters/counter.wasm
  cordon call rwlgt-iiaaa-aaaaa-aaaaa-cai inc
  cordon query rwlgt-iiaaa-aaaaa-aaaaa-cai get --output raw
  cordon status`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.home, "home", "", "state directory (default $CORDON_HOME, else ~/.local/share/cordon)")
	pf.StringVar(&g.isolation, "isolation", "inprocess", "where canisters execute: inprocess (sandbox arrives with the sandbox issue)")
	pf.StringVar(&g.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	root.AddCommand(newInstallCmd(g), newCallCmd(g, false), newCallCmd(g, true), newStatusCmd(g),
		newLogsCmd(g), newDeleteCmd(g), newStartStopCmd(g, "start"), newStartStopCmd(g, "stop"),
		newServeCmd(g), newCandidCmd(g))
	return root
}

func (g *globals) logger() *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: lvl}))
}

func (g *globals) config() (host.Config, error) {
	cfg := host.DefaultConfig()
	home := g.home
	if home == "" {
		h, err := store.DefaultHome()
		if err != nil {
			return cfg, err
		}
		home = h
	}
	cfg.Home = home
	switch g.isolation {
	case "inprocess", "sandbox":
		cfg.Isolation = g.isolation
	default:
		return cfg, usageError{fmt.Errorf("--isolation %q: want sandbox or inprocess", g.isolation)}
	}
	return cfg, nil
}

// backend connects to a running server on the home, or opens the store.
func (g *globals) backend(ctx context.Context) (api.Backend, error) {
	cfg, err := g.config()
	if err != nil {
		return nil, err
	}
	client, err := api.Dial(ctx, cfg.Home)
	if err != nil {
		return nil, err
	}
	if client != nil {
		return client, nil
	}
	node, err := host.Open(cfg, g.logger())
	if err != nil {
		return nil, err
	}
	return &api.Local{Node: node}, nil
}
