package engine

import (
	"bytes"
	"testing"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// DisableFuel (the benchmark's baseline) runs the same code to the same
// reply, counting nothing.
func TestDisableFuel(t *testing.T) {
	empty := []byte("DIDL\x00\x00")
	var replies [][]byte
	for _, off := range []bool{false, true} {
		cfg := DefaultConfig()
		cfg.DisableFuel = off
		e, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		m, err := e.Compile(corpus(t, "counter"), DefaultModuleLimits())
		if err != nil {
			t.Fatal(err)
		}
		c := &canister{m: m, stable: state.NewPageMap(0)}
		if out := c.run(t, e, sysapi.CtxInit, "canister_init", empty, true); out.Trapped {
			t.Fatalf("init trapped: %s", out.TrapMessage)
		}
		out := c.run(t, e, sysapi.CtxUpdate, "canister_update inc", empty, false)
		if out.Trapped {
			t.Fatalf("inc trapped: %s", out.TrapMessage)
		}
		if off != (out.Instructions == 0) {
			t.Fatalf("fuel off %v: %d instructions", off, out.Instructions)
		}
		replies = append(replies, out.Reply)
	}
	if !bytes.Equal(replies[0], replies[1]) {
		t.Fatalf("replies differ: %x vs %x", replies[0], replies[1])
	}
}
