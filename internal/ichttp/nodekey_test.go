package ichttp

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// The node key is made once (0600), reused, and its id is the
// self-authenticating principal of its DER key.
func TestNodeKey(t *testing.T) {
	home := t.TempDir()
	k, err := LoadOrCreateNodeKey(home)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(home, NodeKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("node key file: %v %v", fi, err)
	}
	again, err := LoadOrCreateNodeKey(home)
	if err != nil || !bytes.Equal(again.der, k.der) || !again.ID().Equal(k.ID()) {
		t.Fatalf("a second load made another key (%v)", err)
	}
	if len(k.der) != 44 || !again.ID().Equal(principal.SelfAuthenticating(k.der)) {
		t.Fatalf("node id %s for key %x", k.ID(), k.der)
	}
	if err := os.Chmod(filepath.Join(home, NodeKeyFile), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateNodeKey(home); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("group-readable node key: %v", err)
	}
}

// The node key is made through a temporary file: what a creation that
// crashed left of one is removed when the key is next loaded or made.
func TestNodeKeyStaleTempRemoved(t *testing.T) {
	home := t.TempDir()
	stale := filepath.Join(home, "."+NodeKeyFile+"-4242")
	if err := os.WriteFile(stale, []byte("half a seed"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateNodeKey(home); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Fatal("a crashed creation's temporary file is still there after the node key was made")
	}
}
