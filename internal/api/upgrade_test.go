package api

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The HTTP API (and so the CLI) upgrades as dfx does when not told: the
// heap kept when the installed module uses enhanced orthogonal
// persistence; a new module that does not is refused until the caller
// says replace. skip_pre_upgrade belongs to mode upgrade.
func TestUpgradeOptionsOverHTTP(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	eop, err := os.ReadFile(filepath.Join("..", "..", "examples", "counter64.wasm"))
	if err != nil {
		t.Fatal(err)
	}
	inst, err := s.client.Install(ctx, InstallRequest{Wasm: eop, Arg: noArgs})
	if err != nil {
		t.Fatal(err)
	}
	nat41 := []byte("DIDL\x00\x01\x7d\x29")
	if _, err := s.client.Call(ctx, CallRequest{ID: inst.ID, Method: "add", Arg: nat41}); err != nil {
		t.Fatal(err)
	}
	get := func() []byte {
		t.Helper()
		r, err := s.client.Call(ctx, CallRequest{ID: inst.ID, Method: "get", Arg: noArgs, Query: true})
		if err != nil {
			t.Fatal(err)
		}
		return r.Reply
	}
	if _, err := s.client.Install(ctx, InstallRequest{ID: inst.ID, Mode: "upgrade", Wasm: eop, Arg: noArgs}); err != nil {
		t.Fatalf("upgrade by default: %v", err)
	}
	if got := get(); !bytes.Equal(got, nat41) {
		t.Fatalf("get after the default upgrade: %x, want 41: the heap was not kept", got)
	}
	_, err = s.client.Install(ctx, InstallRequest{ID: inst.ID, Mode: "upgrade", Wasm: counterWasm(t), Arg: noArgs})
	if err == nil || !strings.Contains(err.Error(), "Invalid upgrade option") {
		t.Fatalf("EOP to classical by default: %v", err)
	}
	if got := get(); !bytes.Equal(got, nat41) {
		t.Fatalf("get after the refused upgrade: %x", got)
	}
	if _, err := s.client.Install(ctx, InstallRequest{ID: inst.ID, Mode: "upgrade", Wasm: counterWasm(t), Arg: noArgs, KeepHeap: "replace", SkipPreUpgrade: true}); err != nil {
		t.Fatalf("upgrade replacing the heap: %v", err)
	}
	_, err = s.client.Install(ctx, InstallRequest{Mode: "install", Wasm: counterWasm(t), Arg: noArgs, SkipPreUpgrade: true})
	if err == nil || !strings.Contains(err.Error(), "skip_pre_upgrade is an option of mode upgrade") {
		t.Fatalf("skip_pre_upgrade with mode install: %v", err)
	}
}
