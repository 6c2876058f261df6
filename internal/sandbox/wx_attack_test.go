package sandbox

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// W^X, attacked from inside: no memory is ever writable and executable, mmap
// never makes executable memory (not even a second, executable view of a
// memfd the sandbox writes through another mapping), and once the worker has
// forbidden new code (PR_SET_MDWE, after loading its module) written memory
// can no longer be made executable. And the pagemap descriptor's number,
// which the ioctl rule trusts, cannot be given to another file.

func anonMap(prot int) ([]byte, error) {
	return unix.Mmap(-1, 0, 4096, prot, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

func init() {
	attacks["mmap_rwx"] = func() error {
		_, err := anonMap(unix.PROT_READ | unix.PROT_WRITE | unix.PROT_EXEC)
		return err
	}
	attacks["mmap_rx"] = func() error {
		_, err := anonMap(unix.PROT_READ | unix.PROT_EXEC)
		return err
	}
	attacks["mprotect_rw_rwx"] = func() error {
		b, err := anonMap(unix.PROT_READ | unix.PROT_WRITE)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		b[0] = 0xc3 // ret
		return unix.Mprotect(b, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC)
	}
	// Two views of one memfd: write through one, execute through the other.
	attacks["memfd_double_map"] = func() error {
		fd, err := unix.MemfdCreate("code", unix.MFD_CLOEXEC)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		if err := unix.Ftruncate(fd, 4096); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		w, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		w[0] = 0xc3
		_, err = unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_SHARED)
		return err
	}
	// The same through mprotect: map the second view read-only, then make
	// it executable. Before ForbidNewCode the filter allows RW→RX (that is
	// how wasmtime publishes code); after, the kernel refuses it.
	attacks["mdwe_rw_rx"] = func() error {
		before, err := anonMap(unix.PROT_READ | unix.PROT_WRITE)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		if err := unix.Mprotect(before, unix.PROT_READ|unix.PROT_EXEC); err != nil {
			return fmt.Errorf("RW→RX refused before PR_SET_MDWE (%v): the test proves nothing", err)
		}
		if err := confine.ForbidNewCode(); err != nil {
			return fmt.Errorf("PR_SET_MDWE: %w", err)
		}
		after, err := anonMap(unix.PROT_READ | unix.PROT_WRITE)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		after[0] = 0xc3
		err = unix.Mprotect(after, unix.PROT_READ|unix.PROT_EXEC)
		if err == nil {
			return nil
		}
		// A read-only view turned executable is refused too.
		ro, err2 := anonMap(unix.PROT_READ)
		if err2 != nil {
			return fmt.Errorf("setup: %w", err2)
		}
		if err2 = unix.Mprotect(ro, unix.PROT_READ|unix.PROT_EXEC); err2 == nil {
			return nil
		}
		if !errors.Is(err, err2) {
			return fmt.Errorf("RW→RX %v, R→RX %v", err, err2)
		}
		return err
	}
	// Another option of prctl than the one allowed.
	attacks["prctl_mdwe_other"] = func() error {
		return raw(unix.SYS_PRCTL, unix.PR_SET_MDWE, unix.PR_MDWE_REFUSE_EXEC_GAIN|unix.PR_MDWE_NO_INHERIT)
	}
	attacks["prctl_dumpable"] = func() error { return raw(unix.SYS_PRCTL, unix.PR_SET_DUMPABLE, 1) }

	// The pagemap's number given to another file: dup2/dup3 over it, or
	// close it so the next descriptor lands there; then the ioctl.
	overPagemap := func(place func(pm int) error) func() error {
		return func() error {
			pm, err := pagemapFD()
			if err != nil {
				return err
			}
			if err := place(pm); err != nil {
				return err
			}
			var arg [12]uint64
			arg[0] = 96
			return raw(unix.SYS_IOCTL, uintptr(pm), confine.PagemapScan, uintptr(unsafe.Pointer(&arg[0])))
		}
	}
	attacks["dup2_over_pagemap"] = overPagemap(func(pm int) error { return raw(unix.SYS_DUP2, uintptr(ipcFd), uintptr(pm)) })
	attacks["dup3_over_pagemap"] = overPagemap(func(pm int) error { return raw(unix.SYS_DUP3, uintptr(ipcFd), uintptr(pm), 0) })
	attacks["close_pagemap"] = overPagemap(func(pm int) error {
		if err := raw(unix.SYS_CLOSE, uintptr(pm)); err != nil {
			return fmt.Errorf("close: %w", err)
		}
		fd, err := unix.MemfdCreate("x", 0)
		if err != nil || fd != pm {
			return fmt.Errorf("setup: memfd at %d, not %d: %v", fd, pm, err)
		}
		return nil
	})
	attacks["close_range_pagemap"] = overPagemap(func(pm int) error { return raw(unix.SYS_CLOSE_RANGE, uintptr(pm), uintptr(pm), 0) })
	// F_DUPFD_CLOEXEC (allowed) takes the lowest free number at or above
	// its argument: never the pagemap's; PAGEMAP_SCAN on the copy fails.
	attacks["dupfd_at_pagemap"] = func() error {
		pm, err := pagemapFD()
		if err != nil {
			return err
		}
		fd, err := unix.FcntlInt(uintptr(ipcFd), unix.F_DUPFD_CLOEXEC, pm)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		if fd == pm {
			return nil
		}
		var arg [12]uint64
		arg[0] = 96
		return raw(unix.SYS_IOCTL, uintptr(fd), confine.PagemapScan, uintptr(unsafe.Pointer(&arg[0])))
	}

	killedBy["mmap_rwx"] = "mmap(PROT_WRITE|PROT_EXEC)"
	killedBy["mmap_rx"] = "mmap(PROT_EXEC)"
	killedBy["mprotect_rw_rwx"] = "mprotect(PROT_WRITE|PROT_EXEC)"
	killedBy["memfd_double_map"] = "mmap(PROT_EXEC)"
	killedBy["prctl_mdwe_other"] = "prctl"
	killedBy["prctl_dumpable"] = "prctl"
	killedBy["dup2_over_pagemap"] = "dup2"
	killedBy["dup3_over_pagemap"] = "dup3"
	killedBy["close_pagemap"] = "close(pagemap)"
	killedBy["close_range_pagemap"] = "close_range"
	refusedWith["mdwe_rw_rx"] = "EACCES"
	refusedWith["dupfd_at_pagemap"] = "ENOTTY"
}
