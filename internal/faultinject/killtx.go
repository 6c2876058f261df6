package faultinject

import (
	"encoding/binary"
	"fmt"
	"os"
	"syscall"
)

// boltMagic marks a bbolt meta page.
const boltMagic = 0xED0CDAED

// lastTxid reads the id of the last committed transaction of the bbolt
// file f from its two meta pages, as a crash would leave them: the larger
// txid of the meta pages with bbolt's magic (0 if the first has none).
func lastTxid(f *os.File) uint64 {
	buf := make([]byte, 80)
	if _, err := f.ReadAt(buf, 0); err != nil || binary.LittleEndian.Uint32(buf[16:]) != boltMagic {
		return 0
	}
	best := binary.LittleEndian.Uint64(buf[64:])
	pageSize := int64(binary.LittleEndian.Uint32(buf[24:]))
	if _, err := f.ReadAt(buf, pageSize); err == nil && binary.LittleEndian.Uint32(buf[16:]) == boltMagic {
		best = max(best, binary.LittleEndian.Uint64(buf[64:]))
	}
	return best
}

// KillAfterTx SIGKILLs this process once killTx transactions have
// committed to the bbolt file at path since it was called, after spin
// more reads of its meta pages (so the kill lands anywhere in the
// transactions that follow, including inside a commit's writes). It
// watches from a goroutine and returns at once; a file it cannot open
// ends the process with status 5.
func KillAfterTx(path string, killTx, spin int) {
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child: open for the watcher:", err)
		os.Exit(5)
	}
	start := lastTxid(f)
	go func() {
		for lastTxid(f) < start+uint64(killTx) {
		}
		for range spin {
			lastTxid(f)
		}
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}()
}
