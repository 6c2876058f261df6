package ichttp

import (
	"encoding/binary"
	"fmt"
)

// maxItems bounds the data items of an envelope. The decoder's limits are
// per array, per map and per level; together they would still let a 3 MiB
// body of one-byte items become millions of decoded values. A real
// envelope has a few dozen items (blobs are one item whatever their size);
// read_state's paths a few hundred.
const maxItems = 4096

// countItems walks the CBOR structure of b without decoding it and fails
// once it holds more than max data items, or is not well-formed enough to
// count (indefinite lengths, which the decoder refuses too, a truncated
// head). What it accepts the decoder checks fully.
func countItems(b []byte, max int) error {
	pending, items := 1, 0
	for pending > 0 {
		if len(b) == 0 {
			return fmt.Errorf("unexpected end of CBOR data")
		}
		pending--
		items++
		if items > max {
			return fmt.Errorf("more than %d CBOR data items", max)
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
		case 4, 5: // arrays, maps: their items (a map's pairs twice)
			if arg > uint64(max) {
				return fmt.Errorf("more than %d CBOR data items", max)
			}
			n := int(arg)
			if major == 5 {
				n *= 2
			}
			pending += n
		case 6: // a tag: its content follows
			pending++
		}
	}
	return nil
}
