package store

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/state"
)

// A sync that fails after bbolt wrote a transaction's meta page.
//
// bbolt commits a transaction by writing its pages, fdatasync, writing its
// meta page, fdatasync. When that last sync fails, Commit returns the
// error, yet the meta page is in the page cache, which bbolt reads its
// state from (a shared mapping of the file): the transaction is what the
// process sees from then on, and may well be durable. Nothing tells
// whether it is; an fsync error is how a disk or a network file system
// reports a write it lost. A caller told the commit failed must not find
// it applied, and must not build later commits on it.
//
// The fault is injected with a seccomp filter in a child process
// (faultinject.SyncFaults): its fdatasync calls go to a user notification
// listener in the same process, which fails the chosen one with EIO and
// lets the others run.

// faultChange is a commit to canister 1 at version v writing byte b into
// page idx of its 4-page heap, with balance 100-v.
func faultChange(v uint64, idx uint64, b byte) Change {
	const pages = 4
	return Change{ID: []byte{1}, Meta: Meta{ID: "fault", Version: v, HeapSize: pages * state.PageSize},
		Heap: &MemoryChange{Delta: state.Delta{Size: pages * state.PageSize, Pages: []state.DirtyPage{{Index: idx, Data: pageOf(b)}}}}}
}

// syncFaultChild commits A, then B with the meta page's sync failing,
// then C (what a caller told B failed commits next: built on A), and
// says what it saw.
func syncFaultChild(t *testing.T) {
	s, err := Open(os.Getenv("CORDON_AUDIT_DIR"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(faultChange(1, 0, 0xA1)); err != nil {
		t.Fatal(err)
	}
	arm := faultinject.SyncFaults(t)
	arm(2) // the next commit's second fdatasync: after its meta page is written
	errB := s.Commit(faultChange(2, 1, 0xB2))
	fmt.Printf("B %v\n", errB)
	if c, err := s.Load([]byte{1}); err == nil {
		fmt.Printf("SEEN %d\n", c.Meta.Version)
		c.Release()
	}
	errC := s.Commit(faultChange(3, 2, 0xC3))
	fmt.Printf("C %v\n", errC)
	if err := s.Close(); err != nil {
		fmt.Printf("CLOSE %v\n", err)
	}
	os.Exit(0)
}

// A commit whose meta page's sync fails returns an error; the store must
// then not show it, nor commit anything over it: either the transaction
// is not what the process sees (and later commits go on from before it),
// or the store refuses every later commit until it is opened again (its
// state unknown). What the next Open finds is then one commit or the
// other whole, never a later commit laid over one its caller was told
// failed.
func TestFailedSyncIsNotBuiltOn(t *testing.T) {
	if os.Getenv("CORDON_AUDIT_CHILD") == "syncfault" {
		syncFaultChild(t)
		return
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter checks the x86-64 syscall numbers")
	}
	dir := t.TempDir()
	out, err := faultinject.Child("TestFailedSyncIsNotBuiltOn", "CORDON_AUDIT_CHILD=syncfault", "CORDON_AUDIT_DIR="+dir).Output()
	lines := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		lines[k] = v
	}
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil || lines["B"] == "" {
		t.Fatalf("child: %v; output:\n%s", err, out)
	}
	t.Logf("commit B (meta sync failed): %s; the process then saw version %s; commit C: %s", lines["B"], lines["SEEN"], lines["C"])
	if lines["B"] == "<nil>" {
		t.Fatal("the failed sync did not fail commit B: the fault was not injected")
	}
	s := openTest(t, dir)
	defer s.Close()
	c, err := s.Load([]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	has := func(i uint64) bool { return c.Heap.Page(i) != nil }
	t.Logf("after reopening: version %d, pages A %v, B %v, C %v", c.Meta.Version, has(0), has(1), has(2))
	if lines["SEEN"] == "2" && lines["C"] == "<nil>" {
		t.Errorf("commit B failed, yet the store showed it and accepted commit C over it")
	}
	if has(1) && has(2) {
		t.Fatalf("the store holds commit C laid over commit B, whose Commit failed: version %d", c.Meta.Version)
	}
}
