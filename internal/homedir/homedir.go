// Package homedir checks that a cordon home, and the files cordon reads
// from it, belong to the user running cordon and that no one else can
// change them, as ssh checks ~/.ssh.
//
// Everything in a home steers the node: config.toml picks the isolation
// mode, ic_root_key and ic_node_key sign for it, token authorizes API
// requests, serve.json says where the server listens, cordon.db is every
// canister's state and artifacts holds the code sandboxes run. A home
// another user owns, or may write, lets that user choose all of these.
// A home that is the user's own and writable only by them can only be
// changed by them (and root), so checking it once at start and opening
// the files in it without following symbolic links is enough: no other
// user can swap a file afterwards.
package homedir

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
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

// UnsafeError is a path in a home that another user owns or may change.
type UnsafeError struct {
	Path   string
	Reason string // what is wrong, and what it allows
	Fix    string // the command that fixes it
}

func (e *UnsafeError) Error() string {
	return fmt.Sprintf("refusing to use %s: %s; fix it with `%s`", e.Path, e.Reason, e.Fix)
}

// Check verifies home and each of Entries in it: a home that does not
// exist yet is fine (the store creates it, mode 0700), and so is an entry
// that does not exist. The home may be a symbolic link (its target is
// checked); an entry may not.
func Check(home string) error {
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

// CheckConfigFile verifies a configuration file given with --config or
// $CORDON_CONFIG: it may be a symbolic link and may belong to root (a
// system-wide file), but no one else may be able to change it.
func CheckConfigFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil || fi.IsDir() {
		return nil // reading it reports that
	}
	return checkInfo(path, fi, File, true)
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
	b, err := io.ReadAll(io.LimitReader(f, maxRead+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxRead {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, maxRead)
	}
	return b, nil
}
