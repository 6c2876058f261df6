package host

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordingHandler keeps the records a logger is given.
type recordingHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

// longTrapTimerWat's timer traps with 16 KiB of "x".
const longTrapTimerWat = `
(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (import "ic0" "global_timer_set" (func $timer_set (param i64) (result i64)))
  (memory 1)
  (func (export "canister_update arm") (drop (call $timer_set (i64.const 1))) (call $reply))
  (func (export "canister_global_timer")
    (memory.fill (i32.const 0) (i32.const 120) (i32.const 16384))
    (call $trap (i32.const 0) (i32.const 16384)))
)`

// A canister decides how often its system tasks trap (a heartbeat every
// second, a timer every tick) and what their trap messages say (16 KiB
// each): the host's own log gets them at Debug level only, cut short; the
// whole message is in the canister's log.
func TestTrappingSystemTaskStaysOutOfTheHostLog(t *testing.T) {
	t.Parallel()
	h := &recordingHandler{}
	cfg := testConfig(t, "inprocess")
	f := openLoggedFixture(t, cfg, slog.New(h))
	id := f.install(mustWat(t, longTrapTimerWat), nil)
	f.update(id, "arm", nil)
	waitFor(t, 30*time.Second, func() bool {
		for _, r := range f.mustFetchLogs(id) {
			if strings.Contains(string(r.Content), "xxxxxxxx") {
				return true
			}
		}
		return false
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	var seen bool
	for _, r := range h.records {
		if !strings.Contains(r.Message, "system task") {
			continue
		}
		seen = true
		if r.Level > slog.LevelDebug {
			t.Errorf("%s at level %s", r.Message, r.Level)
		}
		r.Attrs(func(a slog.Attr) bool {
			if len(a.Value.String()) > 300 {
				t.Errorf("%s: attribute %s of %d bytes", r.Message, a.Key, len(a.Value.String()))
			}
			return true
		})
	}
	if !seen {
		t.Error("the trapped timer was not logged at all")
	}
}
