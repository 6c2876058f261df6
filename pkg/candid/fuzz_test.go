package candid

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fuzzTypes are expected types FuzzDecode decodes every input at.
var fuzzTypes = func() [][]*Type {
	var out [][]*Type
	for _, s := range []string{
		"()",
		"(nat, int, text)",
		"(opt nat)",
		"(vec opt record { a : int; b : opt text })",
		"type List = opt record { head : int; tail : List }; (List, reserved)",
		"(variant { ok : blob; err : text }, principal)",
		"(func (nat) -> (opt int) query, service { m : () -> () })",
		"type Opt = opt Opt; (Opt, opt opt bool)",
		"(record { nat8; nat16; nat32; nat64; int8; int16; int32; int64; float32; float64; bool; null })",
	} {
		ts, err := ParseTypes(s)
		if err != nil {
			panic(err)
		}
		out = append(out, ts)
	}
	return out
}()

// addConformanceSeeds adds the binary or textual inputs of the conformance
// suite to the fuzz corpus.
func addConformanceSeeds(f *testing.F, blobs bool) {
	files, _ := filepath.Glob(filepath.Join(conformanceDir, "*.test.did"))
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		as, err := parseTestFile(filepath.Base(file), string(src))
		if err != nil {
			continue
		}
		for _, a := range as {
			for _, in := range []*testInput{&a.left, a.right} {
				if in != nil && in.blob == blobs {
					f.Add([]byte(in.data))
				}
			}
		}
	}
}

// fuzzDecoder has a small cost budget, so that the fuzzer does not spend
// its time on inputs that exhaust the default one.
var fuzzDecoder = &Decoder{BaseCost: 1 << 14}

func FuzzDecode(f *testing.F) {
	addConformanceSeeds(f, true)
	f.Add([]byte("DIDL\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		start := time.Now()
		_, _, _, _ = fuzzDecoder.Field(b, 0) // reads what Decode reads, keeps less
		a, err := fuzzDecoder.Decode(b)
		if err == nil {
			// The wire values re-encode and decode to themselves.
			b2, err := EncodeArgs(a)
			if err != nil {
				t.Fatalf("EncodeArgs of decoded %.500s: %v", a, err)
			}
			a2, err := fuzzDecoder.DecodeAs(b2, a.Types)
			if err != nil && !isLimit(err) || err == nil && !equalValues(a.Values, a2.Values) {
				// (Coercion costs extra units, so DecodeAs may exceed the
				// budget where Decode did not.)
				t.Fatalf("re-decoding %.500s: %.500s, %v", a, a2, err)
			}
			_ = a.String()
		}
		for _, ts := range fuzzTypes {
			if a, err := fuzzDecoder.DecodeAs(b, ts); err == nil {
				s := a.String()
				if strings.Contains(s, "nan") {
					continue
				}
				// What decodes at a type prints and parses back.
				p, err := ParseArgsTyped(s, ts)
				if err != nil || !equalValues(a.Values, p.Values) {
					t.Fatalf("text round trip of %.500s: %.500s, %v", s, p, err)
				}
			}
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("decoding %d bytes took %v", len(b), d)
		}
	})
}

func FuzzParseArgs(f *testing.F) {
	addConformanceSeeds(f, false)
	for _, s := range []string{
		`(42 : nat, "hi", record { name = "x"; age = 3 : nat8 }, variant { circle = 1.5 }, opt vec { 1; 2 }, blob "\00\ff", principal "aaaaa-aa", null, true)`,
		`(vec { variant { a }; variant { b = opt 1 } }, record { 1; "a"; 0x10 = -5 }, func "aaaaa-aa"."m", service "2vxsx-fae")`,
		`(1_000 : int64, -inf : float32, nan, 1e10, 0., "\u{1F600}")`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		text := string(b)
		a, err := ParseArgs(text)
		if err != nil {
			return
		}
		enc, err := EncodeArgs(a)
		if err != nil {
			t.Fatalf("EncodeArgs(ParseArgs(%q)) = %v", text, err)
		}
		dec, err := DecodeAs(enc, a.Types)
		if err != nil || !equalValues(a.Values, dec.Values) {
			t.Fatalf("binary round trip of %q: %s, %v", text, dec, err)
		}
		printed := a.String()
		back, err := ParseArgsTyped(printed, a.Types)
		if err != nil || !equalValues(a.Values, back.Values) {
			t.Fatalf("text round trip of %q via %s: %s, %v", text, printed, back, err)
		}
		if again := back.String(); again != printed {
			t.Fatalf("printing is not stable: %s then %s", printed, again)
		}
	})
}

func FuzzParseService(f *testing.F) {
	f.Add([]byte(exampleDid))
	files, _ := filepath.Glob("testdata/*.did")
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseService(string(b))
		if err != nil {
			return
		}
		// The definitions and the service print and parse back to
		// equivalent types.
		var sb strings.Builder
		for _, d := range s.Defs {
			sb.WriteString("type " + d.Name + " = " + d.Type.String() + ";\n")
		}
		if s.Type != nil {
			sb.WriteString("service : ")
			if s.HasInit {
				sb.WriteString("(")
				for i, a := range s.InitArgs {
					if i > 0 {
						sb.WriteString(", ")
					}
					sb.WriteString(a.String())
				}
				sb.WriteString(") -> ")
			}
			sb.WriteString(strings.TrimPrefix(s.Type.String(), "service "))
		}
		printed := sb.String()
		if strings.Contains(printed, "...") || strings.Contains(printed, "rec_") {
			return // cut short, or names that may clash
		}
		s2, err := ParseService(printed)
		if err != nil {
			t.Fatalf("reparsing %q: %v", printed, err)
		}
		if (s.Type == nil) != (s2.Type == nil) || s.Type != nil && !(IsSubtype(s.Type, s2.Type) && IsSubtype(s2.Type, s.Type)) {
			t.Fatalf("service type changed: %v, then %v", s.Type, s2.Type)
		}
	})
}
