package sandbox

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockTick is the unit of /proc/<pid>/stat's times (USER_HZ, 100 on every
// Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// CPUTime returns the CPU time (user + system, every thread) the sandbox
// process has used so far: its process CPU clock, to the nanosecond in one
// system call (what its cgroup's counter would say, the sandbox being its
// cgroup's only process, without a file read: 2 µs where reading
// /proc/<pid>/stat took 60), else /proc/<pid>/stat in 10 ms ticks. The
// exec package reads it around every wait for execution memory, and at
// each idle look.
func (p *Process) CPUTime() (time.Duration, error) {
	select {
	case <-p.done:
		// Reaped: its pid may be another process's now.
		return 0, errors.New("sandbox: the process has ended")
	default:
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(processCPUClock(p.proc.Pid), &ts); err == nil {
		return time.Duration(ts.Nano()), nil
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.proc.Pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// processCPUClock is the clock id of pid's process CPU clock, all its
// threads' scheduled time (the kernel's MAKE_PROCESS_CPUCLOCK(pid,
// CPUCLOCK_SCHED)); clock_gettime reads it for any process, unprivileged.
func processCPUClock(pid int) int32 {
	const cpuClockSched = 2
	return ^int32(pid)<<3 | cpuClockSched
}

// parseStatCPU reads utime and stime from a /proc/<pid>/stat line. The
// command name is in parentheses and may itself contain spaces and
// parentheses, so fields are counted from the last ')'.
func parseStatCPU(s string) (time.Duration, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return 0, errors.New("sandbox: malformed /proc stat")
	}
	f := strings.Fields(s[i+2:])
	// After the name: state(3) ... utime(14) stime(15), so indices 11, 12.
	if len(f) < 13 {
		return 0, errors.New("sandbox: short /proc stat")
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(u+st) * clockTick, nil
}
