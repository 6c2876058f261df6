package store

import (
	"errors"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
)

func pageOf(b byte) *state.Page {
	p := new(state.Page)
	p[0], p[state.PageSize-1] = b, b
	return p
}

func TestCommitLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := []byte{1, 2, 3}
	meta := Meta{ID: "x", Balance: cycles.Amount{Hi: 1, Lo: 2}, Status: "running", HeapSize: 3 * state.PageSize}
	err = s.Commit(Change{ID: id, Meta: meta, Module: []byte("\x00asm"),
		Heap:   &MemoryChange{Replace: true, Delta: state.Delta{Size: 3 * state.PageSize, Pages: []state.DirtyPage{{Index: 0, Data: pageOf(1)}, {Index: 2, Data: pageOf(2)}}}},
		Stable: &MemoryChange{Replace: true}, Globals: []state.Global{{Type: state.GlobalI64, Bits: 42}}, SetGlobals: true,
		Logs: []LogEntry{{Seq: 0, Text: "a"}, {Seq: 1, Text: "b"}, {Seq: 2, Text: "c"}}, KeepLogs: 2})
	if err != nil {
		t.Fatal(err)
	}
	// A second commit changes one page and deletes another by zeroing it.
	meta.Version = 7
	err = s.Commit(Change{ID: id, Meta: meta, Heap: &MemoryChange{Delta: state.Delta{Size: 3 * state.PageSize,
		Pages: []state.DirtyPage{{Index: 0, Data: state.ZeroPage()}, {Index: 1, Data: pageOf(5)}}}}})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := s.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	if c.Meta.Version != 7 || c.Meta.Balance != (cycles.Amount{Hi: 1, Lo: 2}) {
		t.Fatalf("meta %+v", c.Meta)
	}
	if c.Heap.Page(0) != nil || c.Heap.Page(1)[0] != 5 || c.Heap.Page(2)[0] != 2 {
		t.Fatal("heap pages")
	}
	if len(c.Globals) != 1 || c.Globals[0].Bits != 42 {
		t.Fatalf("globals %+v", c.Globals)
	}
	logs, err := s.Logs(id)
	if err != nil || len(logs) != 2 || logs[0].Text != "b" {
		t.Fatalf("logs kept %+v %v", logs, err)
	}
	if _, err := s.Load([]byte{9}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing canister: %v", err)
	}
	if err := s.Commit(Change{ID: id, Meta: meta, Delete: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.GCModules(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Module(ModuleKey([]byte("\x00asm"))); !errors.Is(err, ErrNotFound) {
		t.Fatal("unreferenced module kept")
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(dir, 100*time.Millisecond); err == nil {
		t.Fatal("a second writer opened the store")
	}
}

// ReleaseModules drops the given modules that no canister references, keeps
// those still referenced and every module it was not given, and writes
// nothing when none of those given is stored.
func TestReleaseModules(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b, c := []byte("\x00asm a"), []byte("\x00asm b"), []byte("\x00asm c")
	commit := func(id byte, wasm []byte) {
		t.Helper()
		m := Meta{ID: string(rune('0' + id)), Status: "running", ModuleHash: ModuleKey(wasm)}
		if err := s.Commit(Change{ID: []byte{id}, Meta: m, Module: wasm}); err != nil {
			t.Fatal(err)
		}
	}
	commit(1, a)
	commit(2, a)
	commit(3, b)
	commit(4, c)
	// Canister 3 moves from b to a, canister 4 is deleted: b and c lose
	// their last reference, but only b is released here.
	commit(3, a)
	if err := s.Commit(Change{ID: []byte{4}, Meta: Meta{ID: "4"}, Delete: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseModules(ModuleKey(a), ModuleKey(b), ""); err != nil {
		t.Fatal(err)
	}
	has := func(wasm []byte) bool {
		_, err := s.Module(ModuleKey(wasm))
		if err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	if !has(a) || has(b) || !has(c) {
		t.Fatalf("modules a %v (referenced), b %v (released), c %v (not a candidate)", has(a), has(b), has(c))
	}
	// Nothing stored among the candidates (a first install replaces
	// nothing): no transaction at all.
	before := s.SyncStats().Syncs
	if err := s.ReleaseModules(ModuleKey(b), ""); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseModules(); err != nil {
		t.Fatal(err)
	}
	if after := s.SyncStats().Syncs; after != before {
		t.Fatalf("%d write transactions for nothing to release", after-before)
	}
	// GCModules (at open) collects what no canister references: c.
	if err := s.GCModules(); err != nil {
		t.Fatal(err)
	}
	if !has(a) || has(c) {
		t.Fatalf("after GCModules: a %v, c %v", has(a), has(c))
	}
}

// A Change that creates a canister fails if the canister is stored, and
// changes nothing then.
func TestCreateOnlyOnce(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id := []byte("c1")
	if err := s.Commit(Change{ID: id, Create: true, Meta: Meta{ID: "first"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(Change{ID: id, Create: true, Meta: Meta{ID: "second"}}); !errors.Is(err, ErrExists) {
		t.Fatalf("second creation: %v", err)
	}
	sc, err := s.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Release()
	if sc.Meta.ID != "first" {
		t.Fatalf("the canister's metadata: %+v", sc.Meta)
	}
	// Without Create a commit changes the existing canister.
	if err := s.Commit(Change{ID: id, Meta: Meta{ID: "changed"}}); err != nil {
		t.Fatal(err)
	}
}
