package homedir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// A new file's name lives in its directory: until the directory is synced
// a power loss may take the name away, file and all, even when the file
// itself was synced. Files cordon makes once and keeps (its keys, its
// token, the store) are made with their directory synced.

// SyncDir syncs the directory dir, making durable the entries created,
// linked or removed in it.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// MkdirAll is os.MkdirAll that syncs the parent of every directory it
// makes, so that a home made for a new store survives a power loss.
func MkdirAll(dir string, perm fs.FileMode) error {
	var made []string // the directories that do not exist yet, deepest first
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil || !errors.Is(err, fs.ErrNotExist) {
			break
		}
		made = append(made, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	for i := len(made) - 1; i >= 0; i-- {
		if err := SyncDir(filepath.Dir(made[i])); err != nil {
			return err
		}
	}
	return nil
}

// tempPattern names the temporary files a secret is written to (the
// pattern of os.CreateTemp). Earlier versions of cordon used it too, so
// what their crashes left is removed as well.
func tempPattern(name string) string { return "." + name + "-*" }

// CreateSecret makes the file name in dir holding b, readable and
// writable by the user only, so that a crash leaves it complete or absent
// and a return means it is on disk: b is written to a temporary file in
// dir, synced, linked to name (never replacing a file there: fs.ErrExist
// then, the other file kept), and dir is synced. The temporary file is
// locked while it exists, so that RemoveStaleTemps, which removes what a
// crashed creation left, leaves a live one alone.
func CreateSecret(dir, name string, b []byte) error {
	RemoveStaleTemps(dir, name)
	for {
		retry, err := createSecret(dir, name, b)
		if !retry {
			return err
		}
	}
}

// createSecret is one attempt of CreateSecret: retry when another process
// took its temporary file for a crashed one (before it was locked).
func createSecret(dir, name string, b []byte) (retry bool, err error) {
	tmp, err := os.CreateTemp(dir, tempPattern(name)) // 0600
	if err != nil {
		return false, err
	}
	defer tmp.Close()
	defer os.Remove(tmp.Name())
	if err := unix.Flock(int(tmp.Fd()), unix.LOCK_EX); err != nil {
		return false, fmt.Errorf("lock %s: %w", tmp.Name(), err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(tmp.Fd()), &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", tmp.Name(), err)
	}
	if st.Nlink == 0 {
		return true, nil // removed between its creation and its lock
	}
	if err := tmp.Chmod(0o600); err != nil {
		return false, err
	}
	if _, err := tmp.Write(b); err != nil {
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		return false, err
	}
	// Link, not rename: a file another process made meanwhile wins.
	if err := os.Link(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return false, err
	}
	// The name is there, complete; it is durable once dir is synced. If
	// that fails it stays (another process may already read it), and the
	// caller learns the failure.
	return false, SyncDir(dir)
}

// RemoveStaleTemps removes the temporary files of name in dir that a
// crashed CreateSecret left (a live one holds its lock). It is best
// effort: a file it cannot remove is only clutter.
func RemoveStaleTemps(dir, name string) {
	paths, err := filepath.Glob(filepath.Join(dir, tempPattern(name)))
	if err != nil {
		return
	}
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			_ = os.Remove(p)
		}
		f.Close()
	}
}

// ReadOrCreateSecret reads the secret file name in dir (ReadFile,
// Secret), making it with generate's bytes the first time (CreateSecret);
// when another process makes it meanwhile, its file is read. created says
// whether this call made it. Temporary files a crashed creation left are
// removed first, also when the file exists (a crash after its link).
func ReadOrCreateSecret(dir, name string, generate func() ([]byte, error)) (b []byte, created bool, err error) {
	RemoveStaleTemps(dir, name)
	path := filepath.Join(dir, name)
	b, err = ReadFile(path, Secret)
	if !errors.Is(err, fs.ErrNotExist) {
		return b, false, err
	}
	b, err = generate()
	if err != nil {
		return nil, false, err
	}
	switch err := CreateSecret(dir, name, b); {
	case errors.Is(err, fs.ErrExist):
		b, err = ReadFile(path, Secret)
		return b, false, err
	case err != nil:
		return nil, false, fmt.Errorf("write %s: %w", path, err)
	}
	return b, true, nil
}
