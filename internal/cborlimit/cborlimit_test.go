package cborlimit

import (
	"bytes"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

func mustEnc(t *testing.T, v any) []byte {
	t.Helper()
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCheckCounts(t *testing.T) {
	v := map[string]any{"a": []any{uint64(1), []byte("xyz"), "s"}, "b": cbor.Tag{Number: 55799, Content: uint64(0)}}
	// map 1 + "a" 1 + array 1 + 3 + "b" 1 + tag 1 + content 1 = 9 items;
	// depth 2 (map, then array or tag).
	b := mustEnc(t, v)
	if err := Check(b, 9, 2); err != nil {
		t.Fatalf("within bounds: %v", err)
	}
	if err := Check(b, 8, 2); err == nil || !strings.Contains(err.Error(), "more than 8") {
		t.Fatalf("9 items under a bound of 8: %v", err)
	}
	if err := Check(b, 9, 1); err == nil || !strings.Contains(err.Error(), "deeper than 1") {
		t.Fatalf("depth 2 under a bound of 1: %v", err)
	}
}

// TestCheckHostile: shapes that would make a decoder allocate are refused
// by their counts, whatever their size, and errors do not echo the data.
func TestCheckHostile(t *testing.T) {
	deep := append(bytes.Repeat([]byte{0x81}, 10000), 0x00) // [[[[…0…]]]]
	if err := Check(deep, 1<<20, 64); err == nil || !strings.Contains(err.Error(), "deeper than 64") {
		t.Fatalf("10000 levels: %v", err)
	}
	wide := append([]byte{0x9a, 0xff, 0xff, 0xff, 0xff}, bytes.Repeat([]byte{0x80}, 100)...) // a 4-billion-item array
	if err := Check(wide, 4096, 64); err == nil || !strings.Contains(err.Error(), "more than 4096") {
		t.Fatalf("huge array head: %v", err)
	}
	tags := append(bytes.Repeat([]byte{0xc1}, 1000), 0x00)
	if err := Check(tags, 4096, 16); err == nil {
		t.Fatal("1000 nested tags passed a depth bound of 16")
	}
	for _, b := range [][]byte{{}, {0x9f}, {0x5a, 0, 0, 0, 9, 1}, {0x82, 0x00}, {0x1c}} {
		if err := Check(b, 4096, 16); err == nil {
			t.Fatalf("% x: malformed data passed", b)
		} else if len(err.Error()) > 80 {
			t.Fatalf("error of %d bytes", len(err.Error()))
		}
	}
}

func FuzzCheck(f *testing.F) {
	f.Add([]byte{0x82, 0x01, 0x02})
	f.Add([]byte{0xd9, 0xd9, 0xf7, 0xa1, 0x61, 0x61, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		const items, depth = 64, 8
		if Check(b, items, depth) != nil {
			return
		}
		// What Check accepts decodes within the same bounds (or is
		// refused by the decoder for other reasons), never beyond.
		dm, err := cbor.DecOptions{MaxNestedLevels: depth + 1, MaxArrayElements: items, MaxMapPairs: items}.DecMode()
		if err != nil {
			t.Fatal(err)
		}
		var v any
		_, _ = dm.UnmarshalFirst(b, &v)
	})
}
