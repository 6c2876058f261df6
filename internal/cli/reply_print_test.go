package cli

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/cordon-dev/cordon/pkg/candid"
)

// appendCustomSection returns wasm with a custom section name holding content.
func appendCustomSection(wasm []byte, name string, content []byte) []byte {
	body := binary.AppendUvarint(nil, uint64(len(name)))
	body = append(append(body, name...), content...)
	wasm = append(wasm, 0)
	wasm = binary.AppendUvarint(wasm, uint64(len(body)))
	return append(wasm, body...)
}

// replyWasm writes a module whose query m replies with the given bytes and
// whose "icp:public candid:service" metadata is did (none if ""), and
// returns its path.
func replyWasm(t *testing.T, reply []byte, did string) string {
	t.Helper()
	var data strings.Builder
	for _, c := range reply {
		fmt.Fprintf(&data, `\%02x`, c)
	}
	wasm, err := wasmtime.Wat2Wasm(fmt.Sprintf(`(module
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (data (i32.const 0) "%s")
  (func (export "canister_query m") (call $append (i32.const 0) (i32.const %d)) (call $reply)))`, data.String(), len(reply)))
	if err != nil {
		t.Fatal(err)
	}
	if did != "" {
		wasm = appendCustomSection(wasm, "icp:public candid:service", []byte(did))
	}
	p := filepath.Join(t.TempDir(), "reply.wasm")
	if err := os.WriteFile(p, wasm, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A canister's reply reaches the terminal escaped like its debug_print text
// and reject messages: no C1 control (U+009B is the one-character CSI), no
// bidirectional override, no line separator, in a text value or in a field
// name from its candid:service. The escapes are Candid's, so the text still
// parses back.
func TestReplyTextCannotDriveTheTerminal(t *testing.T) {
	text := "ok\u202eRLO\u009bCSI\u0085NEL\u2028LS\u2029PS\u200bZW"
	escaped := `"ok\u{202e}RLO\u{9b}CSI\u{85}NEL\u{2028}LS\u{2029}PS\u{200b}ZW"`
	check := func(what, out string) {
		t.Helper()
		noControls(t, what, out)
		for _, bad := range []string{"\u0085", "\u2028", "\u2029", "\u200b"} {
			if strings.Contains(out, bad) {
				t.Fatalf("%s has %q raw: %q", what, bad, out)
			}
		}
	}
	home := t.TempDir()

	reply := append([]byte("DIDL\x00\x01\x71"), byte(len(text)))
	reply = append(reply, text...)
	id := must(t, cordon(t, home, "install", replyWasm(t, reply, "")))
	out := must(t, cordon(t, home, "query", id, "m"))
	check("a text reply", out)
	if want := "(" + escaped + ")"; out != want {
		t.Fatalf("text reply printed %s, want %s", out, want)
	}
	if back, err := candid.ParseArgs(out); err != nil || back.Values[0] != candid.Text(text) {
		t.Fatalf("%s parses back as %v, %v", out, back, err)
	}

	// record { <label> = <text> }, the label named by candid:service.
	did := `service : { m : () -> (record { "lbl\u{202e}x\u{85}" : text }) query }`
	reply = []byte("DIDL\x01\x6c\x01")
	reply = binary.AppendUvarint(reply, uint64(candid.Hash("lbl\u202ex\u0085")))
	reply = append(reply, 0x71, 0x01, 0x00, byte(len(text)))
	reply = append(reply, text...)
	id = must(t, cordon(t, home, "install", replyWasm(t, reply, did)))
	out = must(t, cordon(t, home, "query", id, "m"))
	check("a record reply with a named field", out)
	if want := `(record { "lbl\u{202e}x\u{85}" = ` + escaped + ` })`; out != want {
		t.Fatalf("record reply printed %s, want %s", out, want)
	}
}

// What cordon prints of a reply is bounded by the reply's size, whatever
// names the canister's own candid:service gives its fields: a 20-byte reply
// (a vec of 2^15 records of one null field) typed by a field name of 1 KiB
// printed 32 MiB (a name of 1 MiB: 32 GiB, and the CLI ran out of memory).
// The text is cut with a note that says so; --output raw has it all.
func TestReplyPrintBoundedWithHostileFieldNames(t *testing.T) {
	name := strings.Repeat("a", 1024)
	did := `service : { m : () -> (vec record { ` + name + ` : null }) query }`
	reply := []byte("DIDL\x02\x6d\x01\x6c\x01")
	reply = binary.AppendUvarint(reply, uint64(candid.Hash(name)))
	reply = append(reply, 0x7f, 0x01, 0x00)
	reply = binary.AppendUvarint(reply, 1<<15) // within the decoder's memory budget
	home := t.TempDir()
	id := must(t, cordon(t, home, "install", replyWasm(t, reply, did)))
	limit := replyTextLimit(len(reply))

	out := must(t, cordon(t, home, "query", id, "m"))
	t.Logf("a %d-byte reply printed %d bytes, ending %q", len(reply), len(out), out[max(0, len(out)-120):])
	if len(out) > limit+200 {
		t.Fatalf("a %d-byte reply printed %d bytes (limit %d)", len(reply), len(out), limit)
	}
	if !strings.HasPrefix(out, "(vec { record { "+name+" = null };") || !strings.Contains(out, "--output raw") {
		t.Fatalf("the cut text does not say so: ...%s", out[max(0, len(out)-200):])
	}

	r := cordon(t, home, "query", id, "m", "--output", "json")
	var j struct {
		Reply    string `json:"reply"`
		ReplyHex string `json:"reply_hex"`
	}
	if r.code != 0 || len(r.stdout) > limit+1000 || json.Unmarshal([]byte(r.stdout), &j) != nil {
		t.Fatalf("--output json: exit %d, %d bytes on stdout: %.200s", r.code, len(r.stdout), r.stderr)
	}
	if !strings.Contains(j.Reply, "cut") || j.ReplyHex != fmt.Sprintf("%x", reply) {
		t.Fatalf("--output json: reply %.100q…, reply_hex %s", j.Reply, j.ReplyHex)
	}
	if got := must(t, cordon(t, home, "query", id, "m", "--output", "raw")); got != fmt.Sprintf("%x", reply) {
		t.Fatalf("--output raw: %s", got)
	}
}
