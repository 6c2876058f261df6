package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Unit says what a figure's samples are and how they print.
type Unit int

// Units. Samples are stored in the base unit: seconds, bytes, or as is.
const (
	Seconds Unit = iota // a duration
	Bytes               // an amount of memory
	Rate                // per second (Figure.Label names it: "msg/s")
	Count               // a number of things (Figure.Label names them)
)

// Figure is one measured quantity: its samples (one per run), and the
// figure it is compared with, measured in the same run.
type Figure struct {
	Section  string
	Name     string
	Unit     Unit
	Label    string    // Rate and Count: what is counted ("msg/s", "sandboxes")
	Samples  []float64 // one per run, in the base unit
	Baseline string    // Name of the figure this one is divided by ("" = none)
	Alone    bool      // neither compared nor a baseline (no ratio applies)
	Skipped  string    // why it was not measured ("" = measured)
}

// Summary of a figure's samples.
type Summary struct {
	N                   int
	Median, Min, Max    float64
	HasRatio            bool
	Ratio               float64 // Median / the baseline's median
	BaselineUnavailable bool    // a baseline was named but not measured
}

// Median returns the median of xs (the mean of the middle two for an even
// count); NaN for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Summarize computes a figure's median, range and ratio within r.
func (r *Report) Summarize(f *Figure) Summary {
	s := Summary{N: len(f.Samples), Median: Median(f.Samples), Min: math.NaN(), Max: math.NaN()}
	if len(f.Samples) > 0 {
		s.Min, s.Max = slices.Min(f.Samples), slices.Max(f.Samples)
	}
	if f.Baseline != "" {
		b := r.Find(f.Baseline)
		if b == nil || b.Skipped != "" || len(b.Samples) == 0 {
			s.BaselineUnavailable = true
		} else if bm := Median(b.Samples); bm != 0 && len(f.Samples) > 0 {
			s.HasRatio, s.Ratio = true, s.Median/bm
		}
	}
	return s
}

// Section describes a group of figures.
type Section struct {
	Key, Title, About string
}

// Plot is a chart written next to BENCHMARKS.md.
type Plot struct {
	Section string // shown under this section
	File    string // base name, e.g. "latency-vs-canisters.svg"
	Title   string
	Chart   Chart
}

// Machine describes where the suite ran.
type Machine struct {
	Cores     int
	CPU       string
	Memory    uint64 // MemTotal, bytes
	Kernel    string
	Go        string
	Isolation string // what sandbox confinement this host allows
	// Load averages (1, 5, 15 minutes) when the run started and ended:
	// other work on the machine shows in the figures.
	LoadStart, LoadEnd string
}

// Report is one run of the suite.
type Report struct {
	Quick    bool
	Date     time.Time
	Commit   string   // git HEAD, "" if unknown
	Modified []string // tracked files with uncommitted changes when the run started
	Machine  Machine
	Elapsed  time.Duration
	Sections []Section
	Figures  []*Figure
	Notes    map[string][]string // by section key
	Plots    []Plot

	// Print, if set, is called with every figure as it is added.
	Print func(*Report, *Figure)
}

// Add records a figure (and prints it).
func (r *Report) Add(f *Figure) *Figure {
	r.Figures = append(r.Figures, f)
	if r.Print != nil {
		r.Print(r, f)
	}
	return f
}

// Skip records a figure that could not be measured.
func (r *Report) Skip(section, name, why string) {
	r.Add(&Figure{Section: section, Name: name, Skipped: why})
}

// Note adds a sentence under a section.
func (r *Report) Note(section, format string, args ...any) {
	if r.Notes == nil {
		r.Notes = map[string][]string{}
	}
	r.Notes[section] = append(r.Notes[section], fmt.Sprintf(format, args...))
}

// Find returns the figure named name, nil if none.
func (r *Report) Find(name string) *Figure {
	for _, f := range r.Figures {
		if f.Name == name {
			return f
		}
	}
	return nil
}

// ---- formatting ----------------------------------------------------------

// sig3 prints v with three significant digits (no exponent for the
// magnitudes benchmarks produce).
func sig3(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	case a >= 0.1:
		return fmt.Sprintf("%.3f", v)
	}
	return fmt.Sprintf("%.2g", v)
}

// scale picks a display unit for values around v: the divisor and its name.
func (f *Figure) scale(v float64) (float64, string) {
	switch f.Unit {
	case Seconds:
		switch a := math.Abs(v); {
		case a >= 1:
			return 1, "s"
		case a >= 1e-3:
			return 1e-3, "ms"
		default:
			return 1e-6, "µs"
		}
	case Bytes:
		switch a := math.Abs(v); {
		case a >= 1<<30:
			return 1 << 30, "GiB"
		case a >= 1<<20:
			return 1 << 20, "MiB"
		default:
			return 1 << 10, "KiB"
		}
	}
	return 1, f.Label
}

// num prints a scaled value: counts as integers, the rest with three
// significant digits.
func (f *Figure) num(v float64) string {
	if f.Unit == Count && !math.IsNaN(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return sig3(v)
}

// Format prints v in the figure's unit, scaled for the figure's median.
func (f *Figure) Format(v, median float64) string {
	d, u := f.scale(median)
	if u == "" {
		return f.num(v / d)
	}
	return f.num(v/d) + " " + u
}

// FormatRange prints "min–max unit" ("–" for a single sample).
func (f *Figure) FormatRange(s Summary) string {
	if s.N < 2 {
		return "–"
	}
	d, u := f.scale(s.Median)
	out := f.num(s.Min/d) + "–" + f.num(s.Max/d)
	if u != "" {
		out += " " + u
	}
	return out
}

// FormatRatio prints a ratio: "2.41×".
func FormatRatio(x float64) string { return sig3(x) + "×" }

// Line is the one-line text form of a figure (what `cordon bench` prints).
func (r *Report) Line(f *Figure) string {
	if f.Skipped != "" {
		return fmt.Sprintf("  %-62s SKIPPED: %s", f.Name, f.Skipped)
	}
	s := r.Summarize(f)
	line := fmt.Sprintf("  %-62s %10s  (%s, N=%d)", f.Name, f.Format(s.Median, s.Median), f.FormatRange(s), s.N)
	if s.N < 2 {
		line = fmt.Sprintf("  %-62s %10s  (N=%d)", f.Name, f.Format(s.Median, s.Median), s.N)
	}
	switch {
	case s.HasRatio:
		line += fmt.Sprintf("  %s vs %s", FormatRatio(s.Ratio), f.Baseline)
	case s.BaselineUnavailable:
		line += "  ratio: n/a (baseline " + f.Baseline + " not measured)"
	case f.Baseline == "" && !f.Alone:
		line += "  [baseline]"
	}
	return line
}

// ---- markdown ------------------------------------------------------------

// Markers delimit the section of BENCHMARKS.md that `cordon bench` owns.
const (
	MarkerStart = "<!-- bench:start -->"
	MarkerEnd   = "<!-- bench:end -->"
)

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// Markdown renders the report as the BENCHMARKS.md section (markers
// included). plotDir is the plots' directory relative to BENCHMARKS.md.
func (r *Report) Markdown(plotDir string) string {
	var b strings.Builder
	b.WriteString(MarkerStart + "\n")
	b.WriteString("<!-- Generated by `cordon bench`: edit the generator (internal/bench), not this section. -->\n\n")
	b.WriteString("## The suite: `cordon bench`\n\n")
	mode := "full"
	if r.Quick {
		mode = "--quick"
	}
	commit := "unknown (not a git checkout)"
	if r.Commit != "" {
		commit = "`" + r.Commit + "`"
		if len(r.Modified) > 0 {
			commit += " plus uncommitted changes to " + changedList(r.Modified, "`")
		}
	}
	fmt.Fprintf(&b, "Produced by `cordon bench` (%s mode, %s) at commit %s, on %s.\n", mode,
		r.Elapsed.Round(time.Second), commit, r.Date.UTC().Format("2006-01-02 15:04 MST"))
	b.WriteString("Regenerate with `go run ./cmd/cordon bench` (about 10 minutes: it rewrites this section\n")
	b.WriteString("and the plots in `bench/`, and leaves the rest of this file alone); `--quick` runs a smaller\n")
	b.WriteString("suite in about a minute and only prints (CI runs it; `--write` writes anyway).\n\n")
	m := r.Machine
	fmt.Fprintf(&b, "Machine: %d cores (%s), %s memory, Linux %s, %s. Sandboxes: %s. ", m.Cores, m.CPU,
		humanBytes(m.Memory), m.Kernel, m.Go, m.Isolation)
	fmt.Fprintf(&b, "Load average (1, 5, 15 min) at the start %s, at the end %s.\n\n", m.LoadStart, m.LoadEnd)
	b.WriteString("Every figure is the median over N runs, with the smallest and largest run; its ratio is\n")
	b.WriteString("its median divided by the median of the baseline named beside it, measured in the same run.\n")
	b.WriteString("A figure and its baseline take turns, round by round, so that other work on the machine falls\n")
	b.WriteString("on both. Numbers are measured, never asserted: they vary with the load on the machine.\n")
	for _, sec := range r.Sections {
		r.writeSection(&b, sec, plotDir)
	}
	b.WriteString("\n" + MarkerEnd + "\n")
	return b.String()
}

// writeSection renders one section's figures, plots and notes.
func (r *Report) writeSection(b *strings.Builder, sec Section, plotDir string) {
	var figs []*Figure
	for _, f := range r.Figures {
		if f.Section == sec.Key {
			figs = append(figs, f)
		}
	}
	if len(figs) == 0 && len(r.Notes[sec.Key]) == 0 {
		return
	}
	fmt.Fprintf(b, "\n### %s\n\n", sec.Title)
	if sec.About != "" {
		b.WriteString(sec.About + "\n\n")
	}
	if len(figs) > 0 {
		b.WriteString("| figure | median | min–max | N | ratio | baseline |\n")
		b.WriteString("| --- | ---: | ---: | ---: | ---: | --- |\n")
		for _, f := range figs {
			if f.Skipped != "" {
				fmt.Fprintf(b, "| %s | skipped: %s | | | | |\n", mdEscape(f.Name), mdEscape(f.Skipped))
				continue
			}
			s := r.Summarize(f)
			ratio, base := "", "*baseline*"
			switch {
			case f.Alone:
				ratio, base = "—", "—"
			case s.HasRatio:
				ratio, base = FormatRatio(s.Ratio), mdEscape(f.Baseline)
			case s.BaselineUnavailable:
				ratio, base = "n/a", mdEscape(f.Baseline)+" (not measured)"
			}
			fmt.Fprintf(b, "| %s | %s | %s | %d | %s | %s |\n", mdEscape(f.Name), f.Format(s.Median, s.Median),
				f.FormatRange(s), s.N, ratio, base)
		}
	}
	for _, p := range r.Plots {
		if p.Section == sec.Key {
			fmt.Fprintf(b, "\n![%s](%s)\n", p.Title, filepath.ToSlash(filepath.Join(plotDir, p.File)))
		}
	}
	if notes := r.Notes[sec.Key]; len(notes) > 0 {
		b.WriteString("\n")
		for _, n := range notes {
			b.WriteString("- " + n + "\n")
		}
	}
}

// SectionMarkdown renders the section key alone, with the run's commit,
// date and machine: for a section the full suite does not run (scale).
func (r *Report) SectionMarkdown(key, plotDir string) string {
	var b strings.Builder
	for _, sec := range r.Sections {
		if sec.Key != key {
			continue
		}
		r.writeSection(&b, sec, plotDir)
		commit := "`" + r.Commit + "`"
		if r.Commit == "" {
			commit = "unknown"
		} else if len(r.Modified) > 0 {
			commit += " plus uncommitted changes to " + changedList(r.Modified, "`")
		}
		m := r.Machine
		mode := "full"
		if r.Quick {
			mode = "--quick"
		}
		fmt.Fprintf(&b, "- Measured by `cordon bench --scale` (%s mode, %s) at commit %s on %s; %d cores, %s memory, "+
			"Linux %s; load average at the start %s, at the end %s.\n", mode, r.Elapsed.Round(time.Second), commit,
			r.Date.UTC().Format("2006-01-02 15:04 MST"), m.Cores, humanBytes(m.Memory), m.Kernel, m.LoadStart, m.LoadEnd)
	}
	return b.String()
}

// WritePlots writes the report's plots into dir.
func (r *Report) WritePlots(dir string) ([]string, error) {
	if len(r.Plots) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var written []string
	for _, p := range r.Plots {
		f := filepath.Join(dir, p.File)
		if err := writeAtomic(f, p.Chart.SVG()); err != nil {
			return written, err
		}
		written = append(written, f)
	}
	return written, nil
}

// changedList names up to five paths.
func changedList(paths []string, quote string) string {
	var q []string
	for i, p := range paths {
		if i == 5 {
			q = append(q, fmt.Sprintf("%d more", len(paths)-5))
			break
		}
		q = append(q, quote+p+quote)
	}
	return strings.Join(q, ", ")
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// ReplaceSection returns doc with the text between the markers (markers
// included) replaced by section, which must carry its own markers. Without
// markers, section is inserted after the document's first line if that is
// a "# " title, else at the start.
func ReplaceSection(doc, section string) (string, error) {
	i := strings.Index(doc, MarkerStart)
	j := strings.Index(doc, MarkerEnd)
	switch {
	case i >= 0 && j > i:
		end := j + len(MarkerEnd)
		if end < len(doc) && doc[end] == '\n' {
			end++
		}
		return doc[:i] + section + doc[end:], nil
	case i >= 0 || j >= 0:
		return "", errors.New("BENCHMARKS.md has one bench marker without the other, or in the wrong order")
	}
	if strings.HasPrefix(doc, "# ") {
		nl := strings.IndexByte(doc, '\n')
		if nl < 0 {
			return doc + "\n\n" + section, nil
		}
		return doc[:nl+1] + "\n" + section + "\n" + strings.TrimLeft(doc[nl+1:], "\n"), nil
	}
	return section + "\n" + doc, nil
}

// WriteFiles rewrites the section of the markdown file at path and writes
// the plots into plotDir (relative to the file's directory).
func (r *Report) WriteFiles(path, plotDir string) ([]string, error) {
	doc, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if len(doc) == 0 {
		doc = []byte("# Benchmarks\n")
	}
	out, err := ReplaceSection(string(doc), r.Markdown(plotDir))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	dir := filepath.Join(filepath.Dir(path), plotDir)
	if len(r.Plots) > 0 {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	var written []string
	for _, p := range r.Plots {
		f := filepath.Join(dir, p.File)
		if err := writeAtomic(f, p.Chart.SVG()); err != nil {
			return written, err
		}
		written = append(written, f)
	}
	if err := writeAtomic(path, []byte(out)); err != nil {
		return written, err
	}
	return append(written, path), nil
}

func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// PrintHeader writes the run's context as text.
func (r *Report) PrintHeader(w io.Writer) {
	m := r.Machine
	mode := "full"
	if r.Quick {
		mode = "quick"
	}
	commit := r.Commit
	if commit == "" {
		commit = "unknown"
	} else if len(r.Modified) > 0 {
		commit += " + uncommitted changes to " + changedList(r.Modified, "")
	}
	fmt.Fprintf(w, "cordon bench (%s): %s, commit %s\n", mode, r.Date.Format(time.RFC3339), commit)
	fmt.Fprintf(w, "machine: %d cores (%s), %s memory, Linux %s, %s\n", m.Cores, m.CPU, humanBytes(m.Memory), m.Kernel, m.Go)
	fmt.Fprintf(w, "sandboxes: %s\n", m.Isolation)
	fmt.Fprintf(w, "load average: %s\n", m.LoadStart)
	fmt.Fprintln(w, "each figure: median (min–max, N runs), ratio = median ÷ the baseline's median in this run")
}
