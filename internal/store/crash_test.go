package store

// Durability: a store process killed (SIGKILL) at seeded points of a
// stream of group commits, staged replacements and cycles in flight; a
// store-2 upgrade killed part way; commits, staging and the upgrade on a
// full file system. After each, the store opens, every canister holds the
// state after a prefix of its commits that includes every acknowledged
// one, multi-canister commits are atomic, the cycles count holds, nothing
// stays staged.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/state"
)

// The stream's canisters and workers. Worker w < 4 commits to canister
// w+1 alone, worker 4 to canisters 5 and 6 in one Commit, worker 5 to
// canister 7, whose odd steps replace its heap with more pages than one
// staging transaction holds (stage.go).
const (
	durWorkers       = 6
	durPair          = 4
	durBig           = 5
	smallHeapPages   = 64 * runPages
	smallStablePages = 16 * runPages
	bigHeapPages     = 640 * runPages
	bigReplacePages  = stageBatchBytes/state.PageSize + 808 // two staging transactions
	durMinted        = 1_000_000_000_000
	durSent          = 10 // cycles every step sends, in flight until the next step
)

func durIDs(w int) []byte {
	switch w {
	case durPair:
		return []byte{5, 6}
	case durBig:
		return []byte{7}
	}
	return []byte{byte(w + 1)}
}

// durPage is a page of 8-byte words v.
func durPage(v uint64) *state.Page {
	p := new(state.Page)
	for off := 0; off < state.PageSize; off += 8 {
		binary.LittleEndian.PutUint64(p[off:], v)
	}
	return p
}

// durDelta is a random change of a memory of numPages pages: scattered
// pages (some zero), whole chunks (runs), pages written into a few chunks
// over and over (singles over runs, folds); or a replacement.
func durDelta(rng *rand.Rand, numPages uint64, replace bool) *MemoryChange {
	set := map[uint64]*state.Page{}
	n := 1 + rng.IntN(40)
	if replace {
		n = rng.IntN(200)
	}
	page := func() *state.Page {
		if rng.IntN(8) == 0 {
			return state.ZeroPage()
		}
		return durPage(rng.Uint64() | 1)
	}
	mode := rng.IntN(3)
	if mode == 2 {
		n = min(n, 4*runPages) // the pages of four chunks
	}
	for len(set) < n {
		switch mode {
		case 0:
			set[rng.Uint64N(numPages)] = page()
		case 1:
			c := rng.Uint64N(numPages / runPages)
			for k := range uint64(runPages) {
				set[c*runPages+k] = durPage(rng.Uint64() | 1)
			}
		default:
			set[rng.Uint64N(4)*runPages+rng.Uint64N(runPages)] = page()
		}
	}
	idx := slices.Sorted(func(yield func(uint64) bool) {
		for i := range set {
			if !yield(i) {
				return
			}
		}
	})
	d := state.Delta{Size: numPages * state.PageSize}
	for _, i := range idx {
		d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: set[i]})
	}
	return &MemoryChange{Replace: replace, Delta: d}
}

// durNext is the metadata of canister id's next step (version) after
// prev: one cycle burned; the durSent cycles the previous step sent
// come back and as many leave with this step's call.
func durNext(prev Meta, id byte, version uint64, heapPages, stablePages uint64) (Meta, []CallCycles, []CallCycles) {
	m := prev
	if m.CyclesMinted.IsZero() {
		m.CyclesMinted, m.Balance = cycles.New(durMinted), cycles.New(durMinted)
	}
	m.ID, m.Status = fmt.Sprintf("audit-%d", id), "running"
	m.HeapSize, m.StableSize = heapPages*state.PageSize, stablePages*state.PageSize
	m.Version = version
	m.Balance = m.Balance.SaturatingSub(cycles.New(1))
	m.CyclesBurned = m.CyclesBurned.SaturatingAdd(cycles.New(1))
	var left []CallCycles
	if prev.Version != 0 {
		left = []CallCycles{{Caller: []byte{id}, Call: prev.Version}}
		m.Balance = m.Balance.SaturatingAdd(cycles.New(durSent))
	}
	m.Balance = m.Balance.SaturatingSub(cycles.New(durSent))
	return m, []CallCycles{{Caller: []byte{id}, Call: version, Amount: cycles.New(durSent)}}, left
}

// durStep is step j (from 1) of worker w in round r: its changes, from
// the metadata of its canisters before it (metas, by id), which it sets
// to what the changes commit.
func durStep(seed uint64, round, w, j int, metas map[byte]Meta) []Change {
	rng := rand.New(rand.NewPCG(seed, uint64(round)<<40|uint64(w)<<32|uint64(j)))
	version := uint64(round+1)*1_000_000 + uint64(j)
	var out []Change
	for _, id := range durIDs(w) {
		heapPages, stablePages := uint64(smallHeapPages), uint64(smallStablePages)
		if w == durBig {
			heapPages, stablePages = bigHeapPages, 0
		}
		meta, sent, left := durNext(metas[id], id, version, heapPages, stablePages)
		metas[id] = meta
		c := Change{ID: []byte{id}, Meta: meta, Sent: sent, Left: left,
			Globals: []state.Global{{Type: state.GlobalI64, Bits: version}}, SetGlobals: true,
			Logs:     []LogEntry{{Seq: version, Time: time.Unix(1_700_000_000, 0), Text: fmt.Sprintf("step %d", version)}},
			KeepLogs: 3}
		switch {
		case w == durBig && j%2 == 1:
			d := state.Delta{Size: heapPages * state.PageSize}
			for i := range uint64(bigReplacePages) {
				d.Pages = append(d.Pages, state.DirtyPage{Index: i, Data: durPage(uint64(round+1)<<56 | uint64(j)<<32 | i)})
			}
			c.Heap = &MemoryChange{Replace: true, Delta: d}
		case w == durBig:
			c.Heap = durDelta(rng, heapPages, false)
		default:
			c.Heap = durDelta(rng, heapPages, rng.IntN(10) == 0)
			if rng.IntN(3) == 0 {
				c.Stable = durDelta(rng, stablePages, false)
			}
		}
		out = append(out, c)
	}
	return out
}

// durModel is what the parent knows of a canister: its committed state.
type durModel struct {
	meta    Meta
	heap    memModel
	stable  memModel
	globals []state.Global
	lastLog uint64
}

func (m *memModel) apply(mc *MemoryChange) {
	if mc == nil {
		return
	}
	if mc.Replace || m.pages == nil {
		m.pages = map[uint64]*state.Page{}
	}
	m.size = mc.Delta.Size
	for _, p := range mc.Delta.Pages {
		if *p.Data == *state.ZeroPage() {
			delete(m.pages, p.Index)
		} else {
			m.pages[p.Index] = p.Data
		}
	}
}

func (m durModel) clone() durModel {
	c := m
	c.heap.pages, c.stable.pages = map[uint64]*state.Page{}, map[uint64]*state.Page{}
	for i, p := range m.heap.pages {
		c.heap.pages[i] = p
	}
	for i, p := range m.stable.pages {
		c.stable.pages[i] = p
	}
	return c
}

// durChild is the process that dies: it commits the stream of its round
// until its watcher kills it, saying "ACK w j" after each step's Commit
// returned.
func durChild(t *testing.T) {
	dir := os.Getenv("CORDON_AUDIT_DIR")
	num := func(name string) int {
		v, err := strconv.Atoi(os.Getenv(name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return v
	}
	seed, round := uint64(num("CORDON_CRASH_SEED")), num("CORDON_AUDIT_ROUND")
	s, err := Open(dir, time.Second)
	if err != nil {
		fmt.Println("OPEN FAILED", err)
		os.Exit(3)
	}
	metas := map[byte]Meta{}
	if err := s.Metas(func(id []byte, m Meta) error { metas[id[0]] = m; return nil }); err != nil {
		t.Fatal(err)
	}
	faultinject.KillAfterTx(s.Path(), num("CORDON_AUDIT_KILL_TX"), num("CORDON_AUDIT_SPIN"))
	var out sync.Mutex
	for w := range durWorkers {
		mine := map[byte]Meta{}
		for _, id := range durIDs(w) {
			mine[id] = metas[id]
		}
		go func() {
			for j := 1; ; j++ {
				next := map[byte]Meta{}
				for k, v := range mine {
					next[k] = v
				}
				if err := s.Commit(durStep(seed, round, w, j, next)...); err != nil {
					fmt.Println("COMMIT FAILED", err)
					os.Exit(3)
				}
				mine = next
				out.Lock()
				fmt.Printf("ACK %d %d\n", w, j)
				out.Unlock()
			}
		}()
	}
	time.Sleep(2 * time.Minute) // the watcher kills it long before
	fmt.Println("NOT KILLED")
	os.Exit(4)
}

// runAuditChild runs the child of test name with env and returns the
// steps each worker had acknowledged when it died (it must die of SIGKILL).
func runAuditChild(t *testing.T, name string, env ...string) map[int]int {
	t.Helper()
	acked := map[int]int{}
	faultinject.RunUntilKilled(t, faultinject.Child(name, env...), 0, func(line string) bool {
		var w, j int
		if _, err := fmt.Sscanf(line, "ACK %d %d", &w, &j); err != nil {
			return false
		}
		if j != acked[w]+1 {
			t.Errorf("worker %d acknowledged step %d after %d", w, j, acked[w])
		}
		acked[w] = j
		return true
	})
	return acked
}

// rawStaged counts the staging buckets a crash left and reads the format,
// with bbolt alone, before Open cleans up.
func rawStaged(t *testing.T, dir string) (staged int, format string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "cordon.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("bbolt cannot open the file the crash left: %v", err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		if st := tx.Bucket(bucketStaging); st != nil {
			_ = st.ForEachBucket(func([]byte) error { staged++; return nil })
		}
		if n := tx.Bucket(bucketNode); n != nil {
			format = string(n.Get(keyFormat))
		}
		return nil
	})
	return staged, format
}

// A store process killed at seeded points (any transaction, including the
// staging of a large replacement and the commits of groups) loses no
// acknowledged commit, applies every commit whole (the pair's two
// canisters together) or not at all, leaves nothing staged after Open,
// keeps the cycles count, and does not grow with the crashes.
func TestCrashDuringCommitStream(t *testing.T) {
	if os.Getenv("CORDON_AUDIT_CHILD") == "stream" {
		durChild(t)
		return
	}
	seed := faultinject.CrashSeed(t)
	t.Logf("seed %d (CORDON_CRASH_SEED=%d to repeat)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	dir := t.TempDir()
	models := map[byte]durModel{}
	const rounds = 6
	var sizes []int64
	stagedCrashes := 0
	for round := range rounds {
		killTx, spin := 1+rng.IntN(40), rng.IntN(300)
		acked := runAuditChild(t, "TestCrashDuringCommitStream", "CORDON_AUDIT_CHILD=stream", "CORDON_AUDIT_DIR="+dir,
			fmt.Sprintf("CORDON_CRASH_SEED=%d", seed), fmt.Sprintf("CORDON_AUDIT_ROUND=%d", round),
			fmt.Sprintf("CORDON_AUDIT_KILL_TX=%d", killTx), fmt.Sprintf("CORDON_AUDIT_SPIN=%d", spin))
		staged, _ := rawStaged(t, dir)
		if staged > 0 {
			stagedCrashes++
		}
		s := openTest(t, dir)
		if !stagingEmpty(t, s) {
			t.Fatalf("round %d: Open left staged pages", round)
		}
		for w := range durWorkers {
			checkAuditWorker(t, s, seed, round, w, acked[w], models)
		}
		if _, err := conservedTotals(s); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		sizes = append(sizes, s.highWater())
		t.Logf("round %d: killed after %d transactions (+%d reads): acknowledged %v; %d staging buckets left; high water %d MiB",
			round, killTx, spin, acked, staged, s.highWater()>>20)
		s.Close()
	}
	t.Logf("%d of %d crashes left staged pages", stagedCrashes, rounds)
	// The big canister's memory twice (the old one and the one staged)
	// and a crash's staging: more means what crashes staged stays.
	if limit := int64(4*bigHeapPages*state.PageSize + 64<<20); sizes[len(sizes)-1] > limit {
		t.Fatalf("the store's data grew to %d bytes over %d crashes (%v), limit %d", sizes[len(sizes)-1], rounds, sizes, limit)
	}
}

// checkAuditWorker checks the canisters of worker w after the crash of
// round: at the step it acknowledged last or the one after, all of them
// at the same one, each exactly as the model replayed to that step; and
// moves the models there.
func checkAuditWorker(t *testing.T, s *Store, seed uint64, round, w, acked int, models map[byte]durModel) {
	t.Helper()
	ids := durIDs(w)
	stored := map[byte]*Canister{}
	for _, id := range ids {
		c, err := s.Load([]byte{id})
		// Not yet stored: no earlier round committed it (the big
		// canister's first step spans several transactions, and a kill
		// that comes early enough in every round so far leaves it unborn).
		if errors.Is(err, ErrNotFound) && acked == 0 && models[id].meta.Version == 0 {
			continue
		}
		if err != nil {
			t.Fatalf("round %d: canister %d: %v", round, id, err)
		}
		defer c.Release()
		stored[id] = c
	}
	if len(stored) != 0 && len(stored) != len(ids) {
		t.Fatalf("round %d: %d of the %d canisters of one commit stored", round, len(stored), len(ids))
	}
	base := uint64(round+1) * 1_000_000
	j := 0
	for _, id := range ids {
		c := stored[id]
		if c == nil {
			break
		}
		v := 0
		if c.Meta.Version > base {
			v = int(c.Meta.Version - base)
		}
		if id != ids[0] && v != j {
			t.Fatalf("round %d: one commit's canisters at steps %d and %d", round, j, v)
		}
		j = v
	}
	if j < acked || j > acked+1 {
		t.Fatalf("round %d: worker %d's canisters are at step %d, %d acknowledged", round, w, j, acked)
	}
	metas := map[byte]Meta{}
	next := map[byte]durModel{}
	for _, id := range ids {
		metas[id] = models[id].meta
		next[id] = models[id].clone()
	}
	first := 1
	if w == durBig && j > 0 {
		// From its last replacement (odd steps): what was before it does
		// not matter but for the metadata.
		first = j - (1 - j%2)
		for k := 1; k < first; k++ {
			version := base + uint64(k)
			for _, id := range ids {
				metas[id], _, _ = durNext(metas[id], id, version, bigHeapPages, 0)
			}
		}
	}
	for k := first; k <= j; k++ {
		for _, c := range durStep(seed, round, w, k, metas) {
			m := next[c.ID[0]]
			m.meta = c.Meta
			m.heap.apply(c.Heap)
			m.stable.apply(c.Stable)
			m.heap.size, m.stable.size = c.Meta.HeapSize, c.Meta.StableSize
			m.globals = c.Globals
			m.lastLog = c.Logs[0].Seq
			next[c.ID[0]] = m
		}
	}
	for id, c := range stored {
		want := next[id]
		what := fmt.Sprintf("round %d: canister %d at step %d", round, id, j)
		if c.Meta.Version != want.meta.Version || c.Meta.Balance != want.meta.Balance || c.Meta.CyclesBurned != want.meta.CyclesBurned {
			t.Fatalf("%s: metadata %+v, want %+v", what, c.Meta, want.meta)
		}
		checkMem(t, what+": heap", c.Heap, want.heap)
		checkMem(t, what+": stable memory", c.Stable, want.stable)
		if !slices.Equal(c.Globals, want.globals) {
			t.Fatalf("%s: globals %v, want %v", what, c.Globals, want.globals)
		}
		logs, err := s.Logs([]byte{id})
		if err != nil || len(logs) == 0 || logs[len(logs)-1].Seq != want.lastLog {
			t.Fatalf("%s: logs %+v (%v), want the last %d", what, logs, err, want.lastLog)
		}
	}
	for id, m := range next {
		models[id] = m
	}
}

// conservedTotals checks the store's cycles count: Held() = Minted.
func conservedTotals(s *Store) (CycleTotals, error) {
	tot, err := s.CycleTotals()
	if err != nil {
		return tot, err
	}
	if tot.Held() != tot.Minted {
		return tot, fmt.Errorf("the store holds %s (%+v), minted %s", tot.Held(), tot, tot.Minted)
	}
	return tot, nil
}
