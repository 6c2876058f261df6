package state

import (
	"bytes"
	"errors"
	"testing"
)

func page(b byte) *Page {
	p := new(Page)
	for i := range p {
		p[i] = b
	}
	return p
}

func TestDeltaValidate(t *testing.T) {
	ok := Delta{Size: 3 * PageSize, Pages: []DirtyPage{{0, page(1)}, {2, page(2)}}}
	if err := ok.Validate(1 << 20); err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]Delta{
		"too big":       {Size: 2 << 20},
		"out of range":  {Size: PageSize, Pages: []DirtyPage{{1, page(1)}}},
		"duplicate":     {Size: 2 * PageSize, Pages: []DirtyPage{{0, page(1)}, {0, page(2)}}},
		"out of order":  {Size: 2 * PageSize, Pages: []DirtyPage{{1, page(1)}, {0, page(2)}}},
		"nil page data": {Size: PageSize, Pages: []DirtyPage{{0, nil}}},
	} {
		if err := d.Validate(1 << 20); !errors.Is(err, ErrInvalidDelta) {
			t.Errorf("%s: got %v", name, err)
		}
	}
}

func TestApplyAndRead(t *testing.T) {
	m := NewPageMap(0)
	if err := m.Apply(Delta{Size: 2 * PageSize, Pages: []DirtyPage{{1, page(7)}}}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if err := m.ReadAt(buf, PageSize-5); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, []byte{0, 0, 0, 0, 0, 7, 7, 7, 7, 7}) {
		t.Fatalf("read across pages: %v", buf)
	}
	if err := m.ReadAt(buf, 2*PageSize-5); err == nil {
		t.Fatal("read past the end succeeded")
	}
	if err := m.Apply(Delta{Size: PageSize}); err == nil {
		t.Fatal("memory shrank")
	}
	// Writing zeros drops the page: absent and zero are the same memory.
	if err := m.Apply(Delta{Size: 2 * PageSize, Pages: []DirtyPage{{1, page(0)}}}); err != nil {
		t.Fatal(err)
	}
	if len(m.StoredPages()) != 0 {
		t.Fatal("zero page stored")
	}
}

func TestOverlayIsCopyOnWrite(t *testing.T) {
	base := NewPageMap(2 * PageSize)
	_ = base.SetPage(0, page(1))
	o := NewOverlay(base)
	if err := o.WriteAt([]byte{9, 9}, PageSize-1); err != nil {
		t.Fatal(err)
	}
	if base.Page(0)[PageSize-1] != 1 {
		t.Fatal("overlay wrote through to its base")
	}
	d := o.Delta()
	if len(d.Pages) != 2 || d.Pages[0].Index != 0 || d.Pages[1].Index != 1 || d.Pages[0].Data[PageSize-1] != 9 {
		t.Fatalf("delta: %+v", d)
	}
	if err := o.WriteAt([]byte{1}, 2*PageSize); err == nil {
		t.Fatal("write past the end succeeded")
	}
	o.Grow(3 * PageSize)
	if err := o.WriteAt([]byte{1}, 2*PageSize); err != nil {
		t.Fatal(err)
	}
	if err := base.Apply(o.Delta()); err != nil {
		t.Fatal(err)
	}
	if base.Size() != 3*PageSize || base.Page(2)[0] != 1 {
		t.Fatal("apply of overlay delta")
	}
}

func TestHashDistinguishesStates(t *testing.T) {
	h := func(m *PageMap, g []Global) [32]byte {
		s := NewHasher()
		s.Memory("heap", m)
		s.Globals(g)
		return s.Sum()
	}
	a := NewPageMap(PageSize)
	b := NewPageMap(PageSize)
	_ = b.SetPage(0, page(0)) // explicit zero page: same memory
	if h(a, nil) != h(b, nil) {
		t.Fatal("zero page changed the hash")
	}
	_ = b.SetPage(0, page(1))
	if h(a, nil) == h(b, nil) {
		t.Fatal("different memories, same hash")
	}
	if h(a, []Global{{GlobalI32, 1}}) == h(a, []Global{{GlobalI64, 1}}) {
		t.Fatal("global type not hashed")
	}
	if h(NewPageMap(PageSize), nil) == h(NewPageMap(2*PageSize), nil) {
		t.Fatal("size not hashed")
	}
}
