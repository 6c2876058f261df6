package store

import (
	"bytes"
	"crypto/sha256"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// A canister's Wasm chunk store (the management canister's upload_chunk,
// stored_chunks, clear_chunk_store, install_chunked_code) is a bucket inside
// the canister's, one key per chunk: its SHA-256, raw. It lives and dies
// with the canister's bucket, so delete_canister drops it with the rest.
var keyChunks = []byte("chunks")

// ChunkHash is the key a chunk is stored under: its SHA-256.
func ChunkHash(chunk []byte) []byte {
	h := sha256.Sum256(chunk)
	return h[:]
}

func putChunks(cb *bolt.Bucket, clear bool, chunks [][]byte) error {
	if clear && cb.Bucket(keyChunks) != nil {
		if err := cb.DeleteBucket(keyChunks); err != nil {
			return err
		}
	}
	if len(chunks) == 0 {
		return nil
	}
	b, err := cb.CreateBucketIfNotExists(keyChunks)
	if err != nil {
		return err
	}
	for _, c := range chunks {
		if err := b.Put(ChunkHash(c), c); err != nil {
			return err
		}
	}
	return nil
}

// ChunkHashes lists the hashes in a canister's chunk store, in key order.
func (s *Store) ChunkHashes(id []byte) ([][]byte, error) {
	var out [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCanisters).Bucket(id)
		if cb == nil {
			return ErrNotFound
		}
		b := cb.Bucket(keyChunks)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, _ []byte) error {
			out = append(out, bytes.Clone(k))
			return nil
		})
	})
	return out, err
}

// Chunk returns the chunk of a canister's chunk store with this SHA-256,
// or an error wrapping ErrNotFound.
func (s *Store) Chunk(id, hash []byte) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCanisters).Bucket(id)
		if cb == nil {
			return ErrNotFound
		}
		var v []byte
		if b := cb.Bucket(keyChunks); b != nil {
			v = b.Get(hash)
		}
		if v == nil {
			return fmt.Errorf("chunk %x: %w", hash, ErrNotFound)
		}
		out = bytes.Clone(v)
		return nil
	})
	return out, err
}

// ConcatChunks returns the concatenation of the chunks with these hashes,
// in order, in one allocation of exactly its size (a module of up to 100
// chunks is not grown by doubling). A chunk not in the store is named by
// missing, with an error wrapping ErrNotFound.
func (s *Store) ConcatChunks(id []byte, hashes [][]byte) (out, missing []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCanisters).Bucket(id)
		b := (*bolt.Bucket)(nil)
		if cb != nil {
			b = cb.Bucket(keyChunks)
		}
		chunks := make([][]byte, len(hashes))
		total := 0
		for i, h := range hashes {
			if b != nil {
				chunks[i] = b.Get(h)
			}
			if chunks[i] == nil {
				missing = bytes.Clone(h)
				return fmt.Errorf("chunk %x: %w", h, ErrNotFound)
			}
			total += len(chunks[i])
		}
		out = make([]byte, 0, total)
		for _, c := range chunks {
			out = append(out, c...)
		}
		return nil
	})
	if err != nil {
		return nil, missing, err
	}
	return out, nil, nil
}

// ChunksSize returns the size of the concatenation of the chunks with
// these hashes, and its first two and last four bytes (what tells a gzip'd
// module and the size it claims), without copying the chunks. A chunk not
// in the store is named by missing, with an error wrapping ErrNotFound.
func (s *Store) ChunksSize(id []byte, hashes [][]byte) (size uint64, head, tail []byte, missing []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCanisters).Bucket(id)
		b := (*bolt.Bucket)(nil)
		if cb != nil {
			b = cb.Bucket(keyChunks)
		}
		var all []byte // the head and tail seen so far (at most 6 bytes of each end)
		for _, h := range hashes {
			var c []byte
			if b != nil {
				c = b.Get(h)
			}
			if c == nil {
				missing = bytes.Clone(h)
				return fmt.Errorf("chunk %x: %w", h, ErrNotFound)
			}
			size += uint64(len(c))
			if len(head) < 2 {
				head = append(head, c[:min(len(c), 2-len(head))]...)
			}
			all = append(all, c[max(0, len(c)-4):]...)
			all = all[max(0, len(all)-4):]
		}
		tail = all
		return nil
	})
	return size, head, tail, missing, err
}
