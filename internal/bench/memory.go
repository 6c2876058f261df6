package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cordon-dev/cordon/internal/host"
)

// procTree returns pid and its descendants.
func procTree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", out[i], t.Name()))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// procMem returns a process's RSS (VmRSS) and PSS (smaps_rollup), bytes.
func procMem(pid int) (rss, pss uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	rss = kbField(string(b), "VmRSS:")
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
		pss = kbField(string(b), "Pss:")
	}
	return rss, pss, nil
}

// cgroupCharge returns the memory charged to pid's memory cgroup (v1
// memory.usage_in_bytes, v2 memory.current).
func cgroupCharge(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var file string
		switch {
		case parts[0] == "0" && parts[1] == "":
			file = filepath.Join("/sys/fs/cgroup", parts[2], "memory.current")
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			file = filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.usage_in_bytes")
		default:
			continue
		}
		v, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(string(v)), 10, 64); err == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("no memory cgroup for pid %d", pid)
}

// openFDs counts this process's open file descriptors (0 if unknown).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

func kbField(text, key string) uint64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				n, _ := strconv.ParseUint(f[0], 10, 64)
				return n * 1024
			}
		}
	}
	return 0
}

const (
	figBwrapRSS = "idle bwrap no-op (bwrap, its init, the no-op): RSS"
	figBwrapPSS = "idle bwrap no-op: PSS"
)

// bwrapIdle measures an idle bubblewrap-confined process tree.
func (e *env) bwrapIdle(runs int) (rss, pss []float64, err error) {
	for i := 0; i < runs; i++ {
		cmd := e.bwrapCmd(e.ctx, "pause")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		var r, p uint64
		deadline := time.Now().Add(5 * time.Second)
		for {
			time.Sleep(100 * time.Millisecond)
			tree := procTree(cmd.Process.Pid)
			if len(tree) >= 2 || time.Now().After(deadline) {
				time.Sleep(200 * time.Millisecond) // let it settle
				r, p = 0, 0
				for _, pid := range procTree(cmd.Process.Pid) {
					a, b, err := procMem(pid)
					if err == nil {
						r, p = r+a, p+b
					}
				}
				break
			}
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		rss, pss = append(rss, float64(r)), append(pss, float64(p))
	}
	return rss, pss, nil
}

func (e *env) memorySection() error {
	ctx := e.ctx
	const sec = "memory"
	e.buildNoop()
	e.findBwrap()
	if e.noop != "" && e.bwrap != "" {
		rss, pss, err := e.bwrapIdle(e.runs(3, 5))
		if err != nil {
			return err
		}
		e.rep.Add(&Figure{Section: sec, Name: figBwrapRSS, Unit: Bytes, Samples: rss})
		e.rep.Add(&Figure{Section: sec, Name: figBwrapPSS, Unit: Bytes, Samples: pss})
	} else {
		why := e.bwrapWhy
		if e.noop == "" {
			why = "no static no-op: " + e.noopWhy
		}
		e.rep.Skip(sec, figBwrapRSS, why)
	}

	budget := e.runs(50, 500)
	nd, err := e.openNode("sandbox", func(c *host.Config) {
		c.Sandbox.MaxSandboxes = budget + 16
		c.Sandbox.IdleTimeout = time.Hour
	})
	if err != nil {
		return err
	}
	defer nd.close()
	// The module is compiled once (a compiler sandbox) before measuring.
	first, err := nd.install(ctx, e.counter)
	if err != nil {
		return err
	}
	if _, err := nd.query(ctx, first, "get", noArgs); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	before := meminfo("MemAvailable")
	fdsBefore := openFDs()
	stop := "the budget of the run"
	t0 := time.Now()
	live := 1
	for live < budget {
		if err := ctx.Err(); err != nil {
			return err
		}
		if live%10 == 0 && meminfo("MemAvailable") < memoryFloor {
			stop = "MemAvailable fell below 2 GiB"
			break
		}
		id, err := nd.install(ctx, e.counter)
		if err != nil {
			return fmt.Errorf("sandbox %d: %w", live+1, err)
		}
		if _, err := nd.query(ctx, id, "get", noArgs); err != nil {
			return fmt.Errorf("sandbox %d: %w", live+1, err)
		}
		live++
		if live%50 == 0 {
			e.log("memory: %d live sandboxes, MemAvailable %s", live, humanBytes(meminfo("MemAvailable")))
		}
	}
	spawnTime := time.Since(t0)
	time.Sleep(time.Second) // idle
	after := meminfo("MemAvailable")
	list := nd.liveSandboxes()
	var rss, pss, charge []float64
	for _, s := range list {
		r, p, err := procMem(s.PID)
		if err != nil {
			continue
		}
		rss, pss = append(rss, float64(r)), append(pss, float64(p))
		if c, err := cgroupCharge(s.PID); err == nil {
			charge = append(charge, float64(c))
		}
	}
	e.rep.Add(&Figure{Section: sec, Name: "idle canister sandbox: RSS", Unit: Bytes, Samples: rss, Baseline: figBwrapRSS})
	e.rep.Add(&Figure{Section: sec, Name: "idle canister sandbox: PSS", Unit: Bytes, Samples: pss, Baseline: figBwrapPSS})
	// What one more sandbox costs: its cgroup's charge (its own pages,
	// kernel memory included), else its PSS.
	per := Median(pss)
	if len(charge) > 0 {
		e.rep.Add(&Figure{Section: sec, Name: "idle canister sandbox: memory charged to its cgroup", Unit: Bytes,
			Samples: charge, Alone: true})
		per = max(per, Median(charge))
	}
	if fds := openFDs(); fds > 0 && fdsBefore > 0 && len(list) > 1 {
		e.rep.Add(&Figure{Section: sec, Name: "host file descriptors per live sandbox", Unit: Count, Label: "fds",
			Samples: []float64{float64(fds-fdsBefore) / float64(len(list)-1)}, Alone: true})
	}
	e.rep.Add(&Figure{Section: sec, Name: "live sandboxes held at once (this run)", Unit: Count, Label: "sandboxes",
		Samples: []float64{float64(len(list))}, Alone: true})
	if per > 0 && after > memoryFloor {
		est := float64(after-memoryFloor)/per + float64(len(list))
		e.rep.Add(&Figure{Section: sec, Name: "estimated capacity: live sandboxes above 2 GiB of free memory",
			Unit: Count, Label: "sandboxes", Samples: []float64{est}, Alone: true})
		e.rep.Note(sec, "The capacity estimate counts memory only: the sandboxes held plus MemAvailable at the end "+
			"(%s) less 2 GiB, divided by the larger of the median PSS and the median cgroup charge (%s). The host's "+
			"descriptors, threads and pids per sandbox are the other limits to raise beyond it.", humanBytes(after), humanBytes(uint64(per)))
	}
	e.rep.Note(sec, "The run stopped at %d live sandboxes (%s), spawned at %.0f per second (install and first "+
		"query each); the RSS, PSS and cgroup figures are over those sandboxes (N = sandboxes). MemAvailable "+
		"went from %s to %s (other processes' memory moves it too). Each sandbox has its own cgroup, limited "+
		"to %s by default.", len(list), stop, float64(len(list)-1)/spawnTime.Seconds(), humanBytes(before),
		humanBytes(after), humanBytes(8<<30))
	return nil
}
