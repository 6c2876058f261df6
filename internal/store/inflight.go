package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/cycles"
)

// Cycles in flight.
//
// A call's attached cycles leave the caller's balance in the commit of the
// execution that made the call, and reach their destination in later
// commits of other canisters: the callee's that accepts them (or the
// management canister's that deposits them or creates a canister with
// them), and the caller's that takes the rest back with the response. The
// messages that carry them live in memory; the amounts are recorded here,
// in the caller's bucket under the call's id, by the commit that sends
// them, lowered by a commit that delivers part of them and removed by the
// one that delivers the rest. Every committed state therefore counts each
// cycle once: balances + burned + reserved + in flight = minted. A restart
// drops the calls, and ReturnCyclesInFlight gives what is still recorded
// back to the callers.

// keyInFlight is the bucket, inside a canister's, of its calls' cycles in
// flight: the call's id (8 bytes, big-endian) → the amount (16 bytes,
// big-endian high then low word).
var keyInFlight = []byte("cycles_in_flight")

// CallCycles are cycles attached to a call that no canister holds.
type CallCycles struct {
	Caller []byte // the calling canister's id
	Call   uint64 // the call's id at the caller
	Amount cycles.Amount
}

func inFlightKey(call uint64) []byte { return binary.BigEndian.AppendUint64(nil, call) }

func encodeAmount(a cycles.Amount) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, a.Hi), a.Lo)
}

func decodeAmount(v []byte) (cycles.Amount, error) {
	if len(v) != 16 {
		return cycles.Amount{}, fmt.Errorf("an amount of %d bytes (want 16)", len(v))
	}
	return cycles.Amount{Hi: binary.BigEndian.Uint64(v), Lo: binary.BigEndian.Uint64(v[8:])}, nil
}

// putSent records the cycles the calls of the canister of bucket cb carry
// (a zero amount records nothing).
func putSent(cb *bolt.Bucket, id []byte, sent []CallCycles) error {
	if len(sent) == 0 {
		return nil
	}
	b, err := cb.CreateBucketIfNotExists(keyInFlight)
	if err != nil {
		return err
	}
	for _, s := range sent {
		if !bytes.Equal(s.Caller, id) {
			return fmt.Errorf("a commit of canister %x records cycles sent by %x", id, s.Caller)
		}
		if s.Amount.IsZero() {
			continue
		}
		if err := b.Put(inFlightKey(s.Call), encodeAmount(s.Amount)); err != nil {
			return err
		}
	}
	return nil
}

// putLeft sets what remains in flight of calls whose cycles a commit
// delivers: zero removes the record. Only an existing record changes, the
// live caller's or a deleted one's (deleted.go): a record never comes back
// once delivered.
func putLeft(tx *bolt.Tx, left []CallCycles) error {
	for _, l := range left {
		b := inFlightOf(tx, l.Caller)
		if b == nil {
			continue
		}
		k := inFlightKey(l.Call)
		v := b.Get(k)
		if v == nil {
			continue
		}
		if was, err := decodeAmount(v); err != nil {
			return fmt.Errorf("canister %x call %d: %w", l.Caller, l.Call, err)
		} else if l.Amount.Cmp(was) > 0 {
			return fmt.Errorf("canister %x call %d: %s cycles left of %s in flight", l.Caller, l.Call, l.Amount, was)
		}
		var err error
		if l.Amount.IsZero() {
			err = b.Delete(k)
		} else {
			err = b.Put(k, encodeAmount(l.Amount))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// CyclesInFlight calls fn with every recorded amount in flight, of live
// and deleted callers.
func (s *Store) CyclesInFlight(fn func(CallCycles) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		for _, parent := range []*bolt.Bucket{tx.Bucket(bucketCanisters), tx.Bucket(bucketDeleted)} {
			err := parent.ForEachBucket(func(id []byte) error {
				b := parent.Bucket(id).Bucket(keyInFlight)
				if b == nil {
					return nil
				}
				return b.ForEach(func(k, v []byte) error {
					a, err := decodeAmount(v)
					if err != nil || len(k) != 8 {
						return fmt.Errorf("canister %x: corrupt cycles in flight (key %d bytes): %v", id, len(k), err)
					}
					return fn(CallCycles{Caller: bytes.Clone(id), Call: binary.BigEndian.Uint64(k), Amount: a})
				})
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// errNothingInFlight ends ReturnCyclesInFlight's transaction without a
// write when there is nothing to return.
var errNothingInFlight = errors.New("no cycles in flight")

// ReturnCyclesInFlight gives every amount recorded in flight back to its
// caller's balance and removes the records, in one transaction, and
// reports the total returned; a deleted caller's are burned (deleted.go),
// and so is what would take a balance past 2^128-1.
// For a node that has just opened its store:
// no call is in flight then (the messages were in memory), and what their
// cycles were doing is undone, as for a call that was never answered. A
// store with nothing in flight is only read.
func (s *Store) ReturnCyclesInFlight() (cycles.Amount, error) {
	var total cycles.Amount
	found := false
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, parent := range []*bolt.Bucket{tx.Bucket(bucketCanisters), tx.Bucket(bucketDeleted)} {
			_ = parent.ForEachBucket(func(id []byte) error {
				if b := parent.Bucket(id).Bucket(keyInFlight); b != nil {
					if k, _ := b.Cursor().First(); k != nil {
						found = true
					}
				}
				return nil
			})
		}
		return nil
	})
	if err != nil || !found {
		return total, err
	}
	err = s.update(func(tx *bolt.Tx) error {
		burned, err := burnDeletedInFlight(tx)
		if err != nil {
			return err
		}
		all := tx.Bucket(bucketCanisters)
		var callers [][]byte
		_ = all.ForEachBucket(func(id []byte) error {
			if all.Bucket(id).Bucket(keyInFlight) != nil {
				callers = append(callers, bytes.Clone(id))
			}
			return nil
		})
		for _, id := range callers {
			cb := all.Bucket(id)
			var m Meta
			if err := json.Unmarshal(cb.Get(keyMeta), &m); err != nil {
				return fmt.Errorf("canister %x metadata: %w", id, err)
			}
			// What would take the balance past 2^128-1 is burned: the
			// count holds, and the store still opens.
			err := cb.Bucket(keyInFlight).ForEach(func(k, v []byte) error {
				a, err := decodeAmount(v)
				if err != nil {
					return err
				}
				var over cycles.Amount
				m.Balance, over = m.Balance.AddCapped(a)
				m.CyclesBurned = m.CyclesBurned.SaturatingAdd(over)
				total = total.SaturatingAdd(a)
				return nil
			})
			if err != nil {
				return fmt.Errorf("canister %x cycles in flight: %w", id, err)
			}
			raw, err := json.Marshal(&m)
			if err != nil {
				return err
			}
			if err := cb.Put(keyMeta, raw); err != nil {
				return err
			}
			if err := cb.DeleteBucket(keyInFlight); err != nil {
				return err
			}
		}
		if len(callers) == 0 && !burned {
			return errNothingInFlight
		}
		return nil
	})
	if errors.Is(err, errNothingInFlight) {
		err = nil
	}
	return total, err
}

// CycleTotals are the terms of the node's cycles conservation count over
// every stored canister and every deleted one's tombstone (deleted.go): in
// every committed state Held() = Minted.
type CycleTotals struct {
	Balance, Burned, Reserved, InFlight, Minted cycles.Amount
}

// Held is where the minted cycles are: balances, burned, reserved for
// responses, in flight with calls.
func (t CycleTotals) Held() cycles.Amount {
	return t.Balance.SaturatingAdd(t.Burned).SaturatingAdd(t.Reserved).SaturatingAdd(t.InFlight)
}

// CycleTotals sums the conservation count's terms in one read
// transaction: one committed state.
func (s *Store) CycleTotals() (CycleTotals, error) {
	var t CycleTotals
	err := s.db.View(func(tx *bolt.Tx) error {
		var d DeletedCycles
		if err := sumDeleted(tx, &d); err != nil {
			return err
		}
		t.Minted, t.Burned, t.InFlight = d.Minted, d.Burned, d.InFlight
		all := tx.Bucket(bucketCanisters)
		return all.ForEachBucket(func(id []byte) error {
			cb := all.Bucket(id)
			var m Meta
			if err := json.Unmarshal(cb.Get(keyMeta), &m); err != nil {
				return fmt.Errorf("canister %x metadata: %w", id, err)
			}
			t.Balance = t.Balance.SaturatingAdd(m.Balance)
			t.Burned = t.Burned.SaturatingAdd(m.CyclesBurned)
			t.Reserved = t.Reserved.SaturatingAdd(m.CyclesReserved)
			t.Minted = t.Minted.SaturatingAdd(m.CyclesMinted)
			b := cb.Bucket(keyInFlight)
			if b == nil {
				return nil
			}
			return b.ForEach(func(_, v []byte) error {
				a, err := decodeAmount(v)
				if err != nil {
					return fmt.Errorf("canister %x cycles in flight: %w", id, err)
				}
				t.InFlight = t.InFlight.SaturatingAdd(a)
				return nil
			})
		})
	})
	return t, err
}
