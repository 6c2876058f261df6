package candid

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// tokKind is the kind of a lexical token of the Candid textual syntax
// (types, values, service descriptions and test files).
type tokKind uint8

const (
	tEOF tokKind = iota
	tLParen
	tRParen
	tLBrace
	tRBrace
	tSemi
	tComma
	tDot
	tColon
	tEq
	tArrow    // ->
	tEqEq     // ==
	tNotEq    // !=
	tNotColon // !:
	tSign     // + or -
	tID
	tText    // "..." (text holds the unescaped bytes)
	tDecimal // digits, underscores removed
	tHex     // hex digits without 0x, underscores removed
	tFloat
)

var tokNames = [...]string{
	tEOF: "end of input", tLParen: "'('", tRParen: "')'", tLBrace: "'{'", tRBrace: "'}'",
	tSemi: "';'", tComma: "','", tDot: "'.'", tColon: "':'", tEq: "'='", tArrow: "'->'",
	tEqEq: "'=='", tNotEq: "'!='", tNotColon: "'!:'", tSign: "sign", tID: "identifier",
	tText: "text literal", tDecimal: "number", tHex: "hex number", tFloat: "float",
}

func (k tokKind) String() string { return tokNames[k] }

type token struct {
	kind tokKind
	text string // identifier, number digits, sign, or the unescaped text literal
	pos  int    // byte offset in the source
}

func (t token) String() string {
	switch t.kind {
	case tID:
		return "identifier " + strconv.Quote(t.text)
	case tText:
		return "text " + strconv.Quote(truncate(t.text, 40))
	case tDecimal, tHex, tFloat:
		return "number " + t.text
	case tSign:
		return "'" + t.text + "'"
	}
	return t.kind.String()
}

// lexer splits Candid source text into tokens, skipping white space and
// (nested) comments.
type lexer struct {
	src string
	pos int
}

// SyntaxError is a syntax error in Candid text, with its position.
type SyntaxError struct {
	Line, Col int // 1-based; Col counts bytes
	Msg       string
	Err       error // the underlying error, if any
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("candid: syntax error at %d:%d: %s", e.Line, e.Col, e.Msg)
}

// Unwrap returns the underlying error.
func (e *SyntaxError) Unwrap() error { return e.Err }

func syntaxErr(src string, pos int, format string, args ...any) *SyntaxError {
	pos = min(max(pos, 0), len(src))
	line := 1 + strings.Count(src[:pos], "\n")
	col := pos + 1
	if i := strings.LastIndexByte(src[:pos], '\n'); i >= 0 {
		col = pos - i
	}
	return &SyntaxError{Line: line, Col: col, Msg: fmt.Sprintf(format, args...)}
}

// ValueError is Candid text that parses but whose value does not fit the
// type it is read at (a negative nat, a text where a nat is expected), or
// exceeds a limit, with its position.
type ValueError struct {
	Line, Col int // 1-based; Col counts bytes
	Msg       string
	Err       error // the underlying error, if any
}

func (e *ValueError) Error() string {
	return fmt.Sprintf("at %d:%d: %s", e.Line, e.Col, e.Msg)
}

// Unwrap returns the underlying error.
func (e *ValueError) Unwrap() error { return e.Err }

// valueErr is a ValueError at pos in src.
func valueErr(src string, pos int, err error, format string, args ...any) *ValueError {
	se := syntaxErr(src, pos, format, args...)
	return &ValueError{Line: se.Line, Col: se.Col, Msg: se.Msg, Err: err}
}

func (l *lexer) errorf(pos int, format string, args ...any) error {
	return syntaxErr(l.src, pos, format, args...)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isHexDigit(c byte) bool {
	return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isIDStart(c byte) bool { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// skip skips white space and comments.
func (l *lexer) skip() error {
	for l.pos < len(l.src) {
		c := l.src[l.pos]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			l.pos++
		case strings.HasPrefix(l.src[l.pos:], "//"):
			if i := strings.IndexByte(l.src[l.pos:], '\n'); i >= 0 {
				l.pos += i + 1
			} else {
				l.pos = len(l.src)
			}
		case strings.HasPrefix(l.src[l.pos:], "/*"):
			start := l.pos
			depth := 0
			for {
				switch {
				case l.pos >= len(l.src):
					return l.errorf(start, "unclosed comment")
				case strings.HasPrefix(l.src[l.pos:], "/*"):
					depth++
					l.pos += 2
				case strings.HasPrefix(l.src[l.pos:], "*/"):
					depth--
					l.pos += 2
				default:
					l.pos++
				}
				if depth == 0 {
					break
				}
			}
		default:
			return nil
		}
	}
	return nil
}

func (l *lexer) next() (token, error) {
	if err := l.skip(); err != nil {
		return token{}, err
	}
	start := l.pos
	if l.pos >= len(l.src) {
		return token{kind: tEOF, pos: start}, nil
	}
	c := l.src[l.pos]
	two := ""
	if l.pos+1 < len(l.src) {
		two = l.src[l.pos : l.pos+2]
	}
	simple := func(k tokKind, n int) (token, error) {
		l.pos += n
		return token{kind: k, pos: start, text: l.src[start:l.pos]}, nil
	}
	switch {
	case two == "->":
		return simple(tArrow, 2)
	case two == "==":
		return simple(tEqEq, 2)
	case two == "!=":
		return simple(tNotEq, 2)
	case two == "!:":
		return simple(tNotColon, 2)
	case c == '(':
		return simple(tLParen, 1)
	case c == ')':
		return simple(tRParen, 1)
	case c == '{':
		return simple(tLBrace, 1)
	case c == '}':
		return simple(tRBrace, 1)
	case c == ';':
		return simple(tSemi, 1)
	case c == ',':
		return simple(tComma, 1)
	case c == '.':
		return simple(tDot, 1)
	case c == ':':
		return simple(tColon, 1)
	case c == '=':
		return simple(tEq, 1)
	case c == '+' || c == '-':
		return simple(tSign, 1)
	case c == '"':
		return l.text()
	case isIDStart(c):
		for l.pos < len(l.src) && (isIDStart(l.src[l.pos]) || isDigit(l.src[l.pos])) {
			l.pos++
		}
		return token{kind: tID, text: l.src[start:l.pos], pos: start}, nil
	case isDigit(c):
		return l.number()
	}
	r, _ := utf8.DecodeRuneInString(l.src[l.pos:])
	return token{}, l.errorf(start, "unexpected character %q", r)
}

// digits consumes [0-9a-fA-F_]* (or decimal only) and returns them without
// underscores.
func (l *lexer) digits(hex bool) string {
	start := l.pos
	for l.pos < len(l.src) {
		c := l.src[l.pos]
		if c == '_' || isDigit(c) || hex && isHexDigit(c) {
			l.pos++
			continue
		}
		break
	}
	return strings.ReplaceAll(l.src[start:l.pos], "_", "")
}

func (l *lexer) number() (token, error) {
	start := l.pos
	if strings.HasPrefix(l.src[l.pos:], "0x") || strings.HasPrefix(l.src[l.pos:], "0X") {
		l.pos += 2
		if l.pos >= len(l.src) || !isHexDigit(l.src[l.pos]) {
			return token{}, l.errorf(start, "malformed hex number")
		}
		return token{kind: tHex, text: l.digits(true), pos: start}, nil
	}
	intPart := l.digits(false)
	isFloat := false
	frac := ""
	// A '.' followed by an identifier is not part of a number (it
	// cannot be in valid input anyway), but "1." is a float.
	if l.pos < len(l.src) && l.src[l.pos] == '.' && !(l.pos+1 < len(l.src) && isIDStart(l.src[l.pos+1])) {
		l.pos++
		isFloat = true
		if l.pos < len(l.src) && isDigit(l.src[l.pos]) {
			frac = l.digits(false)
		}
	}
	exp := ""
	if l.pos < len(l.src) && (l.src[l.pos] == 'e' || l.src[l.pos] == 'E') {
		save := l.pos
		l.pos++
		sign := ""
		if l.pos < len(l.src) && (l.src[l.pos] == '+' || l.src[l.pos] == '-') {
			sign = l.src[l.pos : l.pos+1]
			l.pos++
		}
		if l.pos < len(l.src) && isDigit(l.src[l.pos]) {
			exp = "e" + sign + l.digits(false)
			isFloat = true
		} else {
			l.pos = save
		}
	}
	if l.pos < len(l.src) && (isIDStart(l.src[l.pos]) || isDigit(l.src[l.pos])) {
		return token{}, l.errorf(start, "malformed number %q", l.src[start:l.pos+1])
	}
	if isFloat {
		s := intPart + "." + frac + exp
		if frac == "" {
			s = intPart + exp
		}
		return token{kind: tFloat, text: s, pos: start}, nil
	}
	return token{kind: tDecimal, text: intPart, pos: start}, nil
}

// text lexes a text literal. Escapes: \n \r \t \\ \" \' \xx (a byte given
// by two hex digits) and \u{hex} (a Unicode scalar value). The result may
// be invalid UTF-8 (through \xx); the parser checks where it matters.
func (l *lexer) text() (token, error) {
	start := l.pos
	l.pos++ // opening quote
	var sb strings.Builder
	for {
		if l.pos >= len(l.src) {
			return token{}, l.errorf(start, "unclosed text literal")
		}
		c := l.src[l.pos]
		switch c {
		case '"':
			l.pos++
			return token{kind: tText, text: sb.String(), pos: start}, nil
		case '\\':
			if err := l.escape(&sb); err != nil {
				return token{}, err
			}
		default:
			sb.WriteByte(c)
			l.pos++
		}
	}
}

func (l *lexer) escape(sb *strings.Builder) error {
	start := l.pos
	l.pos++ // backslash
	if l.pos >= len(l.src) {
		return l.errorf(start, "unfinished escape sequence")
	}
	c := l.src[l.pos]
	switch c {
	case 'n':
		sb.WriteByte('\n')
	case 'r':
		sb.WriteByte('\r')
	case 't':
		sb.WriteByte('\t')
	case '\\', '"', '\'':
		sb.WriteByte(c)
	case 'u':
		if l.pos+1 >= len(l.src) || l.src[l.pos+1] != '{' {
			return l.errorf(start, `malformed \u{...} escape`)
		}
		end := strings.IndexByte(l.src[l.pos:], '}')
		if end < 0 {
			return l.errorf(start, `unclosed \u{...} escape`)
		}
		hex := l.src[l.pos+2 : l.pos+end]
		if hex == "" || !isHexDigit(hex[0]) || strings.Trim(hex, "0123456789abcdefABCDEF_") != "" {
			return l.errorf(start, `malformed \u{...} escape`)
		}
		n, err := strconv.ParseUint(strings.ReplaceAll(hex, "_", ""), 16, 32)
		if err != nil || n > utf8.MaxRune || n >= 0xd800 && n < 0xe000 {
			return l.errorf(start, `\u{%s} is not a Unicode scalar value`, hex)
		}
		sb.WriteRune(rune(n))
		l.pos += end
	default:
		if l.pos+1 < len(l.src) && isHexDigit(c) && isHexDigit(l.src[l.pos+1]) {
			n, _ := strconv.ParseUint(l.src[l.pos:l.pos+2], 16, 8)
			sb.WriteByte(byte(n))
			l.pos += 2
			return nil
		}
		return l.errorf(start, "unknown escape sequence \\%c", c)
	}
	l.pos++
	return nil
}
