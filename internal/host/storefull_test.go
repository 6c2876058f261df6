package host

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// An install or update whose commit finds the store's file system full
// answered the store's error: an install its text (the store file's path,
// "no space left on device"), an update an internal error charged to the
// canister's code (CANISTER_ERROR). Both now say the node's storage is
// full (SYS_TRANSIENT: nothing was applied, try again), naming no path.
func TestFullStorageIsTransient(t *testing.T) {
	t.Parallel()
	mnt := durTmpfs(t, 128<<20)
	cfg := storeFailCfg(filepath.Join(mnt, "home"))
	f := openFixture(t, cfg)
	ctx := context.Background()
	bigWasm := mustWat(t, bigInitWat)
	big := f.install(bigWasm, []byte{1})
	memory := f.install(module(t, corpusDir, "memory"), noArgs)

	check := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s on a full disk succeeded", what)
		}
		var rej *Reject
		if !errors.As(err, &rej) || rej.Code != SysTransient || !errors.Is(err, ErrStorageFull) {
			t.Fatalf("%s on a full disk: %v, want a SYS_TRANSIENT reject saying the storage is full", what, err)
		}
		if strings.Contains(rej.Message, mnt) || strings.Contains(rej.Message, "no space left") {
			t.Fatalf("%s on a full disk: the caller reads the store's error: %q", what, rej.Message)
		}
		t.Logf("%s on a full disk: %v", what, err)
	}

	release := fillDisk(t, mnt)
	_, err := f.node.Install(ctx, big, InstallOptions{Mode: ModeReinstall, Wasm: bigWasm, Arg: []byte{2}, Caller: user})
	check("reinstall of a 40 MiB heap", err)
	// Until the store file's free pages are used up too.
	err = nil
	for i := 0; err == nil; i++ {
		if i == 40 {
			t.Fatal("40 updates each growing the heap by 8 MiB fit on a full disk")
		}
		_, err = f.node.Update(ctx, Message{Canister: memory, Method: "grow", Arg: natArg(1), Caller: user})
	}
	check("update growing the heap by 8 MiB", err)
	release()
	if _, err := f.node.Install(ctx, big, InstallOptions{Mode: ModeReinstall, Wasm: bigWasm, Arg: []byte{2}, Caller: user}); err != nil {
		t.Fatalf("reinstall with room again: %v", err)
	}
}
