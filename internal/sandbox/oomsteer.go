package sandbox

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// BusyOOMScoreAdj is the oom_score_adj the host gives a sandbox while it
// executes (BeginExecution). Every sandbox is at confine.OOMScoreAdj (1000)
// otherwise, and the kernel's badness is its memory plus adj/1000 of the
// limit of the cgroup that ran out (the node group) or of the machine: a
// busy sandbox is taken before an idle one only if it is larger by half of
// that. Still far above the host's own (0), so the host stays the last.
const BusyOOMScoreAdj = 500

// busyScore is the oom_score_adj for an executing sandbox on this host:
// BusyOOMScoreAdj, or halfway between the host's own oom_score_adj and
// confine.OOMScoreAdj if the host's is that high already (a busy sandbox
// must stay above the host, and the kernel lets an unprivileged host go no
// lower than its own oom_score_adj_min, which is at most its oom_score_adj).
// An error: no room between them (or no /proc); sandboxes are not steered.
var busyScore = sync.OnceValues(func() (int, error) {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, fmt.Errorf("the host's own oom_score_adj: %w", err)
	}
	own, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("the host's own oom_score_adj %q: %w", b, err)
	}
	if own < BusyOOMScoreAdj {
		return BusyOOMScoreAdj, nil
	}
	if v := (own + confine.OOMScoreAdj + 1) / 2; v < confine.OOMScoreAdj {
		return v, nil
	}
	return 0, fmt.Errorf("the host's own oom_score_adj is %d: nothing lies between it and the sandboxes' %d", own, confine.OOMScoreAdj)
})

// oomSteer lowers a sandbox's oom_score_adj while it executes, so that when
// the node group (or the machine) runs out of memory the kernel takes an
// idle sandbox, whose loss costs a respawn, before one in the middle of a
// message. The host writes /proc/<pid>/oom_score_adj through a descriptor
// it opened at Start, before the go-ahead: until then the sandbox is
// dumpable, so the file is its own uid's (on a rootless host, the host's
// uid); once it is not, the file is root's, and a rootless host could not
// open it any more. Writing needs no privilege as long as the value is not
// below the task's oom_score_adj_min, which it inherited from the host
// (busyScore keeps above the host's own). The sandbox itself cannot change
// it: it has no /proc once its root is empty.
type oomSteer struct {
	mu sync.Mutex
	fd int // write-only /proc/<pid>/oom_score_adj; -1: not steered
	// n counts executions in flight: lowered at 0→1, raised at 1→0.
	n int
	// want is what the file holds: the sandbox's own value until the host
	// writes one, then the last value the host wrote. Verify expects it.
	want int
	busy int
	// why the sandbox is not steered (fd -1), for its layer's detail.
	why string
}

// notSteeredLog is logged once per host: the first sandbox that cannot be
// steered says why; later ones say it only in their layer detail (which
// doctor's live check prints).
var notSteeredLog sync.Once

// openOOMSteer opens pid's oom_score_adj for the host's writes. It never
// fails the start: a sandbox that cannot be steered keeps its own value.
func openOOMSteer(pid int) *oomSteer {
	s := &oomSteer{fd: -1, want: confine.OOMScoreAdj}
	busy, err := busyScore()
	if err == nil {
		s.busy = busy
		s.fd, err = unix.Open("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			s.fd = -1
			err = fmt.Errorf("open /proc/%d/oom_score_adj: %w", pid, err)
		}
	}
	if err != nil {
		s.why = err.Error()
		notSteeredLog.Do(func() {
			slog.Warn("sandboxes keep oom_score_adj 1000 while they execute: under memory pressure the kernel may take a busy sandbox before an idle one", "err", err)
		})
	}
	return s
}

// detail says, for the oom_score_adj layer, what the host does.
func (s *oomSteer) detail() string {
	if s.fd < 0 {
		return fmt.Sprintf("; not lowered while it executes (%s)", s.why)
	}
	return fmt.Sprintf("; the host lowers it to %d while it executes", s.busy)
}

// set writes v (s.mu held). The sandbox may be gone (ESRCH once it is
// reaped): its exchange finds that out by itself, so no error here fails a
// message. Any other failure ends the steering of this sandbox.
func (s *oomSteer) set(label string, v int) {
	if s.fd < 0 || s.want == v {
		return
	}
	var buf [8]byte
	_, err := unix.Write(s.fd, strconv.AppendInt(buf[:0], int64(v), 10))
	switch {
	case err == nil:
		s.want = v
	case errors.Is(err, unix.ESRCH):
		s.closeLocked("the sandbox has exited")
	default:
		slog.Warn("sandbox oom_score_adj not changed; it is no longer steered", "sandbox", label, "value", v, "err", err)
		s.closeLocked(fmt.Sprintf("writing %d failed: %v", v, err))
	}
}

// closeLocked stops steering (s.mu held); want stays what the file holds.
func (s *oomSteer) closeLocked(why string) {
	if s.fd >= 0 {
		unix.Close(s.fd)
		s.fd = -1
		s.why = why
	}
}

func (s *oomSteer) close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.closeLocked("the sandbox has exited")
	s.mu.Unlock()
}

// BeginExecution says the sandbox starts executing a message (or a query
// among others in flight): the first lowers its oom_score_adj. Each must be
// matched by one EndExecution. It never fails: a sandbox that cannot be
// steered, or is gone, keeps the value it has.
func (p *Process) BeginExecution() {
	s := p.oom
	if s == nil {
		return
	}
	s.mu.Lock()
	s.n++
	if s.n == 1 {
		s.set(p.label, s.busy)
	}
	s.mu.Unlock()
}

// EndExecution says an execution BeginExecution announced has ended: the
// last one in flight raises the sandbox's oom_score_adj back.
func (p *Process) EndExecution() {
	s := p.oom
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.n > 0 {
		s.n--
	}
	if s.n == 0 {
		s.set(p.label, confine.OOMScoreAdj)
	}
	s.mu.Unlock()
}

// OOMScoreAdj is the oom_score_adj the sandbox should have now: its own
// (confine.OOMScoreAdj) or the last the host set (BeginExecution).
func (p *Process) OOMScoreAdj() int {
	if p.oom == nil {
		return confine.OOMScoreAdj
	}
	p.oom.mu.Lock()
	defer p.oom.mu.Unlock()
	return p.oom.want
}

// checkOOMScore: the sandbox's oom_score_adj is the one it set, or the
// last one the host set (s; nil: the sandbox's own). Read under s.mu, so
// that no write of the host's falls between the read and what it is
// compared with.
func checkOOMScore(proc string, s *oomSteer) error {
	want := confine.OOMScoreAdj
	if s != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		want = s.want
	}
	b, err := os.ReadFile(proc + "/oom_score_adj")
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(string(b)); got != strconv.Itoa(want) {
		return fmt.Errorf("oom_score_adj is %s, want %d", got, want)
	}
	return nil
}
