package certify

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloudflare/circl/sign/bls"
)

// The root key is made once (0600), reused, and signs in G1 what its G2
// public key (as the IC encodes it) verifies.
func TestRootKey(t *testing.T) {
	home := t.TempDir()
	k, err := LoadOrCreateRootKey(home)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(home, RootKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("root key mode %v, want 0600", fi.Mode().Perm())
	}
	if len(k.DER()) != 133 || !bytes.HasPrefix(k.DER(), blsDERPrefix) {
		t.Fatalf("DER %x", k.DER())
	}
	again, err := LoadOrCreateRootKey(home)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.DER(), k.DER()) {
		t.Fatal("a second load made a new key")
	}
	other, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(other.DER(), k.DER()) {
		t.Fatal("two homes share a root key")
	}

	pk, err := PublicKeyFromDER(k.DER())
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("\x0Dic-state-root" + strings.Repeat("r", 32))
	sig := again.Sign(msg)
	if len(sig) != 48 {
		t.Fatalf("signature of %d bytes, want 48 (G1, compressed)", len(sig))
	}
	if !bls.Verify(pk, msg, sig) {
		t.Fatal("signature does not verify")
	}
	if bls.Verify(pk, append(msg, 0), sig) {
		t.Fatal("signature verifies another message")
	}
	opk, _ := PublicKeyFromDER(other.DER())
	if bls.Verify(opk, msg, sig) {
		t.Fatal("signature verifies under another key")
	}
	if _, err := PublicKeyFromDER(k.DER()[1:]); err == nil {
		t.Fatal("a truncated DER key parsed")
	}

	// A key others can read is refused, a broken one too.
	if err := os.Chmod(filepath.Join(home, RootKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateRootKey(home); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("world-readable key: %v", err)
	}
	if err := os.WriteFile(filepath.Join(home, RootKeyFile), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(home, RootKeyFile), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateRootKey(home); err == nil || !strings.Contains(err.Error(), "not a BLS root key") {
		t.Fatalf("broken key: %v", err)
	}
}
