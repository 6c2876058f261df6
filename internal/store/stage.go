package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/state"
)

// Staged replacements.
//
// bbolt holds every page a transaction writes in buffers of its own until
// it commits, about 1.5 times the payload, so an install committing a heap
// of 1 GiB in one transaction needed 1.5 GiB beside the heap. A memory
// that replaces another and is larger than stageBatchBytes is therefore
// written ahead of its commit, in transactions of at most that many bytes
// each, into a bucket of its own under "staging"; the commit itself (one
// transaction, with the metadata and everything else) then deletes the old
// memory and moves the staged bucket in its place, which is O(1) in bbolt.
// Atomicity is unchanged: until that commit the staged pages are not the
// canister's, a crash leaves them under "staging", and Open deletes them.

var bucketStaging = []byte("staging")

// stageBatchBytes is the most page bytes one staging transaction writes.
const stageBatchBytes = 32 << 20

// stageSeq names staging buckets (unique in this process; Open empties
// the staging bucket, so names need not survive a restart).
var stageSeq atomic.Uint64

// stage writes the large replaced memories of changes ahead of their
// commit. It returns the changes to commit (the staged memories replaced by
// references to their staging buckets; the caller's are not modified) and
// the staging buckets made, which dropStaged removes if the commit fails.
func (s *Store) stage(changes []Change) ([]Change, [][]byte, error) {
	var out []Change
	var tokens [][]byte
	var staged int64
	for i := range changes {
		c := &changes[i]
		for _, mem := range []struct {
			name []byte
			mc   **MemoryChange
		}{{keyHeap, &c.Heap}, {keyStable, &c.Stable}} {
			mc := *mem.mc
			if mc == nil || !mc.Replace || int64(len(mc.Delta.Pages))*state.PageSize <= stageBatchBytes {
				continue
			}
			token := binary.BigEndian.AppendUint64(nil, stageSeq.Add(1))
			tokens = append(tokens, token)
			if err := s.stagePages(token, mem.name, mc.Delta.Pages); err != nil {
				s.dropStaged(tokens)
				return nil, nil, fmt.Errorf("stage %s of canister %s: %w", mem.name, c.Meta.ID, err)
			}
			staged += int64(len(mc.Delta.Pages)) * state.PageSize
			if out == nil {
				out = append([]Change(nil), changes...)
			}
			ref := &MemoryChange{Replace: true, Delta: state.Delta{Size: mc.Delta.Size}, staged: token}
			if bytes.Equal(mem.name, keyHeap) {
				out[i].Heap = ref
			} else {
				out[i].Stable = ref
			}
		}
	}
	if out == nil {
		return changes, nil, nil
	}
	if staged >= returnAfterBytes {
		// The staging transactions' buffers, and the store file's pages
		// they read, go back now (group.go, mapped.go).
		debug.FreeOSMemory()
		_ = s.releaseMapped()
	}
	return out, tokens, nil
}

// stagePages writes pages into staging/<token>/<name>, a transaction per
// stageBatchBytes.
func (s *Store) stagePages(token, name []byte, pages []state.DirtyPage) error {
	const batch = stageBatchBytes / state.PageSize
	for start := 0; start < len(pages); {
		// A batch ends at a chunk's end, so that each writes its chunks
		// whole (pages.go).
		end := min(start+batch, len(pages))
		for end < len(pages) && pages[end].Index/runPages == pages[end-1].Index/runPages {
			end++
		}
		part := pages[start:end]
		start = end
		err := s.update(func(tx *bolt.Tx) error {
			st, err := tx.Bucket(bucketStaging).CreateBucketIfNotExists(token)
			if err != nil {
				return err
			}
			b, err := st.CreateBucketIfNotExists(name)
			if err != nil {
				return err
			}
			b.FillPercent = 0.9 // keys are appended in order
			// A replacement stores only non-zero pages.
			return putPages(b, part, true)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// dropStaged deletes staging buckets whose commit failed (best effort:
// Open deletes what is left).
func (s *Store) dropStaged(tokens [][]byte) {
	if len(tokens) == 0 {
		return
	}
	_ = s.update(func(tx *bolt.Tx) error {
		st := tx.Bucket(bucketStaging)
		for _, t := range tokens {
			if st.Bucket(t) != nil {
				if err := st.DeleteBucket(t); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// putStaged moves a staged memory into the canister's bucket cb as name,
// replacing what is there.
func putStaged(tx *bolt.Tx, cb *bolt.Bucket, name []byte, token []byte) error {
	st := tx.Bucket(bucketStaging).Bucket(token)
	if st == nil || st.Bucket(name) == nil {
		return errors.New("staged pages missing")
	}
	if cb.Bucket(name) != nil {
		if err := cb.DeleteBucket(name); err != nil {
			return err
		}
	}
	if err := st.MoveBucket(name, cb); err != nil {
		return err
	}
	return tx.Bucket(bucketStaging).DeleteBucket(token)
}
