package exec

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// scatterFunc is the update method "scatter": it grows the heap to 256
// MiB and writes one byte at every MiB.
const scatterFunc = `  (func (export "canister_update scatter") (local $p i32)
    (drop (memory.grow (i32.const 4095)))
    (loop $l
      (i32.store8 (local.get $p) (i32.const 1))
      (local.set $p (i32.add (local.get $p) (i32.const 1048576)))
      (br_if $l (i32.lt_u (local.get $p) (i32.const 268435456))))
    (call $reply))
`

// scatterWAT is a hostile canister, plain Wasm: "scatter" grows its heap
// to 256 MiB and writes one byte at every MiB (256 runs, evenly apart: the
// engine maps more runs than its bound as one span, holes included), and
// "read" is a free query reading a byte of every page.
const scatterWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory (export "memory") 1)
` + scatterFunc + `  (func (export "canister_query read") (local $p i32) (local $s i32)
    (loop $l
      (local.set $s (i32.add (local.get $s) (i32.load8_u (local.get $p))))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get $p) (i32.const 268435456))))
    (i32.store (i32.const 0) (local.get $s))
    (call $append (i32.const 0) (i32.const 4))
    (call $reply)))`

// imageBytes returns the bytes the file system holds for m's image.
func imageBytes(t *testing.T, m *state.PageMap) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(m.File().Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// groupCharge returns what the node group's cgroup is charged now.
func groupCharge(t *testing.T, x *Sandboxed) uint64 {
	t.Helper()
	for _, name := range []string{"memory.current", "memory.usage_in_bytes"} {
		if b, err := os.ReadFile(filepath.Join(x.group.Dir(), name)); err == nil {
			n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no memory charge file in the node group")
	return 0
}

// A query that reads every page of a heap written in runs far apart (the
// engine maps the holes between them from the host's image) left a page
// of zeros in the image for every hole it read: the image of a 256 MiB
// heap holding 1 MiB went to 256 MiB, charged to the node's sandbox group
// (267 MiB of it) after the sandbox was gone, for as long as the image
// lived. A free query of plain Wasm could fill the group that way and keep
// it full. The pages are given back after the execution: the image holds
// what it held, and the group's charge goes once the sandbox is gone. For
// an ordinary page map with an image and for a backed one (the store's).
func TestReadHolesGivenBack(t *testing.T) {
	wasm, err := wasmtime.Wat2Wasm(scatterWAT)
	if err != nil {
		t.Fatal(err)
	}
	for _, backed := range []bool{false, true} {
		name := "plain"
		if backed {
			name = "backed"
		}
		t.Run(name, func(t *testing.T) {
			x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), NodeMemoryBytes: 1 << 30, IdleCPUCheck: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { x.Close() })
			s := newSim(t, x, "scatter-"+name, wasm)
			s.must(sysapi.CtxUpdate, "canister_update scatter", empty)
			if backed {
				backHeap(t, s)
			}
			if s.heap.File() == nil {
				t.Fatal("no image of the heap")
			}
			before := imageBytes(t, s.heap)
			out := s.must(sysapi.CtxNonReplicatedQuery, "canister_query read", empty)
			if string(out.Reply) != "\x00\x01\x00\x00" { // 256 bytes of 1
				t.Fatalf("read replied %x", out.Reply)
			}
			if grew := imageBytes(t, s.heap) - before; grew > 1<<20 {
				t.Fatalf("the heap's image holds %d bytes more after a query read its holes (%d before)", grew, before)
			}
			x.Forget("scatter-" + name)
			waitFor(t, "the node group is still charged for what the query read", func() bool {
				return groupCharge(t, x) < 32<<20
			})
		})
	}
}

// idleHolesWAT is scatterWAT's "scatter" and a query that reads nothing.
const idleHolesWAT = `(module
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
` + scatterFunc + `  (func (export "canister_query ping")
    (call $reply)))`

// A compromised sandbox maps the memory images its executions bring and
// reads their holes when it likes: between executions, where no
// execution's trim follows. Each page it reads is a page of zeros in the
// host's file, charged to the node group once the sandbox is gone, for as
// long as the image lives, and its canister need never run again: a few
// such sandboxes, each killed in turn, would keep the group full. When a
// sandbox is gone the host punches out what it read in the images it was
// given. (The idle memory watch, which would kill it sooner, is set off:
// it would only take the same path.)
func TestIdleReadHolesGivenBackWhenTheSandboxGoes(t *testing.T) {
	wasm, err := wasmtime.Wat2Wasm(idleHolesWAT)
	if err != nil {
		t.Fatal(err)
	}
	x, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t), NodeMemoryBytes: 1 << 30,
		IdleCPUCheck: time.Hour, IdleMemoryGrowth: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })
	const id = hostilePrefix + "idle-holes"
	s := newSim(t, x, id, wasm)
	s.must(sysapi.CtxUpdate, "canister_update scatter", empty)
	if s.heap.File() == nil {
		t.Fatal("no image of the heap")
	}
	s.must(sysapi.CtxNonReplicatedQuery, "canister_query ping", empty) // brings the heap's image
	before := imageBytes(t, s.heap)
	pid := sandboxPid(x, id)
	if pid == 0 {
		t.Fatal("no sandbox")
	}
	if err := unix.Kill(pid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the sandbox did not read its heap image's holes", func() bool {
		return imageBytes(t, s.heap)-before > 200<<20
	})
	x.Forget(id)
	waitFor(t, "the heap's image still holds the holes its sandbox read once the sandbox is gone", func() bool {
		return imageBytes(t, s.heap)-before < 1<<20
	})
	waitFor(t, "the node group is still charged for what the sandbox read", func() bool {
		return groupCharge(t, x) < 32<<20
	})
}
