package sandbox

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func init() {
	// exe: from inside, try to reach the executable the sandbox runs
	// (to rewrite it, or read it): through /proc, and through any
	// descriptor that is a sealable memory file. Reports what it got.
	scenarios["exe"] = func(c *child) int {
		c.recv()
		var got []string
		for _, p := range []string{"/proc/self/exe", "/proc/self/fd"} {
			if f, err := os.OpenFile(p, os.O_RDONLY, 0); err == nil {
				got = append(got, "opened "+p)
				f.Close()
			}
		}
		for fd := 0; fd < 1024; fd++ {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0); err == nil {
				got = append(got, "memfd at "+strconv.Itoa(fd))
			}
		}
		if len(got) == 0 {
			got = []string{"nothing"}
		}
		c.send("%s", strings.Join(got, "; "))
		c.recv()
		return 0
	}
}

func fileSum(t *testing.T, f *os.File) [32]byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// A sandbox runs a sealed in-memory copy of the host's executable (exe.go):
// byte for byte the host's, and nobody, the host included, can change it;
// from inside, the sandbox can reach neither it nor any memory file.
func TestSandboxRunsSealedCopyOfHost(t *testing.T) {
	p := startT(t, Spec{Args: []string{"exe"}, Strict: true})
	if got := roundTrip(t, p, "go"); got != "nothing" {
		t.Fatalf("inside the sandbox: %s", got)
	}
	exe := "/proc/" + strconv.Itoa(p.Pid()) + "/exe"
	target, err := os.Readlink(exe)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(target, "/memfd:cordon-sandbox") {
		if exeErr != nil {
			t.Fatalf("the sandbox runs %s: no sealed copy: %v", target, exeErr)
		}
		t.Fatalf("the sandbox runs %s, not the sealed copy", target)
	}
	f, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		t.Fatal(err)
	}
	const want = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL
	if seals&want != want {
		t.Fatalf("seals %#x, want %#x", seals, want)
	}
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	if a, b := fileSum(t, f), fileSum(t, self); a != b {
		t.Fatal("the sandbox's executable differs from the host's")
	}
	// The host itself cannot change it: not in place, not by growing or
	// truncating it, not by removing the seals.
	// Through a new descriptor: refused while it runs. Through the host's
	// own (writable) memfd descriptor: refused by the seals.
	if w, err := os.OpenFile(exe, os.O_WRONLY, 0); err == nil {
		w.Close()
		t.Fatal("the running executable was opened for writing")
	}
	fd, err := strconv.Atoi(strings.TrimPrefix(exePath, "/proc/self/fd/"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Pwrite(fd, bytes.Repeat([]byte{0xcc}, 16), 4096); !errors.Is(err, unix.EPERM) {
		t.Fatalf("writing the sealed executable: %v", err)
	}
	if err := unix.Ftruncate(fd, 0); !errors.Is(err, unix.EPERM) {
		t.Fatalf("truncating the sealed executable: %v", err)
	}
	if _, err := unix.Pwrite(fd, []byte{0}, 1<<40); !errors.Is(err, unix.EPERM) {
		t.Fatalf("growing the sealed executable: %v", err)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, 0); err == nil {
		// F_SEAL_SEAL: even adding no seal is refused.
		t.Fatal("the seals can still be changed")
	}
}
