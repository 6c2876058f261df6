package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/bench"
)

func newBenchCmd(g *globals) *cobra.Command {
	var (
		quick, write, installDeps, scale bool
		corpus, output, plots, cpuProf   string
		only                             []string
		scaleCounts                      []int
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Run the benchmark suite and rewrite BENCHMARKS.md",
		Long: `Run cordon's benchmark suite: spawn-to-ready of a confined sandbox (cold and
from the pool) against bubblewrap running a static no-op; per-message latency
sandboxed vs in-process; throughput over 1, 10 and 100 canisters; commit cost
vs heap size and dirty pages; compute speed of the corpus compute canister
against V8, and the cost of metering; idle memory per sandbox and how many
sandboxes this machine holds; neighbours under attack. --scale runs, alone,
the scale section: thousands of canisters on one node with a bounded pool of
live sandboxes under random traffic (minutes; not part of the full suite).

Every figure is printed as its median over N runs with the smallest and
largest, and its ratio to a baseline measured in the same run. Numbers are
printed, never asserted.

The full suite takes about 10 minutes and rewrites the section of
BENCHMARKS.md between <!-- bench:start --> and <!-- bench:end --> (the rest of
the file is left alone) and the plots next to it (bench/*.svg). --quick runs
a smaller suite in about a minute and only prints, unless --write.

It runs nodes in temporary directories (never --home) and spawns sandboxes
from this binary. bubblewrap is installed with apt-get when missing and
running as root (--install-deps=false skips the baseline instead); V8 is the
node on PATH. The corpus canisters are read from ../shared/canisters beside
the checkout, or --corpus.`,
		Example: `  cordon bench --quick
  cordon bench
  cordon bench --quick --only spawn,compute
  cordon bench --scale --quick
  cordon bench --corpus /path/to/canisters --output /tmp/BENCHMARKS.md`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if scale {
				if len(only) > 0 {
					return usageError{fmt.Errorf("--scale runs the scale section alone: drop --only")}
				}
				only = []string{"scale"}
			}
			for _, n := range scaleCounts {
				if n < 1 || n > 1_000_000 {
					return usageError{fmt.Errorf("--scale-counts %d: want 1 to 1000000 canisters", n)}
				}
			}
			for _, s := range only {
				ok := slices.ContainsFunc(bench.Sections, func(sec bench.Section) bool { return sec.Key == s })
				if !ok {
					var keys []string
					for _, sec := range bench.Sections {
						keys = append(keys, sec.Key)
					}
					return usageError{fmt.Errorf("--only %q: want some of %s", s, strings.Join(keys, ", "))}
				}
			}
			if !cmd.Flags().Changed("write") {
				write = !quick && len(only) == 0
			}
			wd, err := os.Getwd()
			if err != nil {
				return err
			}
			root := bench.FindRepoRoot(wd)
			if corpus == "" {
				if root == "" {
					return usageError{fmt.Errorf("not inside a cordon checkout: pass --corpus DIR (the corpus canisters)")}
				}
				corpus = filepath.Join(filepath.Dir(root), "shared", "canisters")
			}
			if output == "" && write {
				if root == "" {
					return usageError{fmt.Errorf("not inside a cordon checkout: pass --output FILE to write the report")}
				}
				output = filepath.Join(root, "BENCHMARKS.md")
			}
			var outputs []string // what this run writes, relative to the checkout
			if write && root != "" {
				if abs, err := filepath.Abs(output); err == nil {
					output = abs
				}
				if rel, err := filepath.Rel(root, output); err == nil {
					outputs = append(outputs, rel, filepath.Join(filepath.Dir(rel), plots))
				}
			}
			if cpuProf != "" {
				stop, err := startCPUProfile(cpuProf)
				if err != nil {
					return err
				}
				defer stop()
			}
			rep, err := bench.Run(cmd.Context(), bench.Options{Quick: quick, Corpus: corpus, RepoRoot: root,
				Outputs: outputs, Only: only, InstallDeps: installDeps, ScaleCounts: scaleCounts, Out: g.stdout, Log: g.stderr})
			if err != nil {
				return err
			}
			if !write {
				return nil
			}
			if scale {
				// The scale section is not part of the generated section
				// (the full suite does not run it): write its plot, and
				// print its markdown for BENCHMARKS.md's own section.
				files, err := rep.WritePlots(filepath.Join(filepath.Dir(output), plots))
				for _, f := range files {
					fmt.Fprintf(g.stdout, "wrote %s\n", f)
				}
				if err == nil {
					fmt.Fprint(g.stdout, "\n"+rep.SectionMarkdown("scale", plots))
				}
				return err
			}
			files, err := rep.WriteFiles(output, plots)
			if err != nil {
				return err
			}
			for _, f := range files {
				fmt.Fprintf(g.stdout, "wrote %s\n", f)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&quick, "quick", false, "a smaller suite, about a minute (fewer runs and sizes); prints only unless --write")
	f.BoolVar(&write, "write", true, "rewrite the BENCHMARKS.md section and the plots (default: yes for the full suite, no for --quick or --only)")
	f.StringVar(&corpus, "corpus", "", "directory of the corpus canisters (default: ../shared/canisters beside the checkout)")
	f.StringVar(&output, "output", "", "the markdown file to update (default: BENCHMARKS.md of the checkout)")
	f.StringVar(&plots, "plots", "bench", "directory of the SVG plots, relative to the markdown file")
	f.StringSliceVar(&only, "only", nil, "run only these sections: spawn, latency, throughput, commit, compute, memory, soak, scale")
	f.BoolVar(&scale, "scale", false, "run only the scale section (thousands of canisters, minutes; --quick: small counts); --write writes its plot and prints its markdown")
	f.IntSliceVar(&scaleCounts, "scale-counts", nil, "the scale section's canister counts (default 100,1000,10000; --quick 10,30,100)")
	f.StringVar(&cpuProf, "cpuprofile", "", "write a CPU profile of the host process (not of its sandboxes) for the whole run to this file (go tool pprof)")
	f.BoolVar(&installDeps, "install-deps", true, "install bubblewrap with apt-get if it is missing (as root)")
	return cmd
}

// startCPUProfile profiles this process into path until stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}
