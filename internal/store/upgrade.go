package store

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Upgrade from cordon-store-2.
//
// cordon-store-2 stored a run among the single pages, under the key of its
// chunk's first page; this format keeps runs in a bucket of their own
// (pages.go). Open moves every such run there, in transactions of at most
// upgradeBatchRuns runs: bbolt holds what a transaction writes in memory
// until it commits (about 1.5 times the payload), so moving gigabytes of
// runs in one would need that much again, at every start until it fit.
// Meanwhile the format key is formatUpgrading2, which no earlier binary
// opens; after a crash the next Open starts over and finds the runs not
// moved yet (a moved run's old key is gone). The last transaction writes
// formatVersion.

// upgradeBatchRuns is the most runs one upgrade transaction moves (a
// variable for the tests).
var upgradeBatchRuns = stageBatchBytes / runBytes

// upgradeRuns moves the runs of a cordon-store-2 store into their buckets
// and sets the store's format.
func upgradeRuns(db *bolt.DB) error {
	// The memories: no other process has the store while Open runs.
	type memory struct{ id, name []byte }
	var mems []memory
	err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCanisters).ForEachBucket(func(id []byte) error {
			for _, name := range [][]byte{keyHeap, keyStable} {
				mems = append(mems, memory{bytes.Clone(id), name})
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("upgrade from %s: %w", formatVersion2, err)
	}
	next := 0        // the memory to go on with
	var after []byte // and the key in it
	for done := false; !done; {
		err := db.Update(func(tx *bolt.Tx) error {
			budget := upgradeBatchRuns
			for ; next < len(mems); next, after = next+1, nil {
				b := tx.Bucket(bucketCanisters).Bucket(mems[next].id)
				if b != nil {
					b = b.Bucket(mems[next].name)
				}
				if b == nil {
					continue
				}
				moved, last, err := moveRuns(b, after, budget)
				if err != nil {
					return fmt.Errorf("canister %x %s: %w", mems[next].id, mems[next].name, err)
				}
				if budget -= moved; budget == 0 {
					after = last
					return nil
				}
			}
			done = true
			return tx.Bucket(bucketNode).Put(keyFormat, []byte(formatVersion))
		})
		if err != nil {
			return fmt.Errorf("upgrade from %s: %w", formatVersion2, err)
		}
	}
	return nil
}

// moveRuns moves at most budget cordon-store-2 runs of the memory bucket
// b, after the key after (nil: from the start), into its bucket of runs.
// It returns how many it moved and the key of the last.
func moveRuns(b *bolt.Bucket, after []byte, budget int) (int, []byte, error) {
	type run struct{ key, value []byte }
	var runs []run
	c := b.Cursor()
	k, v := c.First()
	if after != nil {
		k, v = c.Seek(after)
	}
	for ; k != nil && len(runs) < budget; k, v = c.Next() {
		if len(k) == 8 && len(v) == runBytes {
			// Copied: bbolt references a Put's value until the commit,
			// and the old one's page is freed by the Delete.
			runs = append(runs, run{bytes.Clone(k), bytes.Clone(v)})
		}
	}
	if len(runs) == 0 || b.Get(keyRuns) != nil {
		// Nothing to move, or an entry no format writes where the runs
		// go: Load refuses this memory, the others upgrade.
		return 0, nil, nil
	}
	to, err := b.CreateBucketIfNotExists(keyRuns)
	if err != nil {
		return 0, nil, err
	}
	for _, r := range runs {
		if err := to.Put(r.key, r.value); err != nil {
			return 0, nil, err
		}
		if err := b.Delete(r.key); err != nil {
			return 0, nil, err
		}
	}
	return len(runs), runs[len(runs)-1].key, nil
}
