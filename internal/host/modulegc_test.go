package host

import (
	"context"
	"errors"
	"testing"

	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

func gcModule(t *testing.T, name string) []byte {
	return mustWat(t, `(module (import "ic0" "msg_reply" (func $reply))
  (func (export "canister_query `+name+`") (call $reply)))`)
}

// A first install replaces no module: it writes its own commits and no
// module collection (which reads every canister's metadata, so a scan per
// install made installing thousands of canisters quadratic). Code changes
// and deletions release the module they replace once nobody uses it.
func TestInstallsReleaseReplacedModules(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	v1, v2 := gcModule(t, "one"), gcModule(t, "two")
	stored := func(wasm []byte) bool {
		t.Helper()
		_, err := f.node.store.Module(store.ModuleKey(wasm))
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	a := f.install(v1, noArgs)
	id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	before := f.node.store.SyncStats().Syncs
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: v1, Arg: noArgs, Caller: user}); err != nil {
		t.Fatal(err)
	}
	if n := f.node.store.SyncStats().Syncs - before; n != 1 {
		t.Fatalf("a first install wrote %d transactions, want 1 (its commit)", n)
	}
	b := id
	// a moves to v2: v1 is still b's.
	f.upgrade(a, v2)
	if !stored(v1) || !stored(v2) {
		t.Fatalf("after a's upgrade: v1 %v (b uses it), v2 %v", stored(v1), stored(v2))
	}
	// b is uninstalled: nobody uses v1 any more.
	if err := f.node.Uninstall(ctx, b, user); err != nil {
		t.Fatal(err)
	}
	if stored(v1) {
		t.Fatal("v1 kept after its last canister was uninstalled")
	}
	// a is deleted: v2 goes too.
	if err := f.node.SetStatus(ctx, a, user, "stopped"); err != nil {
		t.Fatal(err)
	}
	if err := f.node.Delete(ctx, a, user); err != nil {
		t.Fatal(err)
	}
	if stored(v2) {
		t.Fatal("v2 kept after its canister was deleted")
	}
}
