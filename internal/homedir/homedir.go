// Package homedir checks that a cordon home, and the files cordon reads
// from it, belong to the user running cordon and that no one else can
// change them, as ssh checks ~/.ssh.
//
// Everything in a home steers the node: config.toml picks the isolation
// mode, ic_root_key and ic_node_key sign for it, token authorizes API
// requests, serve.json says where the server listens, cordon.db is every
// canister's state and artifacts holds the code sandboxes run. A home
// another user owns, or may write, lets that user choose all of these.
// A home that is the user's own and writable only by them, in directories
// where no one else may rename it (CheckPath), can only be changed by them
// (and root), so checking it once at start and opening the files in it
// without following symbolic links is enough: no other user can swap a
// file afterwards.
package homedir

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Kind says how strictly a path in a home is checked.
type Kind int

const (
	// Dir is a directory: the user's, writable by no one else.
	Dir Kind = iota
	// File is a regular file: the user's, writable by no one else.
	File
	// Secret is a regular file: the user's, and neither readable nor
	// writable by anyone else.
	Secret
)

// Entries are the paths in a home cordon reads, and how each is checked.
var Entries = []struct {
	Name string
	Kind Kind
}{
	{"config.toml", File},
	{"cordon.db", File},
	{"serve.json", File},
	{"artifacts", Dir},
	{"token", Secret},
	{"ic_root_key", Secret},
	{"ic_node_key", Secret},
}

// UnsafeError is a path in a home, or on the way to it, that another user
// owns or may change.
type UnsafeError struct {
	Path   string
	Reason string // what is wrong, and what it allows
	Fix    string // the command that fixes it
	// Instead, when set, is a home to use instead of Path (a directory
	// every user shares, like /tmp, cannot be fixed: Fix makes Instead).
	Instead string
}

func (e *UnsafeError) Error() string {
	if e.Instead != "" {
		return fmt.Sprintf("refusing to use %s: %s; use a directory of your own instead: `%s`, then --home %s", e.Path, e.Reason, e.Fix, e.Instead)
	}
	return fmt.Sprintf("refusing to use %s: %s; fix it with `%s`", e.Path, e.Reason, e.Fix)
}

// Check verifies the directories on the way to home (CheckPath), home
// itself and each of Entries in it: a home that does not exist yet is
// fine (the store creates it, mode 0700), and so is an entry that does not
// exist. The home may be a symbolic link (its target is checked); an entry
// may not.
func Check(home string) error {
	if err := CheckPath(home); err != nil {
		return err
	}
	fi, err := os.Stat(home)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check home %s: %w", home, err)
	}
	if err := checkInfo(home, fi, Dir, false); err != nil {
		return err
	}
	for _, e := range Entries {
		p := filepath.Join(home, e.Name)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("check %s: %w", p, err)
		}
		if err := checkInfo(p, fi, e.Kind, false); err != nil {
			return err
		}
	}
	return nil
}

// maxLinks bounds the symbolic links CheckPath follows, as the kernel's
// ELOOP does.
const maxLinks = 40

// CheckPath verifies the directories on the way to path, as OpenSSH's
// StrictModes does: another user who may rename an entry of one of them
// could swap the home, or a directory above it, for their own between the
// check and the opens by name that follow. Each directory must be the
// user's or root's and not writable by group or others, unless it is
// sticky (only an entry's owner may rename it, as in /tmp) and the entry
// on the way is the user's or root's. Symbolic links on the way are
// followed, the directories around their targets checked the same way.
//
// A part of the path that does not exist yet is made by the store
// (os.MkdirAll): its parent must then be writable by no one else, sticky
// or not, or another user could make it first.
func CheckPath(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	uid := os.Geteuid()
	dir := "/"
	dirInfo, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	rest := strings.Split(abs, "/")
	links := 0
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			// dir has no symbolic link in it: its parent is lexical.
			dir = filepath.Dir(dir)
			if dirInfo, err = os.Lstat(dir); err != nil {
				return fmt.Errorf("check %s: %w", path, err)
			}
			continue
		}
		p := filepath.Join(dir, name)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			if dirInfo.Mode().Perm()&0o022 != 0 {
				return &UnsafeError{Path: p,
					Reason: fmt.Sprintf("it does not exist yet, and %s (mode %04o) lets other users make it first", dir, unixMode(dirInfo.Mode())),
					Fix:    "mkdir -m 700 " + p}
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("check %s: %w", p, err)
		}
		if err := checkStep(dir, dirInfo, p, fi, uid); err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if links++; links > maxLinks {
				return fmt.Errorf("check %s: more than %d symbolic links on the way", path, maxLinks)
			}
			target, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("check %s: %w", p, err)
			}
			if filepath.IsAbs(target) {
				dir = "/"
				if dirInfo, err = os.Lstat(dir); err != nil {
					return fmt.Errorf("check %s: %w", path, err)
				}
			}
			rest = append(strings.Split(target, "/"), rest...)
			continue
		}
		if !fi.IsDir() {
			return nil // opening the home reports that it is no directory
		}
		dir, dirInfo = p, fi
	}
	return nil
}

// checkStep checks dir, the directory holding p on the way to a home: an
// entry of it that another user may rename is a home they may swap.
func checkStep(dir string, dirInfo fs.FileInfo, p string, fi fs.FileInfo, uid int) error {
	dirOwner, ok := owner(dirInfo)
	if !ok {
		return fmt.Errorf("check %s: no owner information", dir)
	}
	pOwner, ok := owner(fi)
	if !ok {
		return fmt.Errorf("check %s: no owner information", p)
	}
	mode := dirInfo.Mode()
	switch {
	case dirOwner != uid && dirOwner != 0:
		return &UnsafeError{Path: dir,
			Reason: fmt.Sprintf("it is owned by uid %d, not by you (uid %d) or root: its owner could put their own %s in the place of yours",
				dirOwner, uid, p),
			Fix: fmt.Sprintf("chown %d %s", uid, dir)}
	case mode.Perm()&0o022 == 0:
		return nil
	case mode&fs.ModeSticky == 0:
		return &UnsafeError{Path: dir,
			Reason: fmt.Sprintf("its mode %04o lets other users rename %s and put their own in its place", unixMode(mode), p),
			Fix:    fmt.Sprintf("chmod go-w %s", dir)}
	case pOwner != uid && pOwner != 0:
		return &UnsafeError{Path: p,
			Reason: fmt.Sprintf("it is owned by uid %d, not by you (uid %d), in %s (mode %04o), where its owner may rename it and put their own in its place",
				pOwner, uid, dir, unixMode(mode)),
			Fix: fmt.Sprintf("chown -h %d %s", uid, p)}
	}
	return nil
}

// owner is the uid that owns what fi describes.
func owner(fi fs.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}

// unixMode is a mode as chmod writes it: permissions, and the sticky,
// setuid and setgid bits.
func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	return u
}

// ReadConfigFile reads a configuration file given with --config or
// $CORDON_CONFIG. It may be a symbolic link and may belong to root (a
// system-wide file), but no one else may be able to change it or put
// another in its place: the directories on the way to it, and to a link's
// target, are checked as a home's are (CheckPath), and the file read (a
// regular file, writable by no one else) is the one checked.
func ReadConfigFile(path string) ([]byte, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err // not there: said as such, not as a place to make it
	}
	if err := CheckPath(path); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, &fs.PathError{Op: "read", Path: path, Err: syscall.EISDIR}
	}
	if err := checkInfo(path, fi, File, true); err != nil {
		return nil, err
	}
	return readBounded(path, f)
}

// checkInfo checks what Lstat or Stat said of path.
func checkInfo(path string, fi fs.FileInfo, kind Kind, rootOK bool) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("check %s: no owner information", path)
	}
	uid := os.Geteuid()
	mode := fi.Mode()
	what := "file"
	if kind == Dir {
		what = "directory"
	}
	switch {
	case mode&fs.ModeSymlink != 0:
		return &UnsafeError{Path: path, Reason: "it is a symbolic link, which cordon does not follow in its home",
			Fix: "rm " + path}
	case kind == Dir && !mode.IsDir(), kind != Dir && !mode.IsRegular():
		return &UnsafeError{Path: path, Reason: fmt.Sprintf("it is not a %s (mode %v)", what, mode),
			Fix: "rm -r " + path}
	case kind == Dir && mode.Perm()&0o022 != 0 && mode&fs.ModeSticky != 0:
		// A directory every user shares (/tmp): chmod would break it for
		// the others, and its entries are still theirs to make.
		mine := filepath.Join(path, fmt.Sprintf("cordon-%d", uid))
		return &UnsafeError{Path: path,
			Reason:  fmt.Sprintf("its mode %04o lets other users create and rename entries in it (a shared directory)", unixMode(mode)),
			Fix:     "mkdir -m 700 " + mine,
			Instead: mine}
	case int(st.Uid) != uid && !(rootOK && st.Uid == 0):
		return &UnsafeError{Path: path,
			Reason: fmt.Sprintf("it is owned by uid %d, not by you (uid %d, mode %04o): its owner could choose cordon's configuration, keys and state",
				st.Uid, uid, mode.Perm()),
			Fix: fmt.Sprintf("chown %d %s", uid, path)}
	case mode.Perm()&0o022 != 0:
		return &UnsafeError{Path: path,
			Reason: fmt.Sprintf("its mode %04o lets other users change it", mode.Perm()),
			Fix:    fmt.Sprintf("chmod go-w %s", path)}
	case kind == Secret && mode.Perm()&0o077 != 0:
		return &UnsafeError{Path: path,
			Reason: fmt.Sprintf("its mode %04o makes a secret readable by others", mode.Perm()),
			Fix:    fmt.Sprintf("chmod 600 %s", path)}
	}
	return nil
}

// maxRead bounds what ReadFile reads: every file it is for is small.
const maxRead = 1 << 20

// ReadFile reads a file in a home without following a symbolic link, after
// checking (on the open file) that it is a regular file of the user that
// no one else may change, nor read when kind is Secret. A file that does
// not exist is fs.ErrNotExist.
func ReadFile(path string, kind Kind) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, &UnsafeError{Path: path, Reason: "it is a symbolic link, which cordon does not follow in its home", Fix: "rm " + path}
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkInfo(path, fi, kind, false); err != nil {
		return nil, err
	}
	return readBounded(path, f)
}

// readBounded reads f, at most maxRead bytes.
func readBounded(path string, f *os.File) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, maxRead+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxRead {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, maxRead)
	}
	return b, nil
}
