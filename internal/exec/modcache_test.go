package exec

import (
	"context"
	"crypto/sha256"
	"runtime"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/engine"
)

// A prepared module stays cached while someone holds it and is freed, entry
// and all, once nobody does; preparing it again afterwards works.
func TestModuleCacheReleasesUnheldModules(t *testing.T) {
	inproc, err := NewInProcess(engine.DefaultModuleLimits())
	if err != nil {
		t.Fatal(err)
	}
	sb, err := NewSandboxed(SandboxConfig{Dir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	wasm := wasmFile(t, corpusDir, "counter")
	for _, c := range []struct {
		name  string
		x     Executor
		cache *moduleCache
	}{
		{"inprocess", inproc, inproc.cache},
		{"sandbox", sb, sb.modules},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			m1, err := c.x.Prepare(ctx, wasm)
			if err != nil {
				t.Fatal(err)
			}
			m2, err := c.x.Prepare(ctx, wasm)
			if err != nil {
				t.Fatal(err)
			}
			if m1 != m2 || c.cache.len() != 1 {
				t.Fatalf("a held module was prepared again (same: %v, entries: %d)", m1 == m2, c.cache.len())
			}
			runtime.KeepAlive(m1)
			m1, m2 = nil, nil
			// Nobody holds the module now: a collection frees it and its
			// cleanup removes the entry.
			for deadline := time.Now().Add(time.Minute); c.cache.len() != 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%d entries left after the module was dropped", c.cache.len())
				}
				runtime.GC()
			}
			m3, err := c.x.Prepare(ctx, wasm)
			if err != nil || m3.Info.Hash != sha256.Sum256(wasm) || c.cache.len() != 1 {
				t.Fatalf("prepare after release: %v (%d entries)", err, c.cache.len())
			}
			runtime.KeepAlive(m3)
		})
	}
}
