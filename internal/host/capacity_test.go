package host

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// growerWAT grows its heap by the pages its raw argument names (4 bytes,
// little-endian) and replies with memory.grow's result.
func growerWAT(initialPages int) string {
	return fmt.Sprintf(`(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_arg_data_copy" (func $argcopy (param i32 i32 i32)))
  (memory %d)
  (func (export "canister_update grow")
    (call $argcopy (i32.const 0) (i32.const 0) (i32.const 4))
    (i32.store (i32.const 0) (memory.grow (i32.load (i32.const 0))))
    (call $append (i32.const 0) (i32.const 4))
    (call $reply)))`, initialPages)
}

// The node's memory capacity bounds all canisters together: a canister's
// memory.grow beyond what the others leave returns -1, an install beyond it
// is refused with the reason, a restart keeps the count, and deleting a
// canister gives its memory back.
func TestNodeMemoryCapacity(t *testing.T) {
	t.Parallel()
	const (
		page     = 64 << 10
		capacity = 1024 * page // 64 MiB
	)
	grower, err := wasmtime.Wat2Wasm(growerWAT(1))
	if err != nil {
		t.Fatal(err)
	}
	big, err := wasmtime.Wat2Wasm(growerWAT(400))
	if err != nil {
		t.Fatal(err)
	}
	for _, isolation := range []string{"inprocess", "sandbox"} {
		t.Run(isolation, func(t *testing.T) {
			cfg := testConfig(t, isolation)
			cfg.MemoryCapacity = capacity
			f := openFixture(t, cfg)
			grow := func(id principal.Principal, pages uint32) int32 {
				t.Helper()
				r := f.update(id, "grow", binary.LittleEndian.AppendUint32(nil, pages))
				return int32(binary.LittleEndian.Uint32(r))
			}
			a, b := f.install(grower, nil), f.install(grower, nil)
			if got := grow(a, 800); got != 1 {
				t.Fatalf("a grows within the capacity: memory.grow = %d", got)
			}
			// 1024 − 801 pages are left for b, which holds 1.
			if got := grow(b, 300); got != -1 {
				t.Fatalf("b grows beyond the capacity: memory.grow = %d, want -1", got)
			}
			if got := grow(b, 200); got != 1 {
				t.Fatalf("b grows within what is left: memory.grow = %d", got)
			}
			// A module whose initial memory does not fit is refused, and says why.
			id, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.node.Install(context.Background(), id, InstallOptions{Mode: ModeInstall, Wasm: big, Arg: noArgs, Caller: user})
			if err == nil || !strings.Contains(err.Error(), "memory capacity") {
				t.Fatalf("install beyond the capacity: %v", err)
			}
			t.Logf("install beyond the capacity: %v", err)
			if st := f.status(id); st.HeapBytes != 0 || st.ModuleHash != "" {
				t.Fatalf("a refused install left heap %d, module %q", st.HeapBytes, st.ModuleHash)
			}
			// A restart counts the stored canisters again.
			f.restart()
			if got := grow(b, 30); got != -1 {
				t.Fatalf("after a restart, b grows beyond the capacity: memory.grow = %d", got)
			}
			// Deleting a gives its 801 pages back.
			if err := f.node.SetStatus(context.Background(), a, user, "stopped"); err != nil {
				t.Fatal(err)
			}
			if err := f.node.Delete(context.Background(), a, user); err != nil {
				t.Fatal(err)
			}
			if got := grow(b, 300); got != 201 {
				t.Fatalf("b grows into a deleted canister's memory: memory.grow = %d, want 201", got)
			}
			if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeInstall, Wasm: big, Arg: noArgs, Caller: user}); err != nil {
				t.Fatalf("install within the capacity: %v", err)
			}
			used, _ := f.node.mem.inUse()
			if want := uint64(501+400)*page + uint64(len(grower)+len(big)); used != want { // b's and id's heaps and modules
				t.Fatalf("ledger holds %d bytes, want %d", used, want)
			}
		})
	}
}

// Two canisters growing at once cannot both take the last bytes: the
// reservation made when an execution ends is checked against what the
// other has already reserved.
func TestMemoryLedgerReservations(t *testing.T) {
	t.Parallel()
	l := newMemoryLedger(100)
	a, b := principal.CanisterID(1), principal.CanisterID(2)
	l.set(a, 40)
	l.set(b, 40)
	if got := l.available(a); got != 60 {
		t.Fatalf("a may hold %d, want 60", got)
	}
	// Both were given limits with 20 bytes free; a reserves them first.
	if !l.reserve(a, 60) {
		t.Fatal("a's growth into free memory refused")
	}
	if l.reserve(b, 60) {
		t.Fatal("b took bytes a had reserved")
	}
	if !l.reserve(b, 40) || !l.reserve(b, 10) {
		t.Fatal("not growing was refused")
	}
	if used, _ := l.inUse(); used != 70 {
		t.Fatalf("used %d, want 70", used)
	}
	l.set(a, 200) // a committed state beyond the capacity (a smaller capacity after a restart) is counted as it is
	if l.available(b) != 0 || l.reserve(b, 11) {
		t.Fatal("a node over its capacity let b grow")
	}
	l.remove(a)
	if used, _ := l.inUse(); used != 10 || l.available(b) != 100 {
		t.Fatalf("after removing a: used %d, b may hold %d", used, l.available(b))
	}
}

// Installed modules count against the node's memory capacity, each
// canister's module as the IC counts it in the canister's memory (a module
// shared by several canisters counts for each): many canisters with large
// modules cannot fill the host uncounted. An install whose module does not
// fit is refused, and says why; a restart counts the modules again, and an
// uninstall gives its module's bytes back.
func TestNodeMemoryCapacityCountsModules(t *testing.T) {
	t.Parallel()
	const (
		page     = 64 << 10
		capacity = 128 * page // 8 MiB
		padding  = 3 << 20
	)
	grower, err := wasmtime.Wat2Wasm(growerWAT(1))
	if err != nil {
		t.Fatal(err)
	}
	// Two distinct modules of about 3 MiB: the grower and a custom section.
	large := func(name string) []byte {
		return withCustomSection(grower, name, make([]byte, padding))
	}
	a1, a2 := large("pad a"), large("pad b")
	for _, isolation := range []string{"inprocess", "sandbox"} {
		t.Run(isolation, func(t *testing.T) {
			cfg := testConfig(t, isolation)
			cfg.MemoryCapacity = capacity
			f := openFixture(t, cfg)
			a, b := f.install(a1, nil), f.install(a2, nil)
			held := uint64(len(a1)+len(a2)) + 2*page
			if used, _ := f.node.mem.inUse(); used != held {
				t.Fatalf("ledger holds %d bytes with two modules of %d and %d bytes and two 1-page heaps, want %d", used, len(a1), len(a2), held)
			}
			// The same module again: stored once, but counted for each
			// canister, and there is no room for a third 3 MiB.
			c, err := f.node.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.node.Install(context.Background(), c, InstallOptions{Mode: ModeInstall, Wasm: a1, Arg: noArgs, Caller: user})
			if err == nil || !strings.Contains(err.Error(), "memory capacity") || !strings.Contains(err.Error(), "module") {
				t.Fatalf("install of a module beyond the capacity: %v", err)
			}
			t.Logf("install beyond the capacity: %v", err)
			if st := f.status(c); st.ModuleHash != "" {
				t.Fatalf("a refused install left module %q", st.ModuleHash)
			}
			if used, _ := f.node.mem.inUse(); used != held {
				t.Fatalf("a refused install left the ledger at %d bytes, want %d", used, held)
			}
			// The modules leave the heaps less room: 128 pages less about 96.
			r := f.update(a, "grow", binary.LittleEndian.AppendUint32(nil, 64))
			if got := int32(binary.LittleEndian.Uint32(r)); got != -1 {
				t.Fatalf("a grows into the modules' bytes: memory.grow = %d, want -1", got)
			}
			f.restart()
			if used, _ := f.node.mem.inUse(); used != held {
				t.Fatalf("after a restart the ledger holds %d bytes, want %d", used, held)
			}
			if err := f.node.Uninstall(context.Background(), b, user); err != nil {
				t.Fatal(err)
			}
			if used, _ := f.node.mem.inUse(); used != uint64(len(a1))+page {
				t.Fatalf("after an uninstall the ledger holds %d bytes, want %d", used, uint64(len(a1))+page)
			}
			if _, err := f.node.Install(context.Background(), c, InstallOptions{Mode: ModeInstall, Wasm: a1, Arg: noArgs, Caller: user}); err != nil {
				t.Fatalf("install within the capacity: %v", err)
			}
		})
	}
}
