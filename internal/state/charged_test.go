package state

import (
	"bytes"
	"testing"
)

// chargeTo is a charge of at most limit bytes that counts what it took.
type chargeTo struct {
	limit, took uint64
	asked       int
}

func (c *chargeTo) charge(n uint64) bool {
	c.asked++
	if c.took+n > c.limit {
		return false
	}
	c.took += n
	return true
}

// A commit that overwrites pages clones share gives them copies of the
// old bytes: one copy for all the clones that need it, each charged clone
// asked for its bytes first. A clone that refuses is revoked: the commit
// goes on, the clone drops everything it held and is never given more, and
// may only be released. The others keep their snapshots. Without charges,
// every live clone got its own copy of every page a commit overwrote and
// nobody counted them.
func TestCommitCopiesChargedToClones(t *testing.T) {
	const n = 64
	m := backed(t, n, 1, 0, 1, 2, 3, 4, 5, 6, 7) // pages 8.. are holes
	defer m.Release()
	snapshot := mapBytes(t, m)

	rich, poor := &chargeTo{limit: 1 << 20}, &chargeTo{limit: 2 * PageSize}
	c1 := m.CloneCharged(rich.charge)
	c2 := m.CloneCharged(poor.charge)
	c3 := m.Clone() // uncharged (a test's, or a fork's view)
	defer c1.Release()
	defer c2.Release()
	defer c3.Release()

	// Four data pages and a hole overwritten.
	commit := func(tag byte) {
		t.Helper()
		d := Delta{Size: n * PageSize}
		for _, i := range []uint64{2, 3, 4, 5, 20} {
			d.Pages = append(d.Pages, DirtyPage{Index: i, Data: numbered(i, tag)})
		}
		if err := m.Apply(d); err != nil {
			t.Fatal(err)
		}
	}
	commit(2)
	if rich.took != 4*PageSize {
		t.Fatalf("the charged clone paid %d bytes, want the 4 data pages overwritten (%d)", rich.took, 4*PageSize)
	}
	if !c2.Revoked() || c1.Revoked() || c3.Revoked() {
		t.Fatalf("revoked: %v %v %v, want only the clone that could pay for 2 of 4 pages", c1.Revoked(), c2.Revoked(), c3.Revoked())
	}
	m.img.mu.Lock()
	held2, shared := len(c2.pages), c1.pages[3] == c3.pages[3] && c1.pages[3] != nil
	m.img.mu.Unlock()
	if held2 != 0 {
		t.Fatalf("the revoked clone still holds %d pages", held2)
	}
	if !shared {
		t.Fatal("the two clones taken at the same point were given copies of their own")
	}
	if _, ok := c2.Layers(); ok {
		t.Fatal("a revoked clone was given as layers")
	}
	if _, ok := c2.LaidPages(); ok {
		t.Fatal("a revoked clone counted its laid pages")
	}
	for k, c := range []*PageMap{c1, c3} {
		if !bytes.Equal(mapBytes(t, c), snapshot) {
			t.Fatalf("clone %d does not read its snapshot", k)
		}
	}
	if got := m.CopiedBytes(); got != 8*PageSize {
		t.Fatalf("copies held: %d bytes, want 4 pages for each of the two live clones (%d)", got, 8*PageSize)
	}

	// The same pages again: the clones hold them already; nothing more
	// is asked, of the revoked clone nothing at all.
	asked := poor.asked
	commit(3)
	if rich.took != 4*PageSize || poor.asked != asked {
		t.Fatalf("a second commit of the same pages charged %d bytes (asked the revoked clone %d more times)", rich.took-4*PageSize, poor.asked-asked)
	}

	// A clone of a charged clone (a callback advancing its frame) holds
	// its copies without paying again, and pays for new ones.
	again := &chargeTo{limit: 1 << 20}
	c4 := c1.CloneCharged(again.charge)
	defer c4.Release()
	if err := m.Apply(Delta{Size: n * PageSize, Pages: []DirtyPage{{Index: 7, Data: numbered(7, 4)}}}); err != nil {
		t.Fatal(err)
	}
	if again.took != PageSize || rich.took != 5*PageSize {
		t.Fatalf("page 7 was charged %d to the new clone and %d to the old, want a page each", again.took, rich.took-4*PageSize)
	}
	if !bytes.Equal(mapBytes(t, c4), snapshot) {
		t.Fatal("the clone of a clone does not read its snapshot")
	}
	c1.Release()
	c3.Release()
	if got := m.CopiedBytes(); got != 5*PageSize {
		t.Fatalf("after their release, copies held: %d bytes, want the 5 pages the last clone holds (%d)", got, 5*PageSize)
	}
}
