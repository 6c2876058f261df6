// Package cli implements cordon's command line: flags, configuration,
// output formats and exit codes. Commands reach a node through api.Backend:
// a running `cordon serve` if there is one, else the store opened
// in-process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cordon-dev/cordon/internal/api"
	"github.com/cordon-dev/cordon/internal/config"
	"github.com/cordon-dev/cordon/internal/homedir"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/store"
)

// Version is cordon's version (set with -ldflags "-X .../internal/cli.Version=…").
var Version = "dev"

// Exit codes, documented in the README and in `cordon --help`.
const (
	ExitOK       = 0
	ExitError    = 1 // operational error: bad input, I/O, store
	ExitUsage    = 2 // wrong flags or arguments
	ExitRejected = 3 // the call was rejected (reject code and message on stderr)
	// A command interrupted by SIGINT or SIGTERM exits with 128 + the
	// signal's number: 130 (SIGINT) or 143 (SIGTERM), as does a second
	// signal during serve's graceful shutdown.
	ExitForcedBase  = 128
	ExitInterrupted = ExitForcedBase + int(syscall.SIGINT)
)

const exitCodesHelp = `Exit codes: 0 success; 1 error; 2 usage error; 3 the call was rejected (the
reject code and message are printed on stderr); 130 or 143: interrupted by
SIGINT or SIGTERM (what that means for the operation is printed on stderr),
or a second signal forced the exit during serve's graceful shutdown. serve
and logs -f stop on the first signal and exit 0.`

type globals struct {
	home       string
	configFile string
	sets       []string
	bound      []boundFlag // flags that set a configuration key
	stdin      io.Reader
	stdout     io.Writer
	stderr     io.Writer
	serving    bool // the command is serve: log at info unless configured
}

// boundFlag is a flag that sets a configuration key when given.
type boundFlag struct {
	flag *pflag.Flag
	key  string
}

type usageError struct{ error }

// interruptedError is a command stopped by the first SIGINT or SIGTERM:
// what says what that means for the operation under way.
type interruptedError struct{ what string }

func (e interruptedError) Error() string {
	if e.what == "" {
		return "interrupted"
	}
	return "interrupted " + e.what
}

// signalCause is the cause of the context notifyContext cancels.
type signalCause struct{ sig os.Signal }

func (c signalCause) Error() string { return "received " + c.sig.String() }

// interruptExit is the exit code of a command interrupted through ctx:
// 128 + the signal's number, or 130 when ctx was cancelled otherwise.
func interruptExit(ctx context.Context) int {
	var sc signalCause
	if errors.As(context.Cause(ctx), &sc) {
		if s, ok := sc.sig.(syscall.Signal); ok {
			return ExitForcedBase + int(s)
		}
	}
	return ExitInterrupted
}

// exit is os.Exit, replaced in tests.
var exit = os.Exit

// Main runs the command line and returns the process exit code. The first
// SIGINT or SIGTERM cancels the command (serve shuts down gracefully); a
// second one exits at once.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := notifyContext(stderr)
	defer stop()
	return Run(ctx, args, stdin, stdout, stderr)
}

// Run is Main with a context instead of signals.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var ie interruptedError
	var rej *host.Reject
	if errors.As(err, &ie) || (ctx.Err() != nil && !errors.As(err, &rej)) {
		// Interrupted: say what that means for the operation (the
		// command's own words, else the bare fact), never Go's "context
		// canceled".
		fmt.Fprintf(stderr, "cordon: %s\n", printable(ie.Error()))
		return interruptExit(ctx)
	}
	if errors.As(err, &rej) {
		// A reject's message may be a canister's own text.
		fmt.Fprintf(stderr, "error: call rejected with code %d (%s): %s\n", rej.Code, rej.Code, printable(rej.Message))
		return ExitRejected
	}
	fmt.Fprintf(stderr, "error: %s\n", printable(err.Error()))
	var ue usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	return ExitError
}

// notifyContext is cancelled by the first SIGINT or SIGTERM (a graceful
// stop); a second one exits at once with 128 + its number.
func notifyContext(stderr io.Writer) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		var first os.Signal
		select {
		case first = <-sigs:
			cancel(signalCause{first})
		case <-done:
			return
		}
		select {
		case sig := <-sigs:
			n := 2
			if s, ok := sig.(syscall.Signal); ok {
				n = int(s)
			}
			fmt.Fprintf(stderr, "cordon: second signal (%v after %v): exiting now, without finishing in-flight work\n", sig, first)
			exit(ExitForcedBase + n)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel(nil)
	}
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "cordon",
		Short: "Run untrusted WebAssembly canisters, each confined, with durable state",
		Long: `cordon runs Internet Computer canisters (Wasm modules built by Motoko or Rust)
with the ic0 System API, and keeps their state durably in an embedded store.

Commands talk to a running 'cordon serve' on the same home directory if there
is one, and otherwise open the store directly.

Configuration comes from flags, then CORDON_* environment variables, then the
file <home>/config.toml (or --config FILE), then the defaults, in that order
of precedence; 'cordon config show' prints the result and where each value
came from.

` + exitCodesHelp,
		Example: `  cordon install ../shared/canisters/counter.wasm
  cordon call rwlgt-iiaaa-aaaaa-aaaaa-cai inc
  cordon query rwlgt-iiaaa-aaaaa-aaaaa-cai get --output raw
  cordon logs -f rwlgt-iiaaa-aaaaa-aaaaa-cai
  cordon serve --log-format json`,
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(flagError)
	// Runnable so that an unknown command is a usage error on one line
	// (cobra's own is a plain error, on several).
	root.Args = groupArgs
	root.RunE = groupRun
	root.CompletionOptions.DisableDefaultCmd = true // ours has examples: completion.go
	pf := root.PersistentFlags()
	pf.StringVar(&g.home, "home", "", "state directory (default $CORDON_HOME, else ~/.local/share/cordon)")
	pf.StringVar(&g.configFile, "config", "", "configuration file (default $CORDON_CONFIG, else <home>/config.toml if it exists)")
	g.bind(pf, "isolation")
	g.bind(pf, "sandbox.binary")
	g.bind(pf, "log.level")
	g.bind(pf, "log.format")
	pf.StringArrayVar(&g.sets, "set", nil, "set any configuration key, e.g. --set limits.update_instructions=1_000_000_000 (repeatable; see 'cordon config show')")
	_ = root.RegisterFlagCompletionFunc("set", completeSet)
	_ = root.RegisterFlagCompletionFunc("isolation", fixed("sandbox", "inprocess"))
	_ = root.RegisterFlagCompletionFunc("log-level", fixed("debug", "info", "warn", "error"))
	_ = root.RegisterFlagCompletionFunc("log-format", fixed("text", "json"))
	root.AddCommand(newInstallCmd(g), newCallCmd(g, false), newCallCmd(g, true), newStatusCmd(g),
		newLogsCmd(g), newDeleteCmd(g), newStartStopCmd(g, "start"), newStartStopCmd(g, "stop"),
		newServeCmd(g), newCandidCmd(g), newPsCmd(g), newDoctorCmd(g), newConfigCmd(g), newCompletionCmd(g, root))
	root.AddCommand(newBenchCmd(g))
	for _, c := range root.Commands() {
		switch c.Name() {
		case "call", "query", "status", "logs", "delete", "start", "stop":
			if c.ValidArgsFunction == nil {
				c.ValidArgsFunction = completeIDs(g)
			}
		}
	}
	root.InitDefaultHelpCmd()
	for _, c := range root.Commands() {
		if c.Name() == "help" {
			c.Example = "  cordon help install\n  cordon help config show"
		}
	}
	return root
}

// groupArgs accepts anything: groupRun reports an unknown command.
func groupArgs(*cobra.Command, []string) error { return nil }

// groupRun runs a command that only groups others: alone it prints its
// help; with an argument, that is an unknown command (a usage error).
func groupRun(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, " or "))
	}
	return usageError{fmt.Errorf("%s; see '%s --help'", msg, cmd.CommandPath())}
}

// flagError turns a flag parsing error into a usage error that says what
// was given and what is expected, without strconv's wording.
func flagError(_ *cobra.Command, err error) error {
	var iv *pflag.InvalidValueError
	if errors.As(err, &iv) {
		f := iv.GetFlag()
		want := map[string]string{
			"uint64": "a whole number, 0 or more", "uint": "a whole number, 0 or more", "uint32": "a whole number, 0 or more",
			"int": "a whole number", "int64": "a whole number", "bool": "true or false", "duration": "a duration like 30s or 5m",
			"intSlice": "whole numbers separated by commas",
		}[f.Value.Type()]
		if want == "" {
			want = "a " + f.Value.Type()
		}
		return usageError{fmt.Errorf("--%s %q: want %s", f.Name, iv.GetValue(), want)}
	}
	return usageError{err}
}

// bind adds the flag of configuration key to fs; when given, it takes
// precedence over the environment and the file.
func (g *globals) bind(fs *pflag.FlagSet, key string) {
	g.bindDefault(fs, key, flagSetting(key).Get(config.Default()))
}

// flagSetting is the setting of key, which the command's code names: one
// without a flag is a mistake in that code, found by any test that builds
// the commands, never by input.
func flagSetting(key string) *config.Setting {
	s, ok := config.Lookup(key)
	if !ok || s.Flag == "" {
		panic("cli: no flag for configuration key " + key)
	}
	return s
}

// bindDefault is bind for a command whose default differs from the
// setting's (serve's --strict): def is what its help shows; the command
// applies it when nothing else set the key.
func (g *globals) bindDefault(fs *pflag.FlagSet, key, def string) {
	s := flagSetting(key)
	help := s.Help + " (" + key + ", $" + s.Env() + ")"
	if def == "false" || def == "true" {
		fs.Bool(s.Flag, def == "true", help)
	} else {
		fs.String(s.Flag, def, help)
	}
	g.bound = append(g.bound, boundFlag{flag: fs.Lookup(s.Flag), key: key})
}

// config returns the effective configuration: flags > env > file > defaults.
func (g *globals) config() (*config.Config, error) {
	in := config.Inputs{Home: g.home, ConfigFile: g.configFile, Env: os.Getenv}
	for _, s := range g.sets {
		a, err := config.ParseAssignment(s)
		if err != nil {
			return nil, usageError{err}
		}
		in.Flags = append(in.Flags, a)
	}
	for _, b := range g.bound {
		if b.flag.Changed {
			in.Flags = append(in.Flags, config.Assignment{Key: b.key, Value: b.flag.Value.String(), Flag: "--" + b.flag.Name})
		}
	}
	cfg, err := config.Load(in)
	var pe *fs.PathError
	var ue *homedir.UnsafeError
	if errors.As(err, &pe) || errors.As(err, &ue) {
		// A file that cannot be read (permissions, I/O) or must not be
		// (another user's) is no mistake in the command line.
		return nil, err
	}
	if err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}

// logger builds the process's logger from the configuration and makes it
// slog's default, so that what packages without a logger of their own
// report (the sandbox executable's checks, the spawner) comes out in the
// same format and level, not in package log's.
func (g *globals) logger(cfg *config.Config) *slog.Logger {
	l := g.newLogger(cfg)
	slog.SetDefault(l)
	return l
}

func (g *globals) newLogger(cfg *config.Config) *slog.Logger {
	level := cfg.LogLevel
	if g.serving && cfg.Source("log.level") == config.FromDefault {
		level = "info"
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		lvl = slog.LevelWarn
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(g.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(g.stderr, opts))
}

// storeWait bounds how long a command waits for a store another process
// holds: a `cordon serve` loading its canisters before it listens, or
// another command.
var storeWait = 2 * time.Minute

// backend connects to a running server on the home, or opens the store.
// While another process holds the store (a server starting: it opens the
// store, loads every canister, and only then listens and writes
// serve.json), it waits, up to storeWait or until ctx ends, for the server
// to answer or the store to be free.
func (g *globals) backend(ctx context.Context) (api.Backend, error) {
	cfg, err := g.config()
	if err != nil {
		return nil, err
	}
	var client *api.Client
	var node *host.Node
	err = g.waitForStore(ctx, cfg.Home, true, func() (done bool, err error) {
		if client, err = api.Dial(ctx, cfg.Home); client != nil || err != nil {
			return client != nil, err
		}
		hc := cfg.Host
		// One request, then the node closes: blank sandboxes would be
		// started only to be killed.
		hc.Sandbox.WarmPool = 0
		hc.Sandbox.PreloadPool = 0
		node, err = host.Open(hc, g.logger(cfg))
		return node != nil, err
	})
	if err != nil {
		return nil, err
	}
	if client != nil {
		return client, nil
	}
	if err := api.RemoveStaleServeFile(cfg.Home); err != nil {
		slog.Warn("serve.json", "error", err)
	}
	return &localBackend{Local: &api.Local{Node: node}, ctx: ctx, stderr: g.stderr}, nil
}

// closeNotice is how long closing an interrupted command's node may take
// before the command says what it waits for.
const closeNotice = 300 * time.Millisecond

// localBackend is a node opened by this command. Closing it waits for the
// messages it runs to finish (host.Node.Close): after an interrupt, which
// the message in flight does not stop, the command says so.
type localBackend struct {
	*api.Local
	ctx    context.Context
	stderr io.Writer
}

func (l *localBackend) Close() error {
	if l.ctx.Err() == nil {
		return l.Local.Close()
	}
	done := make(chan error, 1)
	go func() { done <- l.Local.Close() }()
	t := time.NewTimer(closeNotice)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		fmt.Fprintln(l.stderr, "cordon: interrupted: letting the message already executing finish before the store is closed (interrupt again to exit at once)")
	}
	return <-done
}

// openStoreHook, set by tests, runs once serve holds the store and before
// it loads canisters and listens.
var openStoreHook func()

// waitForStore calls try until it reports done or fails with anything but
// a locked store; each try waits up to 2 s for the lock itself (host.Open).
// forServer: a command that may reach a server once it listens (not serve).
func (g *globals) waitForStore(ctx context.Context, home string, forServer bool, try func() (bool, error)) error {
	wctx, cancel := context.WithTimeout(ctx, storeWait)
	defer cancel()
	told := false
	holder := ""
	for {
		done, err := try()
		if done && err == nil {
			return nil
		}
		if err != nil && !errors.Is(err, store.ErrLocked) {
			return err
		}
		if !told {
			told = true
			holder = "another process"
			why := "for it to release the store"
			if pid := lockHolder(storeFile(home)); pid > 0 {
				holder = "another process (" + describePID(pid) + ")"
				if forServer && isServe(processCommand(pid)) {
					why = "for that `cordon serve` to start listening"
				}
			} else if forServer {
				why = "for it to release the store, or to answer if it is a `cordon serve` starting"
			}
			fmt.Fprintf(g.stderr, "cordon: the store is held by %s; waiting up to %s %s\n", holder, storeWait, why)
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-wctx.Done():
			t.Stop()
			if ctx.Err() != nil {
				return interruptedError{"while waiting for the store, held by " + holder + ": nothing was done"}
			}
			return fmt.Errorf("%w: held by %s; gave up after %s", err, holder, storeWait)
		case <-t.C:
		}
	}
}

func fixed(vals ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return vals, cobra.ShellCompDirectiveNoFileComp
	}
}

func completeSet(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	keys := config.Keys()
	for i, k := range keys {
		keys[i] = k + "="
	}
	return keys, cobra.ShellCompDirectiveNoSpace | cobra.ShellCompDirectiveNoFileComp
}
