package cli

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/config"
	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/sandbox"
)

// doctorProbe is sandbox.Doctor, replaced in tests by a kernel that lacks
// a layer.
var doctorProbe = sandbox.Doctor

// sandboxCheckTimeout bounds serve's and doctor's live sandbox check (one
// compile and one message, on a possibly loaded host).
const sandboxCheckTimeout = 2 * time.Minute

// serveNodeConfig is the node configuration cordon serve opens (doctor
// checks with it too).
func serveNodeConfig(cfg *config.Config) host.Config {
	hc := cfg.Host
	// Its connections, and the listeners and log streams around them,
	// are the server's descriptors (host/descriptors.go).
	hc.ReservedDescriptors = cfg.MaxConns + 16
	return hc
}

// checkSandbox runs the live sandbox check for a node configuration;
// logger (nil: none) gets what its sandboxes' start-ups log.
func checkSandbox(ctx context.Context, hc host.Config, logger *slog.Logger) *host.SandboxCheck {
	ctx, cancel := context.WithTimeout(ctx, sandboxCheckTimeout)
	defer cancel()
	return host.CheckSandbox(ctx, hc, logger)
}

// sandboxCheckError is serve's and doctor's error for a failed check.
func sandboxCheckError(c *host.SandboxCheck) error {
	where := "sandbox check failed"
	if l, ok := c.FailedLayer(); ok {
		where += " in layer " + string(l)
	}
	return fmt.Errorf("%s (%s): %w", where, c.Stage, c.Err)
}

func newDoctorCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Report which sandbox confinement layers this kernel and user allow",
		Long: `doctor probes this kernel and user, layer by layer, for what a canister
sandbox can be confined with: clean environment and fds, session, parent-death
signal, user/pid/net/mount/ipc/uts/cgroup namespaces, oom_score_adj 1000 (the
kernel's OOM killer takes a sandbox before the host; the host lowers it to 500
while a sandbox executes, so idle ones go first), pivot_root into an empty
root, a cgroup with memory/pids/cpu limits inside the node's group cgroup (a
hard memory limit on all sandboxes together, sandbox.node_memory_bytes; the
cgroup layer is available only where both can be made), rlimits, dropped capabilities,
no_new_privs, Landlock and the seccomp allowlist. It also says whether the
kernel can report the pages a message wrote (PAGEMAP_SCAN, Linux 6.7), which
keeps a message's cost independent of the heap size, how much the home's
file system has free against the disk margin (limits.disk_margin: below it
updates and installs that write canister data are refused; reported, not an
error), how a new sandbox joins
its cgroup (an attach that waits for an RCU grace period unless the kernel
expedites them: part of a cold spawn's latency), and which executable
sandboxes run: sandbox.binary if set (it must be cmd/cordon-sandbox of this
build, else 'cordon serve' refuses to start and doctor fails), else a
cordon-sandbox next to this executable if it is of the same build, else cordon
itself.

Then it starts real sandboxes as 'cordon serve' would (same settings, same
spawner): a compiler sandbox compiles a tiny canister built in memory, a
canister sandbox runs one update of it, and the host checks that sandbox's
layers from outside while it lives (namespaces, mount table, cgroup and the
node group's limit, oom_score_adj (and whether the host can lower it while
the sandbox executes), rlimits, and on every thread capabilities,
no_new_privs and seccomp). The
'live sandbox' line says whether that worked and, if not, which layer
failed; the table below it says, layer by layer, what the host verified and
how it knows the layers it cannot see. serve runs the same check before it
opens the node, and refuses to start when it fails. Nothing of the home is
used: the check's compiled artifact goes to a temporary directory.

doctor judges with the configuration 'cordon serve' would use (flags, then
CORDON_* variables, then config.toml): it exits with an error when serve would
refuse to start, that is when the sandbox executable is refused, when, in
strict mode (serve's default; sandbox.strict = false turns it off), a layer
is missing that sandbox.allow_missing does not name, or when the live
sandbox check fails (it also fails where the open file limit is too low for
serve's node). A layer missing but allowed, or missing on a node that
is not strict, shows as such and is no error. With isolation = inprocess no
layer applies and no sandbox is started (doctor says so).`,
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
			// The free space serve's store would keep (limits.disk_margin):
			// reported, not a reason to refuse (serve warns too).
			var disk host.DiskRoom
			diskErr := cfgErr
			if cfgErr == nil {
				disk, diskErr = host.CheckDiskRoom(serveNodeConfig(cfg))
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
			// The live check, unless serve would not get as far.
			var live *host.SandboxCheck
			liveSkipped := ""
			switch {
			case cfgErr != nil:
				liveSkipped = "the configuration did not load"
			case inprocess:
				liveSkipped = "isolation = inprocess"
			case exeErr != nil || len(refused) > 0:
				liveSkipped = "cordon serve would refuse to start (above)"
			default:
				// As serve has it; the check's failure is printed below,
				// not logged.
				hc := serveNodeConfig(cfg)
				hc.Sandbox.Strict = strict
				live = checkSandbox(cmd.Context(), hc, nil)
			}
			if output == "json" {
				type layer struct {
					Layer     string `json:"layer"`
					Available bool   `json:"available"`
					Detail    string `json:"detail,omitempty"`
				}
				type liveLayer struct {
					Layer    string `json:"layer"`
					Applied  bool   `json:"applied"`
					Verified bool   `json:"verified"` // checked from the host, in effect
					How      string `json:"how,omitempty"`
					Detail   string `json:"detail,omitempty"`
					Error    string `json:"error,omitempty"`
				}
				type liveCheck struct {
					Ran         bool        `json:"ran"`
					OK          bool        `json:"ok"`
					Skipped     string      `json:"skipped,omitempty"` // why it did not run
					Pid         int         `json:"pid,omitempty"`
					Stage       string      `json:"stage,omitempty"`        // where it failed
					FailedLayer string      `json:"failed_layer,omitempty"` // the layer it failed in, if known
					Error       string      `json:"error,omitempty"`
					Layers      []liveLayer `json:"layers,omitempty"`
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
					Live       liveCheck  `json:"live_sandbox"`
					Disk       struct {
						FreeBytes   uint64 `json:"free_bytes"`
						TotalBytes  uint64 `json:"total_bytes"`
						MarginBytes uint64 `json:"margin_bytes"` // limits.disk_margin as the store keeps it
						Below       bool   `json:"below_margin"`
						Error       string `json:"error,omitempty"`
					} `json:"disk"`
				}{Kernel: r.Kernel, Rootless: r.Rootless, Strict: strict, Refused: refused, DirtyTracking: layer{"dirty page tracking", trackingOK, tracking},
					Executable: executable{exe.Path, exe.Worker, exe.Sealed, exe.Build, exe.Note, ""}}
				out.CgroupEntry.Expedited, out.CgroupEntry.Detail = r.CgroupEntry.Expedited, r.CgroupEntry.Detail
				if cfg != nil {
					out.Isolation = cfg.Isolation
				}
				if out.Refused == nil {
					out.Refused = []string{}
				}
				out.Disk.FreeBytes, out.Disk.TotalBytes, out.Disk.MarginBytes, out.Disk.Below = disk.Free, disk.Total, disk.Margin, disk.Below()
				if diskErr != nil {
					out.Disk.Error = diskErr.Error()
				}
				if exeErr != nil {
					out.Executable.Error = exeErr.Error()
				}
				for _, l := range r.Layers {
					out.Layers = append(out.Layers, layer{string(l.Layer), l.Available, l.Detail})
				}
				out.Live.Skipped = liveSkipped
				if live != nil {
					out.Live.Ran, out.Live.OK, out.Live.Pid, out.Live.Stage = true, live.Err == nil, live.Pid, live.Stage
					if live.Err != nil {
						out.Live.Error = live.Err.Error()
					}
					if l, ok := live.FailedLayer(); ok {
						out.Live.FailedLayer = string(l)
					}
					for _, l := range live.Layers {
						ll := liveLayer{string(l.Layer), l.Applied, l.Verified, l.How, l.Detail, ""}
						if l.Err != nil {
							ll.Error = l.Err.Error()
						}
						out.Live.Layers = append(out.Live.Layers, ll)
					}
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
				fmt.Fprintf(g.stdout, "disk: %s\n", diskLine(disk, diskErr))
				if exeErr != nil {
					fmt.Fprintf(g.stdout, "sandbox executable: REFUSED: %v\n", exeErr)
				} else {
					fmt.Fprintf(g.stdout, "sandbox executable: %s\n", exe)
				}
				if err := printLive(g, live, liveSkipped); err != nil {
					return err
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
			if live != nil && live.Err != nil {
				return fmt.Errorf("%w; cordon serve would refuse to start", sandboxCheckError(live))
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

// diskLine says how much the home's file system has free against the
// disk margin.
func diskLine(d host.DiskRoom, err error) string {
	if err != nil {
		return fmt.Sprintf("free space unknown (%v): no disk margin is kept", err)
	}
	line := fmt.Sprintf("%s free of %s on the home's file system", humanBytes(d.Free), humanBytes(d.Total))
	switch {
	case d.Margin == 0:
		return line + ", no disk margin kept"
	case d.Below():
		return line + fmt.Sprintf(": BELOW the disk margin of %s (limits.disk_margin): updates and installs that write canister data are refused until there is room", humanBytes(d.Margin))
	}
	return line + fmt.Sprintf(", disk margin %s (limits.disk_margin): ok", humanBytes(d.Margin))
}

// printLive prints the live sandbox check: one line saying whether it
// passed (or why it did not run), then what the host saw of each layer.
func printLive(g *globals, live *host.SandboxCheck, skipped string) error {
	switch {
	case live == nil:
		fmt.Fprintf(g.stdout, "live sandbox: not run: %s\n", skipped)
		return nil
	case live.Err != nil:
		where := ""
		if l, ok := live.FailedLayer(); ok {
			where = " in layer " + string(l)
		}
		fmt.Fprintf(g.stdout, "live sandbox: FAILED%s (%s): %v\n", where, live.Stage, live.Err)
		if len(live.Layers) == 0 {
			return nil
		}
	default:
		fmt.Fprintf(g.stdout, "live sandbox: ok: a canister sandbox started as cordon serve starts them (pid %d) ran a test canister; the host then checked its layers\n", live.Pid)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LAYER\tLIVE\tHOW THE HOST KNOWS")
	for _, l := range live.Layers {
		st, how := "applied", l.How
		switch {
		case l.Err != nil:
			st, how = "FAILED", l.Err.Error()
		case l.Verified:
			st = "verified"
		case !l.Applied:
			st, how = "not applied", l.Detail
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", l.Layer, st, how)
	}
	return tw.Flush()
}
