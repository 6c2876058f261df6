package host

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// growFaultChild names the environment variable that makes
// TestHostFailedGrowIsNotTheCanisters its own child, in the isolation
// mode it holds.
const growFaultChild = "CORDON_TEST_GROW_FAULT"

// faultedPages is the memory.grow delta the child's seccomp filter fails
// (its mprotect gets ENOMEM, as in a memory cgroup at its limit).
const faultedPages = 83

// faultedGrowWat answers, as a little-endian i32, the result of a memory.grow of
// faultedPages (grow_faulted, after writing 7 at address 0), of 82 pages
// (grow_other) and of 2000 pages (grow_over: past the node's 64 MiB heap
// limit). mem declares memory 0 ("1", "1 50", "i64 1"); idx is its
// index type.
func faultedGrowWat(mem, idx string) string {
	grow := func(pages int) string {
		g := fmt.Sprintf("(memory.grow (%s.const %d))", idx, pages)
		if idx == "i64" {
			g = "(i32.wrap_i64 " + g + ")"
		}
		return "(call $answer " + g + ")"
	}
	addr := func(n int) string { return fmt.Sprintf("(%s.const %d)", idx, n) }
	return `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param ` + idx + ` ` + idx + `)))
  (memory ` + mem + `)
  (func $answer (param i32)
    (i32.store ` + addr(16) + ` (local.get 0))
    (call $append ` + addr(16) + ` ` + addr(4) + `)
    (call $reply))
  (func (export "canister_update set") (i32.store ` + addr(0) + ` (i32.const 42)) (call $answer (i32.const 0)))
  (func (export "canister_update grow_faulted") (i32.store ` + addr(0) + ` (i32.const 7)) ` + grow(faultedPages) + `)
  (func (export "canister_update grow_other") ` + grow(82) + `)
  (func (export "canister_update grow_over") ` + grow(2000) + `)
  (func (export "canister_query get") (call $answer (i32.load ` + addr(0) + `)))
)`
}

// A memory.grow that the kernel refuses (here a seccomp filter fails the
// grow's mprotect with ENOMEM, what a node group at its limit does) within
// the canister's limits is the host's failure, in both isolation modes:
// the message is rejected with SYS_TRANSIENT, nothing charged, nothing of
// it applied, and the canister never sees -1 (before, it did: memory.grow
// returned -1 and a Motoko canister trapped, charged, for its neighbours'
// memory). A grow beyond the canister's limits still returns -1, also the
// same faulted delta past a declared maximum, which never reaches the
// kernel. 32-bit and 64-bit memories alike.
func TestHostFailedGrowIsNotTheCanisters(t *testing.T) {
	if mode := os.Getenv(growFaultChild); mode != "" {
		growFaultChildMain(t, mode)
		return
	}
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			cmd := faultinject.Child("TestHostFailedGrowIsNotTheCanisters", growFaultChild+"="+mode)
			out, err := cmd.Output()
			if s := string(out); strings.Contains(s, "GROWFAULT-SKIP") {
				t.Skip(s)
			}
			if err != nil || !bytes.Contains(out, []byte("GROWFAULT-OK")) {
				t.Fatalf("child: %v\n%s", err, out)
			}
		})
	}
}

func growFaultChildMain(t *testing.T, mode string) {
	if !growFaultsPossible() {
		fmt.Println("GROWFAULT-SKIP: no seccomp filters here")
		t.Skip()
	}
	faultinject.GrowFaults(t, faultedPages<<16)
	cfg := testConfig(t, mode)
	cfg.Fees.GiBStoragePerSecond = 0 // the balance moves only by what messages pay
	cfg.HeapBytes32, cfg.HeapBytes64 = 64<<20, 64<<20
	f := openFixture(t, cfg)
	answer := func(method string, r []byte) int32 {
		t.Helper()
		if len(r) != 4 {
			t.Fatalf("%s answered %x", method, r)
		}
		return int32(binary.LittleEndian.Uint32(r))
	}
	for _, c := range []struct{ mem, idx string }{{"1", "i32"}, {"i64 1", "i64"}} {
		id := f.install(mustWat(t, faultedGrowWat(c.mem, c.idx)), nil)
		f.update(id, "set", nil)
		before := f.storedMeta(id)
		_, err := f.node.Update(context.Background(), Message{Canister: id, Method: "grow_faulted", Caller: user})
		if err == nil {
			t.Fatalf("memory %s: a grow the host failed was answered: the canister saw its result", c.mem)
		}
		if r := f.reject(err); r.Code != SysTransient || !strings.Contains(r.Message, "could not map or grow its memory") {
			t.Fatalf("memory %s: want SYS_TRANSIENT for the host's grow failure, got %v", c.mem, r)
		}
		f.quiesce()
		after := f.storedMeta(id)
		if after.Balance != before.Balance || after.CyclesBurned != before.CyclesBurned || after.Messages != before.Messages {
			t.Fatalf("memory %s: the host's failure was charged: balance %s -> %s, burned %s -> %s, messages %d -> %d", c.mem,
				before.Balance, after.Balance, before.CyclesBurned, after.CyclesBurned, before.Messages, after.Messages)
		}
		if got := answer("get", f.query(id, "get", nil)); got != 42 {
			t.Fatalf("memory %s: the failed message's write was applied: %d at 0", c.mem, got)
		}
		if got := heapPages(f, id); got != 1 {
			t.Fatalf("memory %s: heap of %d pages after the failed grow", c.mem, got)
		}
		// Beyond the canister's limits (the node's heap limit): -1, as
		// before, and its answer charged as usual.
		if got := answer("grow_over", f.update(id, "grow_over", nil)); got != -1 {
			t.Fatalf("memory %s: a grow past the heap limit answered %d, want -1", c.mem, got)
		}
		if got := answer("grow_other", f.update(id, "grow_other", nil)); got != 1 {
			t.Fatalf("memory %s: a grow the filter lets through answered %d, want 1", c.mem, got)
		}
	}
	// The faulted delta past a declared maximum is the canister's limit:
	// -1, without the kernel being asked.
	id := f.install(mustWat(t, faultedGrowWat("1 50", "i32")), nil)
	if got := answer("grow_faulted", f.update(id, "grow_faulted", nil)); got != -1 {
		t.Fatalf("a grow past the declared maximum answered %d, want -1", got)
	}
	if t.Failed() {
		return
	}
	fmt.Println("GROWFAULT-OK")
}

// heapPages is the committed heap's size in Wasm pages.
func heapPages(f *fixture, id principal.Principal) uint64 {
	c := f.loaded(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.heap.Size() >> 16
}

// growFaultsPossible says whether this kernel takes seccomp filters
// (x86-64 only: the filter checks its syscall numbers).
func growFaultsPossible() bool {
	_, err := os.Stat("/proc/sys/kernel/seccomp/actions_avail")
	return err == nil && runtime.GOARCH == "amd64"
}
