package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/api"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Inspect cordon's configuration",
		Long: `cordon's configuration has four layers, highest precedence first:

  1. flags: --isolation, --log-level, --log-format, serve's --listen,
     --tls-cert, --tls-key, --require-token, --strict and
     --insecure-allow-missing, and --set KEY=VALUE for any key;
  2. environment variables: CORDON_ plus the key in capitals with '.' as '_'
     (limits.update_instructions: CORDON_LIMITS_UPDATE_INSTRUCTIONS);
  3. the TOML file --config FILE, else $CORDON_CONFIG, else
     <home>/config.toml when it exists (sections [log], [server], [limits],
     [sandbox], [fees]; unknown keys are errors);
  4. the defaults (the IC's limits and fees).

The home itself is --home, else $CORDON_HOME, else ~/.local/share/cordon.`,
		Example: `  cordon config show
  cordon config show --output json
  cordon config show --plain > ~/.local/share/cordon/config.toml
  CORDON_LIMITS_UPDATE_INSTRUCTIONS=1_000_000 cordon config show`,
		Args: groupArgs,
		RunE: groupRun,
	}
	cmd.AddCommand(newConfigShowCmd(g))
	return cmd
}

func newConfigShowCmd(g *globals) *cobra.Command {
	var output string
	var plain bool
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Print the effective configuration and where each value came from",
		Long: `Print the effective configuration as TOML. Each value is followed by its
source (default, file, env or flag) and its environment variable; --plain
leaves those out, which gives a valid config.toml to start from.`,
		Example: `  cordon config show
  cordon --set limits.log_lines=5000 config show
  cordon config show --output json | jq '."limits.update_instructions"'`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.config()
			if err != nil {
				return err
			}
			switch output {
			case "json":
				return writeJSON(g.stdout, cfg.Map())
			case "toml", "text":
			default:
				return usageError{fmt.Errorf("--output %q: want toml or json", output)}
			}
			if !plain {
				file := cfg.File
				if file == "" {
					file = "none"
				}
				fmt.Fprintf(g.stdout, "# home: %s\n# file: %s\n# precedence: flag > env > file > default\n\n", cfg.Home, file)
			}
			_, err = fmt.Fprint(g.stdout, cfg.TOML(!plain))
			return err
		},
	}
	cmd.Flags().StringVar(&output, "output", "toml", "toml or json")
	cmd.Flags().BoolVar(&plain, "plain", false, "leave out the sources (a valid config.toml)")
	return cmd
}

func newCompletionCmd(g *globals, root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish|powershell",
		Short: "Print the shell completion script",
		Long: `Print a completion script for your shell. It completes commands, flags,
configuration keys (--set) and canister ids (from the running server or the
store).

  bash:  source <(cordon completion bash)
         or: cordon completion bash > /etc/bash_completion.d/cordon
  zsh:   cordon completion zsh > "${fpath[1]}/_cordon"
  fish:  cordon completion fish > ~/.config/fish/completions/cordon.fish`,
		Example: `  source <(cordon completion bash)
  cordon completion zsh > "${fpath[1]}/_cordon"
  cordon completion fish > ~/.config/fish/completions/cordon.fish`,
		ValidArgs: []string{"bash", "zsh", "fish", "powershell"},
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(1)(cmd, args); err != nil {
				return usageError{err}
			}
			if err := cobra.OnlyValidArgs(cmd, args); err != nil {
				return usageError{err}
			}
			return nil
		},
		RunE: func(_ *cobra.Command, args []string) error {
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(g.stdout, true)
			case "zsh":
				return root.GenZshCompletion(g.stdout)
			case "fish":
				return root.GenFishCompletion(g.stdout, true)
			default:
				return root.GenPowerShellCompletionWithDesc(g.stdout)
			}
		},
	}
}

// completeIDs completes canister ids for a command's first argument: from
// the running server, else from the store if it is free (never waiting for
// its lock).
func completeIDs(g *globals) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		cfg, err := g.config()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var ids []string
		if c, err := api.Dial(ctx, cfg.Home); err == nil && c != nil {
			defer c.Close()
			if list, err := c.List(ctx); err == nil {
				for _, s := range list {
					ids = append(ids, s.ID)
				}
			}
		} else if _, err := os.Stat(filepath.Join(cfg.Home, "cordon.db")); err != nil {
			// No store: nothing to complete (and nothing to create).
		} else if st, err := store.Open(cfg.Home, 50*time.Millisecond); err == nil {
			raw, _ := st.CanisterIDs()
			st.Close()
			for _, b := range raw {
				if p, err := principal.FromBytes(b); err == nil {
					ids = append(ids, p.String())
				}
			}
		}
		out := ids[:0]
		for _, id := range ids {
			if strings.HasPrefix(id, prefix) {
				out = append(out, id)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
