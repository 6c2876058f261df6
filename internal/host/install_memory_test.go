package host

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
	"testing"
)

func minorFaults(t testing.TB) int64 {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return ru.Minflt
}

// Installing costs the host what the execution touches, not what the
// module declares: a 24-byte module declaring 1 GiB of initial memory made
// the engine compare all 262 144 pages with zeros (no heap mapped), for
// free. Counted in page faults, not time.
//
// Not parallel: it counts the process's page faults.
func TestInstallTouchesWhatItUses(t *testing.T) {
	f := newFeelessFixture(t, "inprocess")
	small := mustWat(t, `(module (memory 1) (data (i32.const 0) "Z"))`)
	large := mustWat(t, `(module (memory 16384) (data (i32.const 0) "Z"))`)
	f.install(small, nil) // warm up
	a := minorFaults(t)
	f.install(small, nil)
	b := minorFaults(t)
	f.install(large, nil)
	c := minorFaults(t)
	t.Logf("page faults: 1-page module %d, 16384-page module %d (module %d bytes)", b-a, c-b, len(large))
	if extra := (c - b) - (b - a); extra > 16384 {
		t.Fatalf("installing a %d-byte module declaring 1 GiB took %d more page faults than a 1-page one: the host scans the declared memory", len(large), extra)
	}
}

// An upgrade keeping a small heap into a module whose initial memory is
// 1 GiB copies the heap, not the memory; the new module's data segments
// are gone (the heap is kept as it was, zeros after it), in both modes.
//
// Not parallel: it counts the process's page faults.
func TestKeepSmallHeapIntoLargeMemory(t *testing.T) {
	const newWat = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i64 i64)))
  (memory i64 16384)
  (data (i64.const 0) "new data on the heap's first page")
  (data (i64.const 20000000) "beyond the heap")
  (func (export "canister_query peek")
    (i64.store8 (i64.const 900000) (i64.load8_u (i64.const 0)))
    (i64.store8 (i64.const 900001) (i64.load8_u (i64.const 20000000)))
    (call $append (i64.const 900000) (i64.const 2)) (call $reply)))`
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			f := newFeelessFixture(t, mode)
			id := f.install(eopWat(t, `(module (memory i64 2) (data (i64.const 0) "K"))`), nil)
			keep := true
			faults := minorFaults(t)
			if _, err := f.node.Install(context.Background(), id, InstallOptions{Mode: ModeUpgrade, Wasm: eopWat(t, newWat), Caller: user, KeepHeap: &keep}); err != nil {
				t.Fatal(err)
			}
			faults = minorFaults(t) - faults
			eq(t, "heap kept, zeros after it", f.query(id, "peek", nil), []byte{'K', 0})
			if st := f.status(id); st.HeapBytes != 1<<30 {
				t.Fatalf("heap of %d bytes after the upgrade, want the new module's 1 GiB", st.HeapBytes)
			}
			t.Logf("%d page faults in this process", faults)
			if mode == "inprocess" && faults > 30_000 {
				t.Fatalf("%d page faults to keep a 128 KiB heap: the declared memory was compared", faults)
			}
			f.restart()
			eq(t, "after restart", f.query(id, "peek", nil), []byte{'K', 0})
		})
	}
}

// peek64Wat is peekWat for a 64-bit memory.
func peek64Wat(mem, data string, addr int64) string {
	return fmt.Sprintf(`(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i64 i64)))
  (memory %s)
  %s
  (func (export "canister_query peek")
    (i64.store8 (i64.const 0) (i64.load8_u (i64.const %d)))
    (call $append (i64.const 0) (i64.const 1)) (call $reply)))`, mem, data, addr)
}

// peekWat is a module with the given memory declaration and data
// segments, and a query "peek" that replies with the byte at addr.
func peekWat(mem, data, addrType string, addr int64) string {
	return fmt.Sprintf(`(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory %s)
  %s
  (func (export "canister_query peek")
    (i32.store8 (i32.const 0) (i32.load8_u (%s.const %d)))
    (call $append (i32.const 0) (i32.const 1)) (call $reply)))`, mem, data, addrType, addr)
}

// Modules at the heap limits install (a 4 GiB 32-bit memory with data on
// its last byte, a 6 GiB 64-bit one) and one page more is refused and
// changes nothing; a large data segment (staged commit) survives a
// restart and is replaced whole by a reinstall.
func TestHostileModuleSizes(t *testing.T) {
	t.Parallel()
	if raceEnabled {
		// Sizes, not concurrency: the plain `go test ./...` runs it, in a
		// fraction of the minute and a half it takes under the detector.
		t.Skip("sizes, not races: run without -race")
	}
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			// 10 GiB of heaps in the ledger, not in memory: they are
			// never touched.
			f := newFeelessFixture(t, mode, func(cfg *Config) { cfg.MemoryCapacity = 1 << 40 })
			ctx := context.Background()
			id32 := f.install(mustWat(t, peekWat("65536", `(data (i32.const 4294967295) "X")`, "i32", 4294967295)), nil)
			eq(t, "peek 4 GiB", f.query(id32, "peek", nil), []byte("X"))
			id64 := f.install(mustWat(t, peek64Wat("i64 98304", `(data (i64.const 6442450943) "Y")`, 6442450943)), nil)
			eq(t, "peek 6 GiB", f.query(id64, "peek", nil), []byte("Y"))
			// One page more than 6 GiB: refused, nothing changes.
			before := f.snapshotNoQuery(id64)
			_, err := f.node.Install(ctx, id64, InstallOptions{Mode: ModeReinstall, Wasm: mustWat(t, peek64Wat("i64 98305", "", 0)), Caller: user})
			if err == nil {
				t.Fatal("a 64-bit module with 6 GiB + 64 KiB of initial memory installed")
			}
			t.Logf("beyond the limit: %v", err)
			if after := f.snapshotNoQuery(id64); after != before {
				t.Fatalf("refused reinstall changed the canister:\n got  %+v\n want %+v", after, before)
			}
			eq(t, "peek 6 GiB after", f.query(id64, "peek", nil), []byte("Y"))
			// 40 MiB of data: the heap's commit is staged (stage.go).
			idBig := f.install(withDataSegment(mustWat(t, peekWat("700", "", "i32", 40<<20-1)), 0, bytes.Repeat([]byte("q"), 40<<20)), nil)
			eq(t, "peek big", f.query(idBig, "peek", nil), []byte("q"))
			f.restart()
			eq(t, "peek 4 GiB after restart", f.query(id32, "peek", nil), []byte("X"))
			eq(t, "peek 6 GiB after restart", f.query(id64, "peek", nil), []byte("Y"))
			eq(t, "peek big after restart", f.query(idBig, "peek", nil), []byte("q"))
			// Reinstalled with a small module: the old 40 MiB are gone.
			if _, err := f.node.Install(ctx, idBig, InstallOptions{Mode: ModeReinstall, Wasm: mustWat(t, peekWat("700", "", "i32", 40<<20-1)), Caller: user}); err != nil {
				t.Fatal(err)
			}
			eq(t, "peek big after reinstall", f.query(idBig, "peek", nil), []byte{0})
			f.restart()
			eq(t, "peek big after reinstall+restart", f.query(idBig, "peek", nil), []byte{0})
		})
	}
}

// Stable memory at exactly the node's limit: pre_upgrade grows it to the
// limit, post_upgrade's grow by one page fails (-1) and its 32-bit API
// still works below 4 GiB; the upgrade commits the memory at the limit,
// and a restart keeps it.
func TestStableAtLimitAcrossUpgrade(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			cfgLimit := uint64(16 * 65536)
			f := newFeelessFixture(t, mode)
			f.cfg.StableBytes = cfgLimit
			f.restart()
			old := mustWat(t, `(module
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable64_write" (func $swrite (param i64 i64 i64)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory 1) (data (i32.const 0) "L")
  (func (export "canister_pre_upgrade")
    (if (i64.ne (call $sgrow (i64.const 16)) (i64.const 0)) (then (call $trap (i32.const 0) (i32.const 1))))
    (call $swrite (i64.const 1048575) (i64.const 0) (i64.const 1))))`)
			id := f.install(old, nil)
			newMod := mustWat(t, `(module
  (import "ic0" "stable64_grow" (func $sgrow (param i64) (result i64)))
  (import "ic0" "stable_grow" (func $sgrow32 (param i32) (result i32)))
  (import "ic0" "stable_size" (func $ssize32 (result i32)))
  (import "ic0" "stable64_read" (func $sread (param i64 i64 i64)))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory 1) (data (i32.const 0) "E")
  (func (export "canister_post_upgrade")
    (if (i64.ne (call $sgrow (i64.const 1)) (i64.const -1)) (then (call $trap (i32.const 0) (i32.const 1))))
    (if (i32.ne (call $sgrow32 (i32.const 1)) (i32.const -1)) (then (call $trap (i32.const 0) (i32.const 1))))
    (if (i32.ne (call $ssize32) (i32.const 16)) (then (call $trap (i32.const 0) (i32.const 1)))))
  (func (export "canister_query last")
    (call $sread (i64.const 8) (i64.const 1048575) (i64.const 1))
    (call $append (i32.const 8) (i32.const 1)) (call $reply)))`)
			f.upgrade(id, newMod)
			if st := f.status(id); st.StableBytes != cfgLimit {
				t.Fatalf("stable memory %d bytes, want the limit %d", st.StableBytes, cfgLimit)
			}
			eq(t, "last byte", f.query(id, "last", nil), []byte("L"))
			f.restart()
			eq(t, "last byte after restart", f.query(id, "last", nil), []byte("L"))
		})
	}
}
