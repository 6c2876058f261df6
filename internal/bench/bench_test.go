package bench

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMedianPercentile(t *testing.T) {
	for _, c := range []struct {
		xs   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := Median(c.xs); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.xs, got, c.want)
		}
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("Median(nil) is not NaN")
	}
	xs := []float64{5, 1, 3} // Median must not sort its argument
	Median(xs)
	if xs[0] != 5 {
		t.Error("Median sorted its argument")
	}
	var hundred []float64
	for i := 100; i >= 1; i-- {
		hundred = append(hundred, float64(i))
	}
	if p := percentile(hundred, 99); p != 99 {
		t.Errorf("p99 of 1..100 = %v", p)
	}
	if p := percentile(hundred, 50); p != 50 {
		t.Errorf("p50 of 1..100 = %v", p)
	}
	if p := percentile([]float64{7}, 99); p != 7 {
		t.Errorf("p99 of one = %v", p)
	}
}

func testReport() *Report {
	r := &Report{Sections: []Section{{Key: "s", Title: "Section", About: "About it."}},
		Date: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC), Commit: "abc123", Elapsed: 90 * time.Second,
		Modified: []string{"internal/host/node.go"},
		Machine: Machine{Cores: 2, CPU: "cpu", Memory: 24 << 30, Kernel: "6.1", Go: "go1.26", Isolation: "root",
			LoadStart: "0.1, 0.2, 0.3", LoadEnd: "1, 1, 1"}}
	r.Add(&Figure{Section: "s", Name: "base", Samples: []float64{0.002, 0.001, 0.003}})
	r.Add(&Figure{Section: "s", Name: "x | y", Samples: []float64{0.004, 0.006}, Baseline: "base"})
	r.Add(&Figure{Section: "s", Name: "orphan", Samples: []float64{1}, Baseline: "missing"})
	r.Add(&Figure{Section: "s", Name: "count", Unit: Count, Label: "sandboxes", Samples: []float64{412}, Alone: true})
	r.Skip("s", "skipped one", "no bwrap")
	r.Note("s", "A note with %d.", 42)
	return r
}

func TestSummarizeAndFormat(t *testing.T) {
	r := testReport()
	s := r.Summarize(r.Find("x | y"))
	if !s.HasRatio || s.Ratio != 2.5 || s.Median != 0.005 || s.Min != 0.004 || s.Max != 0.006 || s.N != 2 {
		t.Fatalf("summary %+v", s)
	}
	if s := r.Summarize(r.Find("orphan")); s.HasRatio || !s.BaselineUnavailable {
		t.Fatalf("orphan summary %+v", s)
	}
	f := r.Find("x | y")
	if got := f.Format(s.Median, s.Median); got != "5.00 ms" {
		t.Errorf("Format = %q", got)
	}
	if got := f.FormatRange(s); got != "4.00–6.00 ms" {
		t.Errorf("FormatRange = %q", got)
	}
	for _, c := range []struct {
		f    Figure
		v    float64
		want string
	}{
		{Figure{Unit: Seconds}, 0.000512, "512 µs"},
		{Figure{Unit: Seconds}, 2.5, "2.50 s"},
		{Figure{Unit: Bytes}, 23.2 * (1 << 20), "23.2 MiB"},
		{Figure{Unit: Bytes}, 3 << 30, "3.00 GiB"},
		{Figure{Unit: Rate, Label: "msg/s"}, 1234.4, "1234 msg/s"},
		{Figure{Unit: Count, Label: "sandboxes"}, 49.6, "50 sandboxes"},
	} {
		if got := c.f.Format(c.v, c.v); got != c.want {
			t.Errorf("Format(%v, unit %d) = %q, want %q", c.v, c.f.Unit, got, c.want)
		}
	}
	if got := r.Line(f); !strings.Contains(got, "2.50× vs base") || !strings.Contains(got, "N=2") {
		t.Errorf("Line = %q", got)
	}
	if got := r.Line(r.Find("skipped one")); !strings.Contains(got, "SKIPPED: no bwrap") {
		t.Errorf("Line = %q", got)
	}
}

func TestMarkdown(t *testing.T) {
	r := testReport()
	r.Plots = []Plot{{Section: "s", File: "p.svg", Title: "A plot", Chart: Chart{}}}
	md := r.Markdown("bench")
	for _, want := range []string{
		MarkerStart, MarkerEnd, "at commit `abc123` plus uncommitted changes to `internal/host/node.go`", "2026-11-22 10:00 UTC", "2 cores (cpu), 24.0 GiB memory",
		"### Section", "About it.",
		"| figure | median | min–max | N | ratio | baseline |",
		"| base | 2.00 ms | 1.00–3.00 ms | 3 |  | *baseline* |",
		`| x \| y | 5.00 ms | 4.00–6.00 ms | 2 | 2.50× | base |`,
		"| orphan | 1.00 s | – | 1 | n/a | missing (not measured) |",
		"| count | 412 sandboxes | – | 1 | — | — |",
		"| skipped one | skipped: no bwrap | | | | |",
		"![A plot](bench/p.svg)", "- A note with 42.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if !strings.HasPrefix(md, MarkerStart+"\n") || !strings.HasSuffix(md, MarkerEnd+"\n") {
		t.Errorf("markers are not the section's ends:\n%s", md)
	}
}

func TestReplaceSection(t *testing.T) {
	sec := MarkerStart + "\nnew\n" + MarkerEnd + "\n"
	doc := "# Benchmarks\n\nintro\n\n" + MarkerStart + "\nold\nold\n" + MarkerEnd + "\n\n## Other\n\nkept\n"
	got, err := ReplaceSection(doc, sec)
	if err != nil {
		t.Fatal(err)
	}
	if want := "# Benchmarks\n\nintro\n\n" + sec + "\n## Other\n\nkept\n"; got != want {
		t.Errorf("replaced:\n%q\nwant\n%q", got, want)
	}
	// Idempotent.
	if again, _ := ReplaceSection(got, sec); again != got {
		t.Errorf("second replace changed the document:\n%q", again)
	}
	// No markers: after the title.
	got, err = ReplaceSection("# Benchmarks\n\n## Old\n", sec)
	if err != nil || got != "# Benchmarks\n\n"+sec+"\n## Old\n" {
		t.Errorf("inserted: %q %v", got, err)
	}
	got, err = ReplaceSection("no title\n", sec)
	if err != nil || got != sec+"\nno title\n" {
		t.Errorf("inserted without title: %q %v", got, err)
	}
	for _, bad := range []string{MarkerStart + "\n", MarkerEnd + "\n" + MarkerStart + "\n"} {
		if _, err := ReplaceSection(bad, sec); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}

func TestChangedPaths(t *testing.T) {
	status := " M BENCHMARKS.md\n M internal/host/node.go\nM  bench/a.svg\nR  old.go -> new.go\n M \"sp ace.go\"\n"
	got := changedPaths(status, []string{"BENCHMARKS.md", "bench"})
	want := []string{"internal/host/node.go", "new.go", "sp ace.go"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("changedPaths = %q, want %q", got, want)
	}
	if got := changedPaths("", nil); len(got) != 0 {
		t.Errorf("clean tree: %q", got)
	}
	if got := changedList([]string{"a", "b", "c", "d", "e", "f", "g"}, "`"); got != "`a`, `b`, `c`, `d`, `e`, 2 more" {
		t.Errorf("changedList = %q", got)
	}
}

func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "BENCHMARKS.md")
	if err := os.WriteFile(path, []byte("# Benchmarks\n\n## Foundation\n\nhand-written\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := testReport()
	r.Plots = []Plot{{Section: "s", File: "p.svg", Title: "A plot",
		Chart: Chart{Title: "t", Series: []Series{{Name: "a", X: []float64{1, 2}, Y: []float64{3, 4}}}}}}
	files, err := r.WriteFiles(path, "bench")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 {
		t.Fatalf("files %v", files)
	}
	doc, _ := os.ReadFile(path)
	if !strings.Contains(string(doc), "## Foundation\n\nhand-written\n") || !strings.Contains(string(doc), MarkerEnd) {
		t.Errorf("document:\n%s", doc)
	}
	if _, err := os.Stat(filepath.Join(dir, "bench", "p.svg")); err != nil {
		t.Error(err)
	}
	// Rewriting leaves the same document.
	if _, err := r.WriteFiles(path, "bench"); err != nil {
		t.Fatal(err)
	}
	doc2, _ := os.ReadFile(path)
	if !bytes.Equal(doc, doc2) {
		t.Errorf("second write differs")
	}
}

// wellFormed parses an SVG as XML and counts its elements by name.
func wellFormed(t *testing.T, b []byte) map[string]int {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	n := map[string]int{}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, b)
		}
		if se, ok := tok.(xml.StartElement); ok {
			n[se.Name.Local]++
		}
	}
}

func TestChartSVG(t *testing.T) {
	c := Chart{Title: "Latency <vs> canisters & more", XLabel: "canisters", YLabel: "ms", LogX: true, LogY: true,
		Series: []Series{
			{Name: "sandboxed", X: []float64{1, 10, 100}, Y: []float64{2, 3, 40}},
			{Name: "in-process", X: []float64{1, 10, 100}, Y: []float64{1, math.NaN(), 20}},
			{Name: "empty"},
		}}
	svg := c.SVG()
	n := wellFormed(t, svg)
	if n["svg"] != 1 || n["polyline"] != 2 || n["circle"] != 5+3 { // points, and one per legend entry
		t.Errorf("elements %v", n)
	}
	s := string(svg)
	if !strings.Contains(s, "Latency &lt;vs&gt; canisters &amp; more") {
		t.Error("title not escaped")
	}
	for _, tick := range []string{">1<", ">10<", ">100<"} {
		if !strings.Contains(s, tick) {
			t.Errorf("no tick %s", tick)
		}
	}
	// A linear chart with one point, and one with no data, still render.
	wellFormed(t, Chart{Series: []Series{{Name: "one", X: []float64{4}, Y: []float64{0}}}}.SVG())
	wellFormed(t, Chart{}.SVG())
}

func TestAxisMapping(t *testing.T) {
	a := &axis{log: true, p0: 0, p1: 100}
	a.setup([]float64{1, 100}, false)
	if got := a.tr(10); math.Abs(got-50) > 1e-9 {
		t.Errorf("log axis: 10 at %v, want 50", got)
	}
	l := &axis{p0: 100, p1: 0}
	l.setup([]float64{3, 7}, true)
	if l.lo != 0 || l.hi < 7 || l.tr(0) != 100 {
		t.Errorf("linear axis from %v to %v", l.lo, l.hi)
	}
	for _, c := range []struct{ span, want float64 }{{10, 2}, {100, 20}, {7, 2}, {0.3, 0.1}} {
		if got := niceStep(c.span, 5); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("niceStep(%v) = %v, want %v", c.span, got, c.want)
		}
	}
}

func TestLEB(t *testing.T) {
	if got := natArg(25); !bytes.Equal(got, []byte("DIDL\x00\x01\x7d\x19")) {
		t.Errorf("natArg(25) = %x", got)
	}
	if got := leb(300); !bytes.Equal(got, []byte{0xac, 0x02}) {
		t.Errorf("leb(300) = %x", got)
	}
	if got := touchArg(1, 256); !bytes.Equal(got, []byte("DIDL\x00\x02\x7d\x7d\x01\x80\x02")) {
		t.Errorf("touchArg = %x", got)
	}
}
