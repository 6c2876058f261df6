package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
	"github.com/cordon-dev/cordon/internal/state"
)

// The surfaces the state design added to a sandbox, attacked from inside:
// its own pagemap descriptor (PAGEMAP_SCAN is the one ioctl allowed, on
// that descriptor only, and the file shows no physical frame numbers), and
// the read-only memfd image of its canister's committed memory (readable,
// privately mappable, never writable).

// pagemapFD is the sandbox's pagemap descriptor (attack side).
func pagemapFD() (int, error) {
	f := confine.Pagemap()
	if f == nil {
		return -1, errors.New("no pagemap descriptor")
	}
	return int(f.Fd()), nil
}

func init() {
	// Any other ioctl on the pagemap descriptor fails (FIONREAD, alias TIOCINQ, here).
	attacks["pagemap_ioctl_other"] = func() error {
		fd, err := pagemapFD()
		if err != nil {
			return err
		}
		var n int32
		return raw(unix.SYS_IOCTL, uintptr(fd), unix.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	}
	// PAGEMAP_SCAN on any other descriptor fails before reaching a driver.
	attacks["pagemap_scan_other_fd"] = func() error {
		var arg [12]uint64
		arg[0] = 96
		return raw(unix.SYS_IOCTL, 2, confine.PagemapScan, uintptr(unsafe.Pointer(&arg[0])))
	}
	// The page table entries of its own memory carry no physical frame
	// number (the file was opened with the sandbox's credentials).
	attacks["pagemap_pfn"] = func() error {
		fd, err := pagemapFD()
		if err != nil {
			return err
		}
		page := make([]byte, 4096)
		page[0] = 1 // present
		var entry [8]byte
		off := int64(uintptr(unsafe.Pointer(&page[0]))/4096) * 8
		if _, err := unix.Pread(fd, entry[:], off); err != nil {
			return err
		}
		e := uint64(entry[0]) | uint64(entry[1])<<8 | uint64(entry[2])<<16 | uint64(entry[3])<<24 |
			uint64(entry[4])<<32 | uint64(entry[5])<<40 | uint64(entry[6])<<48 | uint64(entry[7])<<56
		if e&(1<<63) == 0 {
			return fmt.Errorf("page not present (entry %#x)", e)
		}
		if pfn := e & (1<<55 - 1); pfn != 0 {
			return nil // a frame number leaked
		}
		return errors.New("no frame numbers")
	}
	refusedWith["pagemap_ioctl_other"] = "ENOTTY"
	refusedWith["pagemap_scan_other_fd"] = "ENOTTY"
	refusedWith["pagemap_pfn"] = "no frame numbers"

	// image: fd 4 is the read-only image of a memory whose first page is
	// all 0x5a. The sandbox may read and privately change it; every way of
	// changing the host's copy must fail.
	scenarios["image"] = func(c *child) int {
		fd := int(c.files[0].Fd())
		var report []string
		try := func(name string, err error) {
			if err == nil {
				report = append(report, name+" SUCCEEDED")
				return
			}
			report = append(report, name+" "+errText(err))
		}
		buf := make([]byte, 4096)
		if _, err := unix.Pread(fd, buf, 0); err != nil || buf[0] != 0x5a {
			c.send("cannot read the image: %v %x", err, buf[0])
			return 1
		}
		// A private mapping is writable: the copy is the sandbox's own.
		priv, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
		if err != nil {
			c.send("cannot map the image privately: %v", err)
			return 1
		}
		priv[0] = 0x66
		_, err = unix.Pwrite(fd, []byte{0x66}, 0)
		try("pwrite", err)
		try("ftruncate", unix.Ftruncate(fd, 0))
		_, err = unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		try("mmap_shared_write", err)
		_, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_GROW)
		try("add_seal", err)
		c.send("%s", strings.Join(report, "; "))
		c.recv()
		return 0
	}
}

// TestMemoryImageReadOnly hands a live sandbox the read-only image of a
// committed memory, as the executor does, and checks from inside that
// nothing changes the host's copy, and from outside that it did not change.
func TestMemoryImageReadOnly(t *testing.T) {
	m := state.NewPageMap(state.WasmPageSize)
	p := new(state.Page)
	for i := range p {
		p[i] = 0x5a
	}
	if err := m.SetPage(0, p); err != nil {
		t.Fatal(err)
	}
	ro := m.ReadOnlyFile()
	if ro == nil {
		t.Skip("no memfd images here")
	}
	defer m.Release()
	reply, st := scenarioResult(t, "image", Spec{Strict: true, Files: []*os.File{ro}})
	t.Log(reply)
	for _, want := range []string{"pwrite EBADF", "ftruncate EINVAL", "mmap_shared_write EACCES", "add_seal EPERM"} {
		if !strings.Contains(reply, want) {
			t.Errorf("want %q in %q", want, reply)
		}
	}
	if strings.Contains(reply, "SUCCEEDED") {
		t.Errorf("the sandbox changed the image: %q", reply)
	}
	if st.SeccompSyscall != "" {
		t.Errorf("killed by seccomp: %+v", st)
	}
	got := make([]byte, state.PageSize)
	if _, err := m.File().ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		if b != 0x5a {
			t.Fatalf("image byte %d is %#x after the sandbox", i, b)
		}
	}
	if err := m.Apply(state.Delta{Size: 2 * state.WasmPageSize}); err != nil {
		t.Fatal(err)
	}
	if st, err := m.File().Stat(); err != nil || st.Size() != 2*state.WasmPageSize {
		t.Fatalf("the host could not grow its image afterwards: %v %v", st, err)
	}
}

// scenarioResult runs scenario name in a strict sandbox and returns its one
// report and how it exited.
func scenarioResult(t *testing.T, name string, spec Spec) (string, ExitStatus) {
	t.Helper()
	spec.Label = "scenario-" + name
	spec.Args = append([]string{name}, spec.Args...)
	spec.Stderr = func(l string) { t.Logf("sandbox: %s", l) }
	spec, why := rootlessSpec(spec)
	if why != "" {
		t.Log(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := start(ctx, spec, startOpts{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Conn().Close()
	_ = p.Conn().SetReadDeadline(time.Now().Add(20 * time.Second))
	b := make([]byte, 4096)
	n, err := p.Conn().Read(b)
	reply := ""
	if err == nil {
		reply = string(b[:n])
	}
	p.Kill()
	return reply, p.Wait()
}
