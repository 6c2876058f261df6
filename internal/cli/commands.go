package cli

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/api"
	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/config"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/store"
)

func newInstallCmd(g *globals) *cobra.Command {
	var id, mode, arg, typ, caller, cyclesFlag, persistence, output, isolation string
	var env []string
	cmd := &cobra.Command{
		Use:   "install [flags] FILE.wasm|FILE.wasm.gz",
		Short: "Install, reinstall or upgrade a canister's code",
		Long: `Install a Wasm module into a canister and print the canister's id.

Without --id a new canister is created. With --id, the canister is created
with that id if it does not exist. --mode reinstall wipes the canister's
state; --mode upgrade runs pre_upgrade, swaps the module and runs
post_upgrade, keeping stable memory (and, for Motoko's enhanced orthogonal
persistence, the heap).`,
		Example: `  cordon install counter.wasm
  cordon install --id rwlgt-iiaaa-aaaaa-aaaaa-cai --mode upgrade counter.wasm
  cordon install --arg '(42 : nat)' app.wasm.gz
  cordon install --type raw --arg 4449444c0000 app.wasm
  cordon install --env API_URL=https://example.org --env MODE=test app.wasm`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			wasm, err := os.ReadFile(args[0])
			if err != nil {
				return fmt.Errorf("read module: %w", err)
			}
			argBytes, err := encodeArg(typ, arg, initArgTypes(wasm))
			if err != nil {
				return err
			}
			envVars, err := parseEnv(env, cmd.Flags().Changed("env"))
			if err != nil {
				return err
			}
			b, err := g.backend(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			stop := progress(g.stderr, fmt.Sprintf("installing %s (%s): compiling, running %s…",
				filepath.Base(args[0]), humanSize(len(wasm)), installEntry(mode)))
			resp, err := b.Install(cmd.Context(), api.InstallRequest{ID: id, Mode: mode, Wasm: wasm, Arg: argBytes,
				Caller: caller, Cycles: cyclesFlag, KeepHeap: persistence, Isolation: isolation, Env: envVars})
			stop()
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(g.stdout, resp)
			}
			fmt.Fprintln(g.stdout, resp.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&id, "id", "", "canister id (textual principal); default: a new canister")
	f.StringVar(&mode, "mode", "install", "install, reinstall or upgrade")
	f.StringVar(&arg, "arg", "", "argument for canister_init / canister_post_upgrade (default: no arguments)")
	f.StringVar(&typ, "type", "candid", "argument format: candid (text) or raw (hex bytes)")
	f.StringVar(&caller, "caller", "", "principal making the call (default: anonymous); it becomes the controller of a new canister")
	f.StringVar(&cyclesFlag, "cycles", "", "initial cycles of a new canister (default 100T)")
	f.StringVar(&isolation, "canister-isolation", "", "run this canister in sandbox or inprocess mode regardless of the node's --isolation (kept across upgrades)")
	f.StringVar(&persistence, "wasm-memory-persistence", "", "on upgrade: keep or replace the Wasm heap (default: keep for Motoko enhanced orthogonal persistence)")
	f.StringVar(&output, "output", "text", "text or json")
	f.StringArrayVar(&env, "env", nil, "canister environment variable NAME=VALUE (ic0.env_var_*), repeatable; given, the list replaces the canister's; --env '' clears them")
	return cmd
}

// parseEnv turns --env NAME=VALUE flags into environment variables; nil
// when the flag was not given (the canister's stay as they are).
func parseEnv(flags []string, given bool) ([]store.EnvVar, error) {
	if !given {
		return nil, nil
	}
	vars := []store.EnvVar{}
	for _, f := range flags {
		if f == "" {
			continue
		}
		name, value, ok := strings.Cut(f, "=")
		if !ok {
			return nil, usageError{fmt.Errorf("--env %q: want NAME=VALUE", f)}
		}
		vars = append(vars, store.EnvVar{Name: name, Value: value})
	}
	if err := host.CheckEnvVars(vars); err != nil {
		return nil, usageError{fmt.Errorf("--env: %w", err)}
	}
	return vars, nil
}

func newCallCmd(g *globals, query bool) *cobra.Command {
	var typ, output, caller, didFile string
	use, short := "call", "Make an update call; its effects are committed durably before the reply"
	if query {
		use, short = "query", "Make a query call; nothing it does is kept"
	}
	cmd := &cobra.Command{
		Use:   use + " ID METHOD [ARG]",
		Short: short,
		Long: short + `.

ARG is Candid text, like '(42 : nat, "hi")', typed by the canister's
candid:service metadata (or --candid FILE.did) when available; with
--type raw it is hex bytes. Without ARG the call has no arguments.
The reply is printed as Candid text, or as hex with --output raw.
On a reject the code and message go to stderr and the exit code is 3.`,
		Example: fmt.Sprintf(`  cordon %[1]s rwlgt-iiaaa-aaaaa-aaaaa-cai get
  cordon %[1]s rwlgt-iiaaa-aaaaa-aaaaa-cai greet '("world")'
  cordon %[1]s --type raw rwlgt-iiaaa-aaaaa-aaaaa-cai add 4449444c00017d05 --output raw`, use),
		Args: rangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, method := args[0], args[1]
			text := ""
			if len(args) == 3 {
				text = args[2]
			}
			b, err := g.backend(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			iface, err := loadInterface(cmd.Context(), b, id, didFile, typ != "raw" || output != "raw")
			if err != nil {
				return err
			}
			argBytes, err := encodeArg(typ, text, iface.argTypes(method))
			if err != nil {
				return err
			}
			stop := progress(g.stderr, fmt.Sprintf("waiting for the reply of %s…", method))
			resp, err := b.Call(cmd.Context(), api.CallRequest{ID: id, Method: method, Arg: argBytes, Caller: caller, Query: query})
			stop()
			if err != nil {
				return err
			}
			return printReply(g.stdout, output, resp, iface.resultTypes(method))
		},
	}
	f := cmd.Flags()
	f.StringVar(&typ, "type", "candid", "argument format: candid (text) or raw (hex bytes)")
	f.StringVar(&output, "output", "candid", "reply format: candid (text), raw (hex) or json")
	f.StringVar(&caller, "caller", "", "principal making the call (default: anonymous)")
	f.StringVar(&didFile, "candid", "", "Candid interface (.did) to type arguments and replies (default: the module's candid:service metadata)")
	return cmd
}

func printReply(w interface{ Write([]byte) (int, error) }, output string, resp *api.CallResponse, types candidTypes) error {
	switch output {
	case "raw":
		_, err := fmt.Fprintln(w, hex.EncodeToString(resp.Reply))
		return err
	case "json":
		text, _ := decodeReply(resp.Reply, types)
		return writeJSON(w, map[string]any{"reply_hex": hex.EncodeToString(resp.Reply), "reply": text, "instructions": resp.Instructions})
	case "candid", "":
		text, err := decodeReply(resp.Reply, types)
		if err != nil {
			return fmt.Errorf("decode reply %x: %w (use --output raw)", resp.Reply, err)
		}
		_, err = fmt.Fprintln(w, text)
		return err
	}
	return usageError{fmt.Errorf("--output %q: want candid, raw or json", output)}
}

func newStatusCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status [ID]",
		Short: "Show one canister's status, or list all canisters",
		Example: `  cordon status
  cordon status rwlgt-iiaaa-aaaaa-aaaaa-cai --output json`,
		Args: rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := g.backend(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			if len(args) == 0 {
				list, err := b.List(cmd.Context())
				if err != nil {
					return err
				}
				if output == "json" {
					return writeJSON(g.stdout, list)
				}
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tSTATUS\tMODULE\tHEAP\tSTABLE\tCYCLES")
				for _, s := range list {
					mod := "-"
					if s.ModuleHash != "" {
						mod = s.ModuleHash[:12]
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", s.ID, s.Status, mod, s.HeapBytes, s.StableBytes, s.Balance)
				}
				return tw.Flush()
			}
			s, err := b.Status(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(g.stdout, s)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			width := "32-bit"
			if s.Memory64 {
				width = "64-bit"
			}
			rows := [][2]string{
				{"id", s.ID}, {"status", s.Status}, {"controllers", strings.Join(s.Controllers, ", ")},
				{"cycles", s.Balance.String()}, {"module hash", orDash(s.ModuleHash)}, {"memory", width},
				{"version", fmt.Sprint(s.Version)}, {"heap bytes", fmt.Sprint(s.HeapBytes)},
				{"stable bytes", fmt.Sprint(s.StableBytes)}, {"memory size", fmt.Sprint(s.MemorySize)},
				{"memory allocation", orNone(s.MemoryAllocation)}, {"wasm memory limit", orNone(s.WasmMemoryLimit)},
				{"wasm memory threshold", fmt.Sprint(s.WasmMemoryThreshold)}, {"log visibility", logVisibility(s)},
				{"idle cycles/day", s.IdleCyclesBurnedPerDay.String()}, {"certified data", orDash(s.CertifiedData)},
				{"global timer", fmt.Sprint(s.GlobalTimer)}, {"update methods", strings.Join(s.Updates, " ")},
				{"query methods", strings.Join(s.Queries, " ")}, {"messages", fmt.Sprint(s.Messages)},
				{"instructions", fmt.Sprint(s.Instructions)}, {"cycles burned", s.CyclesBurned.String()},
				{"state hash", s.StateHash}, {"log visibility", s.LogVisibility},
				{"query stats", fmt.Sprintf("%d calls, %d instructions, %d bytes in, %d bytes out", s.QueryStats.Calls,
					s.QueryStats.Instructions, s.QueryStats.RequestBytes, s.QueryStats.ResponseBytes)},
			}
			for _, v := range s.EnvVars {
				rows = append(rows, [2]string{"env", v.Name + "=" + v.Value})
			}
			for _, r := range rows {
				fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&output, "output", "text", "text or json")
	return cmd
}

// logVisibility shows who may fetch the canister's logs.
func logVisibility(s *host.Status) string {
	if len(s.LogViewers) > 0 {
		return s.LogVisibility + ": " + strings.Join(s.LogViewers, ", ")
	}
	return s.LogVisibility
}

// orNone shows a memory setting, where 0 means no limit.
func orNone(n uint64) string {
	if n == 0 {
		return "none"
	}
	return fmt.Sprint(n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newLogsCmd(g *globals) *cobra.Command {
	var output string
	var follow bool
	var since uint64
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a canister's debug_print output (most recent lines kept per canister)",
		Long: `Print the debug_print lines a canister's node keeps (the most recent
limits.log_lines, 1000 by default), each with its time and sequence number.

With -f, keep printing new lines as the canister prints them, until
interrupted: through the running 'cordon serve' when there is one, otherwise
by reading the store twice a second (without keeping it locked, so other
commands and a server starting are not blocked). -f survives the server
starting or stopping. --since N starts at sequence number N.`,
		Example: `  cordon logs rwlgt-iiaaa-aaaaa-aaaaa-cai
  cordon logs -f rwlgt-iiaaa-aaaaa-aaaaa-cai
  cordon logs --since 120 --output json rwlgt-iiaaa-aaaaa-aaaaa-cai`,
		Args:              exactArgs(1),
		ValidArgsFunction: completeIDs(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("--output %q: want text or json", output)}
			}
			print := func(l store.LogEntry) error {
				if output == "json" {
					b, err := json.Marshal(l)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(g.stdout, "%s\n", jsonPrintable(b))
					return err
				}
				// The text is the canister's: escaped, so that it can neither
				// drive the terminal nor forge a line (sanitize.go).
				_, err := fmt.Fprintf(g.stdout, "%s [%d] %s\n", l.Time.Format("2006-01-02T15:04:05.000Z07:00"), l.Seq, printable(l.Text))
				return err
			}
			if follow {
				cfg, err := g.config()
				if err != nil {
					return err
				}
				return api.FollowLogs(cmd.Context(), cfg.Home, args[0], since, print)
			}
			b, err := g.backend(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			logs, err := b.Logs(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			kept := logs[:0]
			for _, l := range logs {
				if l.Seq >= since {
					kept = append(kept, l)
				}
			}
			if output == "json" {
				if kept == nil {
					kept = []store.LogEntry{}
				}
				return writeJSON(g.stdout, kept)
			}
			for _, l := range kept {
				if err := print(l); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&output, "output", "text", "text or json (with -f: one JSON object per line)")
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new lines as they come")
	f.Uint64Var(&since, "since", 0, "first sequence number to print")
	return cmd
}

func newDeleteCmd(g *globals) *cobra.Command {
	var caller string
	cmd := &cobra.Command{
		Use:     "delete ID",
		Short:   "Stop and delete a canister with all its state",
		Example: `  cordon delete rwlgt-iiaaa-aaaaa-aaaaa-cai`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := g.backend(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			return b.Delete(cmd.Context(), args[0], caller)
		},
	}
	cmd.Flags().StringVar(&caller, "caller", "", "principal making the call (default: anonymous); must be a controller")
	return cmd
}

func newStartStopCmd(g *globals, verb string) *cobra.Command {
	var caller string
	status := map[string]string{"start": "running", "stop": "stopped"}[verb]
	cmd := &cobra.Command{
		Use:     verb + " ID",
		Short:   strings.ToUpper(verb[:1]) + verb[1:] + " a canister",
		Example: fmt.Sprintf("  cordon %s rwlgt-iiaaa-aaaaa-aaaaa-cai", verb),
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := g.backend(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			return b.SetStatus(cmd.Context(), args[0], caller, status)
		},
	}
	cmd.Flags().StringVar(&caller, "caller", "", "principal making the call (default: anonymous); must be a controller")
	return cmd
}

func newServeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a long-lived node with an HTTP API (127.0.0.1:4943 by default)",
		Long: `Run a node that keeps canisters loaded, fires their timers and heartbeats,
and serves the JSON/HTTP API (described by api/openapi.json, also served at
/api/v1/openapi.json), Prometheus metrics on /metrics, and /healthz and
/readyz probes. While it runs, the other cordon commands on the same --home
talk to it.

Security: every request but the probes needs 'Authorization: Bearer TOKEN';
the token is generated on the first start, stored in <home>/token (mode
0600) and printed once; commands on the same --home read it from there.
--require-token=false drops it on a loopback address only (INSECURE: any
local user or process may then use the API). Requests from web pages (an
Origin header) and for host names other than IP addresses, localhost,
server.allowed_hosts and the TLS certificate's names are refused, request
bodies must be application/json, and a body must arrive at 1 MiB/s or
better. Use --tls-cert and --tls-key to serve HTTPS.

Shutdown: on SIGINT or SIGTERM the server stops accepting, refuses new
requests with 503, finishes those in flight and the messages they caused
(within server.shutdown_timeout), closes the store and exits 0. A second
signal exits at once (130 or 143); every message already answered is
durable either way.`,
		Example: `  cordon serve
  cordon serve --listen 127.0.0.1:4943 --log-level debug --log-format json
  cordon serve --listen 0.0.0.0:4943 --tls-cert cert.pem --tls-key key.pem
  curl -s http://127.0.0.1:4943/metrics | grep cordon_messages_total`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			g.serving = true
			cfg, err := g.config()
			if err == nil && cfg.Source("sandbox.strict") == config.FromDefault {
				// A long-running node is strict unless told otherwise.
				cfg.Host.Sandbox.Strict = true
			}
			if err != nil {
				return err
			}
			logger := g.logger(cfg)
			m := metrics.New(Version, cfg.Isolation)
			for _, k := range boundary.AllViolationKinds() { // every kind's series exists from the start
				m.DeclareViolationKinds(k.String())
			}
			hc := cfg.Host
			hc.Metrics = m
			// Its connections, and the listeners and log streams around
			// them, are the server's descriptors (host/descriptors.go).
			hc.ReservedDescriptors = cfg.MaxConns + 16
			// A command that holds the store (a restart's stragglers)
			// is waited for, as commands wait for a starting server.
			var node *host.Node
			err = g.waitForStore(cmd.Context(), func() (bool, error) {
				node, err = host.Open(hc, logger)
				return node != nil, err
			})
			if err != nil {
				return err
			}
			if openStoreHook != nil {
				openStoreHook()
			}
			stop := progress(g.stderr, "loading canisters…")
			err = node.LoadAll(cmd.Context())
			stop()
			if err != nil {
				node.Close()
				return err
			}
			m.SetSources(metrics.Sources{LiveCanisters: node.LiveCanisters, StoreBytes: node.StoreBytes, Sandboxes: node.Sandboxes})
			serveErr := api.Serve(cmd.Context(), node, api.ServeOptions{
				Listen: cfg.Listen, Home: cfg.Home, Logger: logger, Metrics: m,
				TLSCert: cfg.TLSCert, TLSKey: cfg.TLSKey, AllowNoToken: !cfg.RequireToken, AllowedHosts: cfg.AllowedHosts, TokenOut: g.stderr,
				RequestTimeout: cfg.RequestTimeout, ShutdownTimeout: cfg.ShutdownTimeout,
				MaxRequests: cfg.MaxRequests, MaxInstalls: cfg.MaxInstalls, MaxConns: cfg.MaxConns,
			})
			// Messages the answered requests caused (calls between
			// canisters, timers) finish too; then the store is closed.
			qctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			defer cancel()
			if err := node.Quiesce(qctx); err != nil {
				logger.Warn("messages still in flight at shutdown", "error", err)
			}
			if err := node.Close(); err != nil {
				logger.Error("close the store", "error", err)
				if serveErr == nil {
					serveErr = err
				}
			}
			if serveErr == nil {
				logger.Info("stopped cleanly")
			}
			return serveErr
		},
	}
	f := cmd.Flags()
	g.bind(f, "server.listen")
	g.bind(f, "server.tls_cert")
	g.bind(f, "server.tls_key")
	g.bind(f, "server.require_token")
	g.bind(f, "sandbox.strict")
	g.bind(f, "sandbox.allow_missing")
	return cmd
}

// installEntry names what an install runs, for the progress display.
func installEntry(mode string) string {
	if mode == "upgrade" {
		return "pre_upgrade and post_upgrade"
	}
	return "canister_init"
}

// writeJSON prints v as indented JSON, with the characters printable
// escapes left as \u escapes too (sanitize.go): JSON escapes the C0
// controls itself, not C1 controls or bidirectional overrides.
func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(jsonPrintable(b), '\n'))
	return err
}

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func rangeArgs(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.RangeArgs(lo, hi)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
