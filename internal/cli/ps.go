package cli

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/metrics"
)

// psRow is one live sandbox as `cordon ps` prints it.
type psRow struct {
	Canister string    `json:"canister"` // "" for a compiler or blank sandbox
	Kind     string    `json:"kind"`     // "canister", "blank", "primed" or "compiler"
	PID      int       `json:"pid"`
	RSSBytes uint64    `json:"rss_bytes"`
	Started  time.Time `json:"started"`
	AgeSecs  float64   `json:"age_seconds"`
	Messages uint64    `json:"messages"`
}

// sandboxSource is what a backend offers when it can list its sandboxes
// (a local node, or a client of a server with GET /api/v1/sandboxes).
type sandboxSource interface {
	Sandboxes(ctx context.Context) ([]metrics.SandboxInfo, error)
}

func newPsCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List the live sandbox processes of the running node",
		Long: `List the sandbox processes of the 'cordon serve' running on this home: one per
canister that executed recently (idle ones are stopped and respawn on their
next message), the warm pool's blank sandboxes (confined, holding no canister
yet: the next new or evicted canister takes one, sandbox.warm_pool), the
primed sandboxes (kind "primed": the module of a recently evicted canister
loaded, no canister; its next message takes it, sandbox.preload_pool), plus
compiler sandboxes while a module compiles.

Sandboxes exist only while a node runs with --isolation sandbox, so without a
running 'cordon serve' the list is empty. Columns: canister id, kind, pid (in
the host's pid namespace), resident memory, age, and messages executed by
this sandbox process (a respawned sandbox starts again from 0).`,
		Example: `  cordon ps
  cordon ps --output json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("--output %q: want text or json", output)}
			}
			rows, note, err := listSandboxes(cmd.Context(), g)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(g.stdout, rows)
			}
			if note != "" {
				fmt.Fprintln(g.stderr, note)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CANISTER\tKIND\tPID\tRSS\tAGE\tMESSAGES")
			for _, r := range rows {
				msgs := strconv.FormatUint(r.Messages, 10)
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", orDash(r.Canister), r.Kind, r.PID, humanBytes(r.RSSBytes),
					time.Duration(r.AgeSecs*float64(time.Second)).Round(time.Second), msgs)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&output, "output", "text", "text or json (a list of objects with at least canister and pid)")
	return cmd
}

// listSandboxes asks the backend: the running server (GET
// /api/v1/sandboxes), or a node opened here, which has none live.
func listSandboxes(ctx context.Context, g *globals) ([]psRow, string, error) {
	b, err := g.backend(ctx)
	if err != nil {
		return nil, "", err
	}
	defer b.Close()
	note := ""
	if _, local := b.(*localBackend); local {
		note = "no 'cordon serve' is running on this home: sandboxes live only while a node runs"
	}
	src, ok := b.(sandboxSource)
	if !ok {
		return nil, "", errors.New("this backend cannot list sandboxes")
	}
	list, err := src.Sandboxes(ctx)
	if err != nil {
		return nil, "", err
	}
	rows := make([]psRow, 0, len(list))
	for _, s := range list {
		r := psRow{Canister: s.Canister, Kind: s.Kind, PID: s.PID, RSSBytes: s.RSSBytes, Started: s.Started, Messages: s.Executions}
		if !s.Started.IsZero() {
			r.AgeSecs = time.Since(s.Started).Seconds()
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool {
		return rows[i].Canister < rows[j].Canister || (rows[i].Canister == rows[j].Canister && rows[i].PID < rows[j].PID)
	})
	return rows, note, nil
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
