package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/internal/boundary"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/sandbox"
)

// noopC is the static no-op the bubblewrap baseline runs. With an argument
// it waits for a signal instead (an idle confined process, for memory).
const noopC = `#include <unistd.h>
int main(int argc, char **argv) {
	(void)argv;
	if (argc > 1)
		pause();
	return 0;
}
`

const noopGo = `package main

import (
	"os"
	"os/signal"
)

func main() {
	if len(os.Args) > 1 {
		c := make(chan os.Signal, 1)
		signal.Notify(c)
		<-c
	}
}
`

// buildNoop builds the static no-op with gcc -static, else with Go
// (CGO_ENABLED=0).
func (e *env) buildNoop() {
	if e.noop != "" || e.noopWhy != "" {
		return
	}
	dir := filepath.Join(e.tmp, "noop")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.noopWhy = err.Error()
		return
	}
	bin := filepath.Join(dir, "noop")
	var whyC string
	if gcc, err := exec.LookPath("gcc"); err == nil {
		src := filepath.Join(dir, "noop.c")
		if err := os.WriteFile(src, []byte(noopC), 0o644); err != nil {
			e.noopWhy = err.Error()
			return
		}
		out, err := exec.CommandContext(e.ctx, gcc, "-static", "-O2", "-o", bin, src).CombinedOutput()
		if err == nil {
			e.noop = bin
			e.rep.Note("spawn", "The no-op is C, `gcc -static -O2` (%s), built by the suite.", humanBytes(fileSize(bin)))
			return
		}
		whyC = "gcc -static: " + firstLine(string(out))
	} else {
		whyC = "no gcc"
	}
	src := filepath.Join(dir, "main.go")
	_ = os.WriteFile(src, []byte(noopGo), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module noop\n\ngo 1.21\n"), 0o644)
	cmd := exec.CommandContext(e.ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		e.noopWhy = whyC + "; go build: " + firstLine(string(out))
		return
	}
	e.noop = bin
	e.rep.Note("spawn", "The no-op is a static Go program (%s: %s), built by the suite.", whyC, humanBytes(fileSize(bin)))
}

func fileSize(path string) uint64 {
	if st, err := os.Stat(path); err == nil {
		return uint64(st.Size())
	}
	return 0
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// findBwrap finds bubblewrap, installing it from Debian's packages if it is
// missing and allowed.
func (e *env) findBwrap() {
	if e.bwrap != "" || e.bwrapWhy != "" {
		return
	}
	if p, err := exec.LookPath("bwrap"); err == nil {
		e.bwrap = p
		return
	}
	if !e.opt.InstallDeps {
		e.bwrapWhy = "bwrap is not installed (apt-get install bubblewrap; --install-deps=false forbade installing it)"
		return
	}
	if os.Geteuid() != 0 {
		e.bwrapWhy = "bwrap is not installed and installing it needs root (apt-get install bubblewrap)"
		return
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		e.bwrapWhy = "bwrap is not installed and there is no apt-get to install it"
		return
	}
	e.log("bwrap is missing: apt-get update && apt-get install -y bubblewrap")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "bubblewrap"}} {
		cmd := exec.CommandContext(e.ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			e.bwrapWhy = fmt.Sprintf("installing bubblewrap failed: apt-get %s: %v: %s", args[0], err, lastLine(string(out)))
			return
		}
	}
	p, err := exec.LookPath("bwrap")
	if err != nil {
		e.bwrapWhy = "apt-get installed bubblewrap but bwrap is not on PATH"
		return
	}
	e.bwrap = p
	e.rep.Note("spawn", "bubblewrap was installed by the suite (`apt-get install bubblewrap`).")
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// bwrapArgs runs the no-op (bound read-only at /noop: bwrap's root is an
// empty tmpfs) with the flags.
func (e *env) bwrapCmd(ctx context.Context, extra ...string) *exec.Cmd {
	args := []string{"--unshare-all", "--die-with-parent", "--clearenv", "--ro-bind", e.noop, "/noop", "/noop"}
	return exec.CommandContext(ctx, e.bwrap, append(args, extra...)...)
}

func bwrapVersion(path string) string {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return "bwrap"
	}
	return strings.TrimSpace(string(out))
}

const (
	figBwrap     = "bwrap no-op: spawn to exit"
	figExecNoop  = "plain fork+exec of the no-op, no isolation: spawn to exit"
	figCold      = "cold: sandbox.Start + Ready"
	figColdMsg   = "cold message: query, sandbox evicted (spawn + load + run)"
	figPoolQuery = "from the pool: query, sandbox live"
	figPoolIdle  = "from the pool after an idle spell: query, sandbox live, idle 150 ms before"
	figWarmMsg   = "warm pool: query, sandbox evicted (take a blank sandbox + load + run)"
	figPrimedMsg = "primed: query, sandbox evicted (take a primed sandbox, module loaded + run)"
	// After the sandboxes' idle trim (500 ms; worker.idleTrimAfter), as an
	// evicted canister's next message comes (the idle timeout is minutes).
	figPoolLate   = "from the pool after a long idle spell: query, sandbox live, idle 1.2 s before"
	figPrimedLate = "primed, after its idle trim: query, sandbox evicted, primed 1.2 s before"
)

func (e *env) spawn() error {
	ctx := e.ctx
	const sec = "spawn"
	n := e.runs(10, 40)
	e.buildNoop()
	e.findBwrap()

	// Baseline: bubblewrap; then a plain exec and the cold sandbox. The
	// three take turns in every round, so load from elsewhere spreads
	// over all of them.
	bwrapOK := false
	switch {
	case e.noop == "":
		e.rep.Skip(sec, figBwrap, "no static no-op: "+e.noopWhy)
	case e.bwrap == "":
		e.rep.Skip(sec, figBwrap, e.bwrapWhy)
	default:
		if out, err := e.bwrapCmd(ctx).CombinedOutput(); err != nil {
			e.rep.Skip(sec, figBwrap, fmt.Sprintf("bwrap fails here: %v: %s", err, firstLine(string(out))))
		} else {
			bwrapOK = true
		}
	}
	// Cold: sandbox.Start (every available layer) + the worker's Ready;
	// the teardown (kill, reap, cgroup removal) is outside the timing.
	spec := sandbox.Spec{Label: "bench", Args: []string{boundary.ModeCanister.String(), "bench"}}
	coldOnce := func() (time.Duration, error) {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		t0 := time.Now()
		p, err := sandbox.Start(sctx, spec)
		if err == nil {
			_ = p.Conn().SetDeadline(time.Now().Add(30 * time.Second))
			err = boundary.NewConn(p.Conn()).AwaitReady(boundary.ModeCanister, func(boundary.LogLine) {})
		}
		d := time.Since(t0)
		if p != nil {
			_ = p.Kill()
			p.Wait()
			p.Conn().Close()
		}
		if err != nil {
			return 0, fmt.Errorf("sandbox start: %w", err)
		}
		return d, nil
	}
	timed := func(f func() error) (float64, error) {
		t0 := time.Now()
		err := f()
		return time.Since(t0).Seconds(), err
	}
	var bw, ex, cold []float64
	for i := -2; i < n; i++ { // two untimed warm-up rounds
		if err := ctx.Err(); err != nil {
			return err
		}
		if bwrapOK {
			t, err := timed(func() error { return e.bwrapCmd(ctx).Run() })
			if err != nil {
				return fmt.Errorf("bwrap: %w", err)
			}
			if i >= 0 {
				bw = append(bw, t)
			}
		}
		if e.noop != "" {
			t, err := timed(func() error { return exec.CommandContext(ctx, e.noop).Run() })
			if err != nil {
				return fmt.Errorf("no-op: %w", err)
			}
			if i >= 0 {
				ex = append(ex, t)
			}
		}
		d, err := coldOnce()
		if err != nil {
			return err
		}
		if i >= 0 {
			cold = append(cold, d.Seconds())
		}
	}
	if bwrapOK {
		e.rep.Add(&Figure{Section: sec, Name: figBwrap, Samples: bw})
		e.rep.Note(sec, "Baseline: `%s --unshare-all --die-with-parent --clearenv --ro-bind NOOP /noop /noop` (%s), "+
			"timed from fork to exit; it also tears the namespaces down.", e.bwrap, bwrapVersion(e.bwrap))
	}
	if e.noop != "" {
		e.rep.Add(&Figure{Section: sec, Name: figExecNoop, Samples: ex, Baseline: figBwrap})
	}
	e.rep.Add(&Figure{Section: sec, Name: figCold, Samples: cold, Baseline: figBwrap})

	// Cold message: the node's idle reaper evicts the sandbox between runs;
	// no warm pool, so the next message starts a sandbox.
	nd, err := e.openNode("sandbox", func(c *host.Config) {
		c.Sandbox.IdleTimeout = 100 * time.Millisecond
		c.Sandbox.WarmPool = 0
		c.Sandbox.PreloadPool = 0
	})
	if err != nil {
		return err
	}
	defer nd.close()
	id, err := nd.install(ctx, e.counter)
	if err != nil {
		return err
	}
	// The untimed first run compiles the module once.
	coldQ, err := afterPause(ctx, e.runs(5, 15), 0, func() error {
		return waitUntil(10*time.Second, "the idle sandbox was not evicted", func() bool { return len(nd.liveSandboxes()) == 0 })
	}, func() error {
		_, err := nd.query(ctx, id, "get", noArgs)
		return err
	})
	if err != nil {
		return err
	}
	e.rep.Add(&Figure{Section: sec, Name: figColdMsg, Samples: coldQ, Baseline: figBwrap})
	nd.close()

	// From the pool.
	nd2, err := e.openNode("sandbox", nil)
	if err != nil {
		return err
	}
	defer nd2.close()
	id2, err := nd2.install(ctx, e.counter)
	if err != nil {
		return err
	}
	pool, err := timeN(ctx, 5, e.runs(20, 100), func(int) error {
		_, err := nd2.query(ctx, id2, "get", noArgs)
		return err
	})
	if err != nil {
		return err
	}
	e.rep.Add(&Figure{Section: sec, Name: figPoolQuery, Samples: pool, Baseline: figBwrap})
	// The same after as long an idle spell as an evicted canister's next
	// message follows below (the idle timeout, then the wait for a
	// blank or primed sandbox): a message after idle pays the wake-ups of
	// an idle host and sandbox, which back-to-back queries do not.
	var poolIdle []float64
	for i := -1; i < e.runs(5, 15); i++ {
		time.Sleep(150 * time.Millisecond)
		t0 := time.Now()
		if _, err := nd2.query(ctx, id2, "get", noArgs); err != nil {
			return err
		}
		if i >= 0 {
			poolIdle = append(poolIdle, time.Since(t0).Seconds())
		}
	}
	e.rep.Add(&Figure{Section: sec, Name: figPoolIdle, Samples: poolIdle, Baseline: figPoolQuery})
	poolLate, err := afterPause(ctx, e.runs(5, 15), lateSpell, func() error { return nil }, func() error {
		_, err := nd2.query(ctx, id2, "get", noArgs)
		return err
	})
	if err != nil {
		return err
	}
	e.rep.Add(&Figure{Section: sec, Name: figPoolLate, Samples: poolLate, Baseline: figPoolQuery})
	nd2.close()

	// Evicted with a warm pool: the next message takes a blank sandbox
	// (started, confined and verified in the background while the
	// canister was idle) and only loads the module and runs.
	nd3, err := e.openNode("sandbox", func(c *host.Config) {
		c.Sandbox.IdleTimeout = 100 * time.Millisecond
		c.Sandbox.WarmPool = 1
		c.Sandbox.PreloadPool = 0 // the plain pool: primed sandboxes are measured next
	})
	if err != nil {
		return err
	}
	defer nd3.close()
	id3, err := nd3.install(ctx, e.counter)
	if err != nil {
		return err
	}
	warm, err := afterPause(ctx, e.runs(5, 15), 0, func() error {
		return waitUntil(10*time.Second, "the idle sandbox was not evicted, or no blank sandbox is ready", func() bool {
			return len(nd3.liveSandboxes()) == 0 && nd3.blankSandboxes() > 0
		})
	}, func() error {
		_, err := nd3.query(ctx, id3, "get", noArgs)
		return err
	})
	if err != nil {
		return err
	}
	e.rep.Add(&Figure{Section: sec, Name: figWarmMsg, Samples: warm, Baseline: figPoolIdle})
	nd3.close()

	// Evicted with a primed sandbox (the node's defaults: a warm pool and
	// a preload pool of 1): when the canister is evicted, a sandbox loads
	// its module in the background; the next message takes it and only
	// restores the canister's state and runs.
	nd4, err := e.openNode("sandbox", func(c *host.Config) {
		c.Sandbox.IdleTimeout = 100 * time.Millisecond
		c.Sandbox.WarmPool = 1
		c.Sandbox.PreloadPool = 1
	})
	if err != nil {
		return err
	}
	defer nd4.close()
	id4, err := nd4.install(ctx, e.counter)
	if err != nil {
		return err
	}
	primed, err := afterPause(ctx, e.runs(5, 15), 0, func() error {
		return waitUntil(10*time.Second, "the idle sandbox was not evicted, or no primed sandbox is ready", func() bool {
			return len(nd4.liveSandboxes()) == 0 && nd4.sandboxesOf("primed") > 0
		})
	}, func() error {
		_, err := nd4.query(ctx, id4, "get", noArgs)
		return err
	})
	if err != nil {
		return err
	}
	e.rep.Add(&Figure{Section: sec, Name: figPrimedMsg, Samples: primed, Baseline: figPoolIdle})
	nd4.close()

	// The same after the primed sandbox's idle trim. Its canister is
	// evicted by the idle timeout, which also ends a primed sandbox that
	// waits longer: here long enough for the pause, and the message must
	// find the sandbox primed for it.
	nd5, err := e.openNode("sandbox", func(c *host.Config) {
		c.Sandbox.IdleTimeout = 2*lateSpell + time.Second
		c.Sandbox.WarmPool = 1
		c.Sandbox.PreloadPool = 1
	})
	if err != nil {
		return err
	}
	defer nd5.close()
	id5, err := nd5.install(ctx, e.counter)
	if err != nil {
		return err
	}
	var primedPid int
	primedLate, err := afterPause(ctx, e.runs(5, 15), lateSpell, func() error {
		return waitUntil(time.Minute, "the idle sandbox was not evicted, or no primed sandbox is ready", func() bool {
			primedPid = nd5.pidOf("primed")
			return len(nd5.liveSandboxes()) == 0 && primedPid != 0
		})
	}, func() error {
		if _, err := nd5.query(ctx, id5, "get", noArgs); err != nil {
			return err
		}
		if got := nd5.pidOf("canister"); got != primedPid {
			return fmt.Errorf("the message after the idle spell ran in sandbox %d, not in the primed sandbox %d", got, primedPid)
		}
		return nil
	})
	if err != nil {
		return err
	}
	e.rep.Add(&Figure{Section: sec, Name: figPrimedLate, Samples: primedLate, Baseline: figPoolLate})
	e.rep.Note(sec, "*Warm pool*: `sandbox.warm_pool` blank sandboxes (every layer applied and verified, the worker "+
		"ready, no canister) wait for the next new or evicted canister, which only loads its module and runs; "+
		"its baseline is the query to a live sandbox after the same idle spell (an evicted canister's next message "+
		"comes after one too). The cold figures run without a warm pool. "+
		"*Primed*: `sandbox.preload_pool` sandboxes load the module of a recently evicted canister as it is evicted; "+
		"its next message only restores its state and runs (target: at most 2x the live query). "+
		"The *long idle spell* figures come after the sandboxes' idle trim (500 ms after their last request), "+
		"as an evicted canister's next message does (the idle timeout is minutes): a primed sandbox keeps cordon's "+
		"code mapped through its trims until that message; a live one whose trims are undone that soon trims later "+
		"(internal/worker, nextTrimAfter).")
	return nil
}

// lateSpell is an idle spell past the sandboxes' idle trim.
const lateSpell = 1200 * time.Millisecond

// waitUntil polls cond until it holds, or fails with what after within.
func waitUntil(within time.Duration, what string, cond func() bool) error {
	for deadline := time.Now().Add(within); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return errors.New(what)
		}
	}
	return nil
}

// afterPause times n runs of run (one untimed first), each after ready and
// then pause.
func afterPause(ctx context.Context, n int, pause time.Duration, ready, run func() error) ([]float64, error) {
	var out []float64
	for i := -1; i < n; i++ {
		if err := ready(); err != nil {
			return nil, err
		}
		if pause > 0 {
			select {
			case <-time.After(pause):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		t0 := time.Now()
		if err := run(); err != nil {
			return nil, err
		}
		if i >= 0 {
			out = append(out, time.Since(t0).Seconds())
		}
	}
	return out, nil
}
