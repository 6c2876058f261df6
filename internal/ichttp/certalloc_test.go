package ichttp

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/cordon-dev/cordon/pkg/principal"
)

// hostileCertificate is a ~1 MiB "certificate" whose tree is 16-wide arrays
// of empty arrays, four levels deep: every byte of it is one CBOR item, so
// decoded it would be a million Go values.
func hostileCertificate(t testing.TB) []byte {
	t.Helper()
	var tree bytes.Buffer
	var build func(depth int)
	build = func(depth int) {
		if depth == 0 {
			tree.WriteByte(0x80) // []
			return
		}
		tree.WriteByte(0x90) // an array of 16
		for range 16 {
			build(depth - 1)
		}
	}
	tree.WriteByte(0x8e) // an array of 14 such subtrees
	for range 14 {
		build(4)
	}
	var c bytes.Buffer
	c.WriteByte(0xa2) // {tree, signature}
	c.Write(mustEnc(t, "tree"))
	c.Write(tree.Bytes())
	c.Write(mustEnc(t, "signature"))
	c.Write(mustEnc(t, make([]byte, 48)))
	return c.Bytes()
}

func mustEnc(t testing.TB, v any) []byte {
	t.Helper()
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hostileCanisterSigRequest is an envelope whose sender key is a canister
// signature key and whose sender_sig (one blob of the envelope: one item
// of its 4096) holds the hostile certificate.
func hostileCanisterSigRequest(t testing.TB) []byte {
	t.Helper()
	sig := mustEnc(t, map[string]any{"certificate": hostileCertificate(t), "tree": []any{uint64(0)}})
	der := canisterSigDER(t, principal.CanisterID(1), []byte("seed"))
	content := callContent(principal.SelfAuthenticating(der), time.Now())
	return mustEnc(t, cbor.Tag{Number: selfDescribeTag, Content: map[string]any{"content": content, "sender_pubkey": der, "sender_sig": sig}})
}

// A request whose canister signature carries a 1 MiB certificate of a
// million one-byte items is refused by counting them: decoding it made
// the node allocate 40 MiB in a million objects (44 times the request)
// before refusing it.
func TestCanisterSigCertificateItemsCounted(t *testing.T) {
	home := t.TempDir()
	key := testRootKey(t, home)
	body := hostileCanisterSigRequest(t)
	if countItems(body, maxItems) != nil {
		t.Fatal("the envelope itself should be within its bounds: the certificate is one blob of it")
	}
	var perr error
	allocs := testing.AllocsPerRun(1, func() {
		_, perr = ParseEnvelopeWith(body, "call", time.Now(), key.DER())
	})
	if perr == nil || !strings.Contains(perr.Error(), "not authorized") {
		t.Fatalf("ParseEnvelopeWith: %v, want a refusal", perr)
	}
	if allocs > 20_000 {
		t.Fatalf("refusing a %d KiB request allocated %.0f objects: its certificate was decoded", len(body)>>10, allocs)
	}

	// The same through a live interface: 403, and the node still serves.
	h := New(nil, key, testNodeKey(t, home), slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(h)
	defer srv.Close()
	st, msg := post(t, srv.URL+"/api/v2/canister/"+principal.CanisterID(7).String()+"/call", body)
	if st != http.StatusForbidden || len(msg) > 1024 {
		t.Fatalf("hostile canister signature: %d, %d bytes of message", st, len(msg))
	}

	// The certificate alone: an error that names the bound, not the data.
	_, verr := VerifyCertificate(key.DER(), hostileCertificate(t))
	if verr == nil || !strings.Contains(verr.Error(), "CBOR data items") || len(verr.Error()) > 200 {
		t.Fatalf("VerifyCertificate: %.300v", verr)
	}
}
