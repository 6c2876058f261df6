package host

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// bigDataModule is a module whose 33 MiB heap is all the byte c (more
// than one staging transaction: its commit is staged, stage.go), with a
// query "ends" giving the first and last byte.
func bigDataModule(t testing.TB, c byte) []byte {
	const size = 33 << 20
	return withDataSegment(mustWat(t, `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory 600)
  (func (export "canister_query ends")
    (i32.store8 (i32.const 34603008) (i32.load8_u (i32.const 0)))
    (i32.store8 (i32.const 34603009) (i32.load8_u (i32.const 34603007)))
    (call $append (i32.const 34603008) (i32.const 2)) (call $reply)))`), 0, bytes.Repeat([]byte{c}, size))
}

// withDataSegment appends a data section of one segment writing data at
// offset to a module that has none (assembling megabytes of data from WAT
// text takes seconds).
func withDataSegment(wasm []byte, offset int32, data []byte) []byte {
	seg := append([]byte{1, 0, 0x41}, sleb(int64(offset))...) // one active segment of memory 0
	seg = append(append(seg, 0x0b), leb(uint64(len(data)))...)
	out := append(append([]byte(nil), wasm...), 11) // after the code section and any custom one
	out = append(append(out, leb(uint64(len(seg)+len(data)))...), seg...)
	return append(out, data...)
}

// sleb encodes a signed LEB128 value.
func sleb(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// A host killed at any point of a loop of reinstalls that alternate two
// modules with large heaps (staged commits) reopens with the canister
// entirely one of them: module and heap agree, nothing is left staged.
func TestCrashDuringStagedReinstall(t *testing.T) {
	if home := os.Getenv("CORDON_TEST_REINSTALL_CRASH_HOME"); home != "" {
		cfg := crashCfg(home)
		n, err := Open(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		id, err := principal.FromText(os.Getenv("CORDON_TEST_REINSTALL_CRASH_ID"))
		if err != nil {
			t.Fatal(err)
		}
		mods := [][]byte{bigDataModule(t, 'a'), bigDataModule(t, 'b')}
		for i := 1; ; i++ { // b first: the state alternates from the first commit
			if _, err := n.Install(context.Background(), id, InstallOptions{Mode: ModeReinstall, Wasm: mods[i%2], Caller: user}); err != nil {
				t.Fatal(err)
			}
			os.Stdout.WriteString("COMMITTED\n")
		}
	}
	t.Parallel()
	if raceEnabled {
		// The hosts killed are this binary, race-built: each round takes
		// many times longer, and what it checks is the store's atomicity,
		// not races. The plain `go test ./...` runs it.
		t.Skip("crash safety, not races: run without -race")
	}
	home := t.TempDir()
	f := &fixture{t: t, home: home, cfg: crashCfg(home)}
	f.open()
	a, b := bigDataModule(t, 'a'), bigDataModule(t, 'b')
	id := f.install(a, nil)
	want := map[string]string{store.ModuleKey(a): "aa", store.ModuleKey(b): "bb"}
	if err := f.node.Close(); err != nil {
		t.Fatal(err)
	}
	for round, delay := range []time.Duration{0, 400 * time.Millisecond, 1300 * time.Millisecond} {
		cmd := faultinject.Child("TestCrashDuringStagedReinstall", "CORDON_TEST_REINSTALL_CRASH_HOME="+home, "CORDON_TEST_REINSTALL_CRASH_ID="+id.String())
		if !faultinject.KillAt(t, cmd, 0, func(line string) bool {
			if line != "COMMITTED" {
				return false
			}
			time.Sleep(delay) // where the kill lands: any point is valid
			return true
		}) {
			t.Fatal("the child never committed a reinstall")
		}
		f.open()
		st := f.status(id)
		got := string(f.query(id, "ends", nil))
		t.Logf("round %d: module %s… heap ends %q", round, st.ModuleHash[:8], got)
		if want[st.ModuleHash] != got {
			t.Fatalf("after a crash the module is %s but the heap ends %q", st.ModuleHash, got)
		}
		if err := f.node.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
