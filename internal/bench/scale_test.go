package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The scale section renders alone (for its own BENCHMARKS.md section, as
// the full suite does not run it) with the run's commit and machine, and
// WritePlots writes only the plots.
func TestSectionMarkdownAndPlots(t *testing.T) {
	r := testReport()
	r.Sections = append(r.Sections, Section{Key: "scale", Title: "Scale", About: "Opt-in."})
	r.Add(&Figure{Section: "scale", Name: "update latency p50, 100 canisters", Samples: []float64{0.002}})
	r.Note("scale", "A scale note.")
	r.Plots = []Plot{{Section: "scale", File: "scale.svg", Title: "Scale plot",
		Chart: Chart{Title: "t", LogX: true, Series: []Series{{Name: "a", X: []float64{100, 1000}, Y: []float64{1, 2}}}}}}
	md := r.SectionMarkdown("scale", "bench")
	for _, want := range []string{"### Scale", "Opt-in.", "| update latency p50, 100 canisters | 2.00 ms |",
		"![Scale plot](bench/scale.svg)", "- A scale note.", "`cordon bench --scale`", "commit `abc123` plus uncommitted changes to `internal/host/node.go`",
		"2026-11-22 10:00 UTC", "2 cores"} {
		if !strings.Contains(md, want) {
			t.Errorf("section lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "### Section") || strings.Contains(md, MarkerStart) {
		t.Errorf("section has more than itself:\n%s", md)
	}
	if md := r.SectionMarkdown("nope", "bench"); md != "" {
		t.Errorf("unknown section rendered %q", md)
	}
	dir := filepath.Join(t.TempDir(), "bench")
	files, err := r.WritePlots(dir)
	if err != nil || len(files) != 1 {
		t.Fatalf("WritePlots: %v %v", files, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "scale.svg")); err != nil || wellFormed(t, b)["polyline"] != 1 {
		t.Fatalf("plot: %v", err)
	}
}

// Opt-in sections run only when named: the whole suite skips the scale
// section, --only (and --scale) runs what it names.
func TestOptInSectionsSkipped(t *testing.T) {
	all := Options{}
	for _, s := range Sections {
		if got, want := all.selects(s.Key), !slices.Contains(OptIn, s.Key); got != want {
			t.Errorf("whole suite selects %s: %v, want %v", s.Key, got, want)
		}
	}
	if all.selects("scale") {
		t.Error("the whole suite runs the scale section")
	}
	if o := (Options{Only: []string{"scale"}}); !o.selects("scale") || o.selects("spawn") {
		t.Error("--only scale does not run scale alone")
	}
	if o := (Options{Only: []string{"spawn", "memory"}}); !o.selects("memory") || o.selects("scale") {
		t.Error("--only spawn,memory")
	}
}

// readInto (the scale sampler's /proc reader) reads a whole file, growing
// the buffer it was given when the file is larger, and reads /proc files
// (whose size stat reports as 0).
func TestReadIntoGrows(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	want := bytes.Repeat([]byte("0123456789"), 1000)
	if err := os.WriteFile(p, want, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readInto(make([]byte, 0, 16), p)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("readInto: %d bytes, %v; want %d bytes", len(got), err, len(want))
	}
	st, err := readInto(nil, "/proc/self/status")
	if err != nil || kbField(string(st), "VmRSS:") == 0 {
		t.Fatalf("readInto /proc/self/status: %v, VmRSS %d", err, kbField(string(st), "VmRSS:"))
	}
	if _, err := readInto(nil, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing file read without error")
	}
}
