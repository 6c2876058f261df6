package store

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// bucketIngress holds the statuses of ingress messages (the IC HTTP
// interface's request statuses, internal/ichttp), keyed by request id. The
// store does not interpret them: the interface encodes, prunes and bounds
// them; the store only makes a status durable in the same transaction as
// the execution that answered its message, so that after a crash the
// status and the state it describes are both there or both absent.
var bucketIngress = []byte("ingress")

// maxIngressKey and maxIngressValue bound one record (a request id; a
// status with a reply of at most a few MiB).
const (
	maxIngressKey   = 64
	maxIngressValue = 16 << 20
)

// IngressRecord is one ingress message's status. A nil Value deletes Key.
type IngressRecord struct {
	Key   []byte
	Value []byte
}

// PutIngress writes and deletes ingress records on their own (statuses of
// messages answered without an execution to commit with, pruning), in one
// durable transaction.
func (s *Store) PutIngress(recs ...IngressRecord) error {
	if len(recs) == 0 {
		return nil
	}
	return s.Commit(Change{Ingress: recs})
}

// Ingress calls fn with every stored ingress record, in key order. fn must
// not keep k or v beyond the call.
func (s *Store) Ingress(fn func(k, v []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketIngress).ForEach(fn)
	})
}

func putIngress(tx *bolt.Tx, recs []IngressRecord) error {
	if len(recs) == 0 {
		return nil
	}
	b := tx.Bucket(bucketIngress)
	for _, r := range recs {
		if len(r.Key) == 0 || len(r.Key) > maxIngressKey || len(r.Value) > maxIngressValue {
			return fmt.Errorf("ingress record of %d key and %d value bytes", len(r.Key), len(r.Value))
		}
		if r.Value == nil {
			if err := b.Delete(r.Key); err != nil {
				return err
			}
			continue
		}
		if err := b.Put(bytes.Clone(r.Key), bytes.Clone(r.Value)); err != nil {
			return err
		}
	}
	return nil
}
