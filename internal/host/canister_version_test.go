package host

import (
	"context"
	"encoding/binary"
	"testing"
)

// The IC counts the code change before canister_init and
// canister_post_upgrade run (install.rs stage 1, upgrade.rs stage 2):
// they see the version the install commits; pre_upgrade sees the one
// before.
func TestVersionSeenByInstallHooks(t *testing.T) {
	t.Parallel()
	wasm := mustWat(t, `(module
  (import "ic0" "canister_version" (func $version (result i64)))
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $swrite (param i64 i64 i64)))
  (import "ic0" "stable64_read" (func $sread (param i64 i64 i64)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory 1)
  (global $seen (mut i64) (i64.const 0))
  (func (export "canister_init") (global.set $seen (call $version)))
  (func (export "canister_pre_upgrade")
    (i64.store (i32.const 0) (call $version))
    (drop (call $sgrow (i64.const 1)))
    (call $swrite (i64.const 0) (i64.const 0) (i64.const 8)))
  (func (export "canister_post_upgrade") (global.set $seen (call $version)))
  (func (export "canister_query seen")
    (i64.store (i32.const 0) (global.get $seen))
    (call $append (i32.const 0) (i32.const 8)) (call $reply))
  (func (export "canister_query pre")
    (call $sread (i64.const 0) (i64.const 0) (i64.const 8))
    (call $append (i32.const 0) (i32.const 8)) (call $reply)))`)
	f := newFixture(t)
	id := f.install(wasm, nil)
	seen := func() (hook, pre uint64) {
		hook = binary.LittleEndian.Uint64(f.query(id, "seen", nil))
		if f.status(id).StableBytes > 0 {
			pre = binary.LittleEndian.Uint64(f.query(id, "pre", nil))
		}
		return hook, pre
	}
	if hook, _ := seen(); hook != f.status(id).Version {
		t.Errorf("canister_init saw version %d; after the install it is %d", hook, f.status(id).Version)
	}
	before := f.status(id).Version
	f.upgrade(id, wasm)
	if hook, pre := seen(); hook != f.status(id).Version || pre != before {
		t.Errorf("post_upgrade saw version %d, pre_upgrade %d; before the upgrade it was %d, after %d", hook, pre, before, f.status(id).Version)
	}
	if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeReinstall, Wasm: wasm, Caller: user}); err != nil {
		t.Fatal(err)
	}
	if hook, _ := seen(); hook != f.status(id).Version {
		t.Errorf("canister_init of a reinstall saw version %d; after it it is %d", hook, f.status(id).Version)
	}
}
