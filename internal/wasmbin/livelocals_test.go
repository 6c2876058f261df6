package wasmbin

import "testing"

// The weights of small bodies, as the doc of LiveLocals counts them
// (visits: a write noted in a construct, its check at the construct's
// end, and each check of a pending join by a later write). The function
// is (param i64) (local i64 i64): locals 0 (the param), 1, 2.
func TestLiveLocalsWeight(t *testing.T) {
	var (
		cond   = []byte{0x20, 0, 0xa7}    // local.get 0; i32.wrap_i64
		set1   = []byte{0x42, 1, 0x21, 1} // i64.const 1; local.set 1
		read1  = []byte{0x20, 1, 0x1a}    // local.get 1; drop
		ifSet1 = cat(cond, []byte{0x04, 0x40}, set1, []byte{0x0b})
	)
	for _, tc := range []struct {
		name string
		body []byte // after the local declarations, before the final end
		want LiveLocalsWeight
	}{
		{"no construct", []byte{0x20, 0, 0x1a}, LiveLocalsWeight{}},
		// if (boundary 1) … end (2): local 1 written at 1, read at 2.
		{"written in an if, read after", cat(ifSet1, read1), LiveLocalsWeight{Merges: 2, Spans: 1, Visits: 2}},
		{"written in an if, rewritten before a read", cat(ifSet1, set1, read1), LiveLocalsWeight{Spans: 1, Visits: 3}},
		// The second if's write is conditional: both joins reach the read.
		// Local 0, read by the second if's condition, spans two boundaries.
		{"rewritten only in another if", cat(ifSet1, ifSet1, read1), LiveLocalsWeight{Merges: 4, Spans: 5, Visits: 5}},
		// Every edge into the block's join carries the write's value.
		{"block, branch after the write", cat([]byte{0x02, 0x40}, set1, cond, []byte{0x0d, 0, 0x0b}, read1), LiveLocalsWeight{Spans: 2, Visits: 2}},
		{"block, branch before the write", cat([]byte{0x02, 0x40}, cond, []byte{0x0d, 0}, set1, []byte{0x0b}, read1), LiveLocalsWeight{Merges: 2, Spans: 1, Visits: 2}},
		// A branch out of the outer block skips the rewrite: the if's join
		// and the block's both reach the read.
		{"branch out before the rewrite", cat([]byte{0x02, 0x40}, ifSet1, cond, []byte{0x0d, 0}, set1, []byte{0x0b}, read1), LiveLocalsWeight{Merges: 4, Spans: 5, Visits: 5}},
		// The loop's header joins the entry and the br_if; local 1 is read
		// in it (first access a read: live from the start) up to its end.
		{"loop", cat([]byte{0x03, 0x40}, read1, set1, cond, []byte{0x0d, 0, 0x0b}), LiveLocalsWeight{Merges: 2, Spans: 6, Visits: 2}},
		// The result is on the stack across the block's end.
		{"block type results", []byte{0x02, 0x7e, 0x42, 1, 0x0b, 0x1a}, LiveLocalsWeight{Merges: 1, Spans: 1}},
		// Two values on the operand stack across two block ends.
		{"stack across blocks", []byte{0x42, 1, 0x42, 2, 0x02, 0x40, 0x0b, 0x02, 0x40, 0x0b, 0x1a, 0x1a}, LiveLocalsWeight{Spans: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := cat([]byte{1, 2, 0x7e}, tc.body, []byte{0x0b})
			b := module(sec(SectionType, vec([]byte{0x60, 1, 0x7e, 0})), sec(SectionFunction, vec([]byte{0})),
				sec(SectionCode, vec(cat(leb(uint64(len(body))), body))))
			m, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			lim := LiveLocalsLimits{LiveLocalsWeight{1 << 40, 1 << 40, 1 << 40}, 1 << 40, 1 << 40, 1 << 40}
			got, err := LiveLocals(b, m, lim)
			if err != nil || got.Most != tc.want {
				t.Fatalf("weights %+v (%v), want %+v", got.Most, err, tc.want)
			}
		})
	}
}
