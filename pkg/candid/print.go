package candid

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Args is a sequence of Candid values with their types, the arguments or
// results of a method call.
type Args struct {
	Types  []*Type
	Values []Value
}

// String returns the arguments in Candid textual syntax, the way dfx
// prints them: `(42 : nat, "hi", record { name = "x"; age = 3 : nat8 })`.
// Numbers carry a type annotation and are grouped with underscores
// (1_000 : nat); record fields and variant cases are named when the type
// knows the name, else numbered; a record with fields 0, 1, ... prints as a
// tuple; a vec nat8 prints as a blob. The output parses back with
// ParseArgs or ParseArgsTyped.
func (a Args) String() string {
	var sb strings.Builder
	sb.WriteByte('(')
	for i, v := range a.Values {
		if i > 0 {
			sb.WriteString(", ")
		}
		var t *Type
		if i < len(a.Types) {
			t = a.Types[i]
		}
		formatValue(&sb, v, t, 0)
	}
	sb.WriteByte(')')
	return sb.String()
}

// FormatValue returns v in Candid textual syntax. The type t supplies
// field names; it may be nil.
func FormatValue(v Value, t *Type) string {
	var sb strings.Builder
	formatValue(&sb, v, t, 0)
	return sb.String()
}

const maxFormatDepth = 5000

// groupDigits inserts an underscore between groups of three digits:
// "-1234567" becomes "-1_234_567".
func groupDigits(s string) string {
	sign := ""
	if strings.HasPrefix(s, "-") {
		sign, s = "-", s[1:]
	}
	if len(s) <= 3 {
		return sign + s
	}
	var sb strings.Builder
	sb.WriteString(sign)
	first := len(s) % 3
	if first == 0 {
		first = 3
	}
	sb.WriteString(s[:first])
	for i := first; i < len(s); i += 3 {
		sb.WriteByte('_')
		sb.WriteString(s[i : i+3])
	}
	return sb.String()
}

func formatFloat(f float64, bits int) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	s := strconv.FormatFloat(f, 'f', -1, bits)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// hasAnnotation reports whether v prints with a type annotation, in which
// case it is parenthesized after opt.
func hasAnnotation(v Value) bool {
	switch v.(type) {
	case Nat, Int, Nat8, Nat16, Nat32, Nat64, Int8, Int16, Int32, Int64, Float32, Float64, Reserved:
		return true
	}
	return false
}

func elemType(t *Type, k Kind) *Type {
	if t != nil && t.Kind == k {
		return t.Elem
	}
	return nil
}

func formatValue(sb *strings.Builder, v Value, t *Type, depth int) {
	if depth > maxFormatDepth {
		sb.WriteString("...")
		return
	}
	switch v := v.(type) {
	case Null:
		sb.WriteString("null")
	case Bool:
		sb.WriteString(strconv.FormatBool(bool(v)))
	case Nat:
		sb.WriteString(groupDigits(v.big().String()))
		sb.WriteString(" : nat")
	case Int:
		sb.WriteString(groupDigits(v.big().String()))
		sb.WriteString(" : int")
	case Nat8:
		fmt.Fprintf(sb, "%d : nat8", v)
	case Nat16:
		fmt.Fprintf(sb, "%s : nat16", groupDigits(strconv.FormatUint(uint64(v), 10)))
	case Nat32:
		fmt.Fprintf(sb, "%s : nat32", groupDigits(strconv.FormatUint(uint64(v), 10)))
	case Nat64:
		fmt.Fprintf(sb, "%s : nat64", groupDigits(strconv.FormatUint(uint64(v), 10)))
	case Int8:
		fmt.Fprintf(sb, "%d : int8", v)
	case Int16:
		fmt.Fprintf(sb, "%s : int16", groupDigits(strconv.FormatInt(int64(v), 10)))
	case Int32:
		fmt.Fprintf(sb, "%s : int32", groupDigits(strconv.FormatInt(int64(v), 10)))
	case Int64:
		fmt.Fprintf(sb, "%s : int64", groupDigits(strconv.FormatInt(int64(v), 10)))
	case Float32:
		sb.WriteString(formatFloat(float64(v), 32))
		sb.WriteString(" : float32")
	case Float64:
		sb.WriteString(formatFloat(float64(v), 64))
		sb.WriteString(" : float64")
	case Text:
		sb.WriteString(quoteText(string(v)))
	case Reserved:
		sb.WriteString("null : reserved")
	case Principal:
		fmt.Fprintf(sb, "principal %q", v.String())
	case ServiceRef:
		fmt.Fprintf(sb, "service %q", v.String())
	case FuncRef:
		fmt.Fprintf(sb, "func %q.%s", v.Service.String(), quoteIdent(v.Method))
	case Opt:
		if v.Value == nil {
			sb.WriteString("null")
			return
		}
		sb.WriteString("opt ")
		et := elemType(t, KindOpt)
		if hasAnnotation(v.Value) {
			sb.WriteByte('(')
			formatValue(sb, v.Value, et, depth+1)
			sb.WriteByte(')')
		} else {
			formatValue(sb, v.Value, et, depth+1)
		}
	case Blob:
		formatBlob(sb, v)
	case Vec:
		if len(v) == 0 && t.IsBlob() {
			sb.WriteString(`blob ""`)
			return
		}
		if len(v) == 0 {
			sb.WriteString("vec {}")
			return
		}
		et := elemType(t, KindVec)
		sb.WriteString("vec {")
		for i, x := range v {
			if i > 0 {
				sb.WriteByte(';')
			}
			sb.WriteByte(' ')
			formatValue(sb, x, et, depth+1)
		}
		sb.WriteString(" }")
	case Record:
		if len(v) == 0 {
			sb.WriteString("record {}")
			return
		}
		tuple := true
		for i, f := range v {
			if f.ID != uint32(i) {
				tuple = false
				break
			}
		}
		sb.WriteString("record {")
		for i, f := range v {
			if i > 0 {
				sb.WriteByte(';')
			}
			sb.WriteByte(' ')
			ft := fieldOf(t, KindRecord, f.ID)
			if !tuple {
				writeLabel(sb, f.ID, ft)
				sb.WriteString(" = ")
			}
			var typ *Type
			if ft != nil {
				typ = ft.Type
			}
			formatValue(sb, f.Value, typ, depth+1)
		}
		sb.WriteString(" }")
	case Variant:
		ft := fieldOf(t, KindVariant, v.ID)
		sb.WriteString("variant { ")
		writeLabel(sb, v.ID, ft)
		if _, isNull := v.Value.(Null); !isNull {
			sb.WriteString(" = ")
			var typ *Type
			if ft != nil {
				typ = ft.Type
			}
			formatValue(sb, v.Value, typ, depth+1)
		}
		sb.WriteString(" }")
	case nil:
		sb.WriteString("<nil>")
	default:
		fmt.Fprintf(sb, "<%T>", v)
	}
}

func fieldOf(t *Type, k Kind, id uint32) *Field {
	if t == nil || t.Kind != k {
		return nil
	}
	f, ok := t.Field(id)
	if !ok {
		return nil
	}
	return &f
}

func writeLabel(sb *strings.Builder, id uint32, f *Field) {
	if f != nil && f.Name != "" && Hash(f.Name) == id {
		sb.WriteString(quoteIdent(f.Name))
		return
	}
	sb.WriteString(groupDigits(strconv.FormatUint(uint64(id), 10)))
}

// formatBlob prints a blob as printable ASCII if it all is, else as hex
// escapes, like dfx.
func formatBlob(sb *strings.Builder, b []byte) {
	sb.WriteString(`blob "`)
	ascii := true
	for _, c := range b {
		if !(c >= 0x20 && c <= 0x7e || c == '\t' || c == '\n' || c == '\r') {
			ascii = false
			break
		}
	}
	for _, c := range b {
		if ascii && c >= 0x20 && c <= 0x7e && c != '"' && c != '\'' && c != '\\' && c != '`' {
			sb.WriteByte(c)
		} else {
			fmt.Fprintf(sb, `\%02x`, c)
		}
	}
	sb.WriteByte('"')
}
