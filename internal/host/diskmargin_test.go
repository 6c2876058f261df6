package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/store"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// ballast writes a file of n bytes named name in dir and returns a
// function that removes it.
func ballast(t *testing.T, dir, name string, n int64) (remove func()) {
	t.Helper()
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = 0xa5 // not a hole
	}
	for n > 0 {
		w := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:w]); err != nil {
			t.Fatalf("ballast %s: %v", name, err)
		}
		n -= w
	}
	return func() {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
}

// freeBytes is what statfs says is free on dir's file system.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	free, _, err := store.DiskSpace(dir)
	if err != nil {
		t.Fatal(err)
	}
	return int64(free)
}

// Availability, from the attacker's side: a canister that grows its
// stable memory on a node whose home is a small real file system (tmpfs).
// Without the disk margin it wrote until the file system was full, and on
// a file system that reports that only at fsync the commit's outcome was
// unknown and the node stopped taking writes for every canister (serve
// exits 1). With it, the growing canister is refused before anything is
// written (SYS_TRANSIENT, "the node's disk is nearly full", charged as a trap,
// its committed state intact), the node never stops, other canisters'
// queries and the updates that fit go on, and once a file is deleted the
// refused canister writes again.
func TestDiskMarginRefusesWithoutStopping(t *testing.T) {
	t.Parallel()
	mnt := durTmpfs(t, 64<<20)
	const margin = 16 << 20
	cfg := DefaultConfig()
	cfg.Home = filepath.Join(mnt, "home")
	cfg.Isolation = "sandbox" // its compiled artifacts live on the same file system
	cfg.Fees.GiBStoragePerSecond = 0
	cfg.DiskMargin = margin
	f := &fixture{t: t, home: cfg.Home, cfg: cfg}
	f.open()
	t.Cleanup(func() { f.node.Close() })
	ctx := context.Background()
	stable := f.install(module(t, corpusDir, "stable"), noArgs)
	ctr := f.install(module(t, corpusDir, "counter"), noArgs)
	// Room given back at the end, more than an append needs.
	removeReserve := ballast(t, mnt, "reserve", 16<<20)
	t.Cleanup(removeReserve)

	const mib = 1 << 20
	block := func(i int) []byte {
		b := make([]byte, mib)
		for j := range b {
			b[j] = byte(i*7 + j)
		}
		return b
	}
	appendBlock := func(i int) (uint64, error) {
		r, err := f.node.Update(ctx, Message{Canister: stable, Method: "append", Arg: blobArg(block(i)), Caller: user})
		if err != nil {
			return 0, err
		}
		return nat64Of(t, r.Data), nil
	}
	query := func(id principal.Principal, method string, arg []byte) []byte {
		t.Helper()
		r, err := f.node.Query(ctx, Message{Canister: id, Method: method, Arg: arg, Caller: user})
		if err != nil {
			t.Fatalf("query %s: %v", method, err)
		}
		return r.Data
	}
	// intact checks that the stable canister holds the blocks it
	// committed, and no more.
	intact := func(when string, blocks int) {
		t.Helper()
		if used := nat64Of(t, query(stable, "usedBytes", noArgs)); used != uint64(blocks)*mib {
			t.Fatalf("%s: the canister uses %d bytes of stable memory, committed %d blocks of 1 MiB", when, used, blocks)
		}
		for _, i := range []int{0, blocks - 1} {
			if i < 0 {
				continue
			}
			want := blobArg(block(i)[mib-64:]) // a blob reply is encoded as the argument
			if got := query(stable, "read", readArg(uint64(i+1)*mib-64, 64)); !bytes.Equal(got, want) {
				t.Fatalf("%s: block %d ends with %x, want %x", when, i, got, want)
			}
		}
	}
	balance := func(id principal.Principal) string {
		t.Helper()
		st, err := f.node.Status(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return st.Balance.String()
	}
	refused := func(what string, err error) {
		t.Helper()
		var rej *Reject
		if !errors.As(err, &rej) || rej.Code != SysTransient || !errors.Is(err, ErrDiskNearlyFull) || !errors.Is(err, ErrStorageFull) {
			t.Fatalf("%s: %v, want a SYS_TRANSIENT reject saying the disk is nearly full", what, err)
		}
		if !strings.HasPrefix(rej.Message, "the node's disk is nearly full: ") || strings.Contains(rej.Message, mnt) {
			t.Fatalf("%s: the caller reads %q", what, rej.Message)
		}
		t.Logf("%s: %s", what, rej.Message)
	}
	running := func(when string) {
		t.Helper()
		select {
		case <-f.node.WritesStopped():
			t.Fatalf("%s: the node stopped accepting writes", when)
		default:
		}
	}

	// Append until refused.
	blocks := 0
	var err error
	for ; ; blocks++ {
		if blocks == 64 {
			t.Fatal("64 MiB of stable memory fit on a 64 MiB file system")
		}
		before := balance(stable)
		var at uint64
		if at, err = appendBlock(blocks); err != nil {
			if after := balance(stable); after == before {
				// It ran: charged as a trap (TestDiskMarginRefusalIsCharged).
				t.Fatalf("the refused update was not charged: balance %s, then %s", before, after)
			}
			break
		}
		if at != uint64(blocks)*mib {
			t.Fatalf("block %d appended at %d", blocks, at)
		}
	}
	refused(fmt.Sprintf("append after %d MiB", blocks), err)
	running("after the refusal")
	intact("after the refusal", blocks)

	// 1 MiB above the margin: what fits goes on, what does not is refused.
	above := freeBytes(t, mnt) - margin - mib
	if above < 0 {
		t.Fatalf("%d bytes free after the refusal: less than the margin and 1 MiB", freeBytes(t, mnt))
	}
	removeFill := ballast(t, mnt, "fill", above)
	t.Cleanup(removeFill)
	_, err = appendBlock(blocks)
	refused("append with 1 MiB above the margin", err)
	r, err := f.node.Update(ctx, Message{Canister: ctr, Method: "inc", Arg: noArgs, Caller: user})
	if err != nil {
		t.Fatalf("another canister's small update with 1 MiB above the margin: %v", err)
	}
	count := replyNat(t, r.Data)
	if got := replyNat(t, query(ctr, "get", noArgs)); got != count {
		t.Fatalf("counter reads %d after inc replied %d", got, count)
	}
	_, err = f.node.UploadChunk(ctx, ctr, user, make([]byte, mib))
	refused("a 1 MiB chunk upload with less than 1 MiB above the margin", err)

	// Below the margin (another process filled the disk): updates and
	// installs are refused before they run; queries go on.
	removeBelow := ballast(t, mnt, "below", 2*mib)
	t.Cleanup(removeBelow)
	// Seen now, as it would be at the store's next measure (every 250 ms,
	// store/room.go).
	f.node.store.SetDiskMargin(margin)
	_, err = f.node.Update(ctx, Message{Canister: ctr, Method: "inc", Arg: noArgs, Caller: user})
	refused("a small update below the margin", err)
	_, err = f.node.Install(ctx, ctr, InstallOptions{Mode: ModeReinstall, Wasm: module(t, corpusDir, "counter"), Arg: noArgs, Caller: user})
	refused("a reinstall below the margin", err)
	if got := replyNat(t, query(ctr, "get", noArgs)); got != count {
		t.Fatalf("counter reads %d below the margin, committed %d", got, count)
	}
	intact("below the margin", blocks)
	running("below the margin")

	// Room again: the refused canister writes again, and all of it is
	// on disk.
	removeBelow()
	removeFill()
	removeReserve()
	if at, err := appendBlock(blocks); err != nil || at != uint64(blocks)*mib {
		t.Fatalf("append with room again: at %d, %v; want at %d", at, err, blocks*mib)
	}
	blocks++
	if _, err := f.node.UploadChunk(ctx, ctr, user, make([]byte, mib)); err != nil {
		t.Fatalf("chunk upload with room again: %v", err)
	}
	running("at the end")
	f.restart()
	intact("after a restart", blocks)
	if got := replyNat(t, query(ctr, "get", noArgs)); got != count {
		t.Fatalf("after a restart counter reads %d, want %d", got, count)
	}
}

// The margin a node keeps: configured, or the store's default for the
// home's file system, or none; and a home below it is reported.
func TestCheckDiskRoom(t *testing.T) {
	mnt := durTmpfs(t, 64<<20)
	cfg := DefaultConfig()
	cfg.Home = filepath.Join(mnt, "not", "yet") // measured where it will be
	room, err := CheckDiskRoom(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if room.Total != 64<<20 || room.Margin != 16<<20 || room.Below() {
		t.Fatalf("default on an empty 64 MiB file system: %+v, want a margin of a quarter, not below it", room)
	}
	cfg.DiskMargin = 80 << 20
	if room, err = CheckDiskRoom(cfg); err != nil || room.Margin != 80<<20 || !room.Below() {
		t.Fatalf("configured 80 MiB on 64 MiB: %+v, %v; want below it", room, err)
	}
	cfg.NoDiskMargin = true
	if room, err = CheckDiskRoom(cfg); err != nil || room.Margin != 0 || room.Below() {
		t.Fatalf("no margin: %+v, %v", room, err)
	}

	// A node that starts below its margin says so, and refuses updates.
	cfg.NoDiskMargin = false
	var logs bytes.Buffer
	n, err := Open(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if !strings.Contains(logs.String(), "less free space than the disk margin") {
		t.Fatalf("a node opened below its margin logged:\n%s", logs.String())
	}
	id, err := n.Create(context.Background(), CreateOptions{Controllers: []principal.Principal{user}})
	if err != nil {
		t.Fatalf("creating a canister below the margin (no canister data): %v", err)
	}
	_, err = n.Install(context.Background(), id, InstallOptions{Mode: ModeInstall, Wasm: module(t, corpusDir, "counter"), Arg: noArgs, Caller: user})
	if !errors.Is(err, ErrDiskNearlyFull) {
		t.Fatalf("install below the margin: %v, want ErrDiskNearlyFull", err)
	}
}
