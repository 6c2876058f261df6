package wasmbin

import (
	"slices"
	"testing"
)

func TestDataPages(t *testing.T) {
	cases := []struct {
		name  string
		src   string
		limit uint64
		want  []PageRange
		known bool
	}{
		{"none", `(module (memory 1))`, 65536, nil, true},
		{"one byte", `(module (memory 1) (data (i32.const 5000) "x"))`, 65536, []PageRange{{1, 2}}, true},
		{"across a page boundary", `(module (memory 1) (data (i32.const 4095) "xy"))`, 65536, []PageRange{{0, 2}}, true},
		{"empty segment", `(module (memory 1) (data (i32.const 8192) ""))`, 65536, nil, true},
		{"passive", `(module (memory 1) (data "passive"))`, 65536, nil, true},
		{"merged out of order", `(module (memory 4)
			(data (i32.const 40960) "c") (data (i32.const 0) "a") (data (i32.const 4096) "b") (data (i32.const 12288) "d"))`,
			4 * 65536, []PageRange{{0, 2}, {3, 4}, {10, 11}}, true},
		{"clipped to the initial memory", `(module (memory 1) (data (i32.const 65535) "xy") (data (i32.const 0xfffffff0) "z"))`,
			65536, []PageRange{{15, 16}}, true},
		{"negative i32 offset is unsigned", `(module (memory 65536) (data (i32.const -4096) "x"))`,
			65536 * 65536, []PageRange{{1<<20 - 1, 1 << 20}}, true},
		{"memory64", `(module (memory i64 2) (data (i64.const 70000) "x"))`, 2 * 65536, []PageRange{{17, 18}}, true},
		{"extended const", `(module (memory 4) (data (i32.add (i32.const 4096) (i32.mul (i32.const 3) (i32.const 4096))) "x"))`,
			4 * 65536, []PageRange{{4, 5}}, true},
		{"extended const wraps", `(module (memory 1) (data (i32.sub (i32.const 0) (i32.const -8192)) "x"))`,
			65536, []PageRange{{2, 3}}, true},
		{"imported global", `(module (import "env" "g" (global i32)) (memory 1)
			(data (i32.const 0) "a") (data (global.get 0) "b"))`, 65536, []PageRange{{0, 1}}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := wat(t, c.src)
			m, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			got, known, err := DataPages(b, m, c.limit)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, c.want) || known != c.known {
				t.Fatalf("DataPages = %v, known %v; want %v, %v", got, known, c.want, c.known)
			}
		})
	}
}

// Many segments, each on a page of its own in descending order: the runs
// kept while decoding stay bounded by the distinct runs, and all are found.
func TestDataPagesManySegments(t *testing.T) {
	const n = 5000
	var segs [][]byte
	for i := n - 1; i >= 0; i-- {
		off := uint64(i) * 2 * DataPageSize
		segs = append(segs, cat([]byte{0}, []byte{0x41}, sleb(int64(int32(off))), []byte{0x0b}, leb(1), []byte{'x'}))
	}
	b := module(
		sec(SectionMemory, vec(cat([]byte{0}, leb(2*n*DataPageSize/65536+1)))),
		sec(SectionData, vec(segs...)),
	)
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, known, err := DataPages(b, m, 1<<32)
	if err != nil || !known {
		t.Fatal(err, known)
	}
	if len(got) != n || got[0] != (PageRange{0, 1}) || got[n-1] != (PageRange{2 * (n - 1), 2*(n-1) + 1}) {
		t.Fatalf("%d runs, first %v last %v", len(got), got[0], got[len(got)-1])
	}
}

// A truncated or malformed data section is an error, never a panic.
func TestDataPagesMalformed(t *testing.T) {
	for name, seg := range map[string][]byte{
		"bad flags":          {7, 0x41, 0, 0x0b, 0},
		"truncated bytes":    {0, 0x41, 0, 0x0b, 5, 'x'},
		"unterminated expr":  {0, 0x41, 0},
		"bad opcode in expr": {0, 0x20, 0, 0x0b, 0},
	} {
		t.Run(name, func(t *testing.T) {
			b := module(sec(SectionMemory, vec(cat([]byte{0}, leb(1)))), sec(SectionData, cat(leb(1), seg)))
			m := &Module{Sections: []SectionHeader{{ID: SectionData, Start: len(b) - len(seg) - 1, End: len(b)}}}
			if _, _, err := DataPages(b, m, 65536); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

// sleb encodes a signed LEB128 value.
func sleb(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

// A passive segment of one byte takes three bytes of the section.
func TestDataPagesPassiveOnly(t *testing.T) {
	b := wat(t, `(module (memory 1) (data "x"))`)
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got, known, err := DataPages(b, m, 65536); err != nil || !known || got != nil {
		t.Fatal(got, known, err)
	}
}
