package host

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/exec"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// The artifact cache (<home>/artifacts) holds the compiled artifacts of
// the modules the store holds, plus those of installs under way, and
// nothing else: a canister that installs a different module into a child
// again and again, failing or not, upgrading or deleting it, does not grow
// the disk by an artifact (several times the module) each time.

func sandboxFixture(t *testing.T) *fixture {
	t.Helper()
	return openFixture(t, testConfig(t, "sandbox"))
}

// artifactModules returns the module keys (hex SHA-256) the artifact
// cache has files of, with the files.
func (f *fixture) artifactModules() map[string][]string {
	f.t.Helper()
	ents, err := os.ReadDir(filepath.Join(f.home, "artifacts"))
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string][]string{}
	for _, e := range ents {
		key, _, _ := strings.Cut(e.Name(), "-")
		out[key] = append(out[key], e.Name())
	}
	return out
}

// hasArtifact reports whether wasm's compiled artifact is cached (both
// files, or fails).
func (f *fixture) hasArtifact(wasm []byte) bool {
	f.t.Helper()
	files := f.artifactModules()[store.ModuleKey(wasm)]
	if len(files) != 0 && len(files) != 2 {
		f.t.Fatalf("artifact of %s: files %v", store.ModuleKey(wasm)[:12], files)
	}
	return len(files) == 2
}

func (f *fixture) stopAndDelete(id principal.Principal) {
	f.t.Helper()
	ctx := context.Background()
	if err := f.node.SetStatus(ctx, id, user, "stopped"); err != nil {
		f.t.Fatal(err)
	}
	if err := f.node.Delete(ctx, id, user); err != nil {
		f.t.Fatal(err)
	}
}

// An upgrade releases the old module's artifact and keeps the new one's;
// an uninstall releases that one too.
func TestArtifactsFollowUpgradeAndUninstall(t *testing.T) {
	t.Parallel()
	f := sandboxFixture(t)
	a, b := gcModule(t, "a"), gcModule(t, "b")
	id := f.install(a, noArgs)
	if !f.hasArtifact(a) {
		t.Fatal("installed module has no artifact")
	}
	f.upgrade(id, b)
	if f.hasArtifact(a) || !f.hasArtifact(b) {
		t.Fatalf("after the upgrade to b: a's artifact %v (want gone), b's %v", f.hasArtifact(a), f.hasArtifact(b))
	}
	f.query(id, "b", nil)
	if err := f.node.Uninstall(context.Background(), id, user); err != nil {
		t.Fatal(err)
	}
	if m := f.artifactModules(); len(m) != 0 {
		t.Fatalf("after the uninstall: artifacts %v", m)
	}
}

// A module two canisters run keeps its artifact until the last one goes.
func TestArtifactsOfSharedModule(t *testing.T) {
	t.Parallel()
	f := sandboxFixture(t)
	m := gcModule(t, "shared")
	one, two := f.install(m, noArgs), f.install(m, noArgs)
	f.stopAndDelete(one)
	if !f.hasArtifact(m) {
		t.Fatal("artifact removed while another canister runs the module")
	}
	f.query(two, "shared", nil)
	f.stopAndDelete(two)
	if f.hasArtifact(m) {
		t.Fatal("artifact kept after both canisters were deleted")
	}
}

// An install that fails after its module was compiled (canister_init
// traps) leaves no artifact of it, unless another canister runs that
// module; one the canister cannot pay for compiles nothing.
func TestFailedInstallLeavesNoArtifact(t *testing.T) {
	t.Parallel()
	f := sandboxFixture(t)
	ctx := context.Background()
	trapInit := mustWat(t, `(module (import "ic0" "trap" (func $trap (param i32 i32)))
	  (memory 1) (data (i32.const 0) "no init")
	  (func (export "canister_init") (call $trap (i32.const 0) (i32.const 7))))`)
	id, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	before := f.node.exec.(*exec.Sandboxed).Stats().Compiles
	if _, err := f.node.Install(ctx, id, InstallOptions{Mode: ModeInstall, Wasm: trapInit, Arg: noArgs, Caller: user}); err == nil ||
		!strings.Contains(err.Error(), "canister_init trapped") {
		t.Fatalf("install of a trapping canister_init: %v", err)
	}
	if f.node.exec.(*exec.Sandboxed).Stats().Compiles == before {
		t.Fatal("the module was not compiled: the test proves nothing")
	}
	if f.hasArtifact(trapInit) {
		t.Fatal("a trapped install left its artifact")
	}

	// Refused before compiling: the canister cannot pay for the install
	// (install_code checks the balance before it touches the module).
	none := cycles.Amount{}
	poor, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}, Cycles: &none, Minted: true})
	if err != nil {
		t.Fatal(err)
	}
	m := gcModule(t, "unpaid")
	before = f.node.exec.(*exec.Sandboxed).Stats().Compiles
	if _, err := f.node.Install(ctx, poor, InstallOptions{Mode: ModeInstall, Wasm: m, Arg: noArgs, Caller: user}); err == nil ||
		!strings.Contains(err.Error(), "out of cycles") {
		t.Fatalf("install into a canister without cycles: %v", err)
	}
	if got := f.node.exec.(*exec.Sandboxed).Stats().Compiles; got != before {
		t.Fatalf("a canister that cannot pay had its module compiled (%d compilations)", got-before)
	}
	if f.hasArtifact(m) {
		t.Fatal("a refused install left an artifact")
	}

	// A trapped install of a module another canister runs keeps its
	// artifact: canister_init traps only when given an argument.
	trapWithArg := mustWat(t, `(module
	  (import "ic0" "msg_arg_data_size" (func $size (result i32)))
	  (import "ic0" "trap" (func $trap (param i32 i32)))
	  (import "ic0" "msg_reply" (func $reply))
	  (memory 1) (data (i32.const 0) "no init")
	  (func (export "canister_init") (if (call $size) (then (call $trap (i32.const 0) (i32.const 7)))))
	  (func (export "canister_query ping") (call $reply)))`)
	other := f.install(trapWithArg, nil)
	second, err := f.node.Create(ctx, CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.Install(ctx, second, InstallOptions{Mode: ModeInstall, Wasm: trapWithArg, Arg: []byte("x"), Caller: user}); err == nil ||
		!strings.Contains(err.Error(), "canister_init trapped") {
		t.Fatalf("install with an argument: %v", err)
	}
	if !f.hasArtifact(trapWithArg) {
		t.Fatal("a trapped install removed the artifact of a module in use")
	}
	f.query(other, "ping", nil)
	if got := f.artifactModules(); len(got) != 1 {
		t.Fatalf("artifacts %v, want only the installed module's", got)
	}
}

// An install under way keeps its module's artifact when the store
// releases the module meanwhile (another canister ran it and was
// deleted): the install goes on to use it. When it ends without storing
// the module, the artifact goes.
func TestInstallUnderWayKeepsArtifact(t *testing.T) {
	t.Parallel()
	f := sandboxFixture(t)
	m := gcModule(t, "busy")
	id := f.install(m, noArgs)
	end := f.node.beginInstall(store.ModuleKey(m)) // as Install does before Prepare
	f.stopAndDelete(id)
	if !f.hasArtifact(m) {
		t.Fatal("the artifact of a module an install is using was removed")
	}
	end()
	if f.hasArtifact(m) {
		t.Fatal("artifact kept after the install ended without storing its module")
	}
}

// Open removes the artifacts of modules the store does not hold (a crash
// between a release and its removal, an install that crashed after
// compiling), those of other versions (another tag, never loaded) and
// interrupted writes, and keeps the artifacts of installed modules: after
// a restart the canister runs without compiling again.
func TestOpenPrunesArtifacts(t *testing.T) {
	t.Parallel()
	f := sandboxFixture(t)
	m := gcModule(t, "kept")
	id := f.install(m, noArgs)
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.home, "artifacts")
	files := f.artifactModules()[store.ModuleKey(m)]
	if len(files) != 2 {
		t.Fatalf("artifact files %v", files)
	}
	_, tag, _ := strings.Cut(strings.TrimSuffix(strings.TrimSuffix(files[0], ".cwasm"), ".info"), "-")
	h := sha256.Sum256([]byte("a module this store never held"))
	stray := hex.EncodeToString(h[:])
	plant := []string{
		stray + "-" + tag + ".cwasm", stray + "-" + tag + ".info", // an unknown module's
		store.ModuleKey(m) + "-0123456789ab.cwasm", // another version's
		".tmp-123456", // an interrupted write
	}
	for _, name := range append(plant, "notes.txt") {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f.open()
	var left []string
	for _, names := range f.artifactModules() {
		left = append(left, names...)
	}
	slices.Sort(left)
	want := append(slices.Clone(files), "notes.txt")
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Fatalf("after open: %v, want %v", left, want)
	}
	f.query(id, "kept", nil)
	if c := f.node.exec.(*exec.Sandboxed).Stats().Compiles; c != 0 {
		t.Fatalf("%d compilations after the restart, want 0 (the installed module's artifact kept)", c)
	}
}

// In sandbox mode the host keeps no loaded canister's module in memory
// (10,000 canisters of 2 MiB modules would hold 20 GiB): the sandboxed
// executor reads it from the store when its artifact must be compiled
// again. The canister runs after a restart, and after its artifact is
// gone.
func TestSandboxedNodeKeepsNoModuleBytes(t *testing.T) {
	t.Parallel()
	f := sandboxFixture(t)
	ctx := context.Background()
	id := f.install(module(t, corpusDir, "counter"), noArgs)
	held := func() []byte {
		c, err := f.node.get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		c.mu.RLock()
		defer c.mu.RUnlock()
		return c.module.Wasm
	}
	if b := held(); b != nil {
		t.Fatalf("the installed canister's module holds %d bytes of Wasm", len(b))
	}
	f.update(id, "inc", noArgs)
	f.restart()
	if b := held(); b != nil {
		t.Fatalf("the loaded canister's module holds %d bytes of Wasm", len(b))
	}
	files, _ := filepath.Glob(filepath.Join(f.home, "artifacts", "*.cwasm"))
	for _, p := range files {
		os.Remove(p)
	}
	eq(t, "get after the artifact went", f.query(id, "get", noArgs), natReply(1))
}
