package homedir_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/certify"
	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/homedir"
	"github.com/cordon-dev/cordon/internal/store"
)

// withDirSyncsFailing runs op in a child process (this test again) whose
// directory syncs fail, and returns what op returned and how many
// directory syncs failed.
func withDirSyncsFailing(t *testing.T, dir string, op func(dir string) error) (result string, failedSyncs string) {
	t.Helper()
	if d := os.Getenv("CORDON_DIRSYNC_DIR"); d != "" {
		failed := faultinject.DirSyncFaults(t)
		err := op(d)
		fmt.Printf("RESULT %v\nFAILED %d\n", err, failed.Load())
		os.Exit(0)
	}
	out, err := faultinject.Child(t.Name(), "CORDON_DIRSYNC_DIR="+dir).Output()
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil {
		t.Fatalf("child: %v; output:\n%s", err, out)
	}
	for line := range strings.SplitSeq(string(out), "\n") {
		if r, ok := strings.CutPrefix(line, "RESULT "); ok {
			result = r
		}
		if f, ok := strings.CutPrefix(line, "FAILED "); ok {
			failedSyncs = f
		}
	}
	if failedSyncs == "" {
		t.Fatalf("child said nothing:\n%s", out)
	}
	return result, failedSyncs
}

// A new key's name is durable only once its directory is synced: a key
// made without it could vanish at a power loss after the node had
// certified with it (clients pin the root key). Its creation syncs the
// home, and fails when that sync fails.
func TestRootKeyCreationSyncsTheHome(t *testing.T) {
	home := t.TempDir()
	result, failed := withDirSyncsFailing(t, home, func(home string) error {
		_, err := certify.LoadOrCreateRootKey(home)
		return err
	})
	if failed == "0" || !strings.Contains(result, "input/output error") {
		t.Fatalf("the root key was made without syncing its directory: %s directory syncs failed, creation returned %s", failed, result)
	}
}

// bbolt syncs the file it creates, not its name: the store's first open
// syncs the home (and the directories it made on the way to it), so the
// commits that follow cannot vanish with the file's name at a power loss.
func TestStoreCreationSyncsTheHome(t *testing.T) {
	home := filepath.Join(t.TempDir(), "new", "home")
	result, failed := withDirSyncsFailing(t, home, func(home string) error {
		st, err := store.Open(home, time.Second)
		if err == nil {
			st.Close()
		}
		return err
	})
	if failed == "0" || !strings.Contains(result, "input/output error") {
		t.Fatalf("the store was made without syncing its directory: %s directory syncs failed, open returned %s", failed, result)
	}
}

// What a creation that crashed left (its temporary file) is removed by
// the next creation or load of the key; a creation in progress (its
// temporary file locked) is left alone.
func TestStaleKeyTempsAreRemoved(t *testing.T) {
	home := t.TempDir()
	stale := filepath.Join(home, ".ic_root_key-123456")
	if err := os.WriteFile(stale, []byte("half a k"), 0o600); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(home, ".ic_root_key-654321")
	if err := os.WriteFile(live, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	lf, err := os.Open(live)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	k, err := certify.LoadOrCreateRootKey(home)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a crashed creation's temporary file is still there after the key was made (%v)", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("a creation in progress lost its temporary file: %v", err)
	}
	// A crash after the link left the temporary file beside the key.
	if err := os.WriteFile(stale, []byte("a whole key"), 0o600); err != nil {
		t.Fatal(err)
	}
	again, err := certify.LoadOrCreateRootKey(home)
	if err != nil || !bytes.Equal(again.DER(), k.DER()) {
		t.Fatalf("load again: %v", err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a crashed creation's temporary file is still there after the key was loaded (%v)", err)
	}
}

// A secret is never replaced: its creation fails with fs.ErrExist and
// leaves the file there as it was, and no temporary file.
func TestCreateSecretNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	if err := homedir.CreateSecret(dir, "s", []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := homedir.CreateSecret(dir, "s", []byte("second")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second creation: %v, want fs.ErrExist", err)
	}
	b, err := homedir.ReadFile(filepath.Join(dir, "s"), homedir.Secret)
	if err != nil || string(b) != "first" {
		t.Fatalf("the secret holds %q (%v), want the first", b, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("the directory holds %v (%v), want the secret alone", entries, err)
	}
}
