package cli

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/config"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/sandbox"
)

// doctorProbe is sandbox.Doctor, replaced in tests by a kernel that lacks
// a layer.
var doctorProbe = sandbox.Doctor

func newDoctorCmd(g *globals) *cobra.Command {
	var output string
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

doctor judges with the configuration 'cordon serve' would use (flags, then
CORDON_* variables, then config.toml): it exits with an error when serve would
refuse to start, that is when the sandbox executable is refused, or when, in
strict mode (serve's default; sandbox.strict = false turns it off), a layer
is missing that sandbox.allow_missing does not name. A layer missing but
allowed, or missing on a node that is not strict, shows as such and is no
error. With isolation = inprocess no layer applies (doctor says so).`,
		Example: `  cordon doctor
  cordon doctor --insecure-allow-missing cgroup
  cordon doctor --strict=false
  cordon doctor --output json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			// As serve judges: strict unless configured otherwise, and a
			// configuration serve cannot load fails here too (below).
			strict, inprocess := true, false
			var allowed []sandbox.Layer
			cfg, cfgErr := g.config()
			if cfgErr == nil {
				g.logger(cfg) // the probes' warnings in the configured format
				if cfg.Source("sandbox.strict") != config.FromDefault {
					strict = cfg.Host.Sandbox.Strict
				}
				inprocess = cfg.Isolation == "inprocess"
				var err error
				if allowed, err = sandbox.ParseLayers(strings.Join(cfg.Host.Sandbox.AllowMissing, ",")); err != nil {
					return usageError{fmt.Errorf("sandbox.allow_missing: %w", err)}
				}
			}
			r := doctorProbe()
			// The layers whose absence makes serve refuse to start.
			var refused []string
			if strict && !inprocess {
				for _, l := range r.Missing() {
					if !slices.Contains(allowed, l) {
						refused = append(refused, string(l))
					}
				}
			}
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
					Kernel        string   `json:"kernel"`
					Rootless      bool     `json:"rootless"`
					Isolation     string   `json:"isolation,omitempty"`
					Strict        bool     `json:"strict"`
					Refused       []string `json:"missing_refused"` // missing layers that make serve refuse to start
					Layers        []layer  `json:"layers"`
					DirtyTracking layer    `json:"dirty_page_tracking"`
					CgroupEntry   struct {
						Expedited bool   `json:"expedited"`
						Detail    string `json:"detail"`
					} `json:"cgroup_entry"`
					Executable executable `json:"sandbox_executable"`
				}{Kernel: r.Kernel, Rootless: r.Rootless, Strict: strict, Refused: refused, DirtyTracking: layer{"dirty page tracking", trackingOK, tracking},
					Executable: executable{exe.Path, exe.Worker, exe.Sealed, exe.Build, exe.Note, ""}}
				out.CgroupEntry.Expedited, out.CgroupEntry.Detail = r.CgroupEntry.Expedited, r.CgroupEntry.Detail
				if cfg != nil {
					out.Isolation = cfg.Isolation
				}
				if out.Refused == nil {
					out.Refused = []string{}
				}
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
				if inprocess {
					fmt.Fprintln(g.stdout, "isolation: inprocess: INSECURE, canisters run unconfined in the host process and none of these layers applies")
				}
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "LAYER\tSTATUS\tDETAIL")
				for _, l := range r.Layers {
					st := "ok"
					switch {
					case l.Available:
					case slices.Contains(allowed, l.Layer):
						st = "missing (allowed)"
					case !strict:
						st = "missing (not strict)"
					default:
						st = "MISSING"
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
			if len(refused) > 0 {
				return fmt.Errorf("strict mode: confinement layers missing: %s; cordon serve would refuse to start "+
					"(INSECURE: --insecure-allow-missing %s, or sandbox.strict = false, runs without them)",
					strings.Join(refused, ","), strings.Join(refused, ","))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&output, "output", "text", "text or json")
	// serve's flags, with serve's default.
	g.bindDefault(f, "sandbox.strict", "true")
	g.bind(f, "sandbox.allow_missing")
	return cmd
}
