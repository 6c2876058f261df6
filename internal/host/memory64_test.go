package host

import (
	"context"
	"encoding/binary"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"
)

// grow64Wat is a hostile 64-bit canister whose heap sits just under 4 GiB
// (wasmtime's default reservation): growing it by two Wasm pages used to
// make wasmtime copy the whole memory, for three instructions.
const grow64Wat = `(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i64 i64)))
  (memory i64 65535)
  (func $grow
    (i64.store (i64.const 0) (memory.grow (i64.const 2)))
    (call $append (i64.const 0) (i64.const 8))
    (call $reply))
  (func (export "canister_query grow_q") (call $grow))
  (func (export "canister_update grow") (call $grow))
  (func (export "canister_update noop") (call $reply)))`

// processCPU is the CPU time this process has used.
func processCPU(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A 64-bit heap grown past 4 GiB does not move: the grow (in a free query,
// then committed) and every later message cost no more than their
// instructions say. In-process the CPU of each message is bounded (a move
// or a comparison of the whole heap took 5-11 s); in a sandbox its
// warning that written pages had to be found by comparing every page
// never reaches the host's log.
func TestMemory64GrowPast4GiBStaysCheap(t *testing.T) {
	for _, mode := range []string{"inprocess", "sandbox"} {
		t.Run(mode, func(t *testing.T) {
			h := &recordingHandler{}
			cfg := testConfig(t, mode)
			f := openLoggedFixture(t, cfg, slog.New(h))
			n := f.node
			id := f.install(mustWat(t, grow64Wat), nil)
			f.update(id, "noop", nil) // the heap's image exists
			const cpuBound = 2 * time.Second
			for _, m := range []struct {
				name   string
				update bool
				want   int64 // memory.grow's result; -1: no reply expected
			}{
				{"grow_q", false, 65535},
				{"grow_q", false, 65535},
				{"grow", true, 65535},
				{"noop", true, -1},
				{"grow_q", false, 65537},
				{"noop", true, -1},
			} {
				c0 := processCPU(t)
				var r *Reply
				var err error
				if m.update {
					r, err = n.Update(context.Background(), Message{Canister: id, Method: m.name, Caller: user})
				} else {
					r, err = n.Query(context.Background(), Message{Canister: id, Method: m.name, Caller: user})
				}
				cpu := processCPU(t) - c0
				if err != nil {
					t.Fatalf("%s: %v", m.name, err)
				}
				if m.want >= 0 && (len(r.Data) != 8 || int64(binary.LittleEndian.Uint64(r.Data)) != m.want) {
					t.Fatalf("%s: memory.grow returned %x, want %d", m.name, r.Data, m.want)
				}
				if mode == "inprocess" && cpu > cpuBound {
					t.Errorf("%s (%d instructions) took %v of CPU", m.name, r.Instructions, cpu)
				}
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			for _, r := range h.records {
				var line strings.Builder
				line.WriteString(r.Message)
				r.Attrs(func(a slog.Attr) bool { line.WriteString(" " + a.String()); return true })
				if s := line.String(); strings.Contains(s, "moved") || strings.Contains(s, "comparing all") {
					t.Errorf("host log: %s", s)
				}
			}
		})
	}
}
