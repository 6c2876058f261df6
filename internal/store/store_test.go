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
