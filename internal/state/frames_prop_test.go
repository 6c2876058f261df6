package state_test

import (
	"bytes"
	"fmt"
	"math/rand"
	"testing"

	"github.com/cordon-dev/cordon/internal/state"
)

// Composite query frames as the host keeps them, attacked: several clones
// (frames) live at once across many commits, each writes and grows its own
// memory (a frame's executions), frames are cloned again (a callback
// advancing one), commits run on the committed map or on a fork that is
// abandoned or replaces it (an upgrade), the committed map is given back
// (Unback, a cold canister) and backed again, and frames outlive the
// committed map they were taken of. Every frame must read as its own model
// throughout: the memory it was taken from plus its own writes, never a
// commit's, never another frame's, and likewise as layers (what a sandbox
// or the in-process engine maps).
func TestFramesMatchModel(t *testing.T) {
	rng := seedRNG(t)
	descs := state.ImageDescriptors()
	type frame struct {
		m     *state.PageMap
		model []byte
	}
	for run := range 30 / propScale {
		size := uint64(rng.Intn(4)) * state.PageSize
		committed, model := state.NewBackedPageMap(size), make([]byte, size)
		var frames []*frame
		check := func(what string) {
			t.Helper()
			for k, f := range frames {
				w := fmt.Sprintf("%s: frame %d", what, k)
				checkMemory(t, w, f.m, f.model)
				checkFrameLayers(t, w, f.m, f.model)
			}
			checkMemory(t, what+": committed", committed, model)
		}
		for step := range 60 {
			what := fmt.Sprintf("run %d step %d", run, step)
			switch op := rng.Intn(12); {
			case op < 2: // a new frame of the committed memories
				frames = append(frames, &frame{committed.Clone(), bytes.Clone(model)})
			case op < 3 && len(frames) > 0: // a frame of a frame
				f := frames[rng.Intn(len(frames))]
				frames = append(frames, &frame{f.m.Clone(), bytes.Clone(f.model)})
			case op < 6 && len(frames) > 0: // a frame's execution
				f := frames[rng.Intn(len(frames))]
				o, after := pageMessage(t, rng, f.m, f.model)
				if err := f.m.Apply(o.Delta()); err != nil {
					t.Fatalf("%s: apply to a frame: %v", what, err)
				}
				f.model = after
			case op < 7 && len(frames) > 0: // a frame ends
				k := rng.Intn(len(frames))
				frames[k].m.Release()
				frames = append(frames[:k], frames[k+1:]...)
			case op < 8: // cold, then warm again
				if committed.Unback() {
					committed.Back()
				}
			case op < 9: // an upgrade
				fork := committed.Fork()
				o, after := pageMessage(t, rng, fork, model)
				if err := fork.Apply(o.Delta()); err != nil {
					t.Fatalf("%s: apply to a fork: %v", what, err)
				}
				check(what + " (fork applied)")
				if rng.Intn(2) == 0 {
					fork.Release()
				} else {
					committed.Release()
					committed, model = fork, after
				}
			default: // an update commits
				o, after := pageMessage(t, rng, committed, model)
				if err := committed.Apply(o.Delta()); err != nil {
					t.Fatalf("%s: apply: %v", what, err)
				}
				model = after
			}
			check(what)
		}
		committed.Release()
		for _, f := range frames {
			checkMemory(t, fmt.Sprintf("run %d: a frame after the committed map's release", run), f.m, f.model)
			checkFrameLayers(t, fmt.Sprintf("run %d: a frame after the committed map's release", run), f.m, f.model)
			f.m.Release()
		}
	}
	if got := state.ImageDescriptors(); got != descs {
		t.Fatalf("image descriptors %d → %d", descs, got)
	}
	t.Logf("frames checked as layers: %d", layersChecked)
}

// checkFrameLayers is checkLayers where a frame may not be given as layers
// (a clone of an ordinary map; sizes of part pages, which Wasm never has).
var layersChecked int

func checkFrameLayers(t *testing.T, what string, m *state.PageMap, model []byte) {
	t.Helper()
	if _, ok := m.Layers(); ok || m.Backed() {
		layersChecked++
		checkLayers(t, what, m, model)
	}
}

// pageMessage is message with memories of whole pages, as Wasm's are (so
// that every backed map can be given as layers): random writes, some of
// zeros, and growth by whole pages.
func pageMessage(t *testing.T, rng *rand.Rand, m *state.PageMap, model []byte) (*state.Overlay, []byte) {
	t.Helper()
	o := state.NewOverlay(m)
	pending := bytes.Clone(model)
	for range 1 + rng.Intn(8) {
		if rng.Intn(4) == 0 {
			grow := uint64(rng.Intn(3)) * state.PageSize
			if uint64(len(pending))+grow <= maxPages*state.PageSize {
				o.Grow(uint64(len(pending)) + grow)
				pending = append(pending, make([]byte, grow)...)
			}
			continue
		}
		off, n := randomRange(rng, uint64(len(pending)))
		b := randomBytes(rng, n)
		if err := o.WriteAt(b, off); err != nil {
			t.Fatalf("write [%d, +%d) of %d: %v", off, n, len(pending), err)
		}
		copy(pending[off:], b)
	}
	return o, pending
}
