package store

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/state"
)

var storeSeed = flag.Int64("store.seed", 0, "seed of TestStoreMatchesModel (0: from the clock)")

// memModel is a memory as the test knows it: size and non-zero pages.
type memModel struct {
	size  uint64
	pages map[uint64]*state.Page
}

// canisterModel is what the store must hold for one canister.
type canisterModel struct {
	exists  bool
	meta    Meta
	heap    memModel
	stable  memModel
	globals []state.Global
	logs    []LogEntry // kept entries
	nextLog uint64
}

const propKeepLogs = 20

var propModules = [][]byte{[]byte("\x00asm one"), []byte("\x00asm two"), []byte("\x00asm three")}

// randomMemChange makes a change of m (a delta, or a replacement at a new
// size) and returns it with the memory it leaves.
func randomMemChange(rng *rand.Rand, m memModel, replace bool) (*MemoryChange, memModel) {
	next := memModel{size: m.size, pages: map[uint64]*state.Page{}}
	if !replace {
		for i, p := range m.pages {
			next.pages[i] = p
		}
		next.size += uint64(rng.Intn(3)) * state.PageSize
	} else {
		next.size = uint64(rng.Intn(24)) * state.PageSize
	}
	mc := &MemoryChange{Replace: replace, Delta: state.Delta{Size: next.size}}
	n := next.size / state.PageSize
	if n == 0 {
		return mc, next
	}
	for _, i := range rng.Perm(int(n))[:rng.Intn(int(min(n, 10)))+1] {
		p := state.ZeroPage()
		if rng.Intn(4) != 0 {
			p = new(state.Page)
			rng.Read(p[:64])
			p[state.PageSize-1] = byte(i)
			next.pages[uint64(i)] = p
		} else {
			delete(next.pages, uint64(i))
		}
		mc.Delta.Pages = append(mc.Delta.Pages, state.DirtyPage{Index: uint64(i), Data: p})
	}
	sort.Slice(mc.Delta.Pages, func(a, b int) bool { return mc.Delta.Pages[a].Index < mc.Delta.Pages[b].Index })
	return mc, next
}

// randomChange makes one change of canister id from model c, and returns
// it with the model it leaves (c is not modified).
func randomChange(rng *rand.Rand, id byte, c canisterModel) (Change, canisterModel) {
	next := c
	next.logs = append([]LogEntry(nil), c.logs...)
	ch := Change{ID: []byte{id}}
	if c.exists && rng.Intn(25) == 0 {
		ch.Delete = true
		return ch, canisterModel{nextLog: c.nextLog}
	}
	replace := !c.exists || rng.Intn(10) == 0
	next.exists = true
	next.meta.ID = fmt.Sprint(id)
	next.meta.Version++
	next.meta.Messages += uint64(rng.Intn(3))
	next.meta.Balance = cycles.New(uint64(rng.Int63()))
	next.meta.Status = []string{"running", "stopping", "stopped"}[rng.Intn(3)]
	if rng.Intn(3) == 0 {
		next.meta.CertifiedData = []byte(fmt.Sprint(rng.Intn(1000)))
	}
	next.meta.Created = time.Unix(int64(id), 0).UTC()
	if replace {
		mod := propModules[rng.Intn(len(propModules))]
		ch.Module, next.meta.ModuleHash = mod, ModuleKey(mod)
	}
	if replace || rng.Intn(2) == 0 {
		ch.Heap, next.heap = randomMemChange(rng, c.heap, replace)
	}
	if replace || rng.Intn(3) == 0 {
		ch.Stable, next.stable = randomMemChange(rng, c.stable, replace)
	}
	next.meta.HeapSize, next.meta.StableSize = next.heap.size, next.stable.size
	if replace || rng.Intn(2) == 0 {
		ch.SetGlobals = true
		ch.Globals = make([]state.Global, rng.Intn(4))
		for i := range ch.Globals {
			ch.Globals[i] = state.Global{Type: state.GlobalType(rng.Intn(4)), Bits: rng.Uint64()}
		}
		next.globals = ch.Globals
	}
	for range rng.Intn(4) {
		e := LogEntry{Seq: next.nextLog, Time: time.Unix(int64(next.nextLog), 0).UTC(), Text: fmt.Sprintf("line %d", next.nextLog)}
		ch.Logs = append(ch.Logs, e)
		next.logs = append(next.logs, e)
		next.nextLog++
	}
	ch.KeepLogs = propKeepLogs
	if len(next.logs) > propKeepLogs && len(ch.Logs) > 0 {
		next.logs = next.logs[len(next.logs)-propKeepLogs:]
	}
	ch.Meta = next.meta
	return ch, next
}

// Random commits by concurrent committers (so grouped into shared
// transactions, with some requests failing), then a reopen, must leave
// exactly what a model of the same commits holds.
func TestStoreMatchesModel(t *testing.T) {
	seed := *storeSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("seed %d (rerun with -store.seed %d)", seed, seed)
	dir := t.TempDir()
	s := openTest(t, dir)
	defer func() { s.Close() }()
	const committers = 6
	models := make([]canisterModel, committers)
	var total SyncStats
	for phase := range 4 {
		s.db.NoSync = true // what is tested is the content, not the sync
		var wg sync.WaitGroup
		for g := range committers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewSource(seed + int64(phase*committers+g)))
				id := byte(g + 1)
				m := models[g]
				for range 40 {
					// One request: a few changes of this canister, folded in
					// order; sometimes with a change that cannot be stored,
					// which fails the whole request.
					var changes []Change
					next := m
					for range 1 + rng.Intn(3) {
						var ch Change
						ch, next = randomChange(rng, id, next)
						changes = append(changes, ch)
					}
					fail := rng.Intn(8) == 0
					if fail {
						bad, _ := randomChange(rng, id, next)
						bad.ID, bad.Delete = nil, false
						changes = append(changes, bad)
						rng.Shuffle(len(changes), func(i, j int) { changes[i], changes[j] = changes[j], changes[i] })
					}
					err := s.Commit(changes...)
					if fail != (err != nil) {
						t.Errorf("canister %d: request (failing %v): %v", id, fail, err)
						return
					}
					if !fail {
						m = next
					}
				}
				models[g] = m
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		st := s.SyncStats()
		total.Commits += st.Commits
		total.Syncs += st.Syncs
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openTest(t, dir)
		checkStore(t, s, models)
	}
	t.Logf("%d commits in %d syncs", total.Commits, total.Syncs)
}

func checkStore(t *testing.T, s *Store, models []canisterModel) {
	t.Helper()
	ids, err := s.CanisterIDs()
	if err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	for g, m := range models {
		if m.exists {
			want = append(want, []byte{byte(g + 1)})
		}
	}
	if fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("canisters %v, want %v", ids, want)
	}
	for g, m := range models {
		id := []byte{byte(g + 1)}
		c, err := s.Load(id)
		if !m.exists {
			if err != ErrNotFound {
				t.Fatalf("deleted canister %d: %v", id[0], err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		gotMeta, _ := json.Marshal(c.Meta)
		wantMeta, _ := json.Marshal(m.meta)
		if !bytes.Equal(gotMeta, wantMeta) {
			t.Fatalf("canister %d meta\n got %s\nwant %s", id[0], gotMeta, wantMeta)
		}
		checkMem(t, fmt.Sprintf("canister %d heap", id[0]), c.Heap, m.heap)
		checkMem(t, fmt.Sprintf("canister %d stable", id[0]), c.Stable, m.stable)
		if fmt.Sprint(c.Globals) != fmt.Sprint(m.globals) {
			t.Fatalf("canister %d globals %v, want %v", id[0], c.Globals, m.globals)
		}
		logs, err := s.Logs(id)
		if err != nil {
			t.Fatal(err)
		}
		gotLogs, _ := json.Marshal(logs)
		wantLogs, _ := json.Marshal(m.logs)
		if !bytes.Equal(gotLogs, wantLogs) {
			t.Fatalf("canister %d logs\n got %s\nwant %s", id[0], gotLogs, wantLogs)
		}
		if _, err := s.Module(m.meta.ModuleHash); err != nil {
			t.Fatalf("canister %d module: %v", id[0], err)
		}
	}
}

func checkMem(t *testing.T, what string, got *state.PageMap, want memModel) {
	t.Helper()
	if got.Size() != want.size {
		t.Fatalf("%s: size %d, want %d", what, got.Size(), want.size)
	}
	if len(got.StoredPages()) != len(want.pages) {
		t.Fatalf("%s: %d pages stored, want %d", what, len(got.StoredPages()), len(want.pages))
	}
	for i, p := range want.pages {
		if g := got.Page(i); g == nil || *g != *p {
			t.Fatalf("%s: page %d differs", what, i)
		}
	}
}
