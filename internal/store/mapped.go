package store

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// releaseMapped drops from this process's page tables the pages of the
// store file that bbolt has touched through its read-only mapping. bbolt
// reads every page it overwrites (a large commit over stored pages reads
// about as much as it writes), and each one read stays resident in the
// process, counted in its RSS beside the page maps: the file's contents,
// a second copy of the committed memory. MADV_DONTNEED on a shared file
// mapping only unmaps: the data is in the file and the page cache, and the
// next read faults it in again. A read transaction is held meanwhile, so
// bbolt cannot replace the mapping (it remaps only with none open) and the
// range advised is exactly its mapping, found in /proc/self/maps.
func (s *Store) releaseMapped() error {
	return s.db.View(func(*bolt.Tx) error {
		start := s.db.Info().Data
		end, err := mappingEnd(start, s.db.Path())
		if err != nil {
			return err
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_DONTNEED); errno != 0 {
			return fmt.Errorf("madvise store mapping: %w", errno)
		}
		return nil
	})
}

// mappingEnd returns the end of the mapping that starts at start, after
// checking that it maps the file at path (same device and inode).
func mappingEnd(start uintptr, path string) (uintptr, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("stat %s: no device and inode", path)
	}
	wantDev := fmt.Sprintf("%02x:%02x", unix.Major(uint64(sys.Dev)), unix.Minor(uint64(sys.Dev)))
	wantIno := strconv.FormatUint(sys.Ino, 10)
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	want := []byte(strconv.FormatUint(uint64(start), 16) + "-")
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<16)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, want) {
			continue
		}
		// start-end perms offset dev inode path
		fields := bytes.Fields(line)
		if len(fields) < 6 || string(fields[3]) != wantDev || string(fields[4]) != wantIno {
			return 0, fmt.Errorf("mapping at %#x is not %s (%s %s): %q", start, path, wantDev, wantIno, line)
		}
		_, rest, _ := bytes.Cut(fields[0], []byte("-"))
		end, err := strconv.ParseUint(string(rest), 16, 64)
		if err != nil || uintptr(end) <= start {
			return 0, fmt.Errorf("mapping at %#x: %q", start, line)
		}
		return uintptr(end), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no mapping at %#x", start)
}
