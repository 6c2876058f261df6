// Package store is cordon's embedded, durable store, on bbolt.
//
// bbolt was chosen over pebble because every commit is one ACID transaction
// with an fsync (crash-consistent by construction, no WAL replay logic of our
// own), reads are zero-copy, and the whole store is a single file. Each
// canister is a bucket holding its metadata, globals and its heap and
// stable memory as 4 KiB pages and 64 KiB runs (pages.go), so a commit
// writes only the pages a message changed. The tree is the checkpoint: a
// message's delta is folded into it by its commit, overwriting pages in
// place (copy-on-write inside bbolt), so there is no log of deltas to
// replay or trim, and the file is bounded by the live data (RATIONALE.md). Concurrent commits share one transaction and one
// sync (group.go).
package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/homedir"
	"github.com/cordon-dev/cordon/internal/state"
)

var (
	bucketModules   = []byte("modules")
	bucketCanisters = []byte("canisters")
	bucketNode      = []byte("node")

	keyMeta    = []byte("meta")
	keyGlobals = []byte("globals")
	keyHeap    = []byte("heap")
	keyStable  = []byte("stable")
	keyNextID  = []byte("next_canister_id")
	keyFormat  = []byte("format")
)

// formatVersion is the store's format: cordon-store-3 stores a chunk a
// commit changes entirely as one run, and pages written into it later as
// single pages over it (pages.go). Open upgrades the earlier formats
// (upgrade.go); every earlier binary refuses a format it does not know, so
// none reads runs it would take for corrupt pages.
const formatVersion = "cordon-store-3"

// formatVersion1 is the format before page runs: single pages only, valid
// in this format as they are.
const formatVersion1 = "cordon-store-1"

// formatVersion2 is the format whose runs were among the single pages,
// under their chunk's first page's key, alone in their chunk.
const formatVersion2 = "cordon-store-2"

// formatUpgrading2 marks a cordon-store-2 store whose runs Open is moving
// into their buckets (upgrade.go): no earlier binary opens it.
const formatUpgrading2 = "cordon-store-2-to-3"

// ErrNotFound is returned for a canister or module that is not stored.
var ErrNotFound = errors.New("not found")

// ErrExists is returned by a commit that creates a canister (Change.Create)
// that is stored already.
var ErrExists = errors.New("exists already")

// Settings are a canister's settings (management canister update_settings).
type Settings struct {
	Controllers       []string      `json:"controllers"`
	FreezingThreshold uint64        `json:"freezing_threshold"`
	MemoryAllocation  uint64        `json:"memory_allocation"`
	ComputeAllocation uint64        `json:"compute_allocation"`
	WasmMemoryLimit   uint64        `json:"wasm_memory_limit"`
	ReservedCycles    cycles.Amount `json:"reserved_cycles_limit"`
	Isolation         string        `json:"isolation,omitempty"` // per-canister override, "" = node default
	// WasmMemoryThreshold: canister_on_low_wasm_memory runs when less Wasm
	// memory than this remains below the limit (host/lowmem.go; 0 = none).
	WasmMemoryThreshold uint64 `json:"wasm_memory_threshold,omitempty"`
	// LogVisibility is "" (controllers), "controllers", "public" or
	// "allowed_viewers" with LogViewers.
	LogVisibility string   `json:"log_visibility,omitempty"`
	LogViewers    []string `json:"log_viewers,omitempty"`
	// EnvVars are the canister's environment variables (ic0.env_var_*),
	// sorted by name, names unique.
	EnvVars []EnvVar `json:"environment_variables,omitempty"`
}

// EnvVar is one canister environment variable.
type EnvVar struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// QueryStats count the queries a canister executed (canister_status
// query_stats).
type QueryStats struct {
	Calls         uint64 `json:"calls"`
	Instructions  uint64 `json:"instructions"`
	RequestBytes  uint64 `json:"request_bytes"`
	ResponseBytes uint64 `json:"response_bytes"`
}

// Meta is a canister's metadata.
type Meta struct {
	ID            string        `json:"id"`
	Settings      Settings      `json:"settings"`
	Balance       cycles.Amount `json:"balance"`
	Status        string        `json:"status"` // running, stopping, stopped
	ModuleHash    string        `json:"module_hash,omitempty"`
	Version       uint64        `json:"version"`
	CertifiedData []byte        `json:"certified_data,omitempty"`
	GlobalTimer   uint64        `json:"global_timer"`
	// TimerPending: a run of canister_global_timer is owed for a timer that
	// fell due, whose value GlobalTimer no longer holds (set again before
	// the run committed: host/sched.go scheduleTimer).
	TimerPending bool      `json:"timer_pending,omitempty"`
	HeapSize     uint64    `json:"heap_size"`
	StableSize   uint64    `json:"stable_size"`
	Created      time.Time `json:"created"`
	// Counters, for status and cycles conservation.
	Messages     uint64        `json:"messages"`
	Instructions uint64        `json:"instructions"`
	CyclesBurned cycles.Amount `json:"cycles_burned"`
	CyclesMinted cycles.Amount `json:"cycles_minted"` // created from nothing: initial balance, provisional top-ups
	// CyclesReserved left the balance with calls awaiting responses, to pay
	// for executing them (host/queues.go); each comes back when its response
	// has run, and all of it when the node restarts (calls in flight do not
	// survive a restart). The cycles attached to those calls are recorded
	// apart, per call (inflight.go).
	CyclesReserved cycles.Amount `json:"cycles_reserved,omitempty"`
	// Storage fee (host/memory.go): the node time (ns since the epoch) up to
	// which the canister's memory has been paid for, and the fraction of a
	// cycle owed beyond what was charged, in 1/(GiB × 10^9) cycles. They
	// change together with Balance, in the same commit.
	StoragePaidUntil    uint64 `json:"storage_paid_until,omitempty"`
	StorageFeeRemainder uint64 `json:"storage_fee_remainder,omitempty"`
	// LowMemoryHook is the state of canister_on_low_wasm_memory
	// (host/lowmem.go): 0 condition not satisfied, 1 ready, 2 executed.
	LowMemoryHook uint8 `json:"low_wasm_memory_hook,omitempty"`
	// QueryStats are folded in from memory with the canister's commits and
	// when the node closes (host/query.go).
	QueryStats QueryStats `json:"query_stats"`
	// LogNextSeq is at most the sequence number of the canister's next log
	// entry; it keeps the numbering going when the log was cleared.
	LogNextSeq uint64 `json:"log_next_seq,omitempty"`
	// WasmChunks is the number of chunks in the canister's Wasm chunk
	// store (chunks.go); it changes in the same commit as the chunks.
	WasmChunks uint64 `json:"wasm_chunks,omitempty"`
}

// Store is an open store. It is safe for concurrent use.
type Store struct {
	db       *bolt.DB
	gc       committer                                     // group.go
	onCommit func(d time.Duration, bytes int64, err error) // observe.go
	onSync   func(SyncInfo)                                // observe.go
	closing  sync.Once
	closeErr error
	// wmu is held by every write transaction (group.go writeTx); failed
	// is the error that left the store's state unknown, if any, and
	// failedCh is closed when it is set.
	wmu      sync.Mutex
	failed   error
	failedCh chan struct{}
	room     *room // the disk margin (room.go)
}

// DefaultHome returns $CORDON_HOME, else ~/.local/share/cordon.
func DefaultHome() (string, error) {
	if h := os.Getenv("CORDON_HOME"); h != "" {
		return h, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find home directory (set CORDON_HOME or --home): %w", err)
	}
	return filepath.Join(home, ".local", "share", "cordon"), nil
}

// ErrLocked is returned by Open when another process holds the store.
var ErrLocked = errors.New("locked by another process")

// Open opens or creates the store in dir. timeout bounds the wait for the
// file lock held by another process (a running `cordon serve`).
func Open(dir string, timeout time.Duration) (*Store, error) {
	if err := homedir.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create store directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, "cordon.db")
	db, err := bolt.Open(path, 0o600, boltOptions(timeout))
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// bbolt syncs the file it creates, not its name in dir: without this
	// a power loss could take the whole store with it, commits included.
	// Synced at every open, not only the first: an open that made the
	// file and crashed before this left the name unsynced.
	if err := homedir.SyncDir(dir); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	upgrade2 := false
	err = db.Update(func(tx *bolt.Tx) error {
		// What a crash left staged was never committed (stage.go).
		if st := tx.Bucket(bucketStaging); st != nil {
			if k, _ := st.Cursor().First(); k != nil {
				if err := tx.DeleteBucket(bucketStaging); err != nil {
					return err
				}
			}
		}
		for _, b := range [][]byte{bucketModules, bucketCanisters, bucketNode, bucketIngress, bucketStaging, bucketDeleted} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		node := tx.Bucket(bucketNode)
		switch f := node.Get(keyFormat); {
		case f == nil, string(f) == formatVersion1:
			return node.Put(keyFormat, []byte(formatVersion))
		case string(f) == formatVersion2:
			upgrade2 = true
			return node.Put(keyFormat, []byte(formatUpgrading2))
		case string(f) == formatUpgrading2:
			upgrade2 = true // a crash interrupted the upgrade
		case string(f) != formatVersion:
			return fmt.Errorf("store format %q is not %q", f, formatVersion)
		}
		return nil
	})
	if err == nil && upgrade2 {
		err = upgradeRuns(db)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialize store %s: %w", path, err)
	}
	s := &Store{db: db, failedCh: make(chan struct{}), room: newRoom(dir)}
	s.startCommitter()
	return s, nil
}

// initialMmap is the address space bbolt maps at open. bbolt maps the file
// read-only and must remap it when the data outgrows the mapping, copying
// every page the open write transaction has touched out of the old mapping
// first; a transaction that writes a large memory (install, upgrade) would
// do that at every doubling. Address space is free on 64-bit systems (etcd
// maps 10 GiB); the file itself still grows only as needed, in 16 MiB steps
// (sparse until written).
const initialMmap = 4 << 30

// boltOptions are the store's bbolt options. The free-page list is kept in
// memory only (rebuilt by scanning the tree at open, which costs much less
// than loading the canisters): otherwise bbolt writes the whole list in
// every transaction, so that after a large canister is deleted every small
// commit would pay for its freed pages. The hashmap list allocates runs of
// pages in constant time.
func boltOptions(timeout time.Duration) *bolt.Options {
	return &bolt.Options{
		Timeout:         timeout,
		InitialMmapSize: initialMmap,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
	}
}

// Close waits for the commits already submitted, then closes the store.
// Commit fails with ErrClosed after it.
func (s *Store) Close() error {
	s.closing.Do(func() {
		s.stopCommitter()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

// Path returns the store's file.
func (s *Store) Path() string { return s.db.Path() }

// NextCanisterIndex allocates the next canister number.
func (s *Store) NextCanisterIndex() (uint64, error) {
	var n uint64
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNode)
		if v := b.Get(keyNextID); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		return b.Put(keyNextID, binary.BigEndian.AppendUint64(nil, n+1))
	})
	return n, err
}

// Canister is a canister's full committed state as loaded from the store.
type Canister struct {
	Meta    Meta
	Heap    *state.PageMap
	Stable  *state.PageMap
	Globals []state.Global
}

// Release releases the canister's memories (backed page maps).
func (c *Canister) Release() {
	c.Heap.Release()
	c.Stable.Release()
}

// MemoryChange is how a commit changes one memory: a delta against the
// committed pages, or a replacement of the whole memory.
type MemoryChange struct {
	Replace bool // drop all stored pages first (install, reinstall, upgrade)
	Delta   state.Delta

	staged []byte // the pages are in this staging bucket (stage.go)
}

// Change is one atomic commit to a canister.
type Change struct {
	ID         []byte
	Meta       Meta
	Heap       *MemoryChange // nil: unchanged
	Stable     *MemoryChange
	Globals    []state.Global // nil: unchanged
	SetGlobals bool
	Module     []byte // stored under its hash when non-nil
	// Delete removes the canister entirely, leaving its tombstone: the
	// cycles it minted, burned and held, its records in flight
	// (deleted.go).
	Delete bool
	// Create makes the canister: the commit fails with ErrExists if it
	// exists already (two creations of one id cannot both succeed).
	Create   bool
	Logs     []LogEntry // debug_print lines to append
	KeepLogs int        // log entries kept per canister (oldest dropped; ≤ 0: no bound)
	// KeepLogBytes bounds the log's LogEntry.Size sum too (≤ 0: no bound):
	// a longer entry is cut (ClipLog), the oldest are dropped (KeptLogs).
	KeepLogBytes int
	ClearLogs    bool // drop the stored log entries before appending Logs
	// The Wasm chunk store (chunks.go): ClearChunks empties it, then
	// Chunks are added, each under its SHA-256.
	ClearChunks bool
	Chunks      [][]byte
	// Ingress are ingress statuses committed with this change (ingress.go).
	// A Change with only these and no ID writes only these.
	Ingress []IngressRecord
	// IngressIsData has the disk margin count Ingress as canister data
	// (room.go): an execution's reply, whose size the canister chooses,
	// stored with its status.
	IngressIsData bool
	// Cycles in flight (inflight.go). Sent records the cycles the calls
	// this canister's execution made carry, each under its call; Left sets
	// what remains in flight of calls (of any canister) whose cycles this
	// change delivers: accepted, deposited, spent on a creation, refunded.
	// Zero removes the record; an absent one stays absent.
	Sent []CallCycles
	Left []CallCycles
	// Dropped are calls of deleted canisters whose responses found
	// nobody: what is left of their records in flight is burned
	// (deleted.go). A Change with only these and no ID writes only these.
	Dropped []CallCycles
}

// nodeOnly reports whether c changes no canister: only ingress statuses
// and dropped responses.
func (c *Change) nodeOnly() bool {
	return c.ID == nil && (len(c.Ingress) > 0 || len(c.Dropped) > 0) && c.Heap == nil && c.Stable == nil && !c.SetGlobals &&
		c.Module == nil && !c.Delete && len(c.Logs) == 0 && !c.ClearLogs &&
		!c.ClearChunks && len(c.Chunks) == 0 && len(c.Sent) == 0 && len(c.Left) == 0
}

// Commit applies changes atomically and durably: after it returns, a crash
// cannot lose them; if it fails, none of them happened. Concurrent calls
// share one transaction and one sync (group.go), each still succeeding or
// failing on its own. The caller must not modify the changes (or the pages
// they point to) until Commit returns.
//
// A large replaced memory is written ahead in bounded transactions and
// moved into place by the commit (stage.go).
//
// Changes that write canister data are refused before anything is
// written, with ErrNoRoom, when they would leave less free space than the
// disk margin on the store's file system (room.go, SetDiskMargin).
func (s *Store) Commit(changes ...Change) error {
	start := time.Now()
	if need := roomNeeded(changes); need > 0 {
		if err := s.room.check(need, true); err != nil {
			err = fmt.Errorf("commit: %w", err)
			s.observeCommit(start, changes, err)
			return err
		}
		defer s.room.end(need)
	}
	submitted, staged, err := s.stage(changes)
	if err == nil {
		if err = s.submit(submitted); err != nil {
			s.dropStaged(staged)
		}
	}
	s.observeCommit(start, changes, err) // observe.go
	return err
}

func commitOne(tx *bolt.Tx, c *Change) error {
	if err := putIngress(tx, c.Ingress); err != nil {
		return fmt.Errorf("ingress statuses: %w", err)
	}
	if err := burnDropped(tx, c.Dropped); err != nil {
		return fmt.Errorf("dropped responses: %w", err)
	}
	if c.nodeOnly() {
		return nil
	}
	all := tx.Bucket(bucketCanisters)
	if c.Delete {
		return retire(tx, c.ID)
	}
	if c.Create && all.Bucket(c.ID) != nil {
		return fmt.Errorf("canister %x: %w", c.ID, ErrExists)
	}
	if c.Create && isDeleted(tx, c.ID) {
		return fmt.Errorf("canister %x: %w", c.ID, ErrDeleted)
	}
	cb, err := all.CreateBucketIfNotExists(c.ID)
	if err != nil {
		return err
	}
	if c.Module != nil {
		if err := putModule(tx, c.Module); err != nil {
			return err
		}
	}
	meta, err := json.Marshal(&c.Meta)
	if err != nil {
		return err
	}
	if err := cb.Put(keyMeta, meta); err != nil {
		return err
	}
	if c.SetGlobals {
		if err := cb.Put(keyGlobals, encodeGlobals(c.Globals)); err != nil {
			return err
		}
	}
	if err := putMemory(tx, cb, keyHeap, c.Heap); err != nil {
		return fmt.Errorf("heap: %w", err)
	}
	if err := putMemory(tx, cb, keyStable, c.Stable); err != nil {
		return fmt.Errorf("stable memory: %w", err)
	}
	if c.ClearLogs && cb.Bucket(keyLogs) != nil {
		if err := cb.DeleteBucket(keyLogs); err != nil {
			return fmt.Errorf("logs: %w", err)
		}
	}
	if err := appendLogs(cb, c.Logs, c.KeepLogs, c.KeepLogBytes); err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	if err := putChunks(cb, c.ClearChunks, c.Chunks); err != nil {
		return fmt.Errorf("wasm chunk store: %w", err)
	}
	if err := putLeft(tx, c.Left); err != nil {
		return fmt.Errorf("cycles delivered: %w", err)
	}
	if err := putSent(cb, c.ID, c.Sent); err != nil {
		return fmt.Errorf("cycles sent: %w", err)
	}
	return nil
}

func putMemory(tx *bolt.Tx, cb *bolt.Bucket, name []byte, mc *MemoryChange) error {
	if mc == nil {
		return nil
	}
	if mc.staged != nil {
		return putStaged(tx, cb, name, mc.staged)
	}
	if mc.Replace && cb.Bucket(name) != nil {
		if err := cb.DeleteBucket(name); err != nil {
			return err
		}
	}
	fresh := cb.Bucket(name) == nil
	b, err := cb.CreateBucketIfNotExists(name)
	if err != nil {
		return err
	}
	b.FillPercent = 0.9 // keys are appended in order mostly
	return putPages(b, mc.Delta.Pages, fresh)
}

func putModule(tx *bolt.Tx, wasm []byte) error {
	h := moduleKey(wasm)
	b := tx.Bucket(bucketModules)
	if b.Get(h) != nil {
		return nil
	}
	return b.Put(h, wasm)
}

// Module returns a stored module by its SHA-256 (hex).
func (s *Store) Module(hashHex string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketModules).Get([]byte(hashHex))
		if v == nil {
			return fmt.Errorf("module %s: %w", hashHex, ErrNotFound)
		}
		out = bytes.Clone(v)
		return nil
	})
	return out, err
}

// HasCanister reports whether a canister is stored, without reading it.
func (s *Store) HasCanister(id []byte) (bool, error) {
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketCanisters).Bucket(id) != nil
		return nil
	})
	return ok, err
}

// HasModule reports whether a module is stored, by its SHA-256 (hex),
// without reading it.
func (s *Store) HasModule(hashHex string) (bool, error) {
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketModules).Get([]byte(hashHex)) != nil
		return nil
	})
	return ok, err
}

// ModuleSizes returns the size of every stored module by its key (hex
// SHA-256), without reading the modules.
func (s *Store) ModuleSizes() (map[string]uint64, error) {
	sizes := map[string]uint64{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketModules).ForEach(func(k, v []byte) error {
			sizes[string(k)] = uint64(len(v))
			return nil
		})
	})
	return sizes, err
}

// ModuleKeys returns the keys (hex SHA-256) of every stored module.
func (s *Store) ModuleKeys() (map[string]bool, error) {
	keys := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketModules).ForEach(func(k, _ []byte) error {
			keys[string(k)] = true
			return nil
		})
	})
	return keys, err
}

// ReleaseModules deletes those of the given modules (by hash) that no
// canister references: the modules a code change or a deletion replaced.
// It reads every canister's metadata only when one of them is stored, so a
// first install, which replaces nothing, costs nothing here: with thousands
// of canisters a scan per install made installing them quadratic.
func (s *Store) ReleaseModules(hashes ...string) error {
	var stored [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		mods := tx.Bucket(bucketModules)
		for _, h := range hashes {
			if h != "" && mods.Get([]byte(h)) != nil {
				stored = append(stored, []byte(h))
			}
		}
		return nil
	})
	if err != nil || len(stored) == 0 {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		used, err := usedModules(tx)
		if err != nil {
			return err
		}
		mods := tx.Bucket(bucketModules)
		for _, h := range stored {
			if !used[string(h)] {
				if err := mods.Delete(h); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// usedModules returns the module hashes the canisters reference.
func usedModules(tx *bolt.Tx) (map[string]bool, error) {
	used := map[string]bool{}
	err := tx.Bucket(bucketCanisters).ForEachBucket(func(k []byte) error {
		var m struct {
			ModuleHash string `json:"module_hash"`
		}
		if err := json.Unmarshal(tx.Bucket(bucketCanisters).Bucket(k).Get(keyMeta), &m); err != nil {
			return err
		}
		used[m.ModuleHash] = true
		return nil
	})
	return used, err
}

// GCModules deletes every module no canister references (at open: what a
// crash between a code change and its ReleaseModules left).
func (s *Store) GCModules() error {
	return s.update(func(tx *bolt.Tx) error {
		used, err := usedModules(tx)
		if err != nil {
			return err
		}
		mods := tx.Bucket(bucketModules)
		var drop [][]byte
		_ = mods.ForEach(func(k, _ []byte) error {
			if !used[string(k)] {
				drop = append(drop, bytes.Clone(k))
			}
			return nil
		})
		for _, k := range drop {
			if err := mods.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// CanisterIDs lists the stored canisters (raw principal bytes).
func (s *Store) CanisterIDs() ([][]byte, error) {
	var ids [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCanisters).ForEachBucket(func(k []byte) error {
			ids = append(ids, bytes.Clone(k))
			return nil
		})
	})
	return ids, err
}

// Metas calls fn with every stored canister's id and metadata, without
// reading its memories.
func (s *Store) Metas(fn func(id []byte, m Meta) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCanisters).ForEachBucket(func(k []byte) error {
			var m Meta
			if err := json.Unmarshal(tx.Bucket(bucketCanisters).Bucket(k).Get(keyMeta), &m); err != nil {
				return fmt.Errorf("canister %x metadata: %w", k, err)
			}
			return fn(bytes.Clone(k), m)
		})
	})
}

// Load reads a canister's committed state. Its memories are backed page
// maps (state.NewBackedPageMap): Release them when done.
func (s *Store) Load(id []byte) (*Canister, error) {
	var c Canister
	err := s.db.View(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCanisters).Bucket(id)
		if cb == nil {
			return ErrNotFound
		}
		if err := json.Unmarshal(cb.Get(keyMeta), &c.Meta); err != nil {
			return fmt.Errorf("metadata: %w", err)
		}
		var err error
		if c.Globals, err = decodeGlobals(cb.Get(keyGlobals)); err != nil {
			return fmt.Errorf("globals: %w", err)
		}
		if c.Heap, err = loadMemory(cb.Bucket(keyHeap), c.Meta.HeapSize); err != nil {
			return fmt.Errorf("heap: %w", err)
		}
		if c.Stable, err = loadMemory(cb.Bucket(keyStable), c.Meta.StableSize); err != nil {
			c.Heap.Release()
			return fmt.Errorf("stable memory: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The pages were copied out of bbolt's mapping: a large canister's
	// should not stay resident a second time (mapped.go).
	if loaded := (c.Heap.NumStored() + c.Stable.NumStored()) * state.PageSize; loaded >= returnAfterBytes {
		_ = s.releaseMapped()
	}
	return &c, nil
}

// loadBatch is how many pages loadMemory hands the page map at a time: the
// buffer it reuses, not a copy of the memory.
const loadBatch = 256

// loadMemory reads a memory into a backed page map (state.NewBackedPageMap):
// the pages go straight from bbolt's mapping into the memory's image, a
// batch at a time through one reused buffer, so the loaded memory exists
// once on the host.
func loadMemory(b *bolt.Bucket, size uint64) (*state.PageMap, error) {
	m := state.NewBackedPageMap(size)
	if b == nil {
		return m, nil
	}
	buf := make([]state.Page, loadBatch)
	d := state.Delta{Size: size, Pages: make([]state.DirtyPage, 0, loadBatch)}
	flush := func() error {
		err := m.Load(d)
		d.Pages = d.Pages[:0]
		return err
	}
	err := storedChunks(b, m.NumPages(), func(base uint64, pages *[runPages][]byte) error {
		if len(d.Pages)+runPages > loadBatch {
			if err := flush(); err != nil {
				return err
			}
		}
		for i, v := range pages {
			if v == nil {
				continue
			}
			p := &buf[len(d.Pages)]
			copy(p[:], v)
			d.Pages = append(d.Pages, state.DirtyPage{Index: base + uint64(i), Data: p})
		}
		return nil
	})
	if err == nil && len(d.Pages) > 0 {
		err = flush()
	}
	if err != nil {
		m.Release()
		return nil, err
	}
	return m, nil
}

func encodeGlobals(gs []state.Global) []byte {
	out := make([]byte, 0, 4+9*len(gs))
	out = binary.BigEndian.AppendUint32(out, uint32(len(gs)))
	for _, g := range gs {
		out = append(out, byte(g.Type))
		out = binary.BigEndian.AppendUint64(out, g.Bits)
	}
	return out
}

func decodeGlobals(b []byte) ([]state.Global, error) {
	if b == nil {
		return nil, nil
	}
	if len(b) < 4 {
		return nil, errors.New("truncated")
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(len(b)-4) != uint64(n)*9 {
		return nil, fmt.Errorf("%d globals in %d bytes", n, len(b))
	}
	gs := make([]state.Global, n)
	for i := range gs {
		off := 4 + 9*i
		gs[i] = state.Global{Type: state.GlobalType(b[off]), Bits: binary.BigEndian.Uint64(b[off+1:])}
	}
	return gs, nil
}

// ModuleKey returns the key (hex SHA-256) a module is stored under.
func ModuleKey(wasm []byte) string { return string(moduleKey(wasm)) }
