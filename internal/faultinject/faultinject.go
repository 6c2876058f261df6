// Package faultinject injects the faults the durability tests need: an
// fdatasync that fails with EIO (SyncFaults), a directory's sync that
// fails with EIO (DirSyncFaults), and a SIGKILL, once a store has
// committed a number of transactions (KillAfterTx) or at a line of the
// child's output (KillAt); each in a child process that runs the test
// binary again (Child, RunUntilKilled). Child is how any test re-runs
// itself in a process of its own.
//
// It is for tests only: it imports testing, and no package's non-test
// code may import it (TestOnlyTestsImportIt checks).
package faultinject

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SeedEnv names the seed of a crash test: set, it repeats a run.
const SeedEnv = "CORDON_CRASH_SEED"

// CrashSeed is the seed in SeedEnv, else a new one. The caller logs it.
func CrashSeed(t testing.TB) uint64 {
	t.Helper()
	if v := os.Getenv(SeedEnv); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s: %v", SeedEnv, err)
		}
		return s
	}
	return uint64(time.Now().UnixNano())
}

// Child is a command that runs this test binary again, only the test
// named test, with env added to this process's environment; its stderr
// is this process's.
func Child(test string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	return cmd
}

// RunUntilKilled runs cmd (a Child that is SIGKILLed, by itself or by
// take) to its end, giving take each line of its output. The test fails
// unless the child died of SIGKILL, with the lines take did not take. A
// timeout above zero SIGKILLs a child still running after it.
func RunUntilKilled(t testing.TB, cmd *exec.Cmd, timeout time.Duration, take func(line string) bool) {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if timeout > 0 {
		deadline := time.AfterFunc(timeout, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
		defer deadline.Stop()
	}
	var other []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if !take(sc.Text()) {
			other = append(other, sc.Text())
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the child did not die of SIGKILL: %v; its output: %s", err, strings.Join(other, "\n"))
	}
}

// KillAt runs cmd (a Child that runs until it is killed) and SIGKILLs it
// at the first line of its output at which at returns true: at may wait
// there, to choose where the kill lands. A timeout above zero SIGKILLs a
// child that has not got there after it. The test fails unless the child
// died of SIGKILL (RunUntilKilled); KillAt says whether it got there.
func KillAt(t testing.TB, cmd *exec.Cmd, timeout time.Duration, at func(line string) bool) (reached bool) {
	t.Helper()
	RunUntilKilled(t, cmd, timeout, func(line string) bool {
		if !reached && at(line) {
			reached = true
			_ = cmd.Process.Signal(syscall.SIGKILL)
		}
		return reached // the lines before it tell why a child that exited did not get there
	})
	return reached
}
