package host

import (
	"errors"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/cordon-dev/cordon/internal/store"
)

// The disk margin (Config.DiskMargin, store/room.go): the store keeps free
// space on its file system so that a commit does not find the disk full
// at its last sync, whose outcome would be unknown and stop the node
// (storefail.go). A commit that writes canister data and would leave less
// is refused before it writes anything; so, before they run, are updates
// to canisters (ingress, calls from canisters: handleRequest) and
// installs once less is left, and heartbeats are skipped
// (handleSystemTask). Both are
// SYS_TRANSIENT rejects wrapping ErrDiskNearlyFull (and ErrStorageFull:
// nothing applied, the node goes on): the canister's state is untouched,
// the cycles a call brought go back to its caller, as when a commit finds
// the file system full. An execution refused at its commit is charged as
// a trap (finish, install): the canister chooses how much it changes. Queries, management calls
// (deleting a canister frees room) and the node's own writes go on.

// ErrDiskNearlyFull: the call was refused because the free space on the
// store's file system is, or would fall, below the disk margin; nothing
// of it was applied. Rejects that wrap it wrap ErrStorageFull too.
var ErrDiskNearlyFull = errors.New("the node's disk is nearly full")

// DiskRoom is the free space of the file system that holds a node's home
// and the margin its store keeps there.
type DiskRoom struct {
	Free, Total uint64 // statfs: free for an unprivileged writer, size
	Margin      uint64 // 0: none
}

// Below reports whether less than the margin is free.
func (d DiskRoom) Below() bool { return d.Margin > 0 && d.Free < d.Margin }

// CheckDiskRoom measures the file system of cfg.Home (of the nearest
// directory above it that exists, if it does not yet) and the margin the
// node's store keeps there: `cordon doctor` and the node's start report it.
func CheckDiskRoom(cfg Config) (DiskRoom, error) {
	dir := cfg.Home
	free, total, err := store.DiskSpace(dir)
	for errors.Is(err, fs.ErrNotExist) && filepath.Dir(dir) != dir {
		dir = filepath.Dir(dir)
		free, total, err = store.DiskSpace(dir)
	}
	if err != nil {
		return DiskRoom{}, err
	}
	return DiskRoom{Free: free, Total: total, Margin: diskMargin(cfg, total)}, nil
}

// diskMargin is the margin a node of cfg keeps on a file system of total
// bytes.
func diskMargin(cfg Config, total uint64) uint64 {
	switch {
	case cfg.NoDiskMargin:
		return 0
	case cfg.DiskMargin > 0:
		return cfg.DiskMargin
	}
	return store.DefaultDiskMargin(total)
}

// setDiskMargin gives the store its margin, and warns when less is free
// already.
func setDiskMargin(st *store.Store, cfg Config, logger *slog.Logger) {
	room, err := CheckDiskRoom(cfg)
	if err != nil {
		// The store cannot measure either: only a full file system
		// refuses writes then.
		logger.Warn("the free space of the home's file system cannot be measured: no disk margin is kept", "error", err)
		return
	}
	st.SetDiskMargin(room.Margin)
	if room.Below() {
		logger.Warn("the home's file system has less free space than the disk margin (limits.disk_margin): updates and installs that write canister data are refused until there is room",
			"free_bytes", room.Free, "margin_bytes", room.Margin, "total_bytes", room.Total)
	}
}

// refuseNoRoom is the reject of a call that would write about need bytes
// of canister data (0: unknown) when that does not leave the disk margin
// free; nil when it does.
func (n *Node) refuseNoRoom(need uint64) *Reject {
	if err := n.store.Room(need); err != nil {
		return n.storageReject(err)
	}
	return nil
}

// noRoomLog paces the node's log lines about refusals: one every
// noRoomLogEvery at most, with the count since the last, so that a flood
// of refused calls does not fill the disk with lines about it.
type noRoomLog struct {
	last    atomic.Int64 // unix ns of the last line
	refused atomic.Uint64
}

const noRoomLogEvery = 10 * time.Second

// noRoomReject is the reject of a call the disk margin refused (err wraps
// store.ErrNoRoom), the numbers logged.
func (n *Node) noRoomReject(err error) *Reject {
	n.noRoom.refused.Add(1)
	now := time.Now().UnixNano()
	if last := n.noRoom.last.Load(); now-last >= int64(noRoomLogEvery) && n.noRoom.last.CompareAndSwap(last, now) {
		refused := n.noRoom.refused.Swap(0)
		n.log.Warn("disk nearly full: writes of canister data are refused until there is room (limits.disk_margin)",
			"error", err, "refused_since_last_line", refused)
	}
	msg := ErrDiskNearlyFull.Error() + ": the node keeps a margin of free space for its store, and this call would have taken it below"
	var nr *store.NoRoomError
	if errors.As(err, &nr) && nr.Need == 0 {
		msg = ErrDiskNearlyFull.Error() + ": less free space than the margin the node keeps for its store is left"
	}
	return &Reject{Code: SysTransient, cause: errors.Join(ErrDiskNearlyFull, ErrStorageFull),
		Message: msg + "; nothing of this call was applied: try again later"}
}
