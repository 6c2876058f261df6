// Package principal implements Internet Computer principals: opaque
// identifiers of at most 29 bytes with a checksummed textual form.
//
// The textual form of a principal p is computed as follows: prepend the
// big-endian CRC-32 (IEEE) checksum of p's bytes to the bytes, encode the
// result in lowercase base32 (RFC 4648 alphabet) without padding, and insert a
// dash after every group of five characters. For example the management
// canister (no bytes) is "aaaaa-aa" and the anonymous principal (0x04) is
// "2vxsx-fae".
//
// FromText accepts only the canonical textual form, exactly as String
// produces it: lowercase letters, dashes exactly after every five characters,
// a matching checksum, and no stray trailing bits.
package principal

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
)

// MaxLength is the maximum number of bytes in a principal.
const MaxLength = 29

// Class suffixes that end the bytes of some principal kinds.
const (
	suffixOpaque             = 0x01
	suffixSelfAuthenticating = 0x02
	suffixDerived            = 0x03
	suffixAnonymous          = 0x04
)

// A Principal is an Internet Computer principal. The zero value is the
// management canister principal "aaaaa-aa". Principals are comparable with
// == and usable as map keys.
type Principal struct {
	n   uint8
	buf [MaxLength]byte
}

// Errors returned (wrapped) by FromBytes and FromText. Use errors.Is to test.
var (
	ErrTooLong  = errors.New("principal: too long")
	ErrChecksum = errors.New("principal: checksum mismatch")
	ErrSyntax   = errors.New("principal: invalid textual form")
)

var encoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// FromBytes returns the principal with the given bytes. It fails if b is
// longer than MaxLength bytes.
func FromBytes(b []byte) (Principal, error) {
	if len(b) > MaxLength {
		return Principal{}, fmt.Errorf("%w: %d bytes, at most %d allowed", ErrTooLong, len(b), MaxLength)
	}
	var p Principal
	p.n = uint8(copy(p.buf[:], b))
	return p, nil
}

// MustFromText is like FromText but panics on error. It is meant for
// initializing package-level variables from constants.
func MustFromText(s string) Principal {
	p, err := FromText(s)
	if err != nil {
		panic(err)
	}
	return p
}

// FromText parses the textual form of a principal, such as
// "rwlgt-iiaaa-aaaaa-aaaaa-cai". It verifies the dash positions and the
// checksum, and requires the text to be canonical: re-encoding the result
// gives back s exactly.
func FromText(s string) (Principal, error) {
	// Longest canonical form: 4+29 bytes -> 53 base32 chars + 10 dashes.
	const maxTextLen = 63
	if len(s) > maxTextLen {
		return Principal{}, fmt.Errorf("%w: %q is %d characters, at most %d allowed", ErrTooLong, truncate(s), len(s), maxTextLen)
	}
	if s == "" {
		return Principal{}, fmt.Errorf("%w: empty string", ErrSyntax)
	}
	var raw strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '-':
			// A dash must follow each complete group of five characters.
			if i%6 != 5 {
				return Principal{}, fmt.Errorf("%w: %q: misplaced dash at offset %d", ErrSyntax, s, i)
			}
			if i == len(s)-1 {
				return Principal{}, fmt.Errorf("%w: %q: trailing dash", ErrSyntax, s)
			}
		case i%6 == 5:
			return Principal{}, fmt.Errorf("%w: %q: expected dash at offset %d, found %q", ErrSyntax, s, i, s[i])
		case c >= 'a' && c <= 'z', c >= '2' && c <= '7':
			raw.WriteByte(c)
		case c >= 'A' && c <= 'Z':
			return Principal{}, fmt.Errorf("%w: %q: uppercase character %q at offset %d (the textual form is lowercase)", ErrSyntax, s, s[i], i)
		default:
			return Principal{}, fmt.Errorf("%w: %q: invalid character %q at offset %d", ErrSyntax, s, s[i], i)
		}
	}
	data, err := encoding.DecodeString(strings.ToUpper(raw.String()))
	if err != nil {
		return Principal{}, fmt.Errorf("%w: %q: invalid base32: %v", ErrSyntax, s, err)
	}
	if len(data) < 4 {
		return Principal{}, fmt.Errorf("%w: %q: too short to hold a checksum", ErrSyntax, s)
	}
	p, err := FromBytes(data[4:])
	if err != nil {
		return Principal{}, fmt.Errorf("%q: %w", s, err)
	}
	want := binary.BigEndian.Uint32(data[:4])
	if got := crc32.ChecksumIEEE(p.Bytes()); got != want {
		return Principal{}, fmt.Errorf("%w: %q: checksum is %08x, expected %08x", ErrChecksum, s, want, got)
	}
	// Reject non-canonical encodings (e.g. non-zero trailing bits).
	if canon := p.String(); canon != s {
		return Principal{}, fmt.Errorf("%w: %q is not canonical, expected %q", ErrSyntax, s, canon)
	}
	return p, nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Bytes returns a copy of the principal's bytes, never nil: the management
// canister's are an empty slice, so that encoders write an empty byte
// string (CBOR 0x40, as IC clients send aaaaa-aa), not null.
func (p Principal) Bytes() []byte {
	return append(make([]byte, 0, p.n), p.buf[:p.n]...)
}

// Len returns the number of bytes in the principal.
func (p Principal) Len() int { return int(p.n) }

// String returns the textual form of the principal.
func (p Principal) String() string {
	var data [4 + MaxLength]byte
	binary.BigEndian.PutUint32(data[:4], crc32.ChecksumIEEE(p.buf[:p.n]))
	copy(data[4:], p.buf[:p.n])
	enc := strings.ToLower(encoding.EncodeToString(data[:4+int(p.n)]))
	var sb strings.Builder
	sb.Grow(len(enc) + len(enc)/5)
	for i := 0; i < len(enc); i += 5 {
		if i > 0 {
			sb.WriteByte('-')
		}
		sb.WriteString(enc[i:min(i+5, len(enc))])
	}
	return sb.String()
}

// MarshalText implements encoding.TextMarshaler.
func (p Principal) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Principal) UnmarshalText(b []byte) error {
	q, err := FromText(string(b))
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// Equal reports whether p and q have the same bytes.
func (p Principal) Equal(q Principal) bool { return p == q }

// Compare compares the bytes of p and q lexicographically, returning -1, 0
// or +1.
func (p Principal) Compare(q Principal) int {
	return bytes.Compare(p.buf[:p.n], q.buf[:q.n])
}

// IsAnonymous reports whether p is the anonymous principal.
func (p Principal) IsAnonymous() bool { return p == Anonymous() }

// IsManagement reports whether p is the management canister ("aaaaa-aa").
func (p Principal) IsManagement() bool { return p.n == 0 }

// Anonymous returns the anonymous principal, 0x04 ("2vxsx-fae").
func Anonymous() Principal {
	return Principal{n: 1, buf: [MaxLength]byte{suffixAnonymous}}
}

// Management returns the management canister principal, which has no bytes
// ("aaaaa-aa").
func Management() Principal { return Principal{} }

// SelfAuthenticating returns the self-authenticating principal of a public
// key given in DER encoding: SHA-224(pubkeyDER) followed by 0x02.
func SelfAuthenticating(pubkeyDER []byte) Principal {
	h := sha256.Sum224(pubkeyDER)
	var p Principal
	copy(p.buf[:], h[:])
	p.buf[len(h)] = suffixSelfAuthenticating
	p.n = uint8(len(h) + 1)
	return p
}

// CanisterID returns the principal of the canister with index n as
// allocated by the IC: the 8-byte big-endian n followed by 0x01 0x01.
// CanisterID(0) is "rwlgt-iiaaa-aaaaa-aaaaa-cai".
func CanisterID(n uint64) Principal {
	var p Principal
	binary.BigEndian.PutUint64(p.buf[:8], n)
	p.buf[8] = suffixOpaque
	p.buf[9] = suffixOpaque
	p.n = 10
	return p
}

// CanisterIndex is the inverse of CanisterID: it reports the index n such
// that CanisterID(n) == p, and whether p has that form.
func (p Principal) CanisterIndex() (uint64, bool) {
	if p.n != 10 || p.buf[8] != suffixOpaque || p.buf[9] != suffixOpaque {
		return 0, false
	}
	return binary.BigEndian.Uint64(p.buf[:8]), true
}
