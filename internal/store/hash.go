package store

import (
	"crypto/sha256"
	"encoding/hex"
)

func moduleKey(wasm []byte) []byte {
	h := sha256.Sum256(wasm)
	return []byte(hex.EncodeToString(h[:]))
}
