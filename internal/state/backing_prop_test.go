package state_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cordon-dev/cordon/internal/state"
)

// Backed page maps (one copy: the pages are the image's) against the
// model, with what shares their images: a reader taken before each message
// (a query's frame) must see the memory as it was, whatever is applied
// meanwhile; some messages run on a fork (an upgrade), which either
// replaces the committed map or is abandoned, handing the image back.
// Every descriptor and mapping is gone when everything is released.
func TestBackedPageMapMatchesModel(t *testing.T) {
	rng := seedRNG(t)
	descs := state.ImageDescriptors()
	for run := range 100 / propScale {
		size := uint64(rng.Intn(8)) * state.PageSize / 2
		committed, model := state.NewBackedPageMap(size), make([]byte, size)
		if !committed.Backed() {
			t.Fatal("no backed page map")
		}
		for msg := range 30 {
			what := fmt.Sprintf("run %d message %d", run, msg)
			reader, readerModel := committed.Clone(), bytes.Clone(model)
			target := committed
			fork := rng.Intn(3) == 0
			if fork {
				target = committed.Fork()
			}
			o, after := message(t, rng, target, model)
			d := o.Delta()
			checkDelta(t, d, model, after)
			if err := target.Apply(d); err != nil {
				t.Fatalf("%s: apply: %v", what, err)
			}
			checkMemory(t, what+" reader", reader, readerModel)
			checkLayers(t, what+" reader", reader, readerModel)
			switch {
			case fork && rng.Intn(2) == 0: // abandoned: the committed map is as it was
				target.Release()
				checkMemory(t, what+" after an abandoned fork", committed, model)
			case fork: // the fork replaces the committed map
				committed.Release()
				committed, model = target, after
			default:
				model = after
			}
			checkMemoryImage(t, what, committed, model, true)
			if len(model) > 0 && committed.File() == nil {
				t.Fatalf("%s: the committed map has no image", what)
			}
			checkMemory(t, what+" reader at the end", reader, readerModel)
			checkLayers(t, what+" reader at the end", reader, readerModel)
			checkLayers(t, what+" committed", committed, model)
			reader.Release()
		}
		if hashOf(committed) != hashOf(fromModel(t, model)) {
			t.Fatalf("run %d: hash of the committed map differs from the hash of the model", run)
		}
		committed.Release()
	}
	if got := state.ImageDescriptors(); got != descs {
		t.Fatalf("image descriptors %d → %d", descs, got)
	}
}

// checkLayers checks that m given as layers (state.Layers: its image's
// first Base bytes, zeros beyond, its pages laid over both) is the model,
// from both descriptors, when m's sizes allow layers (whole pages).
func checkLayers(t *testing.T, what string, m *state.PageMap, model []byte) {
	t.Helper()
	for _, get := range []func() (state.Layers, bool){m.Layers, m.ReadOnlyLayers} {
		l, ok := get()
		if !ok {
			if uint64(len(model))%state.PageSize == 0 {
				t.Fatalf("%s: a backed map of whole pages cannot be given as layers", what)
			}
			return
		}
		if l.Size != uint64(len(model)) || l.Base > l.Size {
			t.Fatalf("%s: layers of %d bytes over %d, model %d", what, l.Size, l.Base, len(model))
		}
		got := make([]byte, l.Size)
		if _, err := l.File.ReadAt(got[:l.Base], 0); err != nil {
			t.Fatalf("%s: read image: %v", what, err)
		}
		for k, p := range l.Pages {
			if k > 0 && p.Index <= l.Pages[k-1].Index {
				t.Fatalf("%s: laid pages out of order", what)
			}
			copy(got[p.Index*state.PageSize:], p.Data[:])
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("%s: layers differ from the model at byte %d", what, firstDiff(got, model))
		}
	}
}
