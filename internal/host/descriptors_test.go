package host

import (
	"cmp"
	"math"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/internal/exec"
)

// A node's bounds are fitted to RLIMIT_NOFILE: left alone when they fit,
// lowered in proportion (never under their least) when they do not, and
// refused with what to do when even the least do not fit.
func TestFitDescriptors(t *testing.T) {
	t.Parallel()
	defaults := func(mut func(*Config)) Config {
		var c Config
		if mut != nil {
			mut(&c)
		}
		return c
	}
	defaultNeed := descriptorBase + 2*defaultMemoryImages + exec.SandboxConfig{}.HostDescriptors()
	for _, c := range []struct {
		name    string
		cfg     Config
		limit   uint64
		lowered bool
		err     string
	}{
		{"defaults fit", defaults(nil), 20000, false, ""},
		{"exactly", defaults(nil), uint64(defaultNeed), false, ""},
		{"no limit", defaults(func(c *Config) { c.Sandbox.MaxSandboxes = 1 << 20 }), math.MaxUint64, false, ""},
		{"one short", defaults(nil), uint64(defaultNeed - 1), true, ""},
		{"1024", defaults(nil), 1024, true, ""},
		{"a server's connections", defaults(func(c *Config) { c.ReservedDescriptors = 1040 }), 4096, true, ""},
		{"pools keep a slot for a canister", defaults(func(c *Config) { c.Sandbox.WarmPool, c.Sandbox.PreloadPool = 40, 20 }), 600, true, ""},
		{"too low", defaults(nil), 100, false, "RLIMIT_NOFILE) is 100; a node needs at least"},
		{"too low for its connections", defaults(func(c *Config) { c.ReservedDescriptors = 1040 }), 1024, false, "ulimit -n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := fitDescriptors(c.cfg, c.limit)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("limit %d: %+v", c.limit, p)
			if p.lowered != c.lowered || uint64(p.need) > c.limit {
				t.Fatalf("plan %+v: lowered=%v, want %v and need ≤ %d", p, p.lowered, c.lowered, c.limit)
			}
			want := descriptorBase + c.cfg.ReservedDescriptors + 2*p.images + exec.SandboxConfig{MaxSandboxes: p.sandboxes, SealedArtifacts: p.sealed, MaxCompiles: c.cfg.Sandbox.MaxCompiles}.HostDescriptors()
			if p.need != want {
				t.Fatalf("plan %+v: need %d, its bounds need %d", p, p.need, want)
			}
			if p.images < minMemoryImages || p.sealed < minSealedArtifacts || p.sandboxes < c.cfg.Sandbox.WarmPool+c.cfg.Sandbox.PreloadPool+1 {
				t.Fatalf("plan %+v: under a least bound", p)
			}
			asked := [3]int{cmp.Or(c.cfg.MemoryImages, defaultMemoryImages), cmp.Or(c.cfg.Sandbox.MaxSandboxes, exec.DefaultMaxSandboxes),
				cmp.Or(c.cfg.Sandbox.SealedArtifacts, exec.DefaultSealedArtifacts)}
			if !c.lowered && [3]int{p.images, p.sandboxes, p.sealed} != asked {
				t.Fatalf("plan %+v: changed bounds that fit (%v)", p, asked)
			}
			if c.lowered && c.limit > 900 && uint64(p.need) < c.limit*3/4 {
				t.Fatalf("plan %+v: lowered to %d of %d, more than needed", p, p.need, c.limit)
			}
		})
	}
}
