package cli

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/api"
	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/config"
	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/metrics"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

func newInstallCmd(g *globals) *cobra.Command {
	var id, mode, arg, typ, caller, cyclesFlag, persistence, output, isolation string
	var env []string
	var skipPreUpgrade bool
	cmd := &cobra.Command{
		Use:   "install [flags] FILE.wasm|FILE.wasm.gz",
		Short: "Install, reinstall or upgrade a canister's code",
		Long: `Install a Wasm module into a canister and print the canister's id.

Without --id a new canister is created. With --id, the canister is created
with that id if it does not exist. --mode reinstall wipes the canister's
state; --mode upgrade runs pre_upgrade, swaps the module and runs
post_upgrade, keeping stable memory (and, for Motoko's enhanced orthogonal
persistence, the heap: by default when the installed module uses it, as
dfx does; a new module that does not is refused unless
--wasm-memory-persistence replace); both need --id. A new canister whose
install fails (its --cycles too few, a trap in canister_init) is not kept.

FILE is a regular file of at most limits.module_bytes, gzip'd or not (a
gzip'd one is held to the limit once decompressed too). --arg is typed by
the module's candid:args metadata when it has one.`,
		Example: `  cordon install counter.wasm
  cordon install --id rwlgt-iiaaa-aaaaa-aaaaa-cai --mode upgrade counter.wasm
  cordon install --arg '(42 : nat)' app.wasm.gz
  cordon install --type raw --arg 4449444c0000 app.wasm
  cordon install --env API_URL=https://example.org --env MODE=test app.wasm`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Every flag is checked before anything is read, created or sent.
			if err := checkInstallFlags(id, mode, caller, cyclesFlag, persistence, isolation, typ, output); err != nil {
				return err
			}
			if skipPreUpgrade && host.InstallMode(mode) != host.ModeUpgrade {
				return usageError{fmt.Errorf("--skip-pre-upgrade needs --mode upgrade")}
			}
			envVars, err := parseEnv(env, cmd.Flags().Changed("env"))
			if err != nil {
				return err
			}
			cfg, err := g.config()
			if err != nil {
				return err
			}
			wasm, module, err := readModule(args[0], cfg.Host.ModuleLimits.MaxBytes)
			if err != nil {
				return err
			}
			argBytes, err := encodeArg(typ, arg, initArgTypes(module), "the init argument")
			if err != nil {
				return err
			}
			b, err := g.backend(cmd.Context())
			if err != nil {
				return interruptedBefore(cmd.Context(), err, "before the install started: nothing was changed")
			}
			defer b.Close()
			stop := progress(g.stderr, fmt.Sprintf("installing %s (%s): compiling, running %s…",
				filepath.Base(args[0]), humanSize(len(wasm)), installEntry(mode)))
			resp, err := b.Install(cmd.Context(), api.InstallRequest{ID: id, Mode: mode, Wasm: wasm, Arg: argBytes,
				Caller: caller, Cycles: cyclesFlag, KeepHeap: persistence, SkipPreUpgrade: skipPreUpgrade, Isolation: isolation, Env: envVars})
			stop()
			if err != nil && cmd.Context().Err() != nil {
				check := "`cordon status`"
				if id != "" {
					check = "`cordon status " + id + "`"
				}
				return interruptedError{fmt.Sprintf("during the install of %s: it may still complete (or have completed), or be rolled back; check with %s",
					filepath.Base(args[0]), check)}
			}
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
	f.StringVar(&persistence, "wasm-memory-persistence", "", "on upgrade: keep or replace the Wasm heap (default: keep when the installed module uses Motoko's enhanced orthogonal persistence, else replace)")
	f.BoolVar(&skipPreUpgrade, "skip-pre-upgrade", false, "on upgrade: do not run the installed module's canister_pre_upgrade")
	f.StringVar(&output, "output", "text", "text or json")
	f.StringArrayVar(&env, "env", nil, "canister environment variable NAME=VALUE (ic0.env_var_*), repeatable; given, the list replaces the canister's; --env '' clears them")
	return cmd
}

// checkInstallFlags checks install's flags: usage errors, before anything
// is done.
func checkInstallFlags(id, mode, caller, cyclesFlag, persistence, isolation, typ, output string) error {
	switch host.InstallMode(mode) {
	case host.ModeInstall:
	case host.ModeReinstall, host.ModeUpgrade:
		if id == "" {
			return usageError{fmt.Errorf("--mode %s needs --id: the canister to %s", mode, mode)}
		}
	default:
		return usageError{fmt.Errorf("--mode %q: must be install, reinstall or upgrade", mode)}
	}
	if id != "" {
		if err := checkID("--id", id); err != nil {
			return err
		}
	}
	if err := checkCaller(caller); err != nil {
		return err
	}
	if cyclesFlag != "" {
		if _, err := cycles.Parse(cyclesFlag); err != nil {
			return usageError{fmt.Errorf("--cycles %q: want a whole number of cycles, like 5_000_000_000_000", cyclesFlag)}
		}
	}
	switch persistence {
	case "", "keep", "replace":
	default:
		return usageError{fmt.Errorf("--wasm-memory-persistence %q: want keep or replace", persistence)}
	}
	switch isolation {
	case "", "sandbox", "inprocess":
	default:
		return usageError{fmt.Errorf("--canister-isolation %q: want sandbox or inprocess", isolation)}
	}
	if err := checkType(typ); err != nil {
		return err
	}
	return checkOutput(output, "text", "json")
}

// checkID checks a canister id given on the command line (what names it:
// "--id", "canister id").
func checkID(what, id string) error {
	if _, err := principal.FromText(id); err != nil {
		return usageError{fmt.Errorf("%s %q is not a principal in textual form (like rwlgt-iiaaa-aaaaa-aaaaa-cai): %w", what, id, err)}
	}
	return nil
}

// checkCaller checks --caller's textual form (whether the principal may
// send ingress is the node's to say).
func checkCaller(caller string) error {
	if caller == "" {
		return nil
	}
	if _, err := principal.FromText(caller); err != nil {
		return usageError{fmt.Errorf("--caller %q is not a principal in textual form: %w", caller, err)}
	}
	return nil
}

// checkType checks --type.
func checkType(typ string) error {
	if typ != "candid" && typ != "raw" {
		return usageError{fmt.Errorf("--type %q: want candid or raw", typ)}
	}
	return nil
}

// checkOutput checks an --output flag against the formats a command prints.
func checkOutput(output string, formats ...string) error {
	if slices.Contains(formats, output) {
		return nil
	}
	return usageError{fmt.Errorf("--output %q: want %s", output, orList(formats))}
}

// orList joins words as "a, b or c".
func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// interruptedBefore turns err into an interruptedError saying what when
// ctx was interrupted (connecting, or waiting for the store): nothing had
// been sent yet.
func interruptedBefore(ctx context.Context, err error, what string) error {
	if ctx.Err() != nil {
		return interruptedError{what}
	}
	return err
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
	// The examples are the counter canister's (../shared/canisters).
	use, short := "call", "Make an update call; its effects are committed durably before the reply"
	rawExample := "add 4449444c00017d05" // add(5 : nat)
	if query {
		use, short = "query", "Make a query call; nothing it does is kept"
		rawExample = "get 4449444c0000" // get(), no arguments
	}
	cmd := &cobra.Command{
		Use:   use + " ID METHOD [ARG]",
		Short: short,
		Long: short + `.

ARG is Candid text, like '(42 : nat, "hi")', typed by the canister's
candid:service metadata (or --candid FILE.did) when available; with
--type raw it is hex bytes. Without ARG the call has no arguments.
The reply is printed as Candid text, or as hex with --output raw.
On a reject the code and message go to stderr and the exit code is 3.
Interrupted while waiting (exit 130), an update call may still complete:
'cordon status ID' and 'cordon logs ID' show its effects.`,
		Example: fmt.Sprintf(`  cordon %[1]s rwlgt-iiaaa-aaaaa-aaaaa-cai get
  cordon %[1]s rwlgt-iiaaa-aaaaa-aaaaa-cai greet '("world")'
  cordon %[1]s --type raw rwlgt-iiaaa-aaaaa-aaaaa-cai %[2]s --output raw`, use, rawExample),
		Args: rangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, method := args[0], args[1]
			text := ""
			if len(args) == 3 {
				text = args[2]
			}
			if err := checkID("canister id", id); err != nil {
				return err
			}
			if err := checkCaller(caller); err != nil {
				return err
			}
			if err := checkType(typ); err != nil {
				return err
			}
			if err := checkOutput(output, "candid", "raw", "json"); err != nil {
				return err
			}
			var argBytes []byte
			if typ == "raw" { // needs no interface: checked before anything is opened
				var err error
				if argBytes, err = encodeArg(typ, text, nil, "the argument of "+method); err != nil {
					return err
				}
			}
			b, err := g.backend(cmd.Context())
			if err != nil {
				return interruptedBefore(cmd.Context(), err, "before the call was sent: nothing was done")
			}
			defer b.Close()
			limit := 0
			if didFile != "" {
				cfg, err := g.config()
				if err != nil {
					return err
				}
				limit = cfg.Host.ModuleLimits.MaxBytes
			}
			iface, err := loadInterface(cmd.Context(), b, id, didFile, limit, typ != "raw" || output != "raw")
			if err != nil {
				return interruptedBefore(cmd.Context(), err, "before the call was sent: nothing was done")
			}
			if typ != "raw" {
				if argBytes, err = encodeArg(typ, text, iface.argTypes(method), "the argument of "+method); err != nil {
					return err
				}
			}
			stop := progress(g.stderr, fmt.Sprintf("waiting for the reply of %s…", method))
			resp, err := b.Call(cmd.Context(), api.CallRequest{ID: id, Method: method, Arg: argBytes, Caller: caller, Query: query})
			stop()
			if err != nil && cmd.Context().Err() != nil {
				if query {
					return interruptedError{fmt.Sprintf("while waiting for the reply of query %s: a query changes nothing", method)}
				}
				fate := "the server goes on with the call, which may still complete"
				if _, local := b.(*localBackend); local {
					fate = "the call was left to finish before the store closed, its reply not shown"
				}
				return interruptedError{fmt.Sprintf("while waiting for the reply of %s: %s; check its effects with `cordon status %s` or `cordon logs %s`",
					method, fate, id, id)}
			}
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
		out := map[string]any{"reply_hex": hex.EncodeToString(resp.Reply), "instructions": resp.Instructions}
		text, err := decodeReply(resp.Reply, types, "; reply_hex has all of it")
		out["reply"] = text
		if err != nil { // said, not left as an empty reply
			out["reply_error"] = err.Error()
		}
		return writeJSON(w, out)
	case "candid", "":
		text, err := decodeReply(resp.Reply, types, "; --output raw prints all of it as hex")
		if err != nil {
			return fmt.Errorf("decode reply %s: %w (use --output raw)", hexForMessage(resp.Reply), err)
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
		Long: `Without ID, list every canister: id, status, module hash, heap and stable
memory, cycles.

With ID, show that canister: status, module, cycles (balance, burned,
minted, idle burn per day), memory by kind, its settings (controllers,
freezing threshold, compute and memory allocation, Wasm memory limit and
threshold, reserved cycles limit, log visibility, environment variables),
the isolation mode it runs in and whether it is its own override
(install --canister-isolation), its methods, counters and state hash.
--output json prints the same fields.`,
		Example: `  cordon status
  cordon status rwlgt-iiaaa-aaaaa-aaaaa-cai --output json`,
		Args: rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			if len(args) == 1 {
				if err := checkID("canister id", args[0]); err != nil {
					return err
				}
			}
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
			return printStatus(g.stdout, s)
		},
	}
	cmd.Flags().StringVar(&output, "output", "text", "text or json")
	return cmd
}

// printStatus prints one canister's status as text: every field of the
// JSON form but the Candid service, each setting once.
func printStatus(w io.Writer, s *host.Status) error {
	width := "32-bit"
	if s.Memory64 {
		width = "64-bit"
	}
	isolation := s.Isolation + " (the node's mode)"
	switch {
	case s.IsolationOverride == "":
	case s.IsolationOverride == s.Isolation:
		isolation = s.Isolation + " (this canister's override: install --canister-isolation)"
	default:
		isolation = fmt.Sprintf("%s (its override %s is not honoured by this node)", s.Isolation, s.IsolationOverride)
	}
	rows := [][2]string{
		{"id", s.ID}, {"status", s.Status}, {"module hash", orDash(s.ModuleHash)}, {"memory", width},
		{"version", fmt.Sprint(s.Version)}, {"isolation", isolation},
		{"cycles", s.Balance.String()}, {"cycles burned", s.CyclesBurned.String()}, {"cycles minted", s.CyclesMinted.String()},
		{"idle cycles/day", s.IdleCyclesBurnedPerDay.String()},
		{"memory size", fmt.Sprint(s.MemorySize)}, {"heap bytes", fmt.Sprint(s.HeapBytes)},
		{"stable bytes", fmt.Sprint(s.StableBytes)}, {"module bytes", fmt.Sprint(s.ModuleBytes)},
		{"globals", fmt.Sprintf("%d (%d bytes)", s.Globals, s.GlobalBytes)}, {"chunk store bytes", fmt.Sprint(s.WasmChunkStoreBytes)},
		// The settings (update_settings), each once.
		{"controllers", strings.Join(s.Controllers, ", ")},
		{"freezing threshold", fmt.Sprintf("%d s", s.FreezingThreshold)},
		{"compute allocation", fmt.Sprintf("%d %%", s.ComputeAllocation)},
		{"memory allocation", orNone(s.MemoryAllocation)}, {"wasm memory limit", orNone(s.WasmMemoryLimit)},
		{"wasm memory threshold", fmt.Sprint(s.WasmMemoryThreshold)},
		{"reserved cycles limit", s.ReservedCyclesLimit.String()},
		{"log visibility", logVisibility(s)},
		{"certified data", orDash(s.CertifiedData)}, {"global timer", fmt.Sprint(s.GlobalTimer)},
		{"update methods", strings.Join(s.Updates, " ")}, {"query methods", strings.Join(s.Queries, " ")},
		{"composite query methods", strings.Join(s.Composite, " ")},
		{"messages", fmt.Sprint(s.Messages)}, {"instructions", fmt.Sprint(s.Instructions)},
		{"query stats", fmt.Sprintf("%d calls, %d instructions, %d bytes in, %d bytes out", s.QueryStats.Calls,
			s.QueryStats.Instructions, s.QueryStats.RequestBytes, s.QueryStats.ResponseBytes)},
		{"state hash", s.StateHash},
	}
	for _, v := range s.EnvVars {
		rows = append(rows, [2]string{"env", v.Name + "=" + v.Value})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range rows {
		// Method names and environment variables are the canister's.
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], printable(r[1]))
	}
	return tw.Flush()
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
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			if err := checkID("canister id", args[0]); err != nil {
				return err
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
			return g.change(cmd.Context(), "delete", args[0], caller, func(b api.Backend) error {
				return b.Delete(cmd.Context(), args[0], caller)
			})
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
			return g.change(cmd.Context(), verb, args[0], caller, func(b api.Backend) error {
				return b.SetStatus(cmd.Context(), args[0], caller, status)
			})
		},
	}
	cmd.Flags().StringVar(&caller, "caller", "", "principal making the call (default: anonymous); must be a controller")
	return cmd
}

// change runs a command that changes canister id (delete, start, stop)
// through a backend, and says what an interrupt means for it.
func (g *globals) change(ctx context.Context, verb, id, caller string, do func(api.Backend) error) error {
	if err := checkID("canister id", id); err != nil {
		return err
	}
	if err := checkCaller(caller); err != nil {
		return err
	}
	b, err := g.backend(ctx)
	if err != nil {
		return interruptedBefore(ctx, err, "before the "+verb+" was sent: nothing was done")
	}
	defer b.Close()
	err = do(b)
	if err != nil && ctx.Err() != nil {
		return interruptedError{fmt.Sprintf("during the %s of %s: it may still complete (or have completed); check with `cordon status %s`", verb, id, id)}
	}
	return err
}

func newServeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a long-lived node with an HTTP API (127.0.0.1:4943 by default)",
		Long: `Run a node that keeps canisters loaded, fires their timers and heartbeats,
and serves the JSON/HTTP API (described by api/openapi.json, also served at
/api/v1/openapi.json), Prometheus metrics on /metrics, and /healthz and
/readyz probes. While it runs, the other cordon commands on the same --home
talk to it. A home has one server: on a home already served, serve fails at
once, naming the running server's pid and address.

Before it opens the node, serve starts a sandbox as it will start them all
and has it run a test canister, then checks its confinement from the host
(the check 'cordon doctor' reports): when that fails it refuses to start,
naming the layer that failed.

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
durable either way.

Storage failure: when a commit's fsync fails, its outcome is unknown (its
caller is told so, with a 503); the node takes no more writes and the
server shuts down the same way and exits 1, for its supervisor to start
it again from what the disk holds.`,
		Example: `  cordon serve
  cordon serve --listen 127.0.0.1:4943 --log-level debug --log-format json
  cordon serve --listen 0.0.0.0:4943 --tls-cert cert.pem --tls-key key.pem
  curl -s -H "Authorization: Bearer $(cat ~/.local/share/cordon/token)" http://127.0.0.1:4943/metrics | grep cordon_messages_total`,
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
			hc := serveNodeConfig(cfg)
			hc.Metrics = m
			// A command that holds the store (a restart's stragglers)
			// is waited for, as commands wait for a starting server.
			// A home has one server: a second one fails at once instead
			// of waiting for the store, and so does one that finds a
			// server started while it waited.
			running := func() error {
				if pid, addr, ok := liveServer(cmd.Context(), cfg.Home); ok {
					return fmt.Errorf("a cordon serve is already running on %s (pid %d, listening on %s); stop it first", cfg.Home, pid, addr)
				}
				return nil
			}
			if err := running(); err != nil {
				return err
			}
			// Before the node: a sandbox that cannot start or is not
			// confined as planned stops serve here, naming the layer,
			// not at each canister's first message. cordon doctor runs
			// the same check.
			if hc.Isolation == "sandbox" {
				stop := progress(g.stderr, "starting a sandbox to check it…")
				c := checkSandbox(cmd.Context(), hc, logger)
				stop()
				if c.Stage == host.CheckConfig {
					return c.Err // what host.Open would say
				}
				if c.Err != nil {
					return sandboxCheckError(c)
				}
				logger.Info("sandbox check passed: a canister sandbox ran the check canister, its layers verified from the host", "pid", c.Pid)
			}
			var node *host.Node
			err = g.waitForStore(cmd.Context(), cfg.Home, false, func() (bool, error) {
				if err := running(); err != nil {
					return false, err
				}
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
	// serve is strict unless told otherwise (RunE): its flag says so.
	g.bindDefault(f, "sandbox.strict", "true")
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
