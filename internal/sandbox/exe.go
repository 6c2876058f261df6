package sandbox

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// The default sandbox executable is a sealed in-memory copy of the host's
// own (memfd), made once, as runc does with its binary. Two reasons:
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
// If the kernel refuses any step (no memfd exec: vm.memfd_noexec, or the
// copy does not execute), sandboxes run /proc/self/exe as before.
var (
	exeOnce sync.Once
	exePath string // "/proc/self/fd/N", or "" to use /proc/self/exe
	exeErr  error  // why exePath is ""
)

// exeFDMin: the memfd lives at or above this descriptor, far above the
// descriptors a child gets (0-3 and the host's files), which the child's
// dup2s would overwrite before exec resolves the path.
const exeFDMin = 512

// sandboxExe returns the path the sandboxes execute by default.
func sandboxExe() string {
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
	fd, err := unix.MemfdCreate("cordon-sandbox", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if err == unix.EINVAL { // kernels before 6.3 have no MFD_EXEC: executable by default
		fd, err = unix.MemfdCreate("cordon-sandbox", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return "", fmt.Errorf("memfd_create: %w", err)
	}
	dst := os.NewFile(uintptr(fd), "cordon-sandbox")
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return "", fmt.Errorf("copy the executable: %w", err)
	}
	const seals = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		dst.Close()
		return "", fmt.Errorf("seal: %w", err)
	}
	high, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, exeFDMin)
	dst.Close()
	if err != nil {
		return "", fmt.Errorf("move the memfd up: %w", err)
	}
	path := "/proc/self/fd/" + strconv.Itoa(high)
	// Executing it may still be refused (a security module, a policy on
	// memfd execution): try once, with the probe marker (the C constructor
	// exits at once), rather than fail every sandbox start.
	probe := exec.Command(path, confine.ProbeMarker)
	probe.Env = []string{}
	if err := probe.Run(); err != nil {
		unix.Close(high)
		return "", fmt.Errorf("execute the copy: %w", err)
	}
	return path, nil
}
