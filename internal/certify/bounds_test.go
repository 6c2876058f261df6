package certify

import (
	"bytes"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

// wideTree is the CBOR of a "tree" of 16-wide arrays of empty arrays,
// levels deep: one item per byte.
func wideTree(levels int) []byte {
	var b bytes.Buffer
	var build func(int)
	build = func(d int) {
		if d == 0 {
			b.WriteByte(0x80)
			return
		}
		b.WriteByte(0x90)
		for range 16 {
			build(d - 1)
		}
	}
	build(levels)
	return b.Bytes()
}

// A certificate from outside is counted before it is decoded: 70 000
// one-byte items within the size bound are refused without becoming
// 70 000 Go values, and the error names the bound, not the data.
func TestVerifyCountsItems(t *testing.T) {
	key, err := LoadOrCreateRootKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var c bytes.Buffer
	c.WriteByte(0xa2)
	c.Write([]byte("\x64tree"))
	c.Write(wideTree(4))
	c.Write([]byte("\x69signature"))
	c.Write([]byte("\x58\x30"))
	c.Write(make([]byte, 48))
	cert := c.Bytes()
	var verr error
	allocs := testing.AllocsPerRun(1, func() { _, verr = Verify(key.DER(), cert) })
	if verr == nil || !strings.Contains(verr.Error(), "more than 4096 CBOR data items") {
		t.Fatalf("Verify: %.300v", verr)
	}
	if allocs > 1000 {
		t.Fatalf("refusing a %d KiB certificate allocated %.0f objects", len(cert)>>10, allocs)
	}

	// A real certificate of the node's passes the same bounds.
	good, err := key.CertifyCanister([]byte{0, 0, 0, 0, 0, 0, 0, 1, 1, 1}, []byte("data"), 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(key.DER(), good); err != nil {
		t.Fatalf("the node's own certificate: %v", err)
	}
}

// A malformed tree node is named by its shape: a tag that is itself a
// large subtree is not printed into the error.
func TestDecodeTreeErrorsAreShort(t *testing.T) {
	var sub any
	if err := cbor.Unmarshal(wideTree(3), &sub); err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{
		[]any{sub, sub, sub},
		[]any{uint64(1), sub, []any{sub}},
		[]any{uint64(9), sub},
	} {
		_, err := DecodeTree(v)
		if err == nil {
			t.Fatal("a malformed tree decoded")
		}
		if len(err.Error()) > 200 {
			t.Fatalf("error of %d bytes: %.200s…", len(err.Error()), err)
		}
	}
}
