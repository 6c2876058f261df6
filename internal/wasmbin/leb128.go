package wasmbin

import (
	"fmt"
	"unicode/utf8"
)

// reader is a bounds-checked cursor over the module bytes. Every read checks
// the remaining length first, so no input can make it index out of range.
// Offsets in errors are absolute positions in the whole module, which is why
// the reader keeps the full slice and a separate end bound for the current
// section instead of re-slicing.
type reader struct {
	b       []byte
	pos     int
	end     int    // exclusive bound of the region being read (section end)
	section string // for error messages
}

func (r *reader) remaining() int { return r.end - r.pos }

// fail builds an *Error located at off.
func (r *reader) fail(off int, kind error, format string, args ...any) *Error {
	return &Error{Section: r.section, Offset: off, Err: kind, Msg: fmt.Sprintf(format, args...)}
}

func (r *reader) byte(what string) (byte, error) {
	if r.pos >= r.end {
		return 0, r.fail(r.pos, ErrTruncated, "reading %s", what)
	}
	c := r.b[r.pos]
	r.pos++
	return c, nil
}

// bytes returns the next n bytes as a sub-slice of the input (not a copy).
func (r *reader) bytes(n int, what string) ([]byte, error) {
	if n < 0 || n > r.remaining() {
		return nil, r.fail(r.pos, ErrTruncated, "%s: need %d bytes, %d remain", what, n, r.remaining())
	}
	s := r.b[r.pos : r.pos+n : r.pos+n]
	r.pos += n
	return s, nil
}

// u32 reads an unsigned LEB128 value of at most 5 bytes. The 5th byte may only
// carry the top 4 bits of the value; anything else (continuation bit, or bits
// beyond 32) is rejected as the spec requires.
func (r *reader) u32(what string) (uint32, error) {
	start := r.pos
	var v uint32
	for i := 0; i < 5; i++ {
		if r.pos >= r.end {
			return 0, r.fail(start, ErrTruncated, "%s: unterminated LEB128", what)
		}
		c := r.b[r.pos]
		r.pos++
		if i == 4 && c&0xf0 != 0 {
			return 0, r.fail(start, ErrMalformed, "%s: u32 LEB128 too long or out of range", what)
		}
		v |= uint32(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			return v, nil
		}
	}
	return 0, r.fail(start, ErrMalformed, "%s: u32 LEB128 too long", what) // unreachable: i == 4 returns
}

// u64 reads an unsigned LEB128 value of at most 10 bytes; the 10th byte may
// only carry bit 63.
func (r *reader) u64(what string) (uint64, error) {
	start := r.pos
	var v uint64
	for i := 0; i < 10; i++ {
		if r.pos >= r.end {
			return 0, r.fail(start, ErrTruncated, "%s: unterminated LEB128", what)
		}
		c := r.b[r.pos]
		r.pos++
		if i == 9 && c&0xfe != 0 {
			return 0, r.fail(start, ErrMalformed, "%s: u64 LEB128 too long or out of range", what)
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			return v, nil
		}
	}
	return 0, r.fail(start, ErrMalformed, "%s: u64 LEB128 too long", what) // unreachable: i == 9 returns
}

// s32 reads a signed LEB128 value of at most 5 bytes. In the 5th byte the
// bits above the 32-bit sign bit must be copies of it (sign extension).
func (r *reader) s32(what string) (int32, error) {
	start := r.pos
	var v uint32
	for i := 0; i < 5; i++ {
		if r.pos >= r.end {
			return 0, r.fail(start, ErrTruncated, "%s: unterminated LEB128", what)
		}
		c := r.b[r.pos]
		r.pos++
		if i == 4 {
			if c&0x80 != 0 || (c&0x78 != 0 && c&0x78 != 0x78) {
				return 0, r.fail(start, ErrMalformed, "%s: s32 LEB128 too long or out of range", what)
			}
			return int32(v | uint32(c&0x0f)<<28), nil
		}
		v |= uint32(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			shift := 7 * (i + 1)
			if c&0x40 != 0 { // sign-extend
				v |= ^uint32(0) << shift
			}
			return int32(v), nil
		}
	}
	return 0, r.fail(start, ErrMalformed, "%s: s32 LEB128 too long", what) // unreachable: i == 4 returns
}

// s64 reads a signed LEB128 value of at most 10 bytes. In the 10th byte the
// bits above bit 63 must be copies of it.
func (r *reader) s64(what string) (int64, error) {
	start := r.pos
	var v uint64
	for i := 0; i < 10; i++ {
		if r.pos >= r.end {
			return 0, r.fail(start, ErrTruncated, "%s: unterminated LEB128", what)
		}
		c := r.b[r.pos]
		r.pos++
		if i == 9 {
			if c&0x80 != 0 || (c&0x7f != 0 && c&0x7f != 0x7f) {
				return 0, r.fail(start, ErrMalformed, "%s: s64 LEB128 too long or out of range", what)
			}
			return int64(v | uint64(c&0x01)<<63), nil
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			shift := 7 * (i + 1)
			if c&0x40 != 0 {
				v |= ^uint64(0) << shift
			}
			return int64(v), nil
		}
	}
	return 0, r.fail(start, ErrMalformed, "%s: s64 LEB128 too long", what) // unreachable: i == 9 returns
}

// count reads a vector length and checks it against max and against the
// bytes left (each element takes at least minSize bytes), so callers can
// allocate count elements without trusting the input.
func (r *reader) count(what string, max, minSize int) (int, error) {
	start := r.pos
	n, err := r.u32(what + " count")
	if err != nil {
		return 0, err
	}
	if uint64(n) > uint64(max) {
		return 0, r.fail(start, ErrLimit, "%s count %d exceeds limit %d", what, n, max)
	}
	if uint64(n)*uint64(minSize) > uint64(r.remaining()) {
		return 0, r.fail(start, ErrTruncated, "%s count %d cannot fit in the %d remaining bytes", what, n, r.remaining())
	}
	return int(n), nil
}

// name reads a length-prefixed UTF-8 string of at most max bytes.
func (r *reader) name(what string, max int) (string, error) {
	start := r.pos
	n, err := r.u32(what + " length")
	if err != nil {
		return "", err
	}
	if uint64(n) > uint64(max) {
		return "", r.fail(start, ErrLimit, "%s length %d exceeds limit %d", what, n, max)
	}
	if int(n) > r.remaining() {
		return "", r.fail(start, ErrTruncated, "%s: need %d bytes, %d remain", what, n, r.remaining())
	}
	s, _ := r.bytes(int(n), what)
	if !utf8.Valid(s) {
		return "", r.fail(start, ErrMalformed, "%s is not valid UTF-8", what)
	}
	return string(s), nil
}

// appendU32 appends the minimal unsigned LEB128 encoding of v.
func appendU32(b []byte, v uint32) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// sizeU32 is the length of appendU32's encoding of v.
func sizeU32(v uint32) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
