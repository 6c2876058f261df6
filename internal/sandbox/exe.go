package sandbox

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// Sandboxes execute sealed in-memory copies (memfds) of their executable,
// made once per host, as runc does with its binary. Two reasons:
//   - Memory. A file's page cache holds large folios, and the kernel maps a
//     whole folio (up to 2 MiB) into a process at the first fault in it, so
//     each sandbox's RSS counted megabytes of cordon's code and tables it
//     never ran (an idle sandbox: 10 MiB of the executable resident, about
//     1.5 MiB of it touched). A memfd's pages are small folios (shmem,
//     transparent huge pages off for it), so a sandbox maps only what it
//     runs. The copy costs the host one executable's size of memory, and
//     its pages are charged to the host, not to the sandboxes' cgroups (the
//     charge is what the node's sandbox memory budget counts).
//   - Integrity. The seals (no write, grow, shrink, or further seals) mean
//     the code a sandbox runs can never change under it, whatever happens
//     to the file on disk (an upgrade replacing it, a writable path).
//
// The default executable is the worker-only binary, cmd/cordon-sandbox, when
// one from the same build lies next to the host's executable (worker.go),
// else the host's own executable. Spec.Binary names another file, which is
// sealed the same way (once per path).
//
// If the kernel refuses any step (no memfd exec: vm.memfd_noexec, or the
// copy does not execute), sandboxes run /proc/self/exe, or Spec.Binary by
// path, as before.
var (
	exeOnce sync.Once
	exePath string // "/proc/self/fd/N", or "" to use /proc/self/exe
	exeErr  error  // why exePath is ""
)

// exeFDMin: the memfd lives at or above this descriptor, far above the
// descriptors a child gets (0-3 and the host's files), which the child's
// dup2s would overwrite before exec resolves the path. Under an open file
// limit at or below it, the memfd goes at or above exeFDFloor, just above
// the most a child can get.
const (
	exeFDMin   = 512
	exeFDFloor = 4 + maxSpecFiles
)

// moveUp duplicates fd (close-on-exec) above every descriptor a child gets
// (exeFDMin, else exeFDFloor) and returns the duplicate.
func moveUp(fd int) (int, error) {
	high, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, exeFDMin)
	if errors.Is(err, unix.EINVAL) { // exeFDMin is at or over RLIMIT_NOFILE
		high, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, exeFDFloor)
	}
	return high, err
}

// execSeals are the seals of every sealed executable.
const execSeals = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL

// selfExe returns the path of the host's own executable that sandboxes (and
// the spawner) execute.
func selfExe() string {
	exeOnce.Do(func() { exePath, exeErr = sealedSelfCopy() })
	if exePath == "" {
		return "/proc/self/exe"
	}
	return exePath
}

func sealedSelfCopy() (string, error) {
	src, err := os.Open("/proc/self/exe")
	if err != nil {
		return "", err
	}
	defer src.Close()
	fd, err := sealCopy(src, "cordon-sandbox")
	if err != nil {
		return "", err
	}
	path := fdPath(fd)
	// Executing it may still be refused (a security module, a policy on
	// memfd execution): try once, with the probe marker (the C constructor
	// exits at once), rather than fail every sandbox start.
	probe := exec.Command(path, confine.ProbeMarker)
	probe.Env = []string{}
	if err := probe.Run(); err != nil {
		unix.Close(fd)
		return "", fmt.Errorf("execute the copy: %w", err)
	}
	return path, nil
}

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// sealCopy copies src into a new memfd named name, seals it and moves it to
// a close-on-exec descriptor at or above exeFDMin (moveUp), which it returns.
func sealCopy(src *os.File, name string) (int, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if err == unix.EINVAL { // kernels before 6.3 have no MFD_EXEC: executable by default
		fd, err = unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	dst := os.NewFile(uintptr(fd), name)
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return -1, fmt.Errorf("copy the executable: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, execSeals); err != nil {
		dst.Close()
		return -1, fmt.Errorf("seal: %w", err)
	}
	high, err := moveUp(fd)
	dst.Close()
	if err != nil {
		return -1, fmt.Errorf("move the memfd up: %w", err)
	}
	return high, nil
}

// sealedFile is a file named by Spec.Binary or found next to the host's
// executable, sealed once.
type sealedFile struct {
	src  string // the file it was copied from
	fd   int    // the host's descriptor of the sealed copy (moveUp); -1: none
	path string // what to execute: fdPath(fd), else src itself
	err  error  // why there is no sealed copy (then path is src)
}

var (
	sealedMu    sync.Mutex
	sealedFiles = map[string]*sealedFile{}
)

// errNotExecutable: the file is not an executable regular file.
var errNotExecutable = errors.New("not an executable regular file")

// sealedCopyOf returns the sealed copy of the executable at path (absolute),
// made on first use and kept for the host's life: later changes to the file
// do not reach sandboxes, as an upgrade of cordon's own file does not. A file
// that cannot be opened, or is not an executable regular file, is an error;
// a kernel that refuses the copy leaves the file to be executed by path.
func sealedCopyOf(path string) (*sealedFile, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("sandbox executable %q: not an absolute path", path)
	}
	sealedMu.Lock()
	defer sealedMu.Unlock()
	if s, ok := sealedFiles[path]; ok {
		return s, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sandbox executable: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("sandbox executable: %w", err)
	}
	// The copy is executable whatever the file's mode: only copy what its
	// owner made executable (for others too: the sandbox's uid would
	// need that to execute it by path).
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return nil, fmt.Errorf("sandbox executable %s (%v): %w", path, st.Mode(), errNotExecutable)
	}
	s := &sealedFile{src: path, fd: -1, path: path}
	if selfExe() == "/proc/self/exe" {
		// The kernel refused the host's own sealed copy or its execution:
		// it would refuse this one too.
		s.err = fmt.Errorf("no sealed copies on this host: %w", exeErr)
	} else if fd, err := sealCopy(f, "cordon-sandbox-"+filepath.Base(path)); err != nil {
		s.err = err
	} else {
		s.fd, s.path = fd, fdPath(fd)
	}
	if s.err != nil {
		slog.Warn("sandbox executable runs by path, not from a sealed copy", "path", path, "err", s.err)
	}
	sealedFiles[path] = s
	return s, nil
}

// runExe is what one sandbox executes.
type runExe struct {
	path string // what the host's exec names
	fd   int    // the sealed copy's descriptor in the host (it travels to the spawner); -1: none
	self bool   // the host's own executable (the spawner has its own copy)
}

// resolveExe decides what a sandbox of Spec.Binary binary executes.
func resolveExe(binary string) (runExe, error) {
	if binary == "" {
		DefaultExecutable()
		if defaultFile != nil {
			return runExe{path: defaultFile.path, fd: defaultFile.fd}, nil
		}
		return runExe{path: selfExe(), fd: -1, self: true}, nil
	}
	s, err := sealedCopyOf(binary)
	if err != nil {
		return runExe{}, err
	}
	return runExe{path: s.path, fd: s.fd}, nil
}
