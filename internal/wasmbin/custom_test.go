package wasmbin

import (
	"bytes"
	"errors"
	"testing"
)

func TestFindCustomSection(t *testing.T) {
	const name = "icp:public candid:args"
	garbage := []byte{0xff, 0xff, 0xff, 0xff} // no valid type, import or code section
	for _, tc := range []struct {
		what  string
		b     []byte
		want  string
		found bool
		err   error
	}{
		{"found", module(sec(SectionType, vec(funcTypeVoid)), sec(SectionCustom, str(name), []byte("(nat)"))), "(nat)", true, nil},
		{"first of two", module(sec(SectionCustom, str(name), []byte("(nat)")), sec(SectionCustom, str(name), []byte("(int)"))), "(nat)", true, nil},
		{"empty", module(sec(SectionCustom, str(name))), "", true, nil},
		{"absent", module(sec(SectionCustom, str("icp:public candid:service"), []byte("service : {}"))), "", false, nil},
		{"a longer name", module(sec(SectionCustom, str(name+"x"), []byte("(nat)"))), "", false, nil},
		// Sections around it are not decoded: hostile ones are skipped.
		{"garbage sections", module(sec(SectionType, garbage), sec(SectionImport, garbage), sec(SectionCode, garbage), sec(SectionCustom, str(name), []byte("(nat)"))), "(nat)", true, nil},
		{"bad magic", []byte("\x1f\x8b\x08\x00\x00\x00\x00\x00"), "", false, ErrMalformed},
		{"section beyond the end", append(module(), 0, 9, 1), "", false, ErrTruncated},
		{"name beyond the section", module(sec(SectionCustom, leb(50), []byte("abc"))), "", false, ErrTruncated},
		{"unterminated size", append(module(), 0, 0x80), "", false, ErrTruncated},
	} {
		data, found, err := FindCustomSection(tc.b, name)
		if string(data) != tc.want || found != tc.found || (tc.err == nil) != (err == nil) || (tc.err != nil && !errors.Is(err, tc.err)) {
			t.Errorf("%s: %q %v %v; want %q %v %v", tc.what, data, found, err, tc.want, tc.found, tc.err)
		}
	}
	if _, err := Decode(module(sec(SectionType, garbage), sec(SectionCustom, str(name)))); err == nil {
		t.Fatal("Decode accepted the garbage type section: the case proves nothing")
	}
}

// Wherever Decode reads a module, FindCustomSection finds what it found.
func FuzzFindCustomSection(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s, "icp:public candid:service")
	}
	f.Fuzz(func(t *testing.T, b []byte, name string) {
		data, found, err := FindCustomSection(b, name)
		if err != nil && (found || data != nil) {
			t.Fatalf("an error with a result: %v", err)
		}
		m, derr := Decode(b)
		if derr != nil {
			return
		}
		if err != nil {
			t.Fatalf("Decode read it, FindCustomSection did not: %v", err)
		}
		want, ok := m.CustomSection(name)
		if ok != found || !bytes.Equal(want, data) {
			t.Fatalf("%q: found %v %q, Decode %v %q", name, found, data, ok, want)
		}
	})
}
