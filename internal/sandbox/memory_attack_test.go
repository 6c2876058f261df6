package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
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
	// Not an attack: the engine's use of the descriptor (PAGEMAP_SCAN for
	// present pages over one page it wrote) works; reports "scanned".
	attacks["pagemap_scan_own"] = func() error {
		fd, err := pagemapFD()
		if err != nil {
			return err
		}
		page, err := anonMap(unix.PROT_READ | unix.PROT_WRITE)
		if err != nil {
			return err
		}
		page[0] = 1
		start := uint64(uintptr(unsafe.Pointer(&page[0])))
		var region [3]uint64 // struct page_region: start, end, categories
		const pageIsPresent = 1 << 3
		arg := [12]uint64{0: 96, 2: start, 3: start + 4096, 5: uint64(uintptr(unsafe.Pointer(&region[0]))), 6: 1, 11: pageIsPresent}
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), confine.PagemapScan, uintptr(unsafe.Pointer(&arg[0])))
		if e != 0 {
			return e
		}
		if r != 1 || region[0] != start || region[2]&pageIsPresent == 0 {
			return fmt.Errorf("PAGEMAP_SCAN returned %d regions: %#x", r, region)
		}
		return errors.New("scanned")
	}
	refusedWith["pagemap_ioctl_other"] = "ENOTTY"
	refusedWith["pagemap_scan_other_fd"] = "ENOTTY"
	refusedWith["pagemap_pfn"] = "no frame numbers"
	refusedWith["pagemap_scan_own"] = "scanned"

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

// Huge pages and page merging, attacked from inside. hugetlb pages come
// from the host's global pool and are not charged to the sandbox's memory
// cgroup: a sandbox holding them takes them from the host and every other
// canister. The filter kills the sandbox on the first attempt (MAP_HUGETLB,
// MFD_HUGETLB); where the hugetlb controller exists its cgroup's limit is 0
// as well. MADV_MERGEABLE (KSM) would let it time page merging against other
// processes' memory: also a kill.

const hugePage = 2 << 20

func init() {
	// Take 2 MiB pages from the pool one at a time until the kernel refuses.
	attacks["hugetlb_pool"] = func() error {
		n := 0
		for ; n < 4096; n++ {
			b, err := unix.Mmap(-1, 0, hugePage, unix.PROT_READ|unix.PROT_WRITE,
				unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_HUGETLB)
			if err != nil {
				break
			}
			b[0], b[hugePage-1] = 1, 1 // fault it in
		}
		if n == 0 {
			return errors.New("no huge page at all")
		}
		return fmt.Errorf("holding %d huge pages", n)
	}
	// The same through a hugetlb memfd.
	attacks["hugetlb_memfd"] = func() error {
		fd, err := unix.MemfdCreate("h", unix.MFD_CLOEXEC|unix.MFD_HUGETLB)
		if err != nil {
			return err
		}
		n := 0
		for ; n < 4096; n++ {
			if err := unix.Ftruncate(fd, int64(n+1)*hugePage); err != nil {
				break
			}
			b, err := unix.Mmap(fd, int64(n)*hugePage, hugePage, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				break
			}
			b[0] = 1
		}
		if n == 0 {
			return errors.New("no huge page at all")
		}
		return fmt.Errorf("holding %d huge pages", n)
	}
	attacks["madvise_mergeable"] = func() error {
		b, err := anonMap(unix.PROT_READ | unix.PROT_WRITE)
		if err != nil {
			return err
		}
		return unix.Madvise(b, unix.MADV_MERGEABLE)
	}
	killedBy["hugetlb_pool"] = "mmap(MAP_HUGETLB)"
	killedBy["hugetlb_memfd"] = "memfd_create(MFD_HUGETLB)"
	killedBy["madvise_mergeable"] = "madvise(MADV_MERGEABLE)"
}

func meminfo(t *testing.T, key string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				n, err := strconv.Atoi(f[0])
				if err == nil {
					return n
				}
			}
		}
	}
	t.Fatalf("no %s in /proc/meminfo", key)
	return 0
}

// hugetlbPool gives the host a small hugetlb pool for the test's duration.
func hugetlbPool(t *testing.T, pages int) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to size the hugetlb pool")
	}
	const sysctl = "/proc/sys/vm/nr_hugepages"
	old, err := os.ReadFile(sysctl)
	if err != nil {
		t.Skip(err)
	}
	if err := os.WriteFile(sysctl, []byte(strconv.Itoa(pages)), 0); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(sysctl, old, 0); err != nil {
			t.Errorf("restore %s: %v", sysctl, err)
		}
	})
	free := meminfo(t, "HugePages_Free")
	if free < 2 {
		t.Skipf("a pool of %d huge pages got only %d", pages, free)
	}
	return meminfo(t, "HugePages_Total")
}

// hostHugePage reports whether the host itself can still get a huge page.
func hostHugePage() error {
	b, err := unix.Mmap(-1, 0, hugePage, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_HUGETLB)
	if err != nil {
		return err
	}
	b[0] = 1
	return unix.Munmap(b)
}

// TestHugetlbPoolUntouched: with a hugetlb pool on the host, a sandbox
// (64 MiB memory limit) trying to take huge pages is killed for it and the
// pool stays whole; with the filter off, the cgroup's hugetlb limit of 0
// refuses them (where the controller exists).
func TestHugetlbPoolUntouched(t *testing.T) {
	needCgroup(t)
	total := hugetlbPool(t, 16)
	check := func(t *testing.T, p *Process, reply string) {
		t.Helper()
		free := meminfo(t, "HugePages_Free")
		herr := hostHugePage()
		t.Logf("sandbox: %q; host HugePages_Total=%d Free=%d; host mmap(MAP_HUGETLB): %v", reply, total, free, herr)
		if free != total || strings.Contains(reply, "holding") {
			t.Errorf("the sandbox took huge pages from the host's pool: %q, %d of %d free", reply, free, total)
		}
		if herr != nil {
			t.Errorf("the host cannot get a huge page while the sandbox lives: %v", herr)
		}
	}
	for _, name := range []string{"hugetlb_pool", "hugetlb_memfd"} {
		t.Run(name, func(t *testing.T) {
			_, st := liveAttack(t, name, Spec{Strict: true, MemoryBytes: 64 << 20}, startOpts{}, func(p *Process, reply string) {
				check(t, p, reply)
			})
			if st.SeccompSyscall != killedBy[name] || !errors.Is(st.Err, ErrSeccomp) {
				t.Errorf("want killed for %s, got %+v", killedBy[name], st)
			}
		})
		t.Run(name+"/cgroup", func(t *testing.T) {
			liveAttack(t, name, Spec{MemoryBytes: 64 << 20}, startOpts{unavailable: []Layer{LayerSeccomp}}, func(p *Process, reply string) {
				if !getAvailability().cgroups.hugetlb.ok {
					t.Skipf("no hugetlb controller for sandbox cgroups here (%s)", getAvailability().detail[LayerCgroup])
				}
				if !p.cg.hugetlb {
					t.Errorf("the hugetlb controller is there but the sandbox's cgroup has no hugetlb limit")
				}
				check(t, p, reply)
			})
		})
	}
	if free := meminfo(t, "HugePages_Free"); free != total {
		t.Errorf("after the sandboxes: %d of %d huge pages free", free, total)
	}
}

// TestPagemapNoPFNWithoutUserNS: on a root host without a user namespace
// (the mode where the sandbox starts as real root and leaves it by
// setresuid), the pagemap descriptor still shows no physical frame numbers:
// the kernel decides that from the opener's credentials, which must not
// have held CAP_SYS_ADMIN.
func TestPagemapNoPFNWithoutUserNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the mode without a user namespace)")
	}
	reply, st := attackResult(t, "pagemap_pfn", Spec{Strict: true, AllowMissing: []Layer{LayerUserNS}},
		startOpts{unavailable: []Layer{LayerUserNS}})
	if reply != "failed: no frame numbers" {
		t.Fatalf("want no frame numbers, got %q (exit %+v)", reply, st)
	}
	// The engine's use of the descriptor still works there.
	reply, st = attackResult(t, "pagemap_scan_own", Spec{Strict: true, AllowMissing: []Layer{LayerUserNS}},
		startOpts{unavailable: []Layer{LayerUserNS}})
	if reply != "failed: scanned" {
		t.Fatalf("PAGEMAP_SCAN on the sandbox's pagemap: %q (exit %+v)", reply, st)
	}
}
