package state

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
)

// Hasher computes a deterministic hash of a canister's state. Everything is
// written with explicit lengths, so different states cannot collide by
// concatenation.
type Hasher struct{ h hash.Hash }

// NewHasher starts a state hash.
func NewHasher() *Hasher { return &Hasher{h: sha256.New()} }

func (s *Hasher) u64(v uint64) { s.h.Write(binary.BigEndian.AppendUint64(nil, v)) }

// Bytes adds a labelled byte string.
func (s *Hasher) Bytes(label string, b []byte) {
	s.u64(uint64(len(label)))
	s.h.Write([]byte(label))
	s.u64(uint64(len(b)))
	s.h.Write(b)
}

// Uint adds a labelled number.
func (s *Hasher) Uint(label string, v uint64) {
	s.Bytes(label, binary.BigEndian.AppendUint64(nil, v))
}

// Memory adds a page map: its size and every non-zero page with its index.
// Absent and all-zero pages hash the same, as they are the same memory.
func (s *Hasher) Memory(label string, m *PageMap) {
	s.Uint(label+".size", m.Size())
	for _, i := range m.StoredPages() {
		p := m.Page(i)
		if *p == zeroPage {
			continue
		}
		s.u64(i)
		s.h.Write(p[:])
	}
	s.Uint(label+".end", 0)
}

// Globals adds the globals in order.
func (s *Hasher) Globals(gs []Global) {
	s.Uint("globals", uint64(len(gs)))
	for _, g := range gs {
		s.u64(uint64(g.Type))
		s.u64(g.Bits)
	}
}

// Sum returns the hash.
func (s *Hasher) Sum() [32]byte {
	var out [32]byte
	copy(out[:], s.h.Sum(nil))
	return out
}
