package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/cycles"
)

// Deleted canisters.
//
// Deleting a canister discards its cycles (IC interface specification,
// delete_canister), but they are not nothing to the node's conservation
// count (inflight.go): a canister holds cycles minted by others (transfers,
// deposits) and has minted cycles others hold, and its calls may still
// carry cycles a callee has yet to accept. So the commit that deletes a
// canister leaves a tombstone under its id in bucketDeleted, in the same
// transaction: a ledger of the cycles it minted and of everything it
// burned or held (balance, reservations), all burned now, and its records
// of cycles in flight, which later commits still lower as the callees
// accept them (putLeft) and which burn when their responses find nobody
// (BurnDropped) or the node restarts (ReturnCyclesInFlight). The count
// then holds across deletions: balances + burned + reserved + in flight =
// minted, tombstones included.
//
// A creation (Change.Create) of a tombstone's id fails with ErrDeleted:
// as on the IC, the id of a deleted canister is not given out again, so no
// later canister answers to the responses of a deleted one's calls.

var (
	bucketDeleted = []byte("deleted")
	keyLedger     = []byte("ledger")
)

// ErrDeleted is returned by a commit that creates a canister under the id
// of a deleted one.
var ErrDeleted = errors.New("the id of a deleted canister")

// DeletedCycles are the cycles of deleted canisters: what they minted,
// what they burned (what they held when deleted, what came back to them
// since), and what their calls still carry.
type DeletedCycles struct {
	Minted   cycles.Amount `json:"cycles_minted"`
	Burned   cycles.Amount `json:"cycles_burned"`
	InFlight cycles.Amount `json:"-"` // from the records, not the ledger
}

func readLedger(tb *bolt.Bucket) (DeletedCycles, error) {
	var l DeletedCycles
	if v := tb.Get(keyLedger); v != nil {
		if err := json.Unmarshal(v, &l); err != nil {
			return l, fmt.Errorf("ledger: %w", err)
		}
	}
	return l, nil
}

func writeLedger(tb *bolt.Bucket, l DeletedCycles) error {
	raw, err := json.Marshal(&l)
	if err != nil {
		return err
	}
	return tb.Put(keyLedger, raw)
}

// retire deletes the canister id's bucket and leaves its tombstone: its
// committed metadata's cycles in the ledger, its records in flight moved.
func retire(tx *bolt.Tx, id []byte) error {
	all := tx.Bucket(bucketCanisters)
	cb := all.Bucket(id)
	if cb == nil {
		return nil
	}
	var m Meta
	if err := json.Unmarshal(cb.Get(keyMeta), &m); err != nil {
		return fmt.Errorf("canister %x metadata: %w", id, err)
	}
	tb, err := tx.Bucket(bucketDeleted).CreateBucketIfNotExists(id)
	if err != nil {
		return err
	}
	l, err := readLedger(tb)
	if err != nil {
		return fmt.Errorf("deleted canister %x: %w", id, err)
	}
	l.Minted = l.Minted.SaturatingAdd(m.CyclesMinted)
	l.Burned = l.Burned.SaturatingAdd(m.CyclesBurned).SaturatingAdd(m.Balance).SaturatingAdd(m.CyclesReserved)
	if err := writeLedger(tb, l); err != nil {
		return err
	}
	if fb := cb.Bucket(keyInFlight); fb != nil {
		to, err := tb.CreateBucketIfNotExists(keyInFlight)
		if err != nil {
			return err
		}
		err = fb.ForEach(func(k, v []byte) error {
			a, err := decodeAmount(v)
			if err != nil {
				return err
			}
			// An id is deleted once (creations of it fail): a
			// record under the call is new, but adding keeps the
			// count exact either way.
			if was := to.Get(k); was != nil {
				w, err := decodeAmount(was)
				if err != nil {
					return err
				}
				if a, err = a.Add(w); err != nil {
					return err
				}
			}
			return to.Put(bytes.Clone(k), encodeAmount(a))
		})
		if err != nil {
			return fmt.Errorf("canister %x cycles in flight: %w", id, err)
		}
	}
	return all.DeleteBucket(id)
}

// inFlightOf is the bucket of the records in flight of caller's calls:
// the live canister's, else its tombstone's; nil if there is none.
func inFlightOf(tx *bolt.Tx, caller []byte) *bolt.Bucket {
	if cb := tx.Bucket(bucketCanisters).Bucket(caller); cb != nil {
		return cb.Bucket(keyInFlight)
	}
	if tb := tx.Bucket(bucketDeleted).Bucket(caller); tb != nil {
		return tb.Bucket(keyInFlight)
	}
	return nil
}

// burnDropped burns what is left in flight of calls of deleted callers
// whose responses found nobody (their Amount is ignored: the record says
// what is left). A record of a live caller, or none, is left alone.
func burnDropped(tx *bolt.Tx, calls []CallCycles) error {
	for _, d := range calls {
		tb := tx.Bucket(bucketDeleted).Bucket(d.Caller)
		if tb == nil || tx.Bucket(bucketCanisters).Bucket(d.Caller) != nil {
			continue
		}
		fb := tb.Bucket(keyInFlight)
		if fb == nil {
			continue
		}
		k := inFlightKey(d.Call)
		v := fb.Get(k)
		if v == nil {
			continue
		}
		a, err := decodeAmount(v)
		if err != nil {
			return fmt.Errorf("deleted canister %x call %d: %w", d.Caller, d.Call, err)
		}
		if err := burnInto(tb, a); err != nil {
			return fmt.Errorf("deleted canister %x: %w", d.Caller, err)
		}
		if err := fb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func burnInto(tb *bolt.Bucket, a cycles.Amount) error {
	l, err := readLedger(tb)
	if err != nil {
		return err
	}
	if l.Burned, err = l.Burned.Add(a); err != nil {
		return err
	}
	return writeLedger(tb, l)
}

// BurnDropped commits the burning of what is left in flight of calls of
// deleted callers whose responses were dropped: the refund they brought
// had nobody to go to.
func (s *Store) BurnDropped(calls ...CallCycles) error {
	if len(calls) == 0 {
		return nil
	}
	return s.submit([]Change{{Dropped: calls}})
}

// Deleted sums the tombstones of deleted canisters in one read
// transaction.
func (s *Store) Deleted() (DeletedCycles, error) {
	var t DeletedCycles
	err := s.db.View(func(tx *bolt.Tx) error {
		return sumDeleted(tx, &t)
	})
	return t, err
}

func sumDeleted(tx *bolt.Tx, t *DeletedCycles) error {
	del := tx.Bucket(bucketDeleted)
	return del.ForEachBucket(func(id []byte) error {
		tb := del.Bucket(id)
		l, err := readLedger(tb)
		if err != nil {
			return fmt.Errorf("deleted canister %x: %w", id, err)
		}
		t.Minted = t.Minted.SaturatingAdd(l.Minted)
		t.Burned = t.Burned.SaturatingAdd(l.Burned)
		if fb := tb.Bucket(keyInFlight); fb != nil {
			return fb.ForEach(func(_, v []byte) error {
				a, err := decodeAmount(v)
				if err != nil {
					return fmt.Errorf("deleted canister %x cycles in flight: %w", id, err)
				}
				t.InFlight = t.InFlight.SaturatingAdd(a)
				return nil
			})
		}
		return nil
	})
}

// burnDeletedInFlight burns every record in flight of deleted callers (at
// open: their calls did not survive, and their refunds have nobody to go
// to) and reports whether there was any.
func burnDeletedInFlight(tx *bolt.Tx) (bool, error) {
	del := tx.Bucket(bucketDeleted)
	var ids [][]byte
	_ = del.ForEachBucket(func(id []byte) error {
		if del.Bucket(id).Bucket(keyInFlight) != nil {
			ids = append(ids, bytes.Clone(id))
		}
		return nil
	})
	for _, id := range ids {
		tb := del.Bucket(id)
		var sum cycles.Amount
		err := tb.Bucket(keyInFlight).ForEach(func(k, v []byte) error {
			a, err := decodeAmount(v)
			if err != nil || len(k) != 8 {
				return fmt.Errorf("corrupt record (key %d bytes): %v", len(k), err)
			}
			sum, err = sum.Add(a)
			return err
		})
		if err != nil {
			return false, fmt.Errorf("deleted canister %x cycles in flight: %w", id, err)
		}
		if err := burnInto(tb, sum); err != nil {
			return false, fmt.Errorf("deleted canister %x: %w", id, err)
		}
		if err := tb.DeleteBucket(keyInFlight); err != nil {
			return false, err
		}
	}
	return len(ids) > 0, nil
}

// isDeleted reports whether id has a tombstone.
func isDeleted(tx *bolt.Tx, id []byte) bool {
	return tx.Bucket(bucketDeleted).Bucket(id) != nil
}
