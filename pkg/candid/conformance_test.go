package candid

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// conformanceDir holds the official Candid test suite (dfinity/candid,
// folder test/).
const conformanceDir = "../../../shared/conformance/candid"

// unsupported lists the assertions this implementation deliberately does
// not pass, keyed by "file:line", with the reason.
var unsupported = map[string]string{}

// assertion is one "assert" of a .test.did file.
type assertion struct {
	file  string
	line  int
	left  testInput
	right *testInput
	op    tokKind // tColon, tNotColon, tEqEq or tNotEq
	types []*Type
	desc  string
}

type testInput struct {
	blob bool
	data string // binary message, or textual arguments
}

func (in testInput) String() string {
	if in.blob {
		return fmt.Sprintf("blob %q", in.data)
	}
	return in.data
}

func (a assertion) key() string { return fmt.Sprintf("%s:%d", a.file, a.line) }

func (a assertion) name() string {
	d := a.desc
	if d == "" {
		d = truncate(a.left.String(), 40)
	}
	return fmt.Sprintf("%s:%d/%s", strings.TrimSuffix(a.file, ".test.did"), a.line, d)
}

// parseTestFile parses a .test.did file: type definitions followed by
// assertions
//
//	assert <input> : <tuptype> <desc>?;
//	assert <input> !: <tuptype> <desc>?;
//	assert <input> == <input> : <tuptype> <desc>?;
//	assert <input> != <input> : <tuptype> <desc>?;
//
// where <input> is a text (textual arguments) or blob <text> (binary).
func parseTestFile(name, src string) ([]assertion, error) {
	p := newParser(src)
	env, err := p.parseDefs()
	if err != nil {
		return nil, err
	}
	if _, err := env.resolveAll(); err != nil {
		return nil, err
	}
	input := func() (testInput, error) {
		t, err := p.next()
		if err != nil {
			return testInput{}, err
		}
		if isKeyword(t, "blob") {
			s, err := p.expect(tText)
			return testInput{blob: true, data: s.text}, err
		}
		if t.kind != tText {
			return testInput{}, p.errorf(t.pos, "expected a test input, found %s", t)
		}
		return testInput{data: t.text}, nil
	}
	var out []assertion
	for {
		t, err := p.next()
		if err != nil {
			return nil, err
		}
		if t.kind == tEOF {
			return out, nil
		}
		if !isKeyword(t, "assert") {
			return nil, p.errorf(t.pos, "expected assert, found %s", t)
		}
		a := assertion{file: name, line: 1 + strings.Count(src[:t.pos], "\n")}
		if a.left, err = input(); err != nil {
			return nil, err
		}
		op, err := p.next()
		if err != nil {
			return nil, err
		}
		a.op = op.kind
		switch op.kind {
		case tColon, tNotColon:
		case tEqEq, tNotEq:
			right, err := input()
			if err != nil {
				return nil, err
			}
			a.right = &right
			if _, err := p.expect(tColon); err != nil {
				return nil, err
			}
		default:
			return nil, p.errorf(op.pos, "expected an assertion operator, found %s", op)
		}
		args, err := p.parseTupleType()
		if err != nil {
			return nil, err
		}
		if a.types, err = env.resolveArgs(args); err != nil {
			return nil, err
		}
		if d, err := p.peek(); err != nil {
			return nil, err
		} else if d.kind == tText {
			p.next()
			a.desc = d.text
		}
		if _, err := p.accept(tSemi); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
}

func (in testInput) decode(types []*Type) (Args, error) {
	if in.blob {
		return DecodeAs([]byte(in.data), types)
	}
	return ParseArgsTyped(in.data, types)
}

func (a assertion) run() error {
	left, err := a.left.decode(a.types)
	switch a.op {
	case tColon:
		return err
	case tNotColon:
		if err == nil {
			return fmt.Errorf("decoded to %s, expected an error", left)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("left side: %w", err)
	}
	right, err := a.right.decode(a.types)
	if err != nil {
		return fmt.Errorf("right side: %w", err)
	}
	eq := len(left.Values) == len(right.Values)
	for i := 0; eq && i < len(left.Values); i++ {
		eq = Equal(left.Values[i], right.Values[i])
	}
	if eq != (a.op == tEqEq) {
		return fmt.Errorf("left %s, right %s: equal = %v", left, right, eq)
	}
	return nil
}

func TestConformance(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(conformanceDir, "*.test.did"))
	if len(files) == 0 {
		t.Skipf("no conformance tests in %s", conformanceDir)
	}
	sort.Strings(files)
	var passed, skipped, total int
	seen := map[string]bool{}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(f)
		asserts, err := parseTestFile(name, string(src))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, a := range asserts {
			total++
			reason, listed := unsupported[a.key()]
			seen[a.key()] = true
			t.Run(a.name(), func(t *testing.T) {
				err := a.run()
				switch {
				case listed && err != nil:
					skipped++
					t.Skipf("unsupported: %s (%v)", reason, err)
				case listed:
					t.Errorf("listed as unsupported (%s) but passes: remove it from the table", reason)
				case err != nil:
					t.Errorf("%s %s: %v", a.left, a.op, err)
				default:
					passed++
				}
			})
		}
	}
	for k := range unsupported {
		if !seen[k] {
			t.Errorf("unsupported table lists %s, which is not an assertion", k)
		}
	}
	t.Logf("conformance: %d assertions, %d passed, %d listed as unsupported", total, passed, skipped)
	fmt.Printf("candid conformance: %d assertions, %d passed, %d listed as unsupported\n", total, passed, skipped)
}
