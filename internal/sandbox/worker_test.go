package sandbox

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func bi(path string, deps []*debug.Module, kv ...string) *debug.BuildInfo {
	b := &debug.BuildInfo{GoVersion: "go1.26.8", Path: path, Main: debug.Module{Path: "github.com/cordon-dev/cordon", Version: "(devel)"}, Deps: deps}
	for i := 0; i+1 < len(kv); i += 2 {
		b.Settings = append(b.Settings, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
	}
	return b
}

// What the same-build check decides from two binaries' Go build
// information: the host (cmd/cordon, more dependencies) and a worker.
func TestCompareBuilds(t *testing.T) {
	wt := &debug.Module{Path: "github.com/bytecodealliance/wasmtime-go/v39", Version: "v39.0.1", Sum: "h1:a"}
	sys := &debug.Module{Path: "golang.org/x/sys", Version: "v0.48.0", Sum: "h1:b"}
	prom := &debug.Module{Path: "github.com/prometheus/client_golang", Version: "v1.0.0", Sum: "h1:c"}
	stamp := "-X=" + buildStampVar + "=rel-1"
	host := func(kv ...string) *debug.BuildInfo {
		return bi("github.com/cordon-dev/cordon/cmd/cordon", []*debug.Module{wt, sys, prom}, kv...)
	}
	side := func(kv ...string) *debug.BuildInfo {
		return bi(workerMainPath, []*debug.Module{wt, sys}, kv...)
	}
	cases := []struct {
		name       string
		host, side *debug.BuildInfo
		want       buildCheck
	}{
		{"clean revision", host("vcs", "git", "vcs.revision", "abc", "vcs.modified", "false"), side("vcs", "git", "vcs.revision", "abc", "vcs.modified", "false"), buildSame},
		{"stamp", host("-ldflags", stamp), side("-ldflags", stamp), buildSame},
		{"stamp, local changes", host("-ldflags", stamp, "vcs.revision", "abc", "vcs.modified", "true"), side("-ldflags", stamp, "vcs.revision", "abc", "vcs.modified", "true"), buildSame},
		{"no vcs", host("GOOS", "linux"), side("GOOS", "linux"), buildUnverified},
		{"local changes", host("vcs.revision", "abc", "vcs.modified", "true"), side("vcs.revision", "abc", "vcs.modified", "true"), buildUnverified},
		{"other revision", host("vcs.revision", "abc", "vcs.modified", "false"), side("vcs.revision", "abd", "vcs.modified", "false"), buildDifferent},
		{"clean and changed", host("vcs.revision", "abc", "vcs.modified", "false"), side("vcs.revision", "abc", "vcs.modified", "true"), buildDifferent},
		{"other stamp", host("-ldflags", stamp), side("-ldflags", "-X="+buildStampVar+"=rel-2"), buildDifferent},
		{"stamp on one side", host(), side("-ldflags", stamp), buildDifferent},
		{"other target", host("GOARCH", "amd64"), side("GOARCH", "arm64"), buildDifferent},
		{"cgo", host("CGO_ENABLED", "1"), side("CGO_ENABLED", "0"), buildDifferent},
		{"tags", host(), side("-tags", "debug"), buildDifferent},
		{"toolchain", host(), func() *debug.BuildInfo { b := side(); b.GoVersion = "go1.25.0"; return b }(), buildDifferent},
		{"dependency version", host(), func() *debug.BuildInfo {
			b := side()
			b.Deps = []*debug.Module{{Path: wt.Path, Version: "v38.0.0", Sum: "h1:z"}, sys}
			return b
		}(), buildDifferent},
		{"dependency the host lacks", host(), func() *debug.BuildInfo {
			b := side()
			b.Deps = append(b.Deps, &debug.Module{Path: "example.com/evil", Version: "v1.0.0"})
			return b
		}(), buildDifferent},
		{"replaced dependency", host(), func() *debug.BuildInfo {
			b := side()
			b.Deps = []*debug.Module{{Path: wt.Path, Version: wt.Version, Sum: wt.Sum, Replace: &debug.Module{Path: "../wasmtime"}}, sys}
			return b
		}(), buildDifferent},
		{"other module", host(), func() *debug.BuildInfo { b := side(); b.Main.Path = "example.com/cordon"; return b }(), buildDifferent},
		{"no side info", host(), nil, buildDifferent},
		{"no host info", nil, side(), buildUnverified},
		{"host without dependencies (a test binary)", bi("github.com/cordon-dev/cordon/internal/exec.test", nil), side(), buildTestHost},
	}
	for _, c := range cases {
		got, why := compareBuilds(c.host, c.side)
		if got != c.want {
			t.Errorf("%s: %d (%s), want %d", c.name, got, why, c.want)
		} else {
			t.Logf("%s: %s", c.name, why)
		}
	}
}

const testStamp = "cordon-test-stamp"

var (
	workerOnce sync.Once
	workerBin  string
	workerErr  error
)

// testWorkerBinary builds cmd/cordon-sandbox once, stamped with testStamp,
// into a directory a sandbox's uid may search.
func testWorkerBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds cmd/cordon-sandbox")
	}
	if os.Getenv(rootlessEnv) != "" {
		// uid 65534 has no Go build cache: the root run of this test covers it.
		t.Skip("builds cmd/cordon-sandbox: not in the unprivileged rerun")
	}
	workerOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cordon-worker-")
		if err != nil {
			workerErr = err
			return
		}
		if workerErr = os.Chmod(dir, 0o755); workerErr != nil {
			return
		}
		workerBin = filepath.Join(dir, WorkerBinaryName)
		out, err := exec.Command("go", "build", "-ldflags=-X="+buildStampVar+"="+testStamp, "-o", workerBin, "../../cmd/cordon-sandbox").CombinedOutput()
		if err != nil {
			workerErr = errors.New(string(out))
		}
	})
	if workerErr != nil {
		t.Fatalf("go build cmd/cordon-sandbox: %v", workerErr)
	}
	return workerBin
}

// asHost makes the host's build information the worker's, as cmd/cordon of
// the same build would record it (its own main package, more
// dependencies), with the given stamp, for the test's duration.
func asHost(t *testing.T, bin, stamp string) {
	t.Helper()
	side, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	h := *side
	h.Path = "github.com/cordon-dev/cordon/cmd/cordon"
	h.Deps = append(append([]*debug.Module{}, side.Deps...), &debug.Module{Path: "github.com/prometheus/client_golang", Version: "v1.23.2", Sum: "h1:x"})
	h.Settings = nil
	for _, s := range side.Settings {
		if s.Key == "-ldflags" {
			s.Value = strings.Replace(s.Value, testStamp, stamp, 1)
		}
		h.Settings = append(h.Settings, s)
	}
	old := hostBuildInfo
	hostBuildInfo = func() (*debug.BuildInfo, bool) { return &h, true }
	t.Cleanup(func() { hostBuildInfo = old })
}

// copyFile copies src to a new file dir/name of the given mode.
func copyFile(t *testing.T, src, dir, name string, mode os.FileMode) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	p := filepath.Join(dir, name)
	out, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// The worker-only binary of the host's build runs as a sealed copy: the
// sandbox's executable is a memory file with every seal, byte for byte the
// file's, and neither the host nor anyone else can write it.
func TestWorkerBinaryRunsSealed(t *testing.T) {
	bin := testWorkerBinary(t)
	asHost(t, bin, testStamp)
	e, err := CheckExecutable(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("executable: %s", e)
	if !e.Worker || !e.Sealed || !strings.HasPrefix(e.Build, "same build (stamp "+testStamp) {
		t.Fatalf("CheckExecutable: %+v", e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := Start(ctx, Spec{Label: "worker-bin", Binary: bin, Args: []string{"canister", "test"}, Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Kill(); p.Wait(); p.Conn().Close() }()
	exe := "/proc/" + strconv.Itoa(p.Pid()) + "/exe"
	target, err := os.Readlink(exe)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(target, "/memfd:cordon-sandbox-"+WorkerBinaryName) {
		t.Fatalf("the sandbox runs %s, not the worker's sealed copy", target)
	}
	f, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0); err != nil || seals&execSeals != execSeals {
		t.Fatalf("seals %#x (%v), want %#x", seals, err, execSeals)
	}
	disk, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	if fileSum(t, f) != fileSum(t, disk) {
		t.Fatal("the sealed copy differs from the file")
	}
	if w, err := os.OpenFile(exe, os.O_WRONLY, 0); err == nil {
		w.Close()
		t.Fatal("the running executable was opened for writing")
	}
	s, err := sealedCopyOf(bin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Pwrite(s.fd, bytes.Repeat([]byte{0xcc}, 16), 4096); !errors.Is(err, unix.EPERM) {
		t.Fatalf("writing the sealed executable: %v", err)
	}
	if err := unix.Ftruncate(s.fd, 0); !errors.Is(err, unix.EPERM) {
		t.Fatalf("truncating the sealed executable: %v", err)
	}
	// The file on disk changes: sandboxes keep the copy that was checked.
	p2, err := Start(ctx, Spec{Label: "worker-bin-2", Binary: bin, Args: []string{"canister", "test"}, Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p2.Kill(); p2.Wait(); p2.Conn().Close() }()
	if l, _ := os.Readlink("/proc/" + strconv.Itoa(p2.Pid()) + "/exe"); l != target {
		t.Fatalf("second sandbox runs %s, first %s", l, target)
	}
}

// A configured sandbox executable (sandbox.binary) that is not the worker of
// the host's build is refused with a clear error, before anything executes.
func TestCheckExecutableRefuses(t *testing.T) {
	bin := testWorkerBinary(t)
	dir := t.TempDir()
	other := copyFile(t, bin, dir, "other-build", 0o755)
	asHost(t, bin, "another-stamp")
	if _, err := CheckExecutable(other); !errors.Is(err, ErrForeignExecutable) || !strings.Contains(err.Error(), "build settings differ") {
		t.Errorf("another build: %v", err)
	} else {
		t.Log(err)
	}
	if _, err := CheckExecutable(filepath.Join(dir, "absent")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent: %v", err)
	}
	plain := copyFile(t, bin, dir, "not-executable", 0o644)
	if _, err := CheckExecutable(plain); !errors.Is(err, errNotExecutable) {
		t.Errorf("not executable: %v", err)
	}
	if _, err := CheckExecutable("relative/cordon-sandbox"); err == nil {
		t.Error("a relative path was accepted")
	}
	// Hostile: a script that would leave a mark if it ran; a Go program
	// that is not cordon's worker (this test binary, under another name,
	// is accepted only as a copy of the host itself).
	mark := filepath.Join(dir, "ran")
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ntouch "+mark+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckExecutable(script); !errors.Is(err, ErrForeignExecutable) {
		t.Errorf("script: %v", err)
	} else {
		t.Log(err)
	}
	if _, err := os.Stat(mark); err == nil {
		t.Error("the check executed the script")
	}
	self := copyFile(t, os.Args[0], dir, "self", 0o755)
	if e, err := CheckExecutable(self); err != nil || e.Worker {
		t.Errorf("a copy of the host: %+v, %v", e, err)
	}
	if err := os.WriteFile(self, []byte("changed"), 0o755); err != nil {
		t.Fatal(err)
	}
	if e, err := CheckExecutable(self); err != nil || e.Worker {
		t.Errorf("checked again after a change on disk: %+v, %v (the sealed copy is what runs)", e, err)
	}
}

// Next to the host's executable: the worker of the same build is the
// default; anything else falls back to the host's own executable, saying
// why, without executing it.
func TestFindWorker(t *testing.T) {
	bin := testWorkerBinary(t)
	oldDir := hostDir
	t.Cleanup(func() { hostDir = oldDir })
	find := func(t *testing.T, dir string) Executable {
		t.Helper()
		hostDir = func() (string, error) { return dir, nil }
		e, s := findWorker()
		if e.Worker != (s != nil) {
			t.Fatalf("findWorker: %+v with sealed file %v", e, s)
		}
		if s != nil {
			re, err := resolveExe(bin) // the same sealed copy as by path
			if err != nil || re.fd != s.fd {
				t.Fatalf("resolveExe: %+v %v, findWorker's fd %d", re, err, s.fd)
			}
		}
		t.Logf("%s", e)
		return e
	}
	t.Run("same build", func(t *testing.T) {
		asHost(t, bin, testStamp)
		e := find(t, filepath.Dir(bin))
		if !e.Worker || e.Path != bin || !e.Sealed {
			t.Fatalf("%+v", e)
		}
	})
	t.Run("absent", func(t *testing.T) {
		e := find(t, t.TempDir())
		if e.Worker || !strings.Contains(e.Note, "no "+WorkerBinaryName) {
			t.Fatalf("%+v", e)
		}
	})
	t.Run("next to a test binary", func(t *testing.T) {
		// This test binary is the host (no dependencies recorded): a
		// worker next to it, even of the same source, is passed over, and
		// sandboxes run the test binary, whose TestMain serves them.
		if e := find(t, filepath.Dir(bin)); e.Worker || !strings.Contains(e.Note, "a test binary") {
			t.Fatalf("%+v", e)
		}
	})
	t.Run("another build", func(t *testing.T) {
		asHost(t, bin, "another-stamp")
		dir := t.TempDir()
		copyFile(t, bin, dir, WorkerBinaryName, 0o755)
		if e := find(t, dir); e.Worker || !strings.Contains(e.Note, "build settings differ") {
			t.Fatalf("%+v", e)
		}
	})
	t.Run("not executable", func(t *testing.T) {
		asHost(t, bin, testStamp)
		dir := t.TempDir()
		copyFile(t, bin, dir, WorkerBinaryName, 0o644)
		if e := find(t, dir); e.Worker || !strings.Contains(e.Note, errNotExecutable.Error()) {
			t.Fatalf("%+v", e)
		}
	})
	t.Run("a directory", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, WorkerBinaryName), 0o755); err != nil {
			t.Fatal(err)
		}
		if e := find(t, dir); e.Worker {
			t.Fatalf("%+v", e)
		}
	})
	t.Run("hostile script", func(t *testing.T) {
		dir := t.TempDir()
		mark := filepath.Join(dir, "ran")
		if err := os.WriteFile(filepath.Join(dir, WorkerBinaryName), []byte("#!/bin/sh\ntouch "+mark+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if e := find(t, dir); e.Worker || !strings.Contains(e.Note, "not a Go executable") {
			t.Fatalf("%+v", e)
		}
		if _, err := os.Stat(mark); err == nil {
			t.Fatal("the lookup executed the script")
		}
	})
	t.Run("another Go program", func(t *testing.T) {
		dir := t.TempDir()
		copyFile(t, os.Args[0], dir, WorkerBinaryName, 0o755) // this test binary
		if e := find(t, dir); e.Worker || !strings.Contains(e.Note, "not "+workerMainPath) {
			t.Fatalf("%+v", e)
		}
	})
}
