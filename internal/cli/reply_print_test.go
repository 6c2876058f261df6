package cli

import (
	"encoding/binary"
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
