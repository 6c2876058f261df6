package cli

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/api"
	"github.com/cordon-dev/cordon/internal/host"
)

func newInstallCmd(g *globals) *cobra.Command {
	var id, mode, arg, typ, caller, cyclesFlag, persistence, output string
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
  cordon install --type raw --arg 4449444c0000 app.wasm`,
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
			b, err := g.backend(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			resp, err := b.Install(cmd.Context(), api.InstallRequest{ID: id, Mode: mode, Wasm: wasm, Arg: argBytes,
				Caller: caller, Cycles: cyclesFlag, KeepHeap: persistence})
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
	f.StringVar(&persistence, "wasm-memory-persistence", "", "on upgrade: keep or replace the Wasm heap (default: keep for Motoko enhanced orthogonal persistence)")
	f.StringVar(&output, "output", "text", "text or json")
	return cmd
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
			resp, err := b.Call(cmd.Context(), api.CallRequest{ID: id, Method: method, Arg: argBytes, Caller: caller, Query: query})
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
				{"stable bytes", fmt.Sprint(s.StableBytes)}, {"certified data", orDash(s.CertifiedData)},
				{"global timer", fmt.Sprint(s.GlobalTimer)}, {"update methods", strings.Join(s.Updates, " ")},
				{"query methods", strings.Join(s.Queries, " ")}, {"messages", fmt.Sprint(s.Messages)},
				{"instructions", fmt.Sprint(s.Instructions)}, {"cycles burned", s.CyclesBurned.String()},
				{"state hash", s.StateHash},
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

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newLogsCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "logs ID",
		Short:   "Print a canister's debug_print output (most recent lines kept per canister)",
		Example: `  cordon logs rwlgt-iiaaa-aaaaa-aaaaa-cai`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := g.backend(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			logs, err := b.Logs(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(g.stdout, logs)
			}
			for _, l := range logs {
				fmt.Fprintf(g.stdout, "%s [%d] %s\n", l.Time.Format("2006-01-02T15:04:05.000Z07:00"), l.Seq, l.Text)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&output, "output", "text", "text or json")
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
	var listen string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a long-lived node with an HTTP API on 127.0.0.1",
		Long: `Run a node that keeps canisters loaded and serves the HTTP API. While it
runs, the other cordon commands on the same --home talk to it.`,
		Example: `  cordon serve
  cordon serve --listen 127.0.0.1:4943 --log-level info`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.config()
			if err != nil {
				return err
			}
			logger := g.logger()
			node, err := host.Open(cfg, logger)
			if err != nil {
				return err
			}
			defer node.Close()
			if err := node.LoadAll(cmd.Context()); err != nil {
				return err
			}
			return api.Serve(cmd.Context(), node, listen, cfg.Home, logger)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:4943", "address to listen on (loopback only)")
	return cmd
}

func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
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
