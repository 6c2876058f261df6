package engine

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/cordon-dev/cordon/internal/state"
	"github.com/cordon-dev/cordon/internal/sysapi"
)

// A serialized module, deserialized by another engine (as a sandbox does),
// runs exactly like the original.
func TestSerializeRoundTrip(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Compile(corpus(t, "counter"), DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	art, err := m.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ParallelCompilation = false
	e2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := e2.Deserialize(art)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Info.Hash != m.Info.Hash || m2.Info.Memory64 != m.Info.Memory64 || m2.Info.NumGlobals != m.Info.NumGlobals ||
		m2.start != m.start || m2.memory != m.memory || m2.table != m.table || !reflect.DeepEqual(m2.globals, m.globals) {
		t.Fatalf("metadata differs")
	}
	if !reflect.DeepEqual(m.GlobalTypes(), m2.GlobalTypes()) {
		t.Fatal("global types differ")
	}
	c1 := &canister{m: m, stable: state.NewPageMap(0)}
	c2 := &canister{m: m2, stable: state.NewPageMap(0)}
	empty := []byte("DIDL\x00\x00")
	c1.run(t, e, sysapi.CtxInit, "canister_init", empty, true)
	c2.run(t, e2, sysapi.CtxInit, "canister_init", empty, true)
	for i := 0; i < 3; i++ {
		a := c1.run(t, e, sysapi.CtxUpdate, "canister_update inc", empty, false)
		b := c2.run(t, e2, sysapi.CtxUpdate, "canister_update inc", empty, false)
		if a.Instructions != b.Instructions || !bytes.Equal(a.Reply, b.Reply) || len(a.Heap.Pages) != len(b.Heap.Pages) {
			t.Fatalf("inc %d differs: %d/%d instructions", i, a.Instructions, b.Instructions)
		}
	}
	// Damaged artifacts are refused, never run.
	for _, bad := range [][]byte{nil, art[:7], art[:40], art[:len(art)-1], append(append([]byte{}, art...), 0)} {
		if _, err := e2.Deserialize(bad); err == nil {
			t.Fatalf("damaged artifact of %d bytes accepted", len(bad))
		}
	}
}
