package candid

import (
	"fmt"
	"math"
	"math/big"
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
// (1_000 : nat); a nat or int of more than 4 KiB prints in hex (0x…), since
// converting it to decimal takes time that grows faster than its size;
// record fields and variant cases are named when the type knows the name,
// else numbered; a record with fields 0, 1, ... prints as a tuple; a vec
// nat8 prints as a blob. The output parses back with ParseArgs or
// ParseArgsTyped.
//
// The text is not bounded by the size of the encoding: a type names a
// field once, and a value repeats it for each of its elements. Text that
// may come from elsewhere is printed with Format.
func (a Args) String() string {
	s, _ := a.Format(math.MaxInt)
	return s
}

// Format returns a.String() cut short before it passes limit bytes; complete
// reports whether it was not cut. Cut text is a prefix of what String
// returns and does not parse.
func (a Args) Format(limit int) (text string, complete bool) {
	f := formatter{limit: limit}
	f.byte('(')
	for i, v := range a.Values {
		if i > 0 {
			f.str(", ")
		}
		var t *Type
		if i < len(a.Types) {
			t = a.Types[i]
		}
		f.value(v, t, 0)
	}
	f.byte(')')
	return f.sb.String(), !f.cut
}

// FormatValue returns v in Candid textual syntax. The type t supplies
// field names; it may be nil. Like String, it is not bounded.
func FormatValue(v Value, t *Type) string {
	f := formatter{limit: math.MaxInt}
	f.value(v, t, 0)
	return f.sb.String()
}

// formatter writes Candid text up to a limit in bytes: a piece that would
// pass it is not written, and nothing after it.
type formatter struct {
	sb    strings.Builder
	limit int
	cut   bool
}

func (f *formatter) str(s string) {
	if f.cut || len(s) > f.limit-f.sb.Len() {
		f.cut = true
		return
	}
	f.sb.WriteString(s)
}

func (f *formatter) byte(c byte) {
	if f.cut || f.sb.Len() >= f.limit {
		f.cut = true
		return
	}
	f.sb.WriteByte(c)
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

func (f *formatter) value(v Value, t *Type, depth int) {
	if f.cut {
		return
	}
	if depth > maxFormatDepth {
		f.str("...")
		return
	}
	switch v := v.(type) {
	case Null:
		f.str("null")
	case Bool:
		f.str(strconv.FormatBool(bool(v)))
	case Nat:
		f.str(formatBig(v.big()))
		f.str(" : nat")
	case Int:
		f.str(formatBig(v.big()))
		f.str(" : int")
	case Nat8:
		f.str(fmt.Sprintf("%d : nat8", v))
	case Nat16:
		f.str(fmt.Sprintf("%s : nat16", groupDigits(strconv.FormatUint(uint64(v), 10))))
	case Nat32:
		f.str(fmt.Sprintf("%s : nat32", groupDigits(strconv.FormatUint(uint64(v), 10))))
	case Nat64:
		f.str(fmt.Sprintf("%s : nat64", groupDigits(strconv.FormatUint(uint64(v), 10))))
	case Int8:
		f.str(fmt.Sprintf("%d : int8", v))
	case Int16:
		f.str(fmt.Sprintf("%s : int16", groupDigits(strconv.FormatInt(int64(v), 10))))
	case Int32:
		f.str(fmt.Sprintf("%s : int32", groupDigits(strconv.FormatInt(int64(v), 10))))
	case Int64:
		f.str(fmt.Sprintf("%s : int64", groupDigits(strconv.FormatInt(int64(v), 10))))
	case Float32:
		f.str(formatFloat(float64(v), 32))
		f.str(" : float32")
	case Float64:
		f.str(formatFloat(float64(v), 64))
		f.str(" : float64")
	case Text:
		f.str(quoteText(string(v)))
	case Reserved:
		f.str("null : reserved")
	case Principal:
		f.str(fmt.Sprintf("principal %q", v.String()))
	case ServiceRef:
		f.str(fmt.Sprintf("service %q", v.String()))
	case FuncRef:
		f.str(fmt.Sprintf("func %q.%s", v.Service.String(), quoteIdent(v.Method)))
	case Opt:
		if v.Value == nil {
			f.str("null")
			return
		}
		f.str("opt ")
		et := elemType(t, KindOpt)
		if hasAnnotation(v.Value) {
			f.byte('(')
			f.value(v.Value, et, depth+1)
			f.byte(')')
		} else {
			f.value(v.Value, et, depth+1)
		}
	case Blob:
		f.blob(v)
	case Vec:
		if len(v) == 0 && t.IsBlob() {
			f.str(`blob ""`)
			return
		}
		if len(v) == 0 {
			f.str("vec {}")
			return
		}
		et := elemType(t, KindVec)
		f.str("vec {")
		for i, x := range v {
			if f.cut {
				return
			}
			if i > 0 {
				f.byte(';')
			}
			f.byte(' ')
			f.value(x, et, depth+1)
		}
		f.str(" }")
	case Record:
		if len(v) == 0 {
			f.str("record {}")
			return
		}
		tuple := true
		for i, fv := range v {
			if fv.ID != uint32(i) {
				tuple = false
				break
			}
		}
		f.str("record {")
		for i, fv := range v {
			if f.cut {
				return
			}
			if i > 0 {
				f.byte(';')
			}
			f.byte(' ')
			ft := fieldOf(t, KindRecord, fv.ID)
			if !tuple {
				f.label(fv.ID, ft)
				f.str(" = ")
			}
			var typ *Type
			if ft != nil {
				typ = ft.Type
			}
			f.value(fv.Value, typ, depth+1)
		}
		f.str(" }")
	case Variant:
		ft := fieldOf(t, KindVariant, v.ID)
		f.str("variant { ")
		f.label(v.ID, ft)
		if _, isNull := v.Value.(Null); !isNull {
			f.str(" = ")
			var typ *Type
			if ft != nil {
				typ = ft.Type
			}
			f.value(v.Value, typ, depth+1)
		}
		f.str(" }")
	case nil:
		f.str("<nil>")
	default:
		f.str(fmt.Sprintf("<%T>", v))
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

// label writes a field's name when its type knows it, else its number.
// The name comes from the type, not the value: written once per element of
// a vec, it is what makes text outgrow the encoding it prints.
func (f *formatter) label(id uint32, fd *Field) {
	if fd != nil && fd.Name != "" && Hash(fd.Name) == id {
		if len(fd.Name) > f.limit-f.sb.Len() {
			f.cut = true // before quoting it: the name may be megabytes
			return
		}
		f.str(quoteIdent(fd.Name))
		return
	}
	f.str(groupDigits(strconv.FormatUint(uint64(id), 10)))
}

// blob prints a blob as printable ASCII if it all is, else as hex
// escapes, like dfx. Its text is at most three times its encoding.
func (f *formatter) blob(b []byte) {
	if f.cut {
		return
	}
	var sb strings.Builder
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
			fmt.Fprintf(&sb, `\%02x`, c)
		}
	}
	sb.WriteByte('"')
	f.str(sb.String())
}

// bigHexBits is the size beyond which a nat or int prints in hex:
// big.Int's decimal conversion is superlinear (a 2 MiB nat took 9.5 s; a
// 4 KiB one, 10 000 digits, takes a millisecond), its hex conversion linear.
// Candid text allows a hex nat (0x…); a negative one (-0x…) is read by the
// reference implementation too.
const bigHexBits = 4096 * 8

// formatBig prints n in decimal grouped by thousands, or in hex if it is
// large.
func formatBig(n *big.Int) string {
	if n.BitLen() > bigHexBits {
		if n.Sign() < 0 {
			return "-0x" + new(big.Int).Neg(n).Text(16)
		}
		return "0x" + n.Text(16)
	}
	return groupDigits(n.String())
}
