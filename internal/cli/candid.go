package cli

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cordon-dev/cordon/internal/api"
	"github.com/cordon-dev/cordon/internal/host"
	"github.com/cordon-dev/cordon/internal/wasmbin"
	"github.com/cordon-dev/cordon/pkg/candid"
	"github.com/cordon-dev/cordon/pkg/principal"
)

// candidTypes are the expected types of an argument list; nil: unknown.
type candidTypes []*candid.Type

// iface is a canister's Candid interface, possibly unknown (nil svc).
type iface struct{ svc *candid.Service }

func (i iface) method(name string) (candid.Method, bool) {
	if i.svc == nil {
		return candid.Method{}, false
	}
	return i.svc.Method(name)
}

func (i iface) argTypes(name string) candidTypes {
	if m, ok := i.method(name); ok {
		return m.Args()
	}
	return nil
}

func (i iface) resultTypes(name string) candidTypes {
	if m, ok := i.method(name); ok {
		return m.Results()
	}
	return nil
}

// loadInterface reads --candid FILE (at most limit bytes: a module's
// candid:service is no larger than limits.module_bytes either), else the
// canister's candid:service metadata. An unknown interface is not an
// error: values are then typed by their literals and replies printed with
// numeric field ids.
func loadInterface(ctx context.Context, b api.Backend, id, didFile string, limit int, need bool) (iface, error) {
	if didFile != "" {
		src, err := readInput(didFile, "Candid interface", limit)
		if err != nil {
			return iface{}, err
		}
		svc, err := candid.ParseService(string(src))
		if err != nil {
			return iface{}, fmt.Errorf("parse %s: %w", didFile, err)
		}
		return iface{svc}, nil
	}
	if !need {
		return iface{}, nil
	}
	if p, err := principal.FromText(id); err == nil && p.IsManagement() {
		// aaaaa-aa has no module: its interface is the host's.
		svc, err := host.ManagementInterface()
		if err != nil {
			return iface{}, err
		}
		return iface{svc}, nil
	}
	st, err := b.Status(ctx, id)
	if err != nil || st.CandidService == "" {
		return iface{}, nil // the call itself reports a missing canister
	}
	svc, err := candid.ParseService(st.CandidService)
	if err != nil {
		return iface{}, nil
	}
	return iface{svc}, nil
}

// initArgTypes reads the init argument types a module (inflated)
// declares in its candid:args metadata, or nil. It reads custom sections
// only: this process may be the node, which parses no canister code in
// sandbox mode (DESIGN §2); the compiler sandbox checks the rest.
func initArgTypes(wasm []byte) candidTypes {
	for _, name := range []string{"icp:public candid:args", "icp:private candid:args"} {
		if s, ok, err := wasmbin.FindCustomSection(wasm, name); err == nil && ok {
			if ts, err := candid.ParseTypes(string(s)); err == nil {
				return ts
			}
		}
	}
	return nil
}

// encodeArg turns the command-line argument into Candid bytes; what names
// it in errors ("the argument of add").
func encodeArg(typ, text string, types candidTypes, what string) ([]byte, error) {
	switch typ {
	case "raw":
		// Raw bytes are sent as given: "" is an empty argument, not
		// Candid's empty list (DIDL\0\0).
		b, err := decodeHex(text)
		if err != nil {
			return nil, usageError{fmt.Errorf("--type raw: %s: %w", what, err)}
		}
		return b, nil
	case "candid", "":
		if strings.TrimSpace(text) == "" {
			text = "()"
		}
		var (
			args candid.Args
			err  error
		)
		if types != nil {
			args, err = candid.ParseArgsTyped(text, types)
		} else {
			args, err = candid.ParseArgs(text)
		}
		if err != nil {
			// The argument is cut short: it may be as long as the
			// command line, and the error says where it went wrong.
			msg := fmt.Sprintf("%s, '%s': %v", what, truncateText(text, 80), err)
			if types != nil {
				msg += fmt.Sprintf(" (expected %s)", formatTypes(types))
			}
			return nil, usageError{errors.New(msg)}
		}
		b, err := candid.EncodeArgs(args)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", what, err)
		}
		return b, nil
	}
	return nil, usageError{fmt.Errorf("--type %q: want candid or raw", typ)}
}

// formatTypes prints an argument list's types: "(nat, text)".
func formatTypes(ts candidTypes) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = t.String()
	}
	s := "(" + strings.Join(parts, ", ") + ")"
	if r := []rune(s); len(r) > 200 {
		s = string(r[:199]) + "…"
	}
	return s
}

// decodeHex reads bytes written as hex digits (an optional 0x prefix and
// surrounding space allowed), saying what is wrong with them otherwise.
func decodeHex(text string) ([]byte, error) {
	s := strings.TrimPrefix(strings.TrimSpace(text), "0x")
	for i, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return nil, fmt.Errorf("%q is not hex: %q at offset %d is not a hex digit (want pairs of 0-9, a-f)", truncateText(text, 40), r, i)
		}
	}
	if len(s)%2 != 0 {
		return nil, fmt.Errorf("%q is not hex: an odd number of hex digits (%d); each byte is two", truncateText(text, 40), len(s))
	}
	return hex.DecodeString(s)
}

// truncateText shortens s to n runes for a message.
func truncateText(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// hexForMessage shows bytes in a message: their first 32 in hex, and how
// many there are when there are more (a reply may be megabytes).
func hexForMessage(b []byte) string {
	if len(b) <= 32 {
		return hex.EncodeToString(b)
	}
	return fmt.Sprintf("%x… (%d bytes)", b[:32], len(b))
}

// decodeReply prints Candid bytes as text, typed when the types are known,
// within replyTextLimit; hint follows the note on text cut short.
func decodeReply(b []byte, types candidTypes, hint string) (string, error) {
	if types != nil {
		if a, err := candid.DecodeAs(b, types); err == nil {
			return formatReply(a, len(b), hint), nil
		}
	}
	a, err := candid.Decode(b)
	if err != nil {
		return "", err
	}
	return formatReply(a, len(b), hint), nil
}

// replyTextLimit bounds the text printed for n bytes of Candid. Text can
// outgrow its encoding without bound: a field name comes from the type (a
// canister's own candid:service), once, and is printed for every element of
// a vec, which costs nothing on the wire for a record of nulls (a 20-byte
// reply printed 32 MiB with a 1 KiB name). Honest replies print within a
// few times their size (a blob three times, a nat64 about four).
func replyTextLimit(n int) int { return 1<<20 + 16*n }

// formatReply prints a as Candid text, cut short past replyTextLimit(n)
// with a note saying so (then it is not valid Candid).
func formatReply(a candid.Args, n int, hint string) string {
	limit := replyTextLimit(n)
	text, complete := a.Format(limit)
	if !complete {
		text = fmt.Sprintf("%s … (text cut at %d bytes, from %d bytes of Candid%s)", strings.TrimRight(text, " "), limit, n, hint)
	}
	return text
}

func newCandidCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "candid",
		Short: "Encode and decode Candid values",
		Example: `  cordon candid encode '(42 : nat, "hi")'
  cordon candid decode 4449444c00017d2a --types '(nat)'`,
		Args: groupArgs,
		RunE: groupRun,
	}
	encode := &cobra.Command{
		Use:     "encode '(ARGS)'",
		Short:   "Print the Candid encoding of textual values as hex",
		Example: `  cordon candid encode '(42 : nat, "hi")'`,
		Args:    exactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			b, err := encodeArg("candid", args[0], nil, "the values")
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, hex.EncodeToString(b))
			return nil
		},
	}
	var typesFlag string
	decode := &cobra.Command{
		Use:   "decode HEX",
		Short: "Print hex-encoded Candid bytes as text",
		Example: `  cordon candid decode 4449444c00027d710103616263
  cordon candid decode 4449444c00017d2a --types '(nat)'`,
		Args: exactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			b, err := decodeHex(args[0])
			if err != nil {
				return usageError{err}
			}
			var types candidTypes
			if typesFlag != "" {
				if types, err = candid.ParseTypes(typesFlag); err != nil {
					return usageError{fmt.Errorf("--types: %w", err)}
				}
				a, err := candid.DecodeAs(b, types)
				if err != nil {
					return err
				}
				fmt.Fprintln(g.stdout, formatReply(a, len(b), ""))
				return nil
			}
			text, err := decodeReply(b, nil, "")
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, text)
			return nil
		},
	}
	decode.Flags().StringVar(&typesFlag, "types", "", "expected types, e.g. '(nat, text)'")
	cmd.AddCommand(encode, decode)
	return cmd
}
