package candid

import (
	"math/big"
)

// appendUleb appends the unsigned LEB128 encoding of n.
func appendUleb(b []byte, n uint64) []byte {
	for n >= 0x80 {
		b = append(b, byte(n)|0x80)
		n >>= 7
	}
	return append(b, byte(n))
}

// appendSleb appends the signed LEB128 encoding of n.
func appendSleb(b []byte, n int64) []byte {
	for {
		c := byte(n & 0x7f)
		n >>= 7
		if n == 0 && c&0x40 == 0 || n == -1 && c&0x40 != 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

var big7f = big.NewInt(0x7f)

// appendBigUleb appends the unsigned LEB128 encoding of n >= 0.
func appendBigUleb(b []byte, n *big.Int) []byte {
	if n.IsUint64() {
		return appendUleb(b, n.Uint64())
	}
	x := new(big.Int).Set(n)
	c := new(big.Int)
	for {
		c.And(x, big7f)
		x.Rsh(x, 7)
		if x.Sign() == 0 {
			return append(b, byte(c.Uint64()))
		}
		b = append(b, byte(c.Uint64())|0x80)
	}
}

// appendBigSleb appends the signed LEB128 encoding of n.
func appendBigSleb(b []byte, n *big.Int) []byte {
	if n.IsInt64() {
		return appendSleb(b, n.Int64())
	}
	x := new(big.Int).Set(n)
	c := new(big.Int)
	minus1 := big.NewInt(-1)
	for {
		c.And(x, big7f) // two's complement semantics for negative x
		x.Rsh(x, 7)     // arithmetic shift (rounds towards -inf)
		cb := byte(c.Uint64())
		if x.Sign() == 0 && cb&0x40 == 0 || x.Cmp(minus1) == 0 && cb&0x40 != 0 {
			return append(b, cb)
		}
		b = append(b, cb|0x80)
	}
}

// groupsToBig assembles the 7-bit groups of a LEB128 number (least
// significant first) into a non-negative big.Int, in linear time.
func groupsToBig(groups []byte) *big.Int {
	nbits := len(groups) * 7
	buf := make([]byte, (nbits+7)/8) // big-endian
	bit := 0
	for _, g := range groups {
		for j := 0; j < 7; j++ {
			if g&(1<<j) != 0 {
				pos := bit + j
				buf[len(buf)-1-pos/8] |= 1 << (pos % 8)
			}
		}
		bit += 7
	}
	return new(big.Int).SetBytes(buf)
}
