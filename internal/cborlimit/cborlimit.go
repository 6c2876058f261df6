// Package cborlimit checks the shape of CBOR data from outside before it is
// decoded. A decoder's limits are per array, per map and per level; within
// them a few MiB of one-byte items still become millions of Go values. Check
// walks the encoding without allocating for it and refuses data with more
// items or deeper nesting than its caller expects, so that what is decoded
// afterwards costs what a real value of its kind costs.
package cborlimit

import (
	"encoding/binary"
	"fmt"
)

// Check fails once b's first CBOR data item holds more than maxItems data
// items (a string is one, whatever its length; a map's pairs count two each;
// a tag one besides its content) or nests arrays, maps and tags deeper than
// maxDepth levels, and when it is not well-formed enough to count
// (indefinite lengths, reserved heads, a truncated head or string). Bytes
// after the item are the decoder's to refuse. Errors name the bound, never
// the data.
func Check(b []byte, maxItems, maxDepth int) error {
	// open[i] is how many items level i still expects; level 0 holds the
	// one top-level item. Its length is bounded by maxDepth.
	open := make([]uint64, 1, 16)
	open[0] = 1
	items := 0
	for len(open) > 0 {
		top := len(open) - 1
		if open[top] == 0 {
			open = open[:top]
			continue
		}
		open[top]--
		if items++; items > maxItems {
			return fmt.Errorf("more than %d CBOR data items", maxItems)
		}
		if len(b) == 0 {
			return fmt.Errorf("unexpected end of CBOR data")
		}
		major, info := b[0]>>5, b[0]&0x1f
		b = b[1:]
		var arg uint64
		switch {
		case info < 24:
			arg = uint64(info)
		case info <= 27:
			n := 1 << (info - 24)
			if len(b) < n {
				return fmt.Errorf("unexpected end of CBOR data")
			}
			switch n {
			case 1:
				arg = uint64(b[0])
			case 2:
				arg = uint64(binary.BigEndian.Uint16(b))
			case 4:
				arg = uint64(binary.BigEndian.Uint32(b))
			case 8:
				arg = binary.BigEndian.Uint64(b)
			}
			b = b[n:]
		default:
			return fmt.Errorf("indefinite length or reserved CBOR head 0x%02x", major<<5|info)
		}
		switch major {
		case 2, 3: // byte and text strings: skip the content
			if arg > uint64(len(b)) {
				return fmt.Errorf("unexpected end of CBOR data")
			}
			b = b[arg:]
		case 4, 5, 6: // arrays, maps (their pairs twice), tags (one item)
			if len(open) > maxDepth {
				return fmt.Errorf("CBOR data nested deeper than %d levels", maxDepth)
			}
			switch {
			case major == 6:
				arg = 1 // its content (arg is the tag number)
			case arg > uint64(maxItems):
				return fmt.Errorf("more than %d CBOR data items", maxItems)
			case major == 5:
				arg *= 2
			}
			open = append(open, arg)
		}
	}
	return nil
}
