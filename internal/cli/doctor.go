package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sandbox"
)

func newDoctorCmd(g *globals) *cobra.Command {
	var output, allowMissing string
	var strict bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Report which sandbox confinement layers this kernel and user allow",
		Long: `doctor probes this kernel and user, layer by layer, for what a canister
sandbox can be confined with: clean environment and fds, session, parent-death
signal, user/pid/net/mount/ipc/uts/cgroup namespaces, pivot_root into an empty
root, a cgroup with memory/pids/cpu limits, rlimits, dropped capabilities,
no_new_privs, Landlock and the seccomp allowlist. It also says whether the
kernel can report the pages a message wrote (PAGEMAP_SCAN, Linux 6.7), which
keeps a message's cost independent of the heap size, how a new sandbox joins
its cgroup (an attach that waits for an RCU grace period unless the kernel
expedites them: part of a cold spawn's latency), and which executable
sandboxes run: sandbox.binary if set (it must be cmd/cordon-sandbox of this
build, else 'cordon serve' refuses to start and doctor fails), else a
cordon-sandbox next to this executable if it is of the same build, else cordon
itself.

With --strict it exits with an error if any layer is missing, except those
named in --insecure-allow-missing (as 'cordon serve' would refuse to start
sandboxes).`,
		Example: `  cordon doctor
  cordon doctor --strict --insecure-allow-missing cgroup
  cordon doctor --output json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			allowed, err := sandbox.ParseLayers(allowMissing)
			if err != nil {
				return usageError{err}
			}
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			cfg, cfgErr := g.config()
			if cfgErr == nil {
				g.logger(cfg) // the probes' warnings in the configured format
			}
			r := sandbox.Doctor()
			// Not a confinement layer (strict mode does not need it): how
			// executions find the pages a message wrote.
			tracking, trackingOK := "PAGEMAP_SCAN: the kernel reports written pages; cost follows dirty pages", true
			if err := engine.ProbeWrittenPages(); err != nil {
				tracking, trackingOK = fmt.Sprintf("unavailable (%v): every execution compares the whole heap", err), false
			}
			// What sandboxes execute (sandbox.binary, else the default).
			var exe sandbox.Executable
			var exeErr error
			if cfgErr != nil {
				exeErr = cfgErr
			} else if cfg.Host.Sandbox.Binary != "" {
				exe, exeErr = sandbox.CheckExecutable(cfg.Host.Sandbox.Binary)
			} else {
				exe = sandbox.DefaultExecutable()
			}
			if output == "json" {
				type layer struct {
					Layer     string `json:"layer"`
					Available bool   `json:"available"`
					Detail    string `json:"detail,omitempty"`
				}
				type executable struct {
					Path   string `json:"path,omitempty"` // "" = cordon itself
					Worker bool   `json:"worker"`
					Sealed bool   `json:"sealed"`
					Build  string `json:"build,omitempty"`
					Note   string `json:"note,omitempty"`
					Error  string `json:"error,omitempty"`
				}
				out := struct {
					Kernel        string  `json:"kernel"`
					Rootless      bool    `json:"rootless"`
					Layers        []layer `json:"layers"`
					DirtyTracking layer   `json:"dirty_page_tracking"`
					CgroupEntry   struct {
						Expedited bool   `json:"expedited"`
						Detail    string `json:"detail"`
					} `json:"cgroup_entry"`
					Executable executable `json:"sandbox_executable"`
				}{Kernel: r.Kernel, Rootless: r.Rootless, DirtyTracking: layer{"dirty page tracking", trackingOK, tracking},
					Executable: executable{exe.Path, exe.Worker, exe.Sealed, exe.Build, exe.Note, ""}}
				out.CgroupEntry.Expedited, out.CgroupEntry.Detail = r.CgroupEntry.Expedited, r.CgroupEntry.Detail
				if exeErr != nil {
					out.Executable.Error = exeErr.Error()
				}
				for _, l := range r.Layers {
					out.Layers = append(out.Layers, layer{string(l.Layer), l.Available, l.Detail})
				}
				if err := writeJSON(g.stdout, out); err != nil {
					return err
				}
			} else if output == "text" {
				mode := "root"
				if r.Rootless {
					mode = "rootless"
				}
				fmt.Fprintf(g.stdout, "kernel: %s (%s)\n", r.Kernel, mode)
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "LAYER\tSTATUS\tDETAIL")
				for _, l := range r.Layers {
					st := "ok"
					if !l.Available {
						st = "MISSING"
						for _, a := range allowed {
							if a == l.Layer {
								st = "missing (allowed)"
							}
						}
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", l.Layer, st, l.Detail)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "dirty page tracking: %s\n", tracking)
				fmt.Fprintf(g.stdout, "cgroup entry: %s\n", r.CgroupEntry.Detail)
				if exeErr != nil {
					fmt.Fprintf(g.stdout, "sandbox executable: REFUSED: %v\n", exeErr)
				} else {
					fmt.Fprintf(g.stdout, "sandbox executable: %s\n", exe)
				}
			} else {
				return usageError{fmt.Errorf("--output %q: want text or json", output)}
			}
			if exeErr != nil {
				return fmt.Errorf("sandbox executable: %w", exeErr)
			}
			if strict {
				var missing []string
			next:
				for _, l := range r.Missing() {
					for _, a := range allowed {
						if a == l {
							continue next
						}
					}
					missing = append(missing, string(l))
				}
				if len(missing) > 0 {
					return fmt.Errorf("strict mode: confinement layers missing: %s", strings.Join(missing, ","))
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&output, "output", "text", "text or json")
	f.BoolVar(&strict, "strict", false, "exit with an error if a layer is missing")
	f.StringVar(&allowMissing, "insecure-allow-missing", "", "comma-separated layers strict mode may do without")
	return cmd
}
