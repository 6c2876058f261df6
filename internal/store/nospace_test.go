package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/faultinject"
	"github.com/cordon-dev/cordon/internal/state"
)

// durTmpfs mounts a tmpfs of size bytes on a new directory (root only:
// skipped otherwise) and unmounts it at the end.
func durTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("mount a tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fillDisk writes a ballast file in dir until its file system is full
// but for leave bytes, and returns a function that removes it.
func fillDisk(t *testing.T, dir string, leave int64) (release func()) {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	path := filepath.Join(dir, fmt.Sprintf("ballast-%d", time.Now().UnixNano()))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n := free - leave; n > 0; {
		w := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:w]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			t.Fatal(err)
		}
		n -= w
	}
	return func() {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

// A full file system fails commits, group commits and staged
// replacements; every failed commit leaves the store as it was (for this
// process and after a reopen), every successful one is there, and the
// store works again once there is room.
func TestFullDiskCommits(t *testing.T) {
	dir := durTmpfs(t, 160<<20)
	seed := faultinject.CrashSeed(t)
	t.Logf("seed %d", seed)
	s := openTest(t, dir)
	defer func() { s.Close() }()
	models := map[byte]durModel{}
	var mu sync.Mutex
	// commit commits step j of worker w and moves the models if it
	// succeeded; a failure must leave the store's canisters as they were.
	commit := func(round, w, j int) error {
		mu.Lock()
		metas := map[byte]Meta{}
		for _, id := range durIDs(w) {
			metas[id] = models[id].meta
		}
		mu.Unlock()
		changes := durStep(seed, round, w, j, metas)
		err := s.Commit(changes...)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, c := range changes {
			m := models[c.ID[0]].clone()
			m.meta = c.Meta
			m.heap.apply(c.Heap)
			m.stable.apply(c.Stable)
			m.heap.size, m.stable.size = c.Meta.HeapSize, c.Meta.StableSize
			m.globals = c.Globals
			m.lastLog = c.Logs[0].Seq
			models[c.ID[0]] = m
		}
		return nil
	}
	check := func(what string) {
		t.Helper()
		for id, want := range models {
			c, err := s.Load([]byte{id})
			if err != nil {
				t.Fatalf("%s: canister %d: %v", what, id, err)
			}
			if c.Meta.Version != want.meta.Version || c.Meta.Balance != want.meta.Balance {
				t.Fatalf("%s: canister %d at version %d, balance %s; want %d, %s", what, id, c.Meta.Version, c.Meta.Balance, want.meta.Version, want.meta.Balance)
			}
			checkMem(t, fmt.Sprintf("%s: canister %d heap", what, id), c.Heap, want.heap)
			checkMem(t, fmt.Sprintf("%s: canister %d stable memory", what, id), c.Stable, want.stable)
			c.Release()
		}
		if _, err := conservedTotals(s); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// Room for everything first.
	for w := range durWorkers {
		for j := 1; j <= 2; j++ {
			if err := commit(0, w, j); err != nil {
				t.Fatal(err)
			}
		}
	}
	check("before the disk is full")
	release := fillDisk(t, dir, 0)
	// One at a time: the staged replacement cannot be written.
	var failed, ok int
	for j := 3; j <= 5; j++ {
		for w := range durWorkers {
			if err := commit(1, w, j); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("worker %d step %d on a full disk: %v, want ENOSPC", w, j, err)
				}
				failed++
			} else {
				ok++
			}
			check(fmt.Sprintf("after worker %d step %d on a full disk", w, j))
		}
	}
	// Concurrently: groups fail or succeed together, each request alone.
	var wg sync.WaitGroup
	for w := range durWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 6; j <= 12; j++ {
				if err := commit(2, w, j); err != nil && !errors.Is(err, syscall.ENOSPC) {
					t.Errorf("worker %d step %d on a full disk: %v, want ENOSPC", w, j, err)
				}
			}
		}()
	}
	wg.Wait()
	check("after concurrent commits on a full disk")
	t.Logf("on the full disk: %d commits failed, %d succeeded", failed, ok)
	if failed == 0 {
		t.Fatal("no commit failed on the full disk")
	}
	staged := !stagingEmpty(t, s)
	release()
	for w := range durWorkers {
		if err := commit(3, w, 1); err != nil {
			t.Fatalf("worker %d once there is room: %v", w, err)
		}
	}
	check("once there is room")
	if !stagingEmpty(t, s) {
		t.Errorf("pages staged by a commit that failed on the full disk are still staged after later commits succeeded (staged while full: %v)", staged)
	}
	s.Close()
	s = openTest(t, dir)
	check("after a reopen")
	if !stagingEmpty(t, s) {
		t.Fatal("staged pages after a reopen")
	}
}

// store2Runs is a cordon-store-2 store's heaps with many runs: canister
// c's 48 chunks are runs but every third, which holds single pages.
func store2Runs(canisters int) ([]map[uint64][]byte, []uint64) {
	var heaps []map[uint64][]byte
	var sizes []uint64
	for c := range canisters {
		heap := map[uint64][]byte{}
		const chunks = 48
		for k := range uint64(chunks) {
			base := k * runPages
			if (k+uint64(c))%3 == 2 {
				for i := base; i < base+runPages; i += 3 {
					heap[i] = durPage(uint64(c)<<32 | i | 1)[:]
				}
				continue
			}
			run := make([]byte, 0, runBytes)
			for i := range uint64(runPages) {
				run = append(run, durPage(uint64(c)<<32 | (base + i) | 1<<40)[:]...)
			}
			heap[base] = run
		}
		heaps = append(heaps, heap)
		sizes = append(sizes, chunks*runPages*state.PageSize)
	}
	return heaps, sizes
}

// upgradeChild opens a cordon-store-2 store, one run per upgrade
// transaction, and is killed by its watcher part way.
func upgradeChild(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("CORDON_AUDIT_KILL_TX"))
	if err != nil {
		t.Fatal(err)
	}
	spin, _ := strconv.Atoi(os.Getenv("CORDON_AUDIT_SPIN"))
	dir := os.Getenv("CORDON_AUDIT_DIR")
	upgradeBatchRuns = 1
	faultinject.KillAfterTx(filepath.Join(dir, "cordon.db"), n, spin)
	s, err := Open(dir, time.Second)
	if err != nil {
		fmt.Println("OPEN FAILED", err)
		os.Exit(3)
	}
	s.Close()
	time.Sleep(2 * time.Minute) // the watcher kills it before it is done
	os.Exit(4)
}

// A store-2 upgrade killed part way (after a seeded number of its
// transactions, more than once in a row): the next Open resumes it and
// every memory loads as it was.
func TestCrashDuringStore2Upgrade(t *testing.T) {
	if os.Getenv("CORDON_AUDIT_CHILD") == "upgrade" {
		upgradeChild(t)
		return
	}
	seed := faultinject.CrashSeed(t)
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	dir := t.TempDir()
	heaps, sizes := store2Runs(4)
	oldStore(t, dir, formatVersion2, heaps, sizes)
	runs := 0
	for _, h := range heaps {
		for _, v := range h {
			if len(v) == runBytes {
				runs += 2 // heap and stable memory
			}
		}
	}
	// Each kill lands after a seeded number of transactions, before the
	// upgrade's last: the next start goes on from where it was.
	midway := 0
	for kill := range 3 {
		killTx := 2 + rng.IntN(runs/4)
		runAuditChild(t, "TestCrashDuringStore2Upgrade", "CORDON_AUDIT_CHILD=upgrade", "CORDON_AUDIT_DIR="+dir,
			fmt.Sprintf("CORDON_AUDIT_KILL_TX=%d", killTx), fmt.Sprintf("CORDON_AUDIT_SPIN=%d", rng.IntN(100)))
		_, format := rawStaged(t, dir)
		t.Logf("kill %d after %d transactions (of about %d): format %q", kill, killTx, runs, format)
		if format == formatUpgrading2 {
			midway++
		}
	}
	if midway == 0 {
		t.Fatal("no kill landed during the upgrade")
	}
	var want []memModel
	for i, h := range heaps {
		want = append(want, modelOf(sizes[i], h))
	}
	checkUpgraded(t, dir, want)
}

// A store-2 upgrade that runs out of disk: Open fails with the error (no
// panic, nothing half-done visible), and the next Open with room
// finishes it.
func TestFullDiskDuringStore2Upgrade(t *testing.T) {
	dir := durTmpfs(t, 96<<20)
	heaps, sizes := store2Runs(4)
	oldStore(t, dir, formatVersion2, heaps, sizes)
	defer func(b int) { upgradeBatchRuns = b }(upgradeBatchRuns)
	upgradeBatchRuns = 8
	release := fillDisk(t, dir, 0)
	s, err := Open(dir, time.Second)
	if err == nil {
		s.Close()
		t.Fatal("the upgrade succeeded on a full disk: the test did not run out of room")
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Open on a full disk: %v, want ENOSPC", err)
	}
	_, format := rawStaged(t, dir)
	t.Logf("Open on a full disk: %v; format left %q", err, format)
	release()
	var want []memModel
	for i, h := range heaps {
		want = append(want, modelOf(sizes[i], h))
	}
	checkUpgraded(t, dir, want)
}
