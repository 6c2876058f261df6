package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// Durability (host): commits that fail because the store's file
// system is full must leave what executions see, the state hash and the
// store alike, and the node must work again once there is room.

// bigInitWat's canister_init writes the first byte of pages 0 to 9999 of
// its 40 MiB heap with its argument's first byte: a new heap larger than
// one staging transaction (store/stage.go). "check" replies that byte if
// every page has it, else 255.
const bigInitWat = `
(module
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 640)
  (func (export "canister_init")
    (local $i i32) (local $v i32)
    (call $arg_copy (i32.const 0) (i32.const 0) (i32.const 1))
    (local.set $v (i32.load8_u (i32.const 0)))
    (loop $l
      (i32.store8 (i32.mul (local.get $i) (i32.const 4096)) (local.get $v))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 10000)))))
  (func (export "canister_query check")
    (local $i i32) (local $v i32)
    (local.set $v (i32.load8_u (i32.const 0)))
    (loop $l
      (if (i32.ne (i32.load8_u (i32.mul (local.get $i) (i32.const 4096))) (local.get $v))
        (then (local.set $v (i32.const 255))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 10000))))
    (i32.store8 (i32.const 8) (local.get $v))
    (call $append (i32.const 8) (i32.const 1))
    (call $reply))
)`

// stableUpgradeWat keeps a generation number in the first byte of each of
// the first 3200 pages of its stable memory (12.5 MiB): init writes 1,
// each pre_upgrade the next one, so an upgrade commits 3200 stable pages
// through the upgrade's fork of the stable memory's image. "check"
// replies the generation if every page has it, else 255.
const stableUpgradeWat = `
(module
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable64_size" (func $ssize (result i64)))
  (import "ic0" "stable64_write" (func $swrite (param i64 i64 i64)))
  (import "ic0" "stable64_read" (func $sread (param i64 i64 i64)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (func $fill (param $v i32)
    (local $i i64)
    (if (i64.lt_u (call $ssize) (i64.const 200))
      (then (drop (call $sgrow (i64.sub (i64.const 200) (call $ssize))))))
    (i32.store8 (i32.const 0) (local.get $v))
    (loop $l
      (call $swrite (i64.mul (local.get $i) (i64.const 4096)) (i64.const 0) (i64.const 1))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $l (i64.lt_u (local.get $i) (i64.const 3200)))))
  (func (export "canister_init") (call $fill (i32.const 1)))
  (func (export "canister_pre_upgrade")
    (call $sread (i64.const 0) (i64.const 0) (i64.const 1))
    (call $fill (i32.add (i32.load8_u (i32.const 0)) (i32.const 1))))
  (func (export "canister_query check")
    (local $i i64) (local $v i32)
    (call $sread (i64.const 0) (i64.const 0) (i64.const 1))
    (local.set $v (i32.load8_u (i32.const 0)))
    (loop $l
      (call $sread (i64.const 8) (i64.mul (local.get $i) (i64.const 4096)) (i64.const 1))
      (if (i32.ne (i32.load8_u (i32.const 8)) (local.get $v)) (then (local.set $v (i32.const 255))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $l (i64.lt_u (local.get $i) (i64.const 3200))))
    (i32.store8 (i32.const 16) (local.get $v))
    (call $append (i32.const 16) (i32.const 1))
    (call $reply))
)`

// durTmpfs mounts a tmpfs of size bytes (root only: skipped otherwise).
func durTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("mount a tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fillDisk fills dir's file system with a ballast file and returns a
// function that removes it.
func fillDisk(t *testing.T, dir string) (release func()) {
	t.Helper()
	path := filepath.Join(dir, "ballast")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for _, n := range []int{1 << 20, 4096} {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				if errors.Is(err, syscall.ENOSPC) {
					break
				}
				t.Fatal(err)
			}
		}
	}
	return func() {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

// durState is what executions and the store show of a canister.
type durState struct {
	hash   string
	answer string // the result of its probe query
}

func TestFullDiskLeavesStateAsCommitted(t *testing.T) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) { durFullDisk(t, mode) })
	}
}

func durFullDisk(t *testing.T, mode string) {
	mnt := durTmpfs(t, 256<<20)
	cfg := crashCfg(filepath.Join(mnt, "home"))
	cfg.Isolation = mode
	// The full disk itself (ENOSPC at write), not the margin before it,
	// whose refusals are charged (TestDiskMarginRefusalIsCharged).
	cfg.NoDiskMargin = true
	f := openFixture(t, cfg)
	ctx := context.Background()
	counterWasm, stableWasm, memoryWasm := module(t, corpusDir, "counter"), module(t, corpusDir, "stable"), module(t, corpusDir, "memory")
	bigWasm := mustWat(t, bigInitWat)
	counter := f.install(counterWasm, noArgs)
	stable := f.install(stableWasm, noArgs)
	memory := f.install(memoryWasm, noArgs)
	big := f.install(bigWasm, []byte{1})
	upWasm := mustWat(t, stableUpgradeWat)
	up := f.install(upWasm, nil)
	f.upgrade(up, upWasm)
	f.update(counter, "inc", noArgs)
	f.update(stable, "append", blobArg(make([]byte, 100_000)))
	f.update(memory, "grow", natArg(2))
	probes := map[principal.Principal]func() string{
		counter: func() string { return fmt.Sprintf("%x", f.query(counter, "get", noArgs)) },
		stable:  func() string { return fmt.Sprintf("%x", f.query(stable, "usedBytes", noArgs)) },
		memory:  func() string { return fmt.Sprintf("%x", f.query(memory, "chunkCount", noArgs)) },
		big:     func() string { return fmt.Sprintf("%x", f.query(big, "check", nil)) },
		up:      func() string { return fmt.Sprintf("%x", f.query(up, "check", nil)) },
	}
	names := map[principal.Principal]string{counter: "counter", stable: "stable", memory: "memory", big: "big", up: "stable upgrade"}
	snapshot := func() map[principal.Principal]durState {
		s := map[principal.Principal]durState{}
		for id, probe := range probes {
			s[id] = durState{hash: f.stateHash(id), answer: probe()}
		}
		return s
	}
	// same checks that id shows want (what the last commit left).
	same := func(what string, id principal.Principal, want durState) {
		t.Helper()
		if got := (durState{hash: f.stateHash(id), answer: probes[id]()}); got != want {
			t.Fatalf("%s: %s shows %+v, want %+v (as committed)", what, names[id], got, want)
		}
	}
	// attempt runs op on id with the disk full: a failure must change
	// nothing of id, a success is what id then shows.
	failed := 0
	states := snapshot()
	attempt := func(what string, id principal.Principal, op func() error) {
		t.Helper()
		if err := op(); err != nil {
			failed++
			t.Logf("%s on a full disk: %v", what, err)
			same(what+" failed", id, states[id])
			return
		}
		states[id] = durState{hash: f.stateHash(id), answer: probes[id]()}
	}
	update := func(id principal.Principal, method string, arg []byte) func() error {
		return func() error {
			_, err := f.node.Update(ctx, Message{Canister: id, Method: method, Arg: arg, Caller: user})
			return err
		}
	}
	install := func(id principal.Principal, m InstallMode, wasm, arg []byte) func() error {
		return func() error {
			_, err := f.node.Install(ctx, id, InstallOptions{Mode: m, Wasm: wasm, Arg: arg, Caller: user, KeepEOPByDefault: true})
			return err
		}
	}

	release := fillDisk(t, mnt)
	// Until the file's free pages are used up too.
	for i := 0; failed == 0 && i < 40; i++ {
		attempt("grow by a 1 MiB array (8 MiB of heap)", memory, update(memory, "grow", natArg(1)))
	}
	attempt("reinstall a 40 MiB heap", big, install(big, ModeReinstall, bigWasm, []byte{2}))
	attempt("upgrade writing 12.5 MiB of stable memory", up, install(up, ModeUpgrade, upWasm, nil))
	attempt("upgrade", stable, install(stable, ModeUpgrade, stableWasm, noArgs))
	attempt("upgrade", counter, install(counter, ModeUpgrade, counterWasm, noArgs))
	for i := range 10 {
		attempt(fmt.Sprintf("inc %d", i), counter, update(counter, "inc", noArgs))
		attempt(fmt.Sprintf("append %d", i), stable, update(stable, "append", blobArg(make([]byte, 150_000))))
	}
	if failed == 0 {
		t.Fatal("nothing failed on the full disk")
	}
	release()
	// What executions saw is what the store holds.
	if err := f.node.Close(); err != nil {
		t.Logf("close after the disk was full: %v", err)
	}
	f.open()
	for id, want := range states {
		same("after a restart", id, want)
	}
	f.storeConserved()
	f.checkConservation()
	// And it works again.
	for _, op := range []struct {
		what string
		id   principal.Principal
		op   func() error
	}{
		{"grow by a 1 MiB array (8 MiB of heap)", memory, update(memory, "grow", natArg(1))},
		{"reinstall a 40 MiB heap", big, install(big, ModeReinstall, bigWasm, []byte{3})},
		{"upgrade", stable, install(stable, ModeUpgrade, stableWasm, noArgs)},
		{"inc", counter, update(counter, "inc", noArgs)},
		{"upgrade writing 12.5 MiB of stable memory", up, install(up, ModeUpgrade, upWasm, nil)},
	} {
		if err := op.op(); err != nil {
			t.Fatalf("%s with room again: %v", op.what, err)
		}
	}
	if got := probes[big](); got != "03" {
		t.Fatalf("with room again: big shows %s", got)
	}
	want := snapshot()
	f.restart()
	for id, w := range want {
		same("after the second restart", id, w)
	}
}
