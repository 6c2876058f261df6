package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/api"
)

// What a command can learn about the process that holds a home's store or
// serves it, from /proc, to say what it waits for instead of guessing.

// storeFile is the store's file in a home (internal/store).
func storeFile(home string) string { return filepath.Join(home, "cordon.db") }

// lockHolder returns the pid holding the flock on path (the store's lock),
// from /proc/locks; 0 when it cannot be told.
func lockHolder(path string) int {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 1234 fe:00:9977927 0 EOF"; a waiter
		// has "->" after the number.
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[1] != "FLOCK" || fs[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(fs[4]); err == nil && pid > 0 {
			return pid
		}
	}
	return 0
}

// processCommand is pid's command line, shortened and made printable; ""
// when it cannot be read.
func processCommand(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return ""
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if len(args) > 0 {
		args[0] = filepath.Base(args[0])
	}
	s := strings.Join(args, " ")
	if r := []rune(s); len(r) > 80 {
		s = string(r[:79]) + "…"
	}
	return printable(s)
}

// isServe reports whether a command line (processCommand's) is a `cordon
// serve`.
func isServe(cmd string) bool {
	fs := strings.Fields(cmd)
	for i, a := range fs {
		if a == "serve" && i > 0 {
			return true
		}
	}
	return false
}

// describePID names a process for a message: "pid 1234: cordon call …".
func describePID(pid int) string {
	if pid == os.Getpid() {
		return fmt.Sprintf("pid %d: this process", pid)
	}
	if cmd := processCommand(pid); cmd != "" {
		return fmt.Sprintf("pid %d: %s", pid, cmd)
	}
	return fmt.Sprintf("pid %d", pid)
}

// pidAlive reports whether a process with this pid exists.
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// holdsOpen reports whether pid has path open; known is false when its
// descriptors cannot be read (another user's process).
func holdsOpen(pid int, path string) (holds, known bool) {
	want, err := os.Stat(path)
	if err != nil {
		return false, true
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false, false
	}
	for _, e := range ents {
		if fi, err := os.Stat(filepath.Join(dir, e.Name())); err == nil && os.SameFile(fi, want) {
			return true, true
		}
	}
	return false, true
}

// liveServer reports the `cordon serve` running on home, if any: the one
// <home>/serve.json names, when its process is alive and is the one that
// has this home's store open (or, when its descriptors cannot be read,
// its address answers as a cordon server). A serve.json left by a server
// that died is not one.
func liveServer(ctx context.Context, home string) (pid int, addr string, ok bool) {
	info, err := api.ReadServeInfo(home)
	if err != nil || info == nil || !pidAlive(info.PID) {
		return 0, "", false
	}
	holds, known := holdsOpen(info.PID, storeFile(home))
	if known {
		return info.PID, info.Addr, holds
	}
	c, _ := api.Dial(ctx, home)
	if c == nil {
		return info.PID, info.Addr, false
	}
	c.Close()
	return info.PID, info.Addr, true
}
