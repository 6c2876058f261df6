package state_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cordon-dev/cordon/internal/state"
)

// Charged frames (CloneCharged, as the host makes them) across many
// commits, with charges that refuse at random: a frame whose charge
// refused is revoked and released (its query ends); every other frame
// reads as its model throughout, however the copies it holds are shared,
// and the copies held never exceed what their frames were charged.
func TestChargedFramesMatchModel(t *testing.T) {
	rng := seedRNG(t)
	descs := state.ImageDescriptors()
	type frame struct {
		m       *state.PageMap
		model   []byte
		charged *uint64 // what the frame was charged, all its clones together
	}
	revoked := 0
	for run := range 30 / propScale {
		size := uint64(1+rng.Intn(4)) * state.PageSize
		committed, model := state.NewBackedPageMap(size), make([]byte, size)
		var frames []*frame
		charge := func(f *frame) func(uint64) bool {
			return func(n uint64) bool {
				if rng.Intn(8) == 0 {
					return false
				}
				*f.charged += n
				return true
			}
		}
		newFrame := func(of *state.PageMap, model []byte, charged *uint64) {
			f := &frame{model: bytes.Clone(model), charged: charged}
			f.m = of.CloneCharged(charge(f))
			frames = append(frames, f)
		}
		for step := range 60 {
			what := fmt.Sprintf("run %d step %d", run, step)
			switch op := rng.Intn(10); {
			case op < 2: // a new frame
				newFrame(committed, model, new(uint64))
			case op < 5 && len(frames) > 0: // a frame's execution, and its clone advanced
				k := rng.Intn(len(frames))
				f := frames[k]
				o, after := pageMessage(t, rng, f.m, f.model)
				frames = append(frames[:k], frames[k+1:]...)
				newFrame(f.m, f.model, f.charged)
				next := frames[len(frames)-1]
				f.m.Release()
				if err := next.m.Apply(o.Delta()); err != nil {
					t.Fatalf("%s: apply to a frame: %v", what, err)
				}
				next.model = after
			case op < 6 && len(frames) > 0: // a frame ends
				k := rng.Intn(len(frames))
				frames[k].m.Release()
				frames = append(frames[:k], frames[k+1:]...)
			default: // an update commits
				o, after := pageMessage(t, rng, committed, model)
				if err := committed.Apply(o.Delta()); err != nil {
					t.Fatalf("%s: apply: %v", what, err)
				}
				model = after
			}
			var charged uint64
			live := frames[:0]
			for _, f := range frames {
				if f.m.Revoked() {
					revoked++
					f.m.Release()
					continue
				}
				live = append(live, f)
				charged += *f.charged
			}
			frames = live
			for k, f := range frames {
				checkMemory(t, fmt.Sprintf("%s: frame %d", what, k), f.m, f.model)
			}
			checkMemory(t, what+": committed", committed, model)
			if held := committed.CopiedBytes(); held > charged {
				t.Fatalf("%s: the frames hold %d bytes of copies, were charged %d", what, held, charged)
			}
		}
		committed.Release()
		for _, f := range frames {
			f.m.Release()
		}
	}
	if got := state.ImageDescriptors(); got != descs {
		t.Fatalf("image descriptors %d → %d", descs, got)
	}
	t.Logf("frames revoked: %d", revoked)
}
