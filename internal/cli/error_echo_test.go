package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// An error names the bad input without repeating all of it: a reply that is
// not Candid (64 KiB here, 2 MiB at limits.reply_bytes) and an argument
// that does not parse are cut short in the message, as decodeHex does.
func TestErrorsDoNotEchoWholeInputs(t *testing.T) {
	junk := bytes.Repeat([]byte{0xee}, 64<<10)
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", replyWasm(t, junk, "")))
	r := cordon(t, home, "query", id, "m")
	if r.code != ExitError || len(r.stderr) > 4<<10 || !strings.Contains(r.stderr, "(65536 bytes)") {
		t.Fatalf("a %d-byte reply that is not Candid: exit %d, %d bytes on stderr: %.200s", len(junk), r.code, len(r.stderr), r.stderr)
	}
	arg := "(" + strings.Repeat("1; ", 20<<10) + ")"
	r = cordon(t, home, "candid", "encode", arg)
	if r.code != ExitUsage || len(r.stderr) > 4<<10 {
		t.Fatalf("a %d-byte argument that does not parse: exit %d, %d bytes on stderr: %.200s", len(arg), r.code, len(r.stderr), r.stderr)
	}
}

// --output json says why a reply is not shown as Candid text, instead of
// an empty "reply".
func TestJSONReplySaysWhyItIsNotCandid(t *testing.T) {
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", replyWasm(t, []byte("not candid"), "")))
	var out struct {
		Reply      *string `json:"reply"`
		ReplyHex   string  `json:"reply_hex"`
		ReplyError *string `json:"reply_error"`
	}
	if err := json.Unmarshal([]byte(must(t, cordon(t, home, "query", id, "m", "--output", "json"))), &out); err != nil {
		t.Fatal(err)
	}
	if out.ReplyHex != fmt.Sprintf("%x", "not candid") || out.Reply == nil || *out.Reply != "" || out.ReplyError == nil || *out.ReplyError == "" {
		t.Fatalf("a reply that is not Candid, as JSON: %+v", out)
	}
	counter := must(t, cordon(t, home, "install", filepath.Join(corpus, "counter.wasm")))
	got := must(t, cordon(t, home, "query", counter, "get", "--output", "json"))
	if strings.Contains(got, "reply_error") || !strings.Contains(got, `"reply": "(0 : nat)"`) {
		t.Fatalf("a Candid reply, as JSON: %s", got)
	}
}
