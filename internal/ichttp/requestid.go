package ichttp

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"
)

// hashValue is the spec's representation-independent hash of one decoded
// CBOR value: blobs and text hash their bytes, naturals their LEB128,
// integers their SLEB128, arrays the concatenation of their elements'
// hashes, maps as in RequestID. Anything else (floats, booleans, null)
// has no defined hash and the request is refused.
func hashValue(v any) ([32]byte, error) {
	switch x := v.(type) {
	case []byte:
		return sha256.Sum256(x), nil
	case string:
		return sha256.Sum256([]byte(x)), nil
	case uint64:
		return sha256.Sum256(leb128(x)), nil
	case int64:
		return sha256.Sum256(sleb128(x)), nil
	case []any:
		h := sha256.New()
		for _, e := range x {
			eh, err := hashValue(e)
			if err != nil {
				return [32]byte{}, err
			}
			h.Write(eh[:])
		}
		return [32]byte(h.Sum(nil)), nil
	case map[string]any:
		return hashMap(x)
	}
	return [32]byte{}, fmt.Errorf("a value of type %T has no representation-independent hash", v)
}

// hashMap hashes each field as hash(key)·hash(value), sorts those and
// hashes their concatenation.
func hashMap(m map[string]any) ([32]byte, error) {
	parts := make([][]byte, 0, len(m))
	for k, v := range m {
		kh := sha256.Sum256([]byte(k))
		vh, err := hashValue(v)
		if err != nil {
			return [32]byte{}, fmt.Errorf("field %q: %w", k, err)
		}
		parts = append(parts, append(kh[:], vh[:]...))
	}
	slices.SortFunc(parts, bytes.Compare)
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
	}
	return [32]byte(h.Sum(nil)), nil
}

// RequestID is the request id of a request's content: the hash of every
// field that arrived, known to cordon or not, so a signature covers all of
// them.
func RequestID(content map[string]any) ([32]byte, error) { return hashMap(content) }

func leb128(x uint64) []byte {
	var b []byte
	for {
		c := byte(x & 0x7f)
		x >>= 7
		if x == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func sleb128(x int64) []byte {
	var b []byte
	for {
		c := byte(x & 0x7f)
		x >>= 7
		if (x == 0 && c&0x40 == 0) || (x == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}
