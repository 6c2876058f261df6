package api

import (
	"os"
	"path/filepath"
	"testing"
)

// The token is made through a temporary file (complete or absent after a
// crash, never a half-written token that the next start refuses): what a
// creation that crashed left of one is removed at the next start, and the
// token made then is the one read after.
func TestTokenStaleTempRemoved(t *testing.T) {
	home := t.TempDir()
	stale := filepath.Join(home, "."+tokenFile+"-4242")
	if err := os.WriteFile(stale, []byte("half a tok"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, created, err := loadOrCreateToken(home)
	if err != nil || !created {
		t.Fatalf("make the token: created %v, %v", created, err)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Fatal("a crashed creation's temporary file is still there after the token was made")
	}
	again, created, err := loadOrCreateToken(home)
	if err != nil || created || again != tok {
		t.Fatalf("read the token again: created %v, same %v, %v", created, again == tok, err)
	}
	fi, err := os.Stat(TokenPath(home))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
}
