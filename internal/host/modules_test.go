package host

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

// rssAnon is this process's anonymous resident memory: the Go heap, the
// engine's compiled code and memories; not the store's file mapping.
func rssAnon(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "RssAnon:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no RssAnon in /proc/self/status")
	return 0
}

// bigModule is a distinct module of about size bytes: a data segment that
// fills its memory. The data section is appended to the compiled rest
// rather than written in WAT: parsing 16 MiB of WAT text took a quarter of
// a second per module.
func bigModule(t *testing.T, i, size int) []byte {
	t.Helper()
	pages := size>>16 + 1
	wasm, err := wasmtime.Wat2Wasm(fmt.Sprintf(`(module (import "ic0" "msg_reply" (func (;0;)))
  (memory (export "memory") %d)
  (func (export "canister_query ping") (call 0)))`, pages))
	if err != nil {
		t.Fatal(err)
	}
	// The data section (id 11), after the code section and last: one
	// active segment of memory 0 at (i32.const 0).
	data := append([]byte(fmt.Sprintf("module %d ", i)), bytes.Repeat([]byte("m"), size)...)
	seg := append([]byte{1, 0x00, 0x41, 0x00, 0x0b}, binary.AppendUvarint(nil, uint64(len(data)))...)
	wasm = append(wasm, 11)
	wasm = binary.AppendUvarint(wasm, uint64(len(seg)+len(data)))
	wasm = append(append(wasm, seg...), data...)
	return wasm
}

// Installing and deleting modules leaves no copy of them in the host: 12
// canisters with distinct 16 MiB modules, each installed, called and
// deleted, leave the host's anonymous memory where one such cycle left it.
func TestDeletedModulesReleaseMemory(t *testing.T) {
	// Not t.Parallel: it measures the process's RSS.
	if raceEnabled {
		// The race detector's runtime keeps shadow memory for what the
		// program frees, so RSS does not measure what the host holds; the
		// plain `go test ./...` runs this test.
		t.Skip("RSS is not a measure of held memory under the race detector")
	}
	const (
		n    = 12
		size = 16 << 20
	)
	for _, isolation := range []string{"inprocess", "sandbox"} {
		t.Run(isolation, func(t *testing.T) {
			cfg := testConfig(t, isolation)
			f := openFixture(t, cfg)
			cycle := func(i int) {
				wasm := bigModule(t, i, size)
				id := f.install(wasm, noArgs)
				f.query(id, "ping", noArgs)
				if err := f.node.SetStatus(context.Background(), id, user, "stopped"); err != nil {
					t.Fatal(err)
				}
				if err := f.node.Delete(context.Background(), id, user); err != nil {
					t.Fatal(err)
				}
			}
			settle := func() uint64 {
				// Finalizers (the engine's compiled modules) and cleanups
				// (the cache entries) run after a collection, in their own
				// goroutine: give them a few rounds.
				for range 5 {
					runtime.GC()
					time.Sleep(20 * time.Millisecond)
				}
				debug.FreeOSMemory()
				return rssAnon(t)
			}
			cycle(0) // warm up: the engine, the store, the first sandbox
			before := settle()
			for i := 1; i <= n; i++ {
				cycle(i)
			}
			// Holding the modules would cost n × size in Wasm bytes alone
			// (and as much again compiled, in-process); allow two modules'
			// worth for allocator slack. Collection is asynchronous: look
			// again until it is done or a minute has passed.
			var grew int64
			for deadline := time.Now().Add(time.Minute); ; {
				grew = int64(settle()) - int64(before)
				if grew <= 2*size || time.Now().After(deadline) {
					break
				}
			}
			t.Logf("%s: anonymous RSS %d MiB, %+d MiB after %d × %d MiB modules installed and deleted",
				isolation, before>>20, grew>>20, n, size>>20)
			if grew > 2*size {
				t.Fatalf("the host kept %d MiB after deleting every canister", grew>>20)
			}
		})
	}
}
