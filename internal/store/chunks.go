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
