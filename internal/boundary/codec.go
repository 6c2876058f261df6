package boundary

import (
	"encoding/binary"
	"math"
	"math/bits"

	"github.com/cordon-dev/cordon/internal/cycles"
)

// writer appends the fixed encodings. Encoding cannot fail.
type writer struct{ b []byte }

func (w *writer) u8(v uint8)   { w.b = append(w.b, v) }
func (w *writer) u32(v uint32) { w.b = binary.LittleEndian.AppendUint32(w.b, v) }
func (w *writer) u64(v uint64) { w.b = binary.LittleEndian.AppendUint64(w.b, v) }
func (w *writer) bool(v bool) {
	if v {
		w.u8(1)
	} else {
		w.u8(0)
	}
}
func (w *writer) bytes(b []byte) { w.u64(uint64(len(b))); w.b = append(w.b, b...) }
func (w *writer) str(s string)   { w.u64(uint64(len(s))); w.b = append(w.b, s...) }
func (w *writer) amount(a cycles.Amount) {
	w.u64(a.Hi)
	w.u64(a.Lo)
}

// count writes a non-negative count (ints from trusted structures).
func (w *writer) count(n int) { w.u64(uint64(n)) }

// reader decodes a body. The first error sticks: later reads return zero
// values, so decoders can read a whole structure and check once. Every
// length and count is checked against a cap and against what remains
// before anything is allocated.
type reader struct {
	b   []byte
	err *Violation
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = violation(VDecode, format, args...)
	}
}

func (r *reader) remaining() uint64 { return uint64(len(r.b)) }

func (r *reader) take(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > r.remaining() {
		r.fail("%s: %d bytes needed, %d remain", what, n, r.remaining())
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8(what string) uint8 {
	b := r.take(1, what)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) u32(what string) uint32 {
	b := r.take(4, what)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint32(b)
}

func (r *reader) u64(what string) uint64 {
	b := r.take(8, what)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint64(b)
}

func (r *reader) bool(what string) bool {
	v := r.u8(what)
	if v > 1 {
		r.fail("%s: boolean byte %d", what, v)
		return false
	}
	return v == 1
}

func (r *reader) amount(what string) cycles.Amount {
	hi := r.u64(what)
	lo := r.u64(what)
	return cycles.Amount{Hi: hi, Lo: lo}
}

// length reads a length prefix and checks it against max and what remains.
func (r *reader) length(max uint64, what string) uint64 {
	n := r.u64(what)
	if r.err != nil {
		return 0
	}
	if n > max {
		r.fail("%s: length %d exceeds %d", what, n, max)
		return 0
	}
	if n > r.remaining() {
		r.fail("%s: length %d but %d bytes remain", what, n, r.remaining())
		return 0
	}
	return n
}

// bytes reads a length-prefixed byte string of at most max bytes. The
// result aliases the body (bodies are never reused). A zero length gives a
// non-nil empty slice.
func (r *reader) bytes(max uint64, what string) []byte {
	n := r.length(max, what)
	if r.err != nil {
		return nil
	}
	return r.take(n, what)
}

func (r *reader) str(max uint64, what string) string { return string(r.bytes(max, what)) }

// count reads an element count of at most max, where every element takes
// at least minSize bytes: the count must fit in what remains, so a claimed
// count never drives an allocation larger than the body itself.
func (r *reader) count(max, minSize uint64, what string) int {
	n := r.u64(what)
	if r.err != nil {
		return 0
	}
	if n > max {
		r.fail("%s: count %d exceeds %d", what, n, max)
		return 0
	}
	hi, lo := bits.Mul64(n, minSize)
	if hi != 0 || lo > r.remaining() {
		r.fail("%s: count %d cannot fit in %d bytes", what, n, r.remaining())
		return 0
	}
	if n > math.MaxInt32 {
		r.fail("%s: count %d", what, n)
		return 0
	}
	return int(n)
}

// done checks that the body was consumed exactly.
func (r *reader) done(what string) *Violation {
	if r.err == nil && len(r.b) != 0 {
		r.fail("%s: %d trailing bytes", what, len(r.b))
	}
	return r.err
}

// addU64 adds with overflow detection.
func addU64(a, b uint64) (uint64, bool) {
	s, c := bits.Add64(a, b, 0)
	return s, c == 0
}

// mulU64 multiplies with overflow detection.
func mulU64(a, b uint64) (uint64, bool) {
	hi, lo := bits.Mul64(a, b)
	return lo, hi == 0
}

// satAdd and satMul saturate at MaxUint64 (for caps, never for accounting).
func satAdd(a, b uint64) uint64 {
	if s, ok := addU64(a, b); ok {
		return s
	}
	return math.MaxUint64
}

func satMul(a, b uint64) uint64 {
	if p, ok := mulU64(a, b); ok {
		return p
	}
	return math.MaxUint64
}

// nonNeg converts a limit given as int (possibly negative) to uint64.
func nonNeg(v int) uint64 {
	if v < 0 {
		return 0
	}
	return uint64(v)
}
