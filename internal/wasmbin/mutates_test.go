package wasmbin

import (
	"path/filepath"
	"testing"
)

// The engine keeps an instance between queries only when this says no
// (engine's keep.go): a wrong "false" would let one query's table or segment
// changes reach the next. Every instruction that changes a table or a
// segment's liveness must be found wherever it is, and instructions that
// only read them, or change memory and globals, must not be.
func TestChangesTablesOrSegments(t *testing.T) {
	// prelude declares a table, a passive element and data segment, a memory
	// and a mutable global for the bodies below to use.
	const prelude = `
  (type $v (func))
  (table $t 4 funcref)
  (memory 1)
  (global $g (mut i32) (i32.const 0))
  (func $f)
  (elem $e func $f)
  (data $d "abc")`
	cases := []struct {
		name string
		body string
		want bool
	}{
		{"table.set", `(table.set $t (i32.const 0) (ref.null func))`, true},
		{"table.grow", `(drop (table.grow $t (ref.null func) (i32.const 1)))`, true},
		{"table.fill", `(table.fill $t (i32.const 0) (ref.null func) (i32.const 1))`, true},
		{"table.copy", `(table.copy $t $t (i32.const 0) (i32.const 1) (i32.const 1))`, true},
		{"table.init", `(table.init $t $e (i32.const 0) (i32.const 0) (i32.const 1))`, true},
		{"elem.drop", `(elem.drop $e)`, true},
		{"data.drop", `(data.drop $d)`, true},
		// Deep inside control flow and after other instructions.
		{"nested data.drop", `(block (loop (if (i32.const 1) (then (nop) (data.drop $d))) ))`, true},
		// Reads, memory and globals only.
		{"table.get", `(drop (table.get $t (i32.const 0)))`, false},
		{"table.size", `(drop (table.size $t))`, false},
		{"call_indirect", `(call_indirect (type $v) (i32.const 0))`, false},
		{"memory.init", `(memory.init $d (i32.const 0) (i32.const 0) (i32.const 3))`, false},
		{"memory ops", `(memory.fill (i32.const 0) (i32.const 1) (i32.const 2)) (memory.copy (i32.const 0) (i32.const 1) (i32.const 1)) (drop (memory.grow (i32.const 1)))`, false},
		{"global.set", `(global.set $g (i32.const 1))`, false},
		{"empty", ``, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := wat(t, "(module"+prelude+"\n  (func (export \"run\") "+tc.body+"))")
			got, err := DefaultConfig().ChangesTablesOrSegments(b)
			if err != nil {
				t.Fatalf("ChangesTablesOrSegments: %v", err)
			}
			if got != tc.want {
				t.Fatalf("ChangesTablesOrSegments = %v, want %v", got, tc.want)
			}
		})
	}
}

// A module whose bodies do not decode must be taken to change its tables:
// the caller cannot know it does not.
func TestChangesTablesOrSegmentsMalformed(t *testing.T) {
	good := wat(t, `(module (func (export "run") (drop (i32.const 7))))`)
	// Truncate inside the code section: the body no longer decodes.
	for cut := len(good) - 1; cut > 8; cut-- {
		got, err := DefaultConfig().ChangesTablesOrSegments(good[:cut])
		if err == nil {
			// Some prefixes are complete modules (dropped trailing
			// sections); those must decode to the right answer.
			if got {
				t.Errorf("prefix %d decodes yet reports a change", cut)
			}
			continue
		}
		if !got {
			t.Errorf("prefix %d: error %v with false: must be true", cut, err)
		}
	}
	// A body with an unknown opcode.
	bad := module(
		sec(SectionType, vec(funcTypeVoid)),
		sec(SectionFunction, vec(leb(0))),
		sec(SectionCode, vec([]byte{3, 0, 0xff, 0x0b})),
	)
	got, err := DefaultConfig().ChangesTablesOrSegments(bad)
	if err == nil || !got {
		t.Fatalf("unknown opcode: got (%v, %v), want (true, error)", got, err)
	}
}

// Every corpus canister's bodies decode (an error would silently disable
// kept instances for it), and the query canister the benchmarks measure,
// counter, is one whose instances may be kept.
func TestChangesTablesOrSegmentsCorpus(t *testing.T) {
	for _, f := range realModules(t) {
		got, err := DefaultConfig().ChangesTablesOrSegments(readFile(t, f))
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
			continue
		}
		if filepath.Base(f) == "counter.wasm" && got {
			t.Errorf("counter.wasm: reported to change tables or segments")
		}
		t.Logf("%s: changes tables or segments: %v", filepath.Base(f), got)
	}
}
