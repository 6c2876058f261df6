package exec

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cordon-dev/cordon/internal/sysapi"
)

// sealedOf returns the cached sealed memfd of h's artifact (a duplicate),
// failing the test if there is none.
func sealedOf(t *testing.T, x *Sandboxed, h [32]byte) *os.File {
	t.Helper()
	f, err := x.sealed.get(h)
	if err != nil || f == nil {
		t.Fatalf("no sealed artifact cached (%v)", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// checkSealed checks that f carries every seal and holds exactly the
// artifact recorded in the cache directory.
func checkSealed(t *testing.T, x *Sandboxed, h [32]byte, f *os.File) {
	t.Helper()
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil || seals&artifactSeals != artifactSeals {
		t.Fatalf("seals %#x (%v), want %#x", seals, err, artifactSeals)
	}
	got, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<40))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(x.artifactPath(h, ".cwasm"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.ReadFile(x.artifactPath(h, ".info"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(got)
	if !bytes.Equal(got, want) || !bytes.Equal(sum[:], info[:sha256.Size]) {
		t.Fatalf("the sealed artifact (%d bytes) differs from the cached one (%d bytes) or its recorded hash", len(got), len(want))
	}
}

// Sandboxes get the artifact as a sealed memfd holding the right bytes,
// checked once: later loads of the module (another canister; a new
// executor on the same cache after its first load) hash nothing again. An
// artifact larger than the bound is not kept, and loads still work.
func TestSealedArtifact(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	h := sha256.Sum256(wasm)
	dir := t.TempDir()
	x, err := NewSandboxed(SandboxConfig{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		s := newSim(t, x, id, wasm)
		s.must(sysapi.CtxInit, "canister_init", empty)
		if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
			t.Fatalf("%s: inc: %x", id, out.Reply)
		}
	}
	checkSealed(t, x, h, sealedOf(t, x, h))
	if x.sealed.checks() != 1 {
		t.Fatalf("artifact checked %d times for two loads, want once", x.sealed.checks())
	}
	x.Close()

	// A new executor: the artifact is on disk, checked at its first load.
	y, err := NewSandboxed(SandboxConfig{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()
	for _, id := range []string{"a", "b", "c"} {
		s := newSim(t, y, id, wasm)
		s.must(sysapi.CtxInit, "canister_init", empty)
	}
	if st := y.Stats(); st.Compiles != 0 || y.sealed.checks() != 1 {
		t.Fatalf("stats %+v, %d checks: want no compilation and one check for three loads", st, y.sealed.checks())
	}
	checkSealed(t, y, h, sealedOf(t, y, h))

	// Bounded: an artifact larger than the bound is not kept.
	z, err := NewSandboxed(SandboxConfig{Dir: dir, Logger: testLogger(t), SealedArtifactBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	for _, id := range []string{"a", "b"} {
		s := newSim(t, z, id, wasm)
		s.must(sysapi.CtxInit, "canister_init", empty)
	}
	if n, fills := z.sealed.bytes(), z.sealed.checks(); n != 0 || fills != 2 {
		t.Fatalf("%d bytes kept, %d checks: want nothing kept and a check per load", n, fills)
	}
}

// A sandbox cannot change the artifact memfd the host shares with every
// sandbox of the module: from inside a live sandbox (the hostile proxy,
// before it forwards the Load, and a primed sandbox's Warm) writing,
// shrinking, growing, mapping it writable and adding a seal all fail; the
// sandbox then runs the canister. The host's memfd is intact and another
// canister of the module runs from it.
func TestSealedArtifactHostile(t *testing.T) {
	wasm := wasmFile(t, corpusDir, "counter")
	h := sha256.Sum256(wasm)
	x, m := newPooled(t, SandboxConfig{PreloadPool: 1, primedLabel: hostilePrefix + "sealed-attack"})
	s := newSim(t, x, hostilePrefix+"sealed-attack", wasm)
	s.must(sysapi.CtxInit, "canister_init", empty)
	if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("inc: %x", out.Reply)
	}
	// Again from a primed sandbox (its Warm carries the memfd).
	evict(t, x, s.id)
	p := waitPrimed(t, x, 1)[0]
	if out := s.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x02" {
		t.Fatalf("inc from the primed sandbox: %x", out.Reply)
	}
	if got := sandboxPid(x, s.id); got != p {
		t.Fatalf("canister in %d, not in the primed sandbox %d", got, p)
	}
	if st := x.Stats(); len(st.Faults) != 0 || st.PrimeFailures != 0 || m.get("spawned primed") != 1 {
		t.Fatalf("stats %+v, metrics %v: an attack succeeded or a sandbox failed", st, m.n)
	}
	checkSealed(t, x, h, sealedOf(t, x, h))
	b := newSim(t, x, "b", wasm)
	b.must(sysapi.CtxInit, "canister_init", empty)
	if out := b.must(sysapi.CtxUpdate, "canister_update inc", empty); string(out.Reply) != counterReply+"\x01" {
		t.Fatalf("b: inc: %x", out.Reply)
	}
}
