package boundary

import (
	"errors"
	"testing"

	"github.com/cordon-dev/cordon/internal/state"
)

// The host reserves an answer's pages, as the header announces them, before
// it receives any (Expect.Reserve). Refused, the answer is read in full and
// dropped: the error says why, and the connection is still in step, so the
// next answer on it is received as usual. Granted, the pages come as ever.
func TestReserveBeforePages(t *testing.T) {
	host, sb := pair(t)
	out := testOutput() // 2 heap pages, 1 stable page
	want := uint64(3 * state.PageSize)
	full := errors.New("no room")

	var asked []uint64
	exp := testExpect(1)
	exp.Reserve = func(b uint64) error { asked = append(asked, b); return full }
	errc := make(chan error, 1)
	go func() { errc <- sb.SendOutput(1, out) }()
	_, err := host.AwaitOutput(exp, nil)
	var re *ReserveError
	if !errors.As(err, &re) || !errors.Is(err, full) {
		t.Fatalf("refused answer: got %v, want a ReserveError wrapping %v", err, full)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	exp = testExpect(2)
	exp.Reserve = func(b uint64) error { asked = append(asked, b); return nil }
	go func() { errc <- sb.SendOutput(2, out) }()
	got, err := host.AwaitOutput(exp, nil)
	if err != nil {
		t.Fatalf("the answer after a refused one: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !Equal(got, out) {
		t.Fatalf("output differs:\n%+v\n%+v", got, out)
	}
	if len(asked) != 2 || asked[0] != want || asked[1] != want {
		t.Fatalf("reserved %v, want [%d %d]", asked, want, want)
	}

	// No pages: nothing to reserve.
	none := testOutput()
	none.Heap.Pages, none.Stable.Pages = nil, nil
	exp = testExpect(3)
	exp.Reserve = func(b uint64) error { t.Errorf("asked for %d bytes of an answer without pages", b); return full }
	go func() { errc <- sb.SendOutput(3, none) }()
	if _, err := host.AwaitOutput(exp, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// A refused answer among concurrent ones fails its execution alone.
func TestInflightReserveRefusedAlone(t *testing.T) {
	host, sb := pair(t)
	f := NewInflight(host)
	full := errors.New("no room")
	e1, e2 := testExpect(1), testExpect(2)
	e1.Reserve = func(uint64) error { return full }
	for _, e := range []*Expect{e1, e2} {
		if err := f.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	errc := make(chan error, 1)
	go func() {
		if err := sb.SendOutput(1, testOutput()); err != nil {
			errc <- err
			return
		}
		errc <- sb.SendOutput(2, testOutput())
	}()
	id, _, err := f.Next(nil)
	if id != 1 || !errors.Is(err, full) {
		t.Fatalf("first answer: id %d, %v; want 1 and the refusal", id, err)
	}
	id, out, err := f.Next(nil)
	if id != 2 || err != nil || !Equal(out, testOutput()) {
		t.Fatalf("second answer: id %d, %v", id, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
