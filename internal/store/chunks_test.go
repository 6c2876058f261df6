package store

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// The chunk store is durable with the canister's commits: chunks survive a
// reopen, ClearChunks empties it in the same transaction that adds new
// ones, and deleting the canister drops them.
func TestChunkStore(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := []byte{7, 7}
	a, b := bytes.Repeat([]byte{1}, 1000), []byte("second chunk")
	if err := s.Commit(Change{ID: id, Meta: Meta{ID: "c", WasmChunks: 2}, Chunks: [][]byte{a, b}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(dir, time.Second); err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	hs, err := s.ChunkHashes(id)
	if err != nil || len(hs) != 2 {
		t.Fatalf("hashes after reopen: %x %v", hs, err)
	}
	got, err := s.Chunk(id, ChunkHash(b))
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("chunk: %q %v", got, err)
	}
	if _, err := s.Chunk(id, ChunkHash([]byte("absent"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("absent chunk: %v", err)
	}
	c, err := s.Load(id)
	if err != nil || c.Meta.WasmChunks != 2 {
		t.Fatalf("meta after reopen: %+v %v", c, err)
	}
	// Clear and add in one commit: only the new chunk is left.
	if err := s.Commit(Change{ID: id, Meta: Meta{ID: "c", WasmChunks: 1}, ClearChunks: true, Chunks: [][]byte{b}}); err != nil {
		t.Fatal(err)
	}
	if hs, err = s.ChunkHashes(id); err != nil || len(hs) != 1 || !bytes.Equal(hs[0], ChunkHash(b)) {
		t.Fatalf("after clear: %x %v", hs, err)
	}
	if err := s.Commit(Change{ID: id, Delete: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ChunkHashes(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("chunk store of a deleted canister: %v", err)
	}
}

// ChunksSize and ConcatChunks see the same chunks, repeated as listed; a
// missing chunk is named.
func TestConcatChunks(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id := []byte{7, 8}
	a, b := []byte{0x1f, 0x8b, 1, 2, 3}, []byte("tail")
	if err := s.Commit(Change{ID: id, Meta: Meta{ID: "c", WasmChunks: 2}, Chunks: [][]byte{a, b}}); err != nil {
		t.Fatal(err)
	}
	hs := [][]byte{ChunkHash(a), ChunkHash(b), ChunkHash(a)}
	size, head, tail, missing, err := s.ChunksSize(id, hs)
	if err != nil || missing != nil || size != 14 || !bytes.Equal(head, a[:2]) || !bytes.Equal(tail, []byte{0x8b, 1, 2, 3}) {
		t.Fatalf("ChunksSize: %d %x %x %x %v", size, head, tail, missing, err)
	}
	got, missing, err := s.ConcatChunks(id, hs)
	if want := bytes.Join([][]byte{a, b, a}, nil); err != nil || missing != nil || !bytes.Equal(got, want) || cap(got) != len(want) {
		t.Fatalf("ConcatChunks: %x (cap %d) %x %v", got, cap(got), missing, err)
	}
	absent := ChunkHash([]byte("absent"))
	if _, missing, err := s.ConcatChunks(id, [][]byte{hs[0], absent}); !errors.Is(err, ErrNotFound) || !bytes.Equal(missing, absent) {
		t.Fatalf("ConcatChunks with an absent chunk: %x %v", missing, err)
	}
	if _, _, _, missing, err := s.ChunksSize([]byte{9}, hs); !errors.Is(err, ErrNotFound) || !bytes.Equal(missing, hs[0]) {
		t.Fatalf("ChunksSize of another canister: %x %v", missing, err)
	}
}
